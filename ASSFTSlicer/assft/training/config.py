"""Fine-tuning settings (method.md, SSFT): every threshold is a field."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

from assft.validation import (
    MAX_RADIUS,
    MAX_SEED,
    ConfigFieldError,
    JsonConfig,
    setting,
    validate,
)


class FinetuneMode(str, Enum):
    """`none`: supervised only; `all`: every unlabeled case pseudo-labeled; `selective`: SSFT."""

    NONE = "none"
    ALL = "all"
    SELECTIVE = "selective"


@dataclass
class FinetuneConfig(JsonConfig):
    """One fine-tuning job's settings. The defaults here are the only ones: the command line, the
    workspace's settings and the Slicer module start from them.

    Each field declares its type (the annotation) and its range (:func:`assft.validation.setting`);
    every value is checked when the config is made (a float must also be finite), and a config
    made from a dict refuses unknown keys.

    Attributes:
        mode: none, all or selective.
        iterations: optimisation steps of the supervised stage.
        semi_iterations: steps of the semi-supervised stage (None: same as ``iterations``).
        batch_size: patches per step (split 1:1 labeled/pseudo-labeled in stage 2).
        patch_size: training patch (None: the preset's inference patch).
        lr: AdamW learning rate of the decoder and head.
        encoder_lr_scale: the pretrained encoder learns at ``lr * encoder_lr_scale``.
        weight_decay: AdamW weight decay.
        foreground_ratio: fraction of patches centred on a foreground voxel.
        rho: share of the unlabeled pool kept as the reliable set.
        tau_c: minimum case confidence for the reliable set.
        tau_v: voxels whose max probability is below this are ignored by the pseudo-label loss.
        ramp_fraction: lambda ramps 0 -> 1 over this fraction of the semi-supervised stage.
        warmup_fraction: the learning rate rises linearly from 0 over this fraction of each
            stage (Adam's first steps are full-size whatever the gradient, and would jolt the
            pretrained weights).
        refresh_pseudo_labels: recompute the pseudo-labels once, halfway through stage 2.
        views: test-time views of the pseudo-labeling pass.
        roi_tau: ROI threshold of the confidence (as ASD's).
        roi_radius: ROI dilation of the confidence (as ASD's).
        checkpoint_every: steps between resume checkpoints.
        seed: seed of every random choice (patches, augmentation, initialisation).
        augment: flips, intensity scale/shift, small affine.
        amp: mixed precision on CUDA.
        freeze_batchnorm: keep BatchNorm running statistics fixed while fine-tuning (the
            statistics of a few small patch batches are noisy; the affine weights still learn).
    """

    WORKSPACE_SETTINGS: ClassVar[dict[str, str]] = {"finetune_mode": "mode"}
    """Keys of the workspace's settings (``assft.json``) that set fields here: key -> field."""

    mode: FinetuneMode = setting(FinetuneMode.SELECTIVE)
    iterations: int = setting(200, ge=1)
    semi_iterations: int | None = setting(None, ge=1)
    batch_size: int = setting(2, ge=1)
    patch_size: tuple[int, int, int] | None = setting(None, ge=1)
    lr: float = setting(1e-4, gt=0.0)
    encoder_lr_scale: float = setting(0.1, ge=0.0)
    weight_decay: float = setting(1e-5, ge=0.0)
    foreground_ratio: float = setting(0.5, ge=0.0, le=1.0)
    rho: float = setting(0.3, ge=0.0, le=1.0)
    tau_c: float = setting(0.9, ge=0.0, le=1.0)
    tau_v: float = setting(0.8, ge=0.0, le=1.0)
    ramp_fraction: float = setting(0.2, ge=0.0, le=1.0)
    warmup_fraction: float = setting(0.1, ge=0.0, le=1.0)
    refresh_pseudo_labels: bool = setting(False)
    views: int = setting(4, ge=1, le=4)
    roi_tau: float = setting(0.5, ge=0.0, le=1.0)
    roi_radius: int = setting(2, ge=0, le=MAX_RADIUS)
    checkpoint_every: int = setting(25, ge=1)
    seed: int = setting(0, ge=0, le=MAX_SEED)
    augment: bool = setting(True)
    amp: bool = setting(True)
    freeze_batchnorm: bool = setting(False)

    def __post_init__(self) -> None:
        validate(self)
        if self.mode != FinetuneMode.NONE and self.batch_size < 2:
            raise ConfigFieldError(
                "batch_size",
                f"must be at least 2 with pseudo-labels (1:1 mix; mode {self.mode.value}), "
                f"got {self.batch_size}",
            )

    @property
    def stage2_iterations(self) -> int:
        return self.iterations if self.semi_iterations is None else self.semi_iterations

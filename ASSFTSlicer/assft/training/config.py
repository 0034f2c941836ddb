"""Fine-tuning settings (method.md, SSFT): every threshold is a field."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

from assft.errors import BadInputError


class FinetuneMode(str, Enum):
    """`none`: supervised only; `all`: every unlabeled case pseudo-labeled; `selective`: SSFT."""

    NONE = "none"
    ALL = "all"
    SELECTIVE = "selective"


@dataclass
class FinetuneConfig:
    """One fine-tuning job's settings. The defaults here are the only ones: the command line, the
    workspace's settings and the Slicer module start from them.

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

    mode: FinetuneMode = FinetuneMode.SELECTIVE
    iterations: int = 200
    semi_iterations: int | None = None
    batch_size: int = 2
    patch_size: tuple[int, int, int] | None = None
    lr: float = 1e-4
    encoder_lr_scale: float = 0.1
    weight_decay: float = 1e-5
    foreground_ratio: float = 0.5
    rho: float = 0.3
    tau_c: float = 0.9
    tau_v: float = 0.8
    ramp_fraction: float = 0.2
    warmup_fraction: float = 0.1
    refresh_pseudo_labels: bool = False
    views: int = 4
    roi_tau: float = 0.5
    roi_radius: int = 2
    checkpoint_every: int = 25
    seed: int = 0
    augment: bool = True
    amp: bool = True
    freeze_batchnorm: bool = False

    def __post_init__(self) -> None:
        try:
            self.mode = FinetuneMode(self.mode)
        except ValueError:
            raise BadInputError(f"mode must be none, all or selective, got {self.mode!r}") from None
        if self.patch_size is not None:
            if len(self.patch_size) != 3:
                raise BadInputError(f"patch_size must be three sizes, got {self.patch_size}")
            x, y, z = (int(v) for v in self.patch_size)  # a list from JSON becomes a tuple
            self.patch_size = (x, y, z)
        if self.iterations < 1:
            raise BadInputError(f"iterations must be at least 1, got {self.iterations}")
        if self.batch_size < 1 or (self.mode != FinetuneMode.NONE and self.batch_size < 2):
            raise BadInputError(
                f"batch_size must be at least 2 with pseudo-labels (1:1 mix), got {self.batch_size}"
            )
        for name in (
            "rho",
            "tau_c",
            "tau_v",
            "ramp_fraction",
            "warmup_fraction",
            "foreground_ratio",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise BadInputError(f"{name} must be between 0 and 1, got {value}")

    @property
    def stage2_iterations(self) -> int:
        return self.iterations if self.semi_iterations is None else self.semi_iterations

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=lambda v: v.value))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BadInputError(f"unknown fine-tuning field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> FinetuneConfig:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as error:
            raise BadInputError(
                f"cannot read the fine-tuning configuration: {error}", path
            ) from error

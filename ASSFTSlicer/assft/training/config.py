"""Fine-tuning settings (method.md, SSFT): every threshold is a field."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

from assft.validation import (
    MAX_BATCH,
    MAX_BATCH_VOXELS,
    MAX_EPOCHS,
    MAX_PATCH,
    MAX_RADIUS,
    MAX_RATE,
    MAX_SEED,
    MAX_STEPS,
    MAX_WEIGHT,
    ConfigFieldError,
    JsonConfig,
    setting,
    validate,
)


class Schedule(str, Enum):
    """The learning rate over a stage: `cosine` (linear warm-up, then a cosine decay to
    ``min_lr_fraction``) or `constant` (linear warm-up, then flat)."""

    COSINE = "cosine"
    CONSTANT = "constant"


class Flips(str, Enum):
    """Mirroring augmentation: `symmetric` (only the axes the preset declares symmetric, e.g.
    left-right for a brain), `all` (every axis) or `none`."""

    SYMMETRIC = "symmetric"
    ALL = "all"
    NONE = "none"


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
        iterations: optimisation steps of the supervised stage (None: from the labeled set,
            see :meth:`steps_for`).
        semi_iterations: steps of the semi-supervised stage (None: as the supervised stage).
        epochs: with ``iterations`` None, the passes over the labeled cases' patches.
        min_iterations, max_iterations: bounds of the steps derived from the labeled set.
        batch_size: patches per step (split 1:1 labeled/pseudo-labeled in stage 2).
        patch_size: training patch (None: the preset's inference patch).
        lr: AdamW learning rate of the decoder and head.
        encoder_lr_scale: the pretrained encoder learns at ``lr * encoder_lr_scale``.
        schedule: the learning rate after the warm-up: constant (the default), or a cosine
            decay. Constant measured better on all three sample target sites, together with
            ``intensity_augment`` off (BENCHMARKS.md, "Fine-tuning that pays off").
        min_lr_fraction: where the cosine decay ends, as a fraction of ``lr``.
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
        anchor: hold the model to what its parent knew (modes selective and all): before the
            first step the parent pseudo-labels the unlabeled pool, and the cases it is sure
            of, whose nearest labeled or held-out scan (by acquisition) bore it out, farthest
            from every labeled case (``select_anchor_cases``), fill the unlabeled half of the
            batches with the parent's pseudo-labels at full weight (every batch of stage 1; in
            stage 2 they share that half with the reliable set). The held-out scans' labels
            thus decide where the parent is trusted: they stay out of the loss, but the gate's
            scans are no longer blind to training.
        anchor_rho: share of the unlabeled pool in the anchor set.
        labeled_share: the share of each batch's patches drawn from the labeled cases when
            pseudo-labeled or anchor cases fill the rest (at least one patch each way); 0.5
            measured as well as any other on the hospital archive's forgetting
            (BENCHMARKS.md, "What the anchor can and cannot hold").
        anchor_margin: a labeled or held-out scan bears the parent out when the parent's Dice
            there is at least this much above its worst Dice on the scans labeled for training
            (those show where it fails). Measured with the demo model, whose Dice is 0.72-0.88
            on the 3 T T1 close to its source, 0.64-0.78 on the low-field site, 0.37-0.45 on
            FLAIR and 0.18-0.21 on T2: on a site of one acquisition no scan stands 0.15 above
            the worst labeled one (nothing is anchored, and fine-tuning is as before); on the
            hospital archive, labeled FLAIR or T2 scans leave the T1 ones borne out. A first
            rule, the Dice within 0.1 of the parent's confidence, left a T1 scan of Dice 0.73
            (confidence 0.93) unanchored, and that archive's T1 majority fell from 0.86 to 0.50.
        anchor_distill: the weight of a distillation term on the anchor's patches: the KL
            divergence of the model's class distribution from the parent's on the same
            (augmented) patch, at temperature 2 (0: the parent's hard pseudo-labels only).
        partial_distill: where clinicians label only some structures, the weight of a
            distillation term on the labeled patches' voxels outside the labeled structures
            (the parent's soft predictions, as ``anchor_distill``; 0: the completed hard
            targets only). 4 held the structures nobody labels closer to the parent than 0 on
            the lowfield site (grey matter's agreement 0.940 against 0.913, white matter's
            0.913 against 0.901, 3 seeds; the labeled structure's Dice unchanged; BENCHMARKS.md,
            "Labeling some of the structures").
        views: test-time views of the pseudo-labeling pass.
        roi_tau: ROI threshold of the confidence (as ASD's).
        roi_radius: ROI dilation of the confidence (as ASD's).
        checkpoint_every: steps between resume checkpoints.
        seed: seed of every random choice (patches, augmentation, initialisation).
        augment: spatial and intensity augmentation (off: raw patches).
        flips: which axes are mirrored (``symmetric``: those the preset declares).
        intensity_augment: gamma, contrast, brightness, noise, blur and bias field in nnU-Net's
            ranges (off, the default: a small intensity scale and shift only). Fine-tuning adapts
            to one site's intensities, and off measured better there on all three sample sites;
            the demo model was pretrained with it on (``assft pretrain-demo``), for robustness.
        validate_every: steps between held-out Dice evaluations when held-out cases exist
            (None: about ten per stage); the best checkpoint by held-out Dice is kept.
        keep_best: end the job with the best checkpoint by held-out Dice rather than the last.
        amp: mixed precision on CUDA.
        freeze_batchnorm: keep the source's BatchNorm running statistics while fine-tuning
            (off: they adapt to the target site; measured better, see BENCHMARKS.md).
    """

    WORKSPACE_SETTINGS: ClassVar[dict[str, str]] = {"finetune_mode": "mode"}
    """Keys of the workspace's settings (``assft.json``) that set fields here: key -> field."""

    mode: FinetuneMode = setting(FinetuneMode.SELECTIVE)
    iterations: int | None = setting(None, ge=1, cap=MAX_STEPS)
    semi_iterations: int | None = setting(None, ge=1, cap=MAX_STEPS)
    epochs: int = setting(50, ge=1, cap=MAX_EPOCHS)
    min_iterations: int = setting(300, ge=1, cap=MAX_STEPS)
    max_iterations: int = setting(4000, ge=1, cap=MAX_STEPS)
    batch_size: int = setting(2, ge=1, cap=MAX_BATCH)
    patch_size: tuple[int, int, int] | None = setting(None, ge=1, cap=MAX_PATCH)
    lr: float = setting(3e-3, gt=0.0, cap=MAX_RATE)
    encoder_lr_scale: float = setting(1.0, ge=0.0, cap=MAX_RATE)
    schedule: Schedule = setting(Schedule.CONSTANT)
    min_lr_fraction: float = setting(0.01, ge=0.0, le=1.0)
    weight_decay: float = setting(1e-5, ge=0.0, cap=MAX_RATE)
    foreground_ratio: float = setting(0.5, ge=0.0, le=1.0)
    rho: float = setting(0.3, ge=0.0, le=1.0)
    tau_c: float = setting(0.9, ge=0.0, le=1.0)
    tau_v: float = setting(0.8, ge=0.0, le=1.0)
    ramp_fraction: float = setting(0.2, ge=0.0, le=1.0)
    warmup_fraction: float = setting(0.1, ge=0.0, le=1.0)
    refresh_pseudo_labels: bool = setting(False)
    anchor: bool = setting(True)
    anchor_rho: float = setting(0.3, ge=0.0, le=1.0)
    anchor_margin: float = setting(0.15, ge=0.0, le=1.0)
    labeled_share: float = setting(0.5, gt=0.0, lt=1.0)
    anchor_distill: float = setting(0.0, ge=0.0, cap=MAX_WEIGHT)
    partial_distill: float = setting(4.0, ge=0.0, cap=MAX_WEIGHT)
    views: int = setting(4, ge=1, le=4)
    roi_tau: float = setting(0.5, ge=0.0, le=1.0)
    roi_radius: int = setting(2, ge=0, le=MAX_RADIUS)
    checkpoint_every: int = setting(25, ge=1, cap=MAX_STEPS)
    seed: int = setting(0, ge=0, le=MAX_SEED)
    augment: bool = setting(True)
    flips: Flips = setting(Flips.SYMMETRIC)
    intensity_augment: bool = setting(False)
    validate_every: int | None = setting(None, ge=1, cap=MAX_STEPS)
    keep_best: bool = setting(True)
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

        if self.patch_size is not None:
            voxels = self.batch_size * math.prod(self.patch_size)
            if voxels > MAX_BATCH_VOXELS:
                raise ConfigFieldError(
                    "batch_size",
                    f"times the patch size {list(self.patch_size)} holds {voxels} voxels a step, "
                    f"more than {MAX_BATCH_VOXELS} (MAX_BATCH_VOXELS); got {self.batch_size}",
                )

        if self.min_iterations > self.max_iterations:
            raise ConfigFieldError(
                "min_iterations",
                f"must not exceed max_iterations {self.max_iterations}, got {self.min_iterations}",
            )

    def steps_for(
        self, n_labeled: int, case_voxels: float, patch: tuple[int, int, int]
    ) -> tuple[int, int]:
        """The steps of the two stages for a labeled set.

        With ``iterations`` None the supervised stage runs ``epochs`` passes over the labeled
        cases' patches: a case of ``case_voxels`` voxels holds ``case_voxels / patch voxels``
        patches (at least 1), ``batch_size`` of which make a step; the count is kept within
        ``[min_iterations, max_iterations]``. The rule depends only on the data, so it serves
        the demo model on 2 CPU cores and a large model on a GPU alike (the demo's 64^3 cases
        in 32^3 patches, batches of 4: 100 steps per labeled case, 300 at least).

        Returns:
            (supervised steps, semi-supervised steps).
        """
        if self.iterations is not None:
            first = self.iterations
        else:
            patch_voxels = float(patch[0] * patch[1] * patch[2])
            patches = max(1.0, case_voxels / patch_voxels)
            steps = math.ceil(self.epochs * max(1, n_labeled) * patches / self.batch_size)
            first = int(min(self.max_iterations, max(self.min_iterations, steps)))
        return first, first if self.semi_iterations is None else self.semi_iterations

"""The two stages of SSFT and what lies between them (method.md, "Selective Semi-supervised
Fine-tuning"): a supervised stage on the labeled cases, the reliability of each unlabeled case,
pseudo-labels with unreliable voxels ignored, and a semi-supervised stage on both.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypedDict

import numpy as np
import torch
from monai.data import set_track_meta
from torch.nn.parallel import DistributedDataParallel

from assft.errors import CancelledError, DivergedError
from assft.metrics.overlap import dice_scores, mean_dice
from assft.models import LoadedModel
from assft.models.inference import infer_case, sliding_window_probabilities
from assft.runtime import cancellation, distributed
from assft.training.config import FinetuneConfig, FinetuneMode, Flips, Schedule
from assft.training.data import TrainingCase, make_augmentation, make_batch, step_seed
from assft.training.losses import IGNORE, masked_dice_ce
from assft.training.reliability import select_reliable_cases, semantic_distance


def parameter_groups(
    model: LoadedModel, lr: float, encoder_lr_scale: float
) -> list[dict[str, Any]]:
    """AdamW groups: the pretrained encoder learns ``encoder_lr_scale`` times slower."""
    encoder: list[torch.nn.Parameter] = []
    rest: list[torch.nn.Parameter] = []
    for name, parameter in model.network.named_parameters():
        if not parameter.requires_grad:
            continue
        (encoder if model.preset.in_encoder(name) else rest).append(parameter)
    groups: list[dict[str, Any]] = []
    if encoder:
        groups.append({"params": encoder, "lr": lr * encoder_lr_scale, "name": "encoder"})
    if rest:
        groups.append({"params": rest, "lr": lr, "name": "decoder"})
    return groups


def ramp(step: int, total: int, fraction: float) -> float:
    """lambda(t): linear from 0 to 1 over the first ``fraction`` of the steps, then 1."""
    length = fraction * total
    if length <= 0:
        return 1.0
    return float(min(1.0, step / length))


def lr_factor(step: int, total: int, config: FinetuneConfig) -> float:
    """The learning rate at ``step`` (1-based) of a stage of ``total`` steps, as a fraction of
    the configured one: a linear warm-up over ``warmup_fraction`` of the stage (Adam's first
    steps are full-size whatever the gradient, and would jolt the pretrained weights), then a
    cosine decay to ``min_lr_fraction`` or, with the constant schedule, flat."""
    warmup = config.warmup_fraction * total
    if step <= warmup:
        return ramp(step, total, config.warmup_fraction)
    if config.schedule == Schedule.CONSTANT:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1.0, total - warmup))
    floor = config.min_lr_fraction
    return floor + 0.5 * (1.0 - floor) * (1.0 + math.cos(math.pi * progress))


def flip_axes(model: LoadedModel, config: FinetuneConfig) -> tuple[int, ...]:
    """The spatial axes patches are mirrored along (see :class:`Flips`)."""
    if config.flips == Flips.ALL:
        return (0, 1, 2)
    if config.flips == Flips.SYMMETRIC:
        return model.preset.mirror_axes
    return ()


class Trainer:
    """Optimisation steps on a :class:`~assft.models.LoadedModel`'s network."""

    def __init__(
        self, model: LoadedModel, config: FinetuneConfig, patch: tuple[int, int, int]
    ) -> None:
        self.model = model
        self.config = config
        self.patch = patch
        self.device = model.device
        self.optimizer = torch.optim.AdamW(
            parameter_groups(model, config.lr, config.encoder_lr_scale),
            lr=config.lr,
            weight_decay=config.weight_decay,
        )
        for group in self.optimizer.param_groups:
            group["base_lr"] = group["lr"]
        self.use_amp = config.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.ddp: DistributedDataParallel | None = None
        if distributed.is_distributed():
            if model.adapter is not None:
                raise ValueError("distributed fine-tuning needs a plain PyTorch network")
            self.ddp = DistributedDataParallel(
                model.network, device_ids=[self.device] if self.device.type == "cuda" else None
            )

    def scale_learning_rate(self, factor: float) -> None:
        """Set every group's learning rate to ``factor`` times its configured one."""
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor

    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        if self.ddp is not None:
            return self.model.logits_from_network_output(self.ddp(images))
        return self.model.predict_logits(images)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.use_amp:
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def step(
        self,
        labeled: tuple[torch.Tensor, torch.Tensor],
        pseudo: tuple[torch.Tensor, torch.Tensor] | None = None,
        weight: float = 0.0,
    ) -> dict[str, float]:
        """One step: L_sup(labeled) + weight * L_masked(pseudo)."""
        network = self.model.network
        network.train()
        if self.config.freeze_batchnorm:
            for module in network.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()
        images, targets = labeled
        count = images.shape[0]
        if pseudo is not None:
            images = torch.cat([images, pseudo[0]])
            targets = torch.cat([targets, pseudo[1]])
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            logits = self._logits(images)
        supervised = masked_dice_ce(logits[:count], targets[:count])
        loss = supervised
        unsupervised = torch.zeros((), device=self.device)
        if pseudo is not None:
            unsupervised = masked_dice_ce(logits[count:], targets[count:])
            loss = supervised + weight * unsupervised
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {
            "loss": float(loss.detach()),
            "supervised": float(supervised.detach()),
            "pseudo": float(unsupervised.detach()),
        }

    def state(self) -> dict[str, Any]:
        return {
            "network": self.model.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])


@dataclass
class PseudoLabels:
    """The reliability of the unlabeled pool and the reliable set.

    Attributes:
        confidence: c_u of every unlabeled case, by case id.
        distance: d_u of every unlabeled case, by case id.
        reliable: ids of the reliable set, most reliable first.
    """

    confidence: dict[str, float] = field(default_factory=dict)
    distance: dict[str, float] = field(default_factory=dict)
    reliable: list[str] = field(default_factory=list)


def pseudo_label(
    model: LoadedModel,
    labeled: list[TrainingCase],
    unlabeled_ids: list[str],
    load_case: Callable[[str], TrainingCase],
    store_target: Callable[[str, torch.Tensor], None],
    config: FinetuneConfig,
    *,
    on_case: Callable[[int], None] | None = None,
) -> PseudoLabels:
    """Reliability of each unlabeled case, its pseudo-label stored as it goes (SSFT 2-3).

    Confidence c_u is the mean max-probability over the adaptive foreground ROI of the
    test-time-augmented prediction; the semantic distance d_u is the cosine distance of the
    model's embedding to the nearest labeled case's. Pseudo-labels are the argmax, with voxels
    below tau_v set to ``IGNORE``. One case is in memory at a time: each pseudo-label goes to
    ``store_target`` and only the reliable ones are read back for training, so memory stays
    flat as the pool grows. Under torchrun each rank labels its share of the pool.
    """
    model.network.eval()
    z_labeled = [
        infer_case(model, case.image, views=1, batchnorm=False).embedding for case in labeled
    ]
    confidence, embeddings = [], []
    mine = distributed.shard(list(unlabeled_ids))
    for i, case_id in enumerate(mine, start=1):
        case = load_case(case_id)
        result = infer_case(
            model,
            case.image,
            views=config.views,
            tau=config.roi_tau,
            radius=config.roi_radius,
            batchnorm=False,
            keep_probabilities=True,
        )
        assert result.probabilities is not None
        max_prob, argmax = torch.max(result.probabilities, 0)
        target = argmax.to(torch.int8)
        target[max_prob < config.tau_v] = IGNORE
        store_target(case_id, target.cpu())
        confidence.append(result.difficulty.confidence)
        embeddings.append(result.embedding)
        del result, case
        if on_case:
            on_case(i)
    gathered = distributed.gather((confidence, embeddings))
    confidence = distributed.unshard([g[0] for g in gathered])
    embeddings = distributed.unshard([g[1] for g in gathered])
    ids = list(unlabeled_ids)
    c = np.array(confidence)
    d = semantic_distance(np.stack(embeddings), np.stack(z_labeled)) if ids else np.zeros(0)
    if config.mode == FinetuneMode.ALL:
        chosen = list(range(len(ids)))
    else:
        chosen = select_reliable_cases(c, d, rho=config.rho, tau_c=config.tau_c)
    return PseudoLabels(
        confidence={ids[i]: float(c[i]) for i in range(len(ids))},
        distance={ids[i]: float(d[i]) for i in range(len(ids))},
        reliable=[ids[i] for i in chosen],
    )


class ValidationDice(TypedDict):
    """:func:`validation_dice`'s result.

    Attributes:
        per_case: mean Dice of each case, in the order given.
        per_structure: mean Dice over the cases per channel (NaN where no case has it).
        mean_dice: the mean of ``per_structure`` (NaN when no structure is defined).
    """

    per_case: list[float]
    per_structure: dict[int, float]
    mean_dice: float


def validation_dice(
    model: LoadedModel, cases: list[TrainingCase], n_classes: int
) -> ValidationDice:
    """Dice per structure (channels 1..C-1) on held-out cases, on the model grid, one view."""
    model.network.eval()
    per_case = []
    for case in cases:
        probs = sliding_window_probabilities(model, case.image)
        prediction = probs.argmax(0).cpu()
        assert case.target is not None
        valid = case.target != IGNORE
        scores = dice_scores(
            torch.where(valid, prediction, 0),
            torch.where(valid, case.target, 0),
            list(range(1, n_classes)),
        )
        per_case.append(scores)
    per_structure: dict[int, float] = {}
    for channel in range(1, n_classes):
        values = [s[channel] for s in per_case if not np.isnan(s[channel])]
        per_structure[channel] = float(np.mean(values)) if values else float("nan")
    return {
        "per_case": [mean_dice(s) for s in per_case],
        "per_structure": per_structure,
        "mean_dice": mean_dice(per_structure),
    }


def run_stage(
    trainer: Trainer,
    *,
    stage: int,
    start: int,
    total: int,
    labeled: list[TrainingCase],
    pseudo: list[TrainingCase] | None,
    config: FinetuneConfig,
    on_step: Callable[[int, dict[str, float]], None],
    should_stop: Callable[[], bool] = lambda: False,
    end: int | None = None,
) -> None:
    """Steps ``start .. end-1`` (default ``total-1``) of a stage of ``total`` steps (the warm-up
    and the pseudo-label weight follow ``total``); batches mix labeled and pseudo-labeled 1:1.

    Every step starts at a safe point: a cancel request stops the stage there
    (:func:`assft.runtime.cancellation.check`).

    Raises:
        DivergedError: a step's loss is NaN or infinite (the weights are no longer usable);
            no resume point is written for it.
    """
    half = max(1, config.batch_size // 2)
    # Plain tensors through the augmentations: no metadata tracking on the hot path.
    set_track_meta(False)
    augment = (
        make_augmentation(
            config.seed, flip_axes(trainer.model, config), intensity=config.intensity_augment
        )
        if config.augment
        else None
    )
    for step in range(start, total if end is None else min(end, total)):
        cancellation.check()
        if should_stop():
            raise CancelledError("fine-tuning cancelled")
        seed = step_seed(config.seed + 7919 * distributed.rank(), stage, step)
        rng = np.random.default_rng(seed)
        if augment is not None:
            augment.set_random_state(seed=seed)
        # The schedule is a function of the step alone, so a resumed stage continues it exactly.
        trainer.scale_learning_rate(lr_factor(step + 1, total, config))
        if pseudo:
            labeled_batch = make_batch(
                labeled,
                half,
                trainer.patch,
                rng,
                foreground_ratio=config.foreground_ratio,
                augment=augment,
            )
            pseudo_batch = make_batch(
                pseudo,
                config.batch_size - half,
                trainer.patch,
                rng,
                foreground_ratio=config.foreground_ratio,
                augment=augment,
            )
            weight = ramp(step, total, config.ramp_fraction)
            metrics = trainer.step(labeled_batch, pseudo_batch, weight)
            metrics["lambda"] = weight
        else:
            batch = make_batch(
                labeled,
                config.batch_size,
                trainer.patch,
                rng,
                foreground_ratio=config.foreground_ratio,
                augment=augment,
            )
            metrics = trainer.step(batch)
        if not math.isfinite(metrics["loss"]):
            raise DivergedError(
                f"fine-tuning diverged: the loss is {metrics['loss']} at step {step + 1} of "
                f"stage {stage} (learning rate {config.lr:g}); nothing was registered: lower "
                "the learning rate (--lr) and fine-tune again"
            )
        on_step(step + 1, metrics)

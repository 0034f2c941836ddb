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
from assft.metrics.acquisition import acquisition_descriptor, acquisition_distance
from assft.metrics.overlap import dice_scores, mean_dice, mean_per_structure
from assft.models import LoadedModel
from assft.models.inference import CaseInference, infer_case, sliding_window_probabilities
from assft.runtime import cancellation, distributed, portable
from assft.training.config import FinetuneConfig, FinetuneMode, Flips, Schedule
from assft.training.data import TrainingCase, make_augmentation, make_batch, step_seed
from assft.training.losses import IGNORE, distillation, masked_dice_ce
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


def _flatten(
    extras: dict[str, tuple[tuple[torch.Tensor, torch.Tensor], float]],
) -> list[tuple[str, tuple[torch.Tensor, torch.Tensor], float]]:
    return [(name, batch, weight) for name, (batch, weight) in extras.items()]


def split_slots(total: int, parts: int, step: int) -> list[int]:
    """How many of a step's ``total`` unlabeled patches each of ``parts`` sets gets: as even as
    possible, the remainder going round the sets from one step to the next."""
    if parts <= 0:
        return []
    base, extra = divmod(total, parts)
    return [base + (1 if (k - step) % parts < extra else 0) for k in range(parts)]


class Trainer:
    """Optimisation steps on a :class:`~assft.models.LoadedModel`'s network."""

    def __init__(
        self,
        model: LoadedModel,
        config: FinetuneConfig,
        patch: tuple[int, int, int],
        teacher: LoadedModel | None = None,
        labeled_channels: list[int] | None = None,
    ) -> None:
        """``teacher``: the parent, for ``anchor_distill`` and ``partial_distill``;
        ``labeled_channels``: the channels of the structures clinicians label, when they label
        only some (the partial distillation teaches the other voxels of the labeled patches)."""
        self.model = model
        self.teacher = teacher
        self.labeled_channels = labeled_channels
        self.config = config
        self.patch = patch
        self.device = model.device
        cancellation.check_inside_layers(model.network)
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
        extras: dict[str, tuple[tuple[torch.Tensor, torch.Tensor], float]] | None = None,
    ) -> dict[str, float]:
        """One step: L_sup(labeled) + sum over ``extras`` of weight * L_masked(patches).

        ``extras`` maps a name (``pseudo``, ``anchor``) to its patches and its weight; each
        part's loss is reported under its name.
        """
        network = self.model.network
        network.train()
        if self.config.freeze_batchnorm:
            for module in network.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()
        parts = [("supervised", labeled, 1.0)] + [
            (name, batch, weight) for name, batch, weight in _flatten(extras or {})
        ]
        images = torch.cat([batch[0] for _, batch, _ in parts])
        targets = torch.cat([batch[1] for _, batch, _ in parts])
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            logits = self._logits(images)
        losses: dict[str, torch.Tensor] = {}
        loss = torch.zeros((), device=self.device)
        start = 0
        for name, batch, weight in parts:
            end = start + batch[0].shape[0]
            losses[name] = masked_dice_ce(logits[start:end], targets[start:end])
            loss = loss + weight * losses[name]
            distill = self._distillation(
                name, images[start:end], logits[start:end], targets[start:end]
            )
            if distill is not None:
                losses[f"distill_{name}"], factor = distill
                loss = loss + weight * factor * losses[f"distill_{name}"]
            start = end
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        metrics = {"loss": float(loss.detach())}
        metrics.update({name: float(value.detach()) for name, value in losses.items()})
        metrics.setdefault("pseudo", 0.0)
        return metrics

    def _distillation(
        self, name: str, images: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, float] | None:
        """The parent's distillation term of one part of the batch and its weight, or None:
        on the anchor's patches (``anchor_distill``), and on the labeled patches' voxels
        outside the labeled structures (``partial_distill``)."""
        if self.teacher is None:
            return None
        mask = None
        if name == "anchor" and self.config.anchor_distill > 0:
            factor = self.config.anchor_distill
        elif (
            name == "supervised"
            and self.config.partial_distill > 0
            and self.labeled_channels is not None
        ):
            factor = self.config.partial_distill
            labeled = torch.tensor(self.labeled_channels, device=targets.device)
            mask = (targets != IGNORE) & ~torch.isin(targets, labeled)
        else:
            return None
        self.teacher.network.eval()
        with torch.no_grad(), self._autocast():
            taught = self.teacher.predict_logits(images)
        return distillation(logits, taught, mask=mask), factor

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
    select: Callable[[np.ndarray, np.ndarray, np.ndarray], list[int]] | None = None,
    by_acquisition: bool = False,
    on_case: Callable[[int], None] | None = None,
) -> PseudoLabels:
    """Reliability of each unlabeled case, its pseudo-label stored as it goes (SSFT 2-3).

    Confidence c_u is the mean max-probability over the adaptive foreground ROI of the
    test-time-augmented prediction; the semantic distance d_u is the cosine distance of the
    model's embedding to the nearest labeled case's (with ``by_acquisition``, the distance of
    its acquisition descriptor instead: see :mod:`assft.metrics.acquisition`). Pseudo-labels
    are the argmax, with voxels below tau_v set to ``IGNORE``. One case is in memory at a
    time: each pseudo-label goes to ``store_target`` and only the reliable ones are read back
    for training, so memory stays flat as the pool grows. Under torchrun each rank labels
    its share of the pool.

    ``select`` (confidence, distance, features (N, D)) -> indices picks the set (default: the
    reliable set of the config's mode; the anchor's rule for the anchor).
    """
    model.network.eval()

    def features(result: CaseInference) -> np.ndarray:
        if by_acquisition:
            return acquisition_descriptor(result.batchnorm, result.embedding)
        return result.embedding

    f_labeled = [
        features(infer_case(model, case.image, views=1, batchnorm=by_acquisition))
        for case in labeled
    ]
    confidence, f_unlabeled = [], []
    mine = distributed.shard(list(unlabeled_ids))
    for i, case_id in enumerate(mine, start=1):
        case = load_case(case_id)
        result = infer_case(
            model,
            case.image,
            views=config.views,
            tau=config.roi_tau,
            radius=config.roi_radius,
            batchnorm=by_acquisition,
            keep_probabilities=True,
        )
        assert result.probabilities is not None
        max_prob, argmax = torch.max(result.probabilities, 0)
        target = argmax.to(torch.int8)
        target[max_prob < config.tau_v] = IGNORE
        store_target(case_id, target.cpu())
        confidence.append(result.difficulty.confidence)
        f_unlabeled.append(features(result))
        del result, case
        portable.release_freed_memory()  # memory flat as the pool grows
        if on_case:
            on_case(i)
    gathered = distributed.gather((confidence, f_unlabeled))
    confidence = distributed.unshard([g[0] for g in gathered])
    f_unlabeled = distributed.unshard([g[1] for g in gathered])
    ids = list(unlabeled_ids)
    c = np.array(confidence)
    if not ids:
        d = np.zeros(0)
    elif by_acquisition:
        pool = np.stack(f_unlabeled)
        d = (
            acquisition_distance(pool, np.stack(f_labeled)).min(axis=1)
            if f_labeled
            else np.ones(len(ids))
        )
    else:
        d = semantic_distance(np.stack(f_unlabeled), np.stack(f_labeled))
    if select is not None:
        chosen = select(c, d, np.stack(f_unlabeled) if ids else np.zeros((0, 1)))
    elif config.mode == FinetuneMode.ALL:
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
    model: LoadedModel, cases: list[TrainingCase], channels: list[int]
) -> ValidationDice:
    """Dice per structure (the network ``channels`` scored: every foreground channel, or the
    labeled structures' when clinicians label only some) on held-out cases, on the model grid,
    one view."""
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
            channels,
        )
        per_case.append(scores)
    per_structure = mean_per_structure(per_case, channels)
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
    anchor: list[TrainingCase] | None = None,
) -> None:
    """Steps ``start .. end-1`` (default ``total-1``) of a stage of ``total`` steps (the warm-up
    and the pseudo-label weight follow ``total``).

    When there are pseudo-labeled or anchor cases, ``labeled_share`` of each batch is labeled
    (half, by default) and the rest is shared between them (:func:`split_slots`: with one
    unlabeled patch a step, they take turns). Pseudo-labels weigh lambda(t) (the ramp); the
    anchor's (the parent's pseudo-labels) weigh 1 from the first step.

    Every step starts at a safe point: a cancel request stops the stage there
    (:func:`assft.runtime.cancellation.check`).

    Raises:
        DivergedError: a step's loss is NaN or infinite (the weights are no longer usable);
            no resume point is written for it.
    """
    # The labeled patches of a step shared with pseudo-labeled or anchor patches.
    labeled_count = min(
        config.batch_size - 1, max(1, int(config.batch_size * config.labeled_share))
    )
    # Plain tensors through the augmentations: no metadata tracking on the hot path.
    set_track_meta(False)
    augment = (
        make_augmentation(
            config.seed, flip_axes(trainer.model, config), intensity=config.intensity_augment
        )
        if config.augment
        else None
    )

    def batch(
        cases: list[TrainingCase], count: int, rng: np.random.Generator, step: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # With the anchor, an odd count alternates foreground and background centres from step
        # to step (a single patch would otherwise always be foreground-centred); without it,
        # batches are drawn as they were before the anchor existed.
        return make_batch(
            cases,
            count,
            trainer.patch,
            rng,
            foreground_ratio=config.foreground_ratio,
            augment=augment,
            start=step if (count % 2 and anchor) else 0,
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
        weight = ramp(step, total, config.ramp_fraction)
        sets = [
            (name, cases, w)
            for name, cases, w in (("pseudo", pseudo, weight), ("anchor", anchor, 1.0))
            if cases
        ]
        if sets:
            labeled_batch = batch(labeled, labeled_count, rng, step)
            slots = split_slots(config.batch_size - labeled_count, len(sets), step)
            extras = {
                name: (batch(cases, count, rng, step), w)
                for (name, cases, w), count in zip(sets, slots, strict=True)
                if count
            }
            metrics = trainer.step(labeled_batch, extras)
            if pseudo:
                metrics["lambda"] = weight
        else:
            metrics = trainer.step(batch(labeled, config.batch_size, rng, step))
        if not math.isfinite(metrics["loss"]):
            raise DivergedError(
                f"fine-tuning diverged: the loss is {metrics['loss']} at step {step + 1} of "
                f"stage {stage} (learning rate {config.lr:g}); nothing was registered: lower "
                "the learning rate (--lr) and fine-tune again"
            )
        on_step(step + 1, metrics)

"""What the steps of one fine-tuning run share: the label snapshot they train on, the
:class:`JobRun` they pass along, and their bookkeeping (:class:`RunBookkeeping`: progress and the
loss curve per step, held-out Dice and the best checkpoint, resume points).
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from assft.errors import BadInputError
from assft.io.atomic import save_torch_atomic
from assft.models import LoadedModel
from assft.query.parts import ArchiveParts
from assft.runtime.progress import Progress
from assft.training.config import FinetuneConfig, FinetuneMode
from assft.training.curves import CurveStore, LearningCurve, validation_steps
from assft.training.data import PreparedCases, TrainingCase
from assft.training.gate import weighted_dice
from assft.training.ssft import PseudoLabels, Trainer, validation_dice
from assft.workspace import Workspace
from assft.workspace.jobs import Job
from assft.workspace.model_versions import ModelVersions


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot_labels(
    workspace: Workspace, rows: list[dict[str, Any]], folder: Path
) -> dict[str, str]:
    """Copy the current label files into the job folder; return case -> sha256 of the copies.

    The job trains on these copies only, so a label replaced while it runs changes nothing.
    """
    folder.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for row in rows:
        source = workspace.label_path(row["case_id"])
        if source is None or not Path(source).is_file():
            raise BadInputError(f"case {row['case_id']} is {row['status']} but has no label file")
        copy = folder / f"{row['case_id']}.nii.gz"
        shutil.copyfile(source, copy)
        hashes[row["case_id"]] = _sha256(copy)
    return hashes


def labels_in_snapshot(folder: Path) -> dict[str, str]:
    """case -> sha256 of an existing snapshot (a resumed job)."""
    return {p.name[: -len(".nii.gz")]: _sha256(p) for p in sorted(folder.glob("*.nii.gz"))}


@dataclass
class JobRun:
    """What the steps of one running job share (see :meth:`FinetuneJob._run`).

    Attributes:
        job: the job's folder and record; progress: its event stream.
        resumed: the job continues a killed one; main: this is rank 0.
        base_version: the version fine-tuned from (the parent of the new one).
        labels: case -> sha256 of the snapshot's label copies.
        labeled_ids, held_out_ids: the snapshot's training and validation cases.
        model: the network being trained; prepared: the case cache on its grid.
        trainer, stage, step: the optimiser and where training stands (1 or 2, step in it).
        iterations, semi_iterations: the steps of the two stages (from the labeled set unless
            the config sets them).
        curve, curves: the learning curve and where it and the best checkpoint are stored.
        anchor, anchor_cases: the parent's reliable cases far from the labeled ones, with its
            pseudo-labels (``FinetuneConfig.anchor``; empty without it).
        parts, held_out_weights: the archive's parts (the latest ranking's) and each held-out
            scan's weight in the held-out Dice.
    """

    job: Job
    progress: Progress
    resumed: bool
    main: bool
    device: torch.device
    base_version: str
    labels: dict[str, str]
    labeled_ids: list[str]
    held_out_ids: list[str]
    label_values: list[int]
    channels: list[int]
    missing: dict[int, float]
    patch: tuple[int, int, int]
    model: LoadedModel
    prepared: PreparedCases
    labeled_cases: list[TrainingCase] = field(default_factory=list)
    held_out_cases: list[TrainingCase] = field(default_factory=list)
    anchor: PseudoLabels | None = None
    anchor_cases: list[TrainingCase] = field(default_factory=list)
    anchor_evidence: list[dict[str, Any]] = field(default_factory=list)
    parts: ArchiveParts | None = None
    held_out_weights: list[float] = field(default_factory=list)

    def held_out_dice(self, per_case: list[float]) -> float:
        """The held-out Dice the gate and the best checkpoint read (:func:`weighted_dice`)."""
        return weighted_dice(self.held_out_weights, per_case)

    trainer: Trainer | None = None
    stage: int = 1
    step: int = 0
    iterations: int = 0
    semi_iterations: int = 0
    patches_per_case: float = 0.0
    curve: LearningCurve = field(default_factory=LearningCurve)
    curves: CurveStore | None = None

    def started_trainer(self) -> Trainer:
        """The trainer :meth:`FinetuneJob._start_training` built."""
        if self.trainer is None:
            raise RuntimeError("the job's trainer is used before _start_training built it")
        return self.trainer


class RunBookkeeping:
    """What every step of a run records: progress and the loss curve, held-out Dice and the best
    checkpoint, and resume points; the base of :class:`assft.training.steps.FinetuneSteps`, which
    declares here what the steps read."""

    workspace: Workspace
    config: FinetuneConfig
    versions: ModelVersions
    timings: dict[str, float]
    ignored_settings: dict[str, Any]
    resolved_device: torch.device

    def _save_resume_point(self, run: JobRun, stage: int, step: int) -> None:
        """Rank 0: write the trainer's state so a killed job restarts from here."""
        if run.main:
            state = {"stage": stage, "step": step, **run.started_trainer().state()}
            save_torch_atomic(state, run.job.resume_path)

    def _on_step(
        self, run: JobRun, stage: int, total: int
    ) -> Callable[[int, dict[str, float]], None]:
        """Progress and the loss curve per step, held-out Dice every ``validate_every`` steps
        (the best checkpoint kept), and a resume point every ``checkpoint_every`` steps."""
        every = validation_steps(total, self.config.validate_every)
        # The steps after this stage: the whole job's time left, not only this stage's.
        later = run.semi_iterations if stage == 1 and self.config.mode != FinetuneMode.NONE else 0
        clock: dict[str, float] = {}

        def on_step(done: int, metrics: dict[str, float]) -> None:
            run.curve.add_loss(stage, done, total, metrics["loss"])
            shown = {k: round(v, 5) for k, v in metrics.items()}
            if run.main and run.held_out_cases and (done % every == 0 or done == total):
                shown["validation_dice"] = round(self._evaluate(run, stage, done), 5)
            now = time.monotonic()
            clock.setdefault("start", now)
            clock.setdefault("from", done)
            if done > clock["from"]:
                per_step = (now - clock["start"]) / (done - clock["from"])
                shown["job_eta_s"] = round(per_step * (total - done + later), 1)
            run.progress.update(done, **shown)
            if done % self.config.checkpoint_every == 0:
                self._save_resume_point(run, stage, done)

        return on_step

    def _evaluate(self, run: JobRun, stage: int, step: int) -> float:
        """Rank 0: held-out Dice now; the weights are kept when they are the best so far."""
        dice = run.held_out_dice(
            validation_dice(run.model, run.held_out_cases, run.channels)["per_case"]
        )
        assert run.curves is not None
        if run.curve.add_validation(stage, step, dice):
            run.curves.save_best(run.model.network)
        run.curves.save(run.curve)
        return dice

    def _keep_best(self, run: JobRun) -> dict[str, Any] | None:
        """Rank 0: load the best checkpoint by held-out Dice (``keep_best``); what was kept."""
        best = run.curve.best
        if not (self.config.keep_best and run.held_out_cases and best) or run.curves is None:
            return None
        state = run.curves.load_best()
        if state is None:
            return None
        run.model.network.load_state_dict(state)
        last = run.curve.validation[-1] if run.curve.validation else None
        return {**best, "last_validation_dice": last[2] if last else None}

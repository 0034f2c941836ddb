"""The steps of one fine-tuning run, in the order :meth:`FinetuneJob._run` takes them: prepare
the cases and the model, choose the anchor with the parent's weights, train the supervised stage,
choose the reliable set and train the semi-supervised stage, then validate on the held-out scans.
What the steps share is a :class:`JobRun`; the job around them (the lock, the label snapshot,
resuming, registering and promoting the version) is :mod:`assft.training.finetune`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from assft.errors import BadInputError
from assft.io.atomic import load_torch_safely, save_torch_atomic
from assft.models import LoadedModel
from assft.query.parts import ArchiveParts
from assft.runtime import distributed
from assft.runtime.progress import Progress, ProgressEvent
from assft.training.anchor import parent_evidence
from assft.training.config import FinetuneConfig, FinetuneMode
from assft.training.curves import CurveStore, LearningCurve, validation_steps
from assft.training.data import PreparedCases, TrainingCase
from assft.training.gate import (
    archive_weights,
    change_by_part,
    refuse_missing_structures,
    validation_gate,
    weighted_dice,
)
from assft.training.inputs import load_resume_point
from assft.training.partial_labels import (
    complete_target,
    labeled_channels,
    missing_structures,
    structure_agreement,
)
from assft.training.reliability import nearest_borne_out, select_anchor_cases
from assft.training.ssft import (
    PseudoLabels,
    Trainer,
    pseudo_label,
    run_stage,
    validation_dice,
)
from assft.workspace import Workspace, write_json_atomic
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


class FinetuneSteps:
    """The steps of a fine-tuning run; :class:`assft.training.finetune.FinetuneJob` is the one
    class that takes them, and sets what they read."""

    workspace: Workspace
    config: FinetuneConfig
    versions: ModelVersions
    timings: dict[str, float]
    ignored_settings: dict[str, Any]
    resolved_device: torch.device

    def _prepare(
        self,
        job: Job,
        progress: Progress,
        labeled_rows: list[dict[str, Any]],
        held_out_rows: list[dict[str, Any]],
        resumed: bool,
    ) -> JobRun:
        """Load the base version's model and bring the snapshot's cases onto its grid."""
        workspace = self.workspace
        base_version = job.info().get("base_version") or self.versions.current()
        snapshot = job.folder / "snapshot"
        labels = labels_in_snapshot(snapshot)
        # Only cases whose label made it into the snapshot: the job trains on those copies.
        held_out_ids = [r["case_id"] for r in held_out_rows if r["case_id"] in labels]
        labeled_ids = [r["case_id"] for r in labeled_rows if r["case_id"] in labels]

        device = self.resolved_device
        model = self.versions.load(base_version, device=device)
        preset = model.preset
        label_values = list(workspace.config.label_values)
        patch = self.config.patch_size or preset.patch_size
        prepared = PreparedCases(workspace.cache_folder("training"), preset, label_values, patch)

        progress.phase("preparing", len(labels))
        labeled_cases: list[TrainingCase] = []
        held_out_cases: list[TrainingCase] = []
        for i, case_id in enumerate(labeled_ids + held_out_ids, start=1):
            label = snapshot / f"{case_id}.nii.gz"
            case = prepared.load(case_id, workspace.image_path(case_id), label)
            (labeled_cases if case_id in labeled_ids else held_out_cases).append(case)
            progress.update(i, case=case_id)
        channels = labeled_channels(label_values, workspace.config.labeled_values)
        if workspace.config.partially_labeled:
            # The structures nobody labels: learned from this version, not from the labels.
            t0 = time.perf_counter()
            progress.phase("completing", len(labeled_cases))
            for i, case in enumerate(list(labeled_cases)):
                labeled_cases[i] = complete_target(model, case, channels)
                progress.update(i + 1, case=case.case_id)
            self.timings["completion_s"] = time.perf_counter() - t0
            missing: dict[int, float] = {}
        else:
            # Labels that leave out structures the model plainly sees (the gate reads it).
            missing = missing_structures(model, labeled_cases + held_out_cases, channels)
        case_voxels = float(np.mean([c.image[0].numel() for c in labeled_cases]))
        iterations, semi_iterations = self.config.steps_for(len(labeled_cases), case_voxels, patch)
        # The parts the job started with: a resumed job weighs its held-out scans as before.
        recorded = job.info().get("parts")
        parts = ArchiveParts.from_dict(recorded) if recorded else self._archive_parts()
        if distributed.is_main() and parts is not None and not recorded:
            job.update(parts=parts.to_dict())
        curves = CurveStore(job.folder)
        curve = curves.load() if resumed else LearningCurve()
        curve.steps = {"1": iterations, "2": semi_iterations}
        if distributed.is_main():
            job.update(schedule={"iterations": iterations, "semi_iterations": semi_iterations})
        return JobRun(
            job=job,
            progress=progress,
            resumed=resumed,
            main=distributed.is_main(),
            device=device,
            base_version=base_version,
            labels=labels,
            labeled_ids=labeled_ids,
            held_out_ids=held_out_ids,
            label_values=label_values,
            channels=channels,
            missing=missing,
            patch=patch,
            model=model,
            prepared=prepared,
            labeled_cases=labeled_cases,
            held_out_cases=held_out_cases,
            iterations=iterations,
            semi_iterations=semi_iterations,
            patches_per_case=max(1.0, case_voxels / float(np.prod(patch))),
            curve=curve,
            curves=curves,
            parts=parts,
            held_out_weights=archive_weights(held_out_ids, parts),
        )

    def _start_training(self, run: JobRun) -> None:
        """Seed, build the trainer, and restore its state when the job resumes."""
        torch.manual_seed(self.config.seed)
        # The parent as teacher (anchor_distill, partial_distill): copied before a resume point
        # loads, so that a resumed job distils from the same parent.
        partial = self.workspace.config.partially_labeled
        distill = (self.config.anchor_distill > 0 and bool(run.anchor_cases)) or (
            self.config.partial_distill > 0 and partial
        )
        teacher = copy.deepcopy(run.model) if distill else None
        trainer = Trainer(
            run.model,
            self.config,
            run.patch,
            teacher=teacher,
            labeled_channels=run.channels if partial else None,
        )
        run.trainer = trainer
        run.stage, run.step = 1, 0
        if run.resumed and run.job.resume_path.is_file():
            state = load_resume_point(run.job.resume_path, run.device, self.workspace.root)
            trainer.load_state(state)
            run.stage, run.step = int(state["stage"]), int(state["step"])
            run.progress.emit(
                ProgressEvent.RESUMED,
                stage=run.stage,
                step=run.step,
                job=run.job.id,
                settings=self.config.to_dict(),
                ignored=self.ignored_settings,
            )

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

    def _anchor_set(self, run: JobRun) -> None:
        """The anchor (``FinetuneConfig.anchor``): the parent pseudo-labels the unlabeled pool
        before any step, and keeps the cases it is sure of whose nearest labeled or held-out
        scan bore it out (:meth:`_parent_evidence`), farthest from the labeled ones
        (``select_anchor_cases``)."""
        config = self.config
        unlabeled_rows = self.workspace.registry.cases(status="unlabeled")
        if not config.anchor or config.mode == FinetuneMode.NONE or not unlabeled_rows:
            return
        stored = run.job.folder / "anchor-evidence.json"
        if distributed.broadcast(stored.is_file()):
            evidence = json.loads(stored.read_text(encoding="utf-8"))
        else:
            evidence = parent_evidence(
                run.model,
                run.labeled_cases,
                run.held_out_cases,
                run.channels,
                self.config,
            )
            if run.main:
                write_json_atomic(
                    stored,
                    [{**e, "descriptor": list(map(float, e["descriptor"]))} for e in evidence],
                )
        descriptors = np.array([e["descriptor"] for e in evidence])
        borne_out = np.array([e["borne_out"] for e in evidence], dtype=bool)
        run.anchor, run.anchor_cases = self._pseudo_labels(
            run.job,
            run.progress,
            run.model,
            run.prepared,
            run.labeled_cases,
            unlabeled_rows,
            name="anchor",
            select=lambda c, d, features: select_anchor_cases(
                c,
                d,
                nearest_borne_out(features, descriptors, borne_out),
                rho=config.anchor_rho,
                tau_c=config.tau_c,
            ),
            by_acquisition=True,
        )
        run.anchor_evidence = [{k: v for k, v in e.items() if k != "descriptor"} for e in evidence]

    def _supervised_stage(self, run: JobRun) -> None:
        """Stage 1: supervised on the labeled cases (skipped when resuming in stage 2)."""
        config = self.config
        t0 = time.perf_counter()
        if run.stage == 1:
            run.progress.phase("supervised", run.iterations)
            if run.main and run.held_out_cases and run.step == 0:
                self._evaluate(run, 1, 0)  # the parent version: the curve's first point
            run_stage(
                run.started_trainer(),
                stage=1,
                start=run.step,
                total=run.iterations,
                labeled=run.labeled_cases,
                pseudo=None,
                anchor=run.anchor_cases,
                config=config,
                on_step=self._on_step(run, 1, run.iterations),
            )
            self._save_resume_point(run, 2, 0)
            run.stage, run.step = 2, 0
        self.timings["supervised_s"] = time.perf_counter() - t0

    def _semi_supervised(self, run: JobRun) -> dict[str, Any]:
        """The reliable set's pseudo-labels, then stage 2 (per the mode; may do nothing).

        Returns:
            What the manifest records under ``ssft``: the mode, the reliable set with its
            confidence and distance scores, or a note why stage 2 did not run.
        """
        config = self.config
        reliable_info: dict[str, Any] = {"mode": config.mode.value}
        if run.anchor is not None:
            reliable_info.update(
                anchor=run.anchor.reliable,
                anchor_confidence=run.anchor.confidence,
                anchor_distance=run.anchor.distance,
                anchor_evidence=run.anchor_evidence,
            )
        # A case the anchor holds is taught by the parent alone, never by two teachers.
        anchored = set(run.anchor.reliable) if run.anchor is not None else set()
        unlabeled_rows = [
            row
            for row in self.workspace.registry.cases(status="unlabeled")
            if row["case_id"] not in anchored
        ]
        if config.mode == FinetuneMode.NONE or not (unlabeled_rows or run.anchor_cases):
            return reliable_info
        pseudo_cases: list[TrainingCase] = []
        if unlabeled_rows:
            pseudo, pseudo_cases = self._reliable_set(run, unlabeled_rows)
            reliable_info.update(
                reliable=pseudo.reliable,
                confidence=pseudo.confidence,
                distance=pseudo.distance,
            )
        if not pseudo_cases:
            reliable_info["note"] = (
                "every unlabeled case is anchored: "
                if not unlabeled_rows
                else f"no unlabeled case reached the confidence threshold tau_c={config.tau_c}: "
            ) + (
                "stage 2 trains on the labeled and the anchor cases"
                if run.anchor_cases
                else "supervised stage only"
            )
            if not run.anchor_cases:
                return reliable_info
        self._semi_supervised_stage(run, unlabeled_rows, pseudo_cases, reliable_info)
        return reliable_info

    def _reliable_set(
        self, run: JobRun, unlabeled_rows: list[dict[str, Any]], refreshed: bool = False
    ) -> tuple[PseudoLabels, list[TrainingCase]]:
        """The reliable set with its pseudo-labeled cases, from the model as trained so far.

        When clinicians label only some structures, the others in each pseudo-label come from
        the version the job started from, as in the labels (:func:`complete_target`): the
        model as trained so far has learned only the labeled ones from anyone.
        """
        pseudo, cases = self._pseudo_labels(
            run.job,
            run.progress,
            run.model,
            run.prepared,
            run.labeled_cases,
            unlabeled_rows,
            refreshed=refreshed,
        )
        if cases and self.workspace.config.partially_labeled:
            parent = self.versions.load(run.base_version, device=run.device)
            cases = [complete_target(parent, case, run.channels) for case in cases]
        return pseudo, cases

    def _semi_supervised_stage(
        self,
        run: JobRun,
        unlabeled_rows: list[dict[str, Any]],
        pseudo_cases: list[TrainingCase],
        reliable_info: dict[str, Any],
    ) -> None:
        """Stage 2: train on the labeled and the pseudo-labeled cases.

        With ``refresh_pseudo_labels`` the reliable set is computed again halfway through,
        and ``refreshed_reliable`` is added to ``reliable_info``.
        """
        config = self.config
        t0 = time.perf_counter()
        total = run.semi_iterations
        run.progress.phase("semi-supervised", total)
        refresh_at = total // 2 if config.refresh_pseudo_labels else None

        def train_until(until: int) -> None:
            run_stage(
                run.started_trainer(),
                stage=2,
                start=run.step,
                total=total,
                end=until,
                labeled=run.labeled_cases,
                pseudo=pseudo_cases,
                anchor=run.anchor_cases,
                config=config,
                on_step=self._on_step(run, 2, total),
            )

        if refresh_at is not None and run.step < refresh_at:
            train_until(refresh_at)
            run.step = refresh_at
            self._save_resume_point(run, 2, run.step)
            if run.main:
                # The pseudo-labels of the first half are stale: the refresh recomputes them.
                (run.job.folder / "pseudo.json").unlink(missing_ok=True)
            distributed.barrier()
            pseudo, pseudo_cases = self._reliable_set(run, unlabeled_rows, refreshed=True)
            reliable_info["refreshed_reliable"] = pseudo.reliable
            run.progress.phase("semi-supervised", total)
        train_until(total)
        self.timings["semi_supervised_s"] = time.perf_counter() - t0

    def _validate(self, run: JobRun) -> tuple[dict[str, Any], dict[str, Any]]:
        """Rank 0: held-out Dice of the new model against the version it started from.

        Returns:
            (metrics for the manifest, the validation gate's verdict).
        """
        t0 = time.perf_counter()
        label_values = run.label_values
        names = self.workspace.config.label_names

        def name(channel: int) -> str:
            return names.get(label_values[channel - 1], str(channel))

        metrics: dict[str, Any] = {}
        kept = self._keep_best(run)
        if kept is not None:
            metrics["best_checkpoint"] = kept
        if run.held_out_cases:
            progress = run.progress
            progress.phase("validation", 2)
            new_scores = validation_dice(run.model, run.held_out_cases, run.channels)
            new_dice = run.held_out_dice(new_scores["per_case"])
            progress.update(1, validation_dice=new_dice)
            base_model = self.versions.load(run.base_version, device=run.device)
            base_scores = validation_dice(base_model, run.held_out_cases, run.channels)
            base_dice = run.held_out_dice(base_scores["per_case"])
            progress.update(2, validation_dice=new_dice, parent_dice=base_dice)
            gate = validation_gate(new_dice, base_dice, run.base_version)
            gate["held_out"] = run.held_out_ids
            gate["weights"] = [round(w, 6) for w in run.held_out_weights]
            by_part = change_by_part(
                run.held_out_ids, new_scores["per_case"], base_scores["per_case"], run.parts
            )
            if by_part:
                gate["parts"] = by_part
                worse = [p for p in by_part if p["change"] < -1e-9]
                if worse:
                    gate["reason"] += "; worse on " + ", ".join(
                        f"{p['name']} ({p['change']:+.4f})" for p in worse
                    )
            metrics["validation_dice"] = new_dice
            metrics["validation_per_structure"] = {
                name(c): v for c, v in new_scores["per_structure"].items()
            }
            metrics["parent_validation_dice"] = base_dice
            unlabeled = [c for c in range(1, 1 + len(label_values)) if c not in run.channels]
            if unlabeled:
                # The structures nobody labels: how far the new version moved them (Dice against
                # the parent's predictions on the held-out scans; 1: not at all).
                agreement = structure_agreement(
                    run.model, base_model, run.held_out_cases, unlabeled
                )
                metrics["unlabeled_structures_agreement"] = {
                    name(c): v for c, v in agreement.items()
                }
        else:
            gate = validation_gate(None, None, run.base_version)
        if run.missing:
            refuse_missing_structures(
                gate, {name(c): share for c, share in run.missing.items()}, run.base_version
            )
        self.timings["validation_s"] = time.perf_counter() - t0
        return metrics, gate

    def _archive_parts(self) -> ArchiveParts | None:
        """The parts of the archive the latest ranking found (None before any ranking, or when
        the ranking predates them)."""
        try:
            document = self.workspace.latest_ranking()
        except BadInputError:
            return None
        parts = (document or {}).get("parts")
        return ArchiveParts.from_dict(parts) if isinstance(parts, dict) else None

    def _finish_timings(self, run: JobRun, started: float) -> None:
        """Total time, and training speed when every step ran in this process."""
        self.timings["total_s"] = time.perf_counter() - started
        semi_supervised = "semi_supervised_s" in self.timings
        steps = run.iterations + (run.semi_iterations if semi_supervised else 0)
        train_time = self.timings["supervised_s"] + self.timings.get("semi_supervised_s", 0.0)
        if not run.resumed and train_time > 0:
            self.timings["iterations_per_s"] = steps / train_time

    def _pseudo_labels(
        self,
        job: Job,
        progress: Progress,
        model: LoadedModel,
        prepared: PreparedCases,
        labeled_cases: list[TrainingCase],
        unlabeled_rows: list[dict[str, Any]],
        refreshed: bool = False,
        *,
        name: str = "pseudo",
        select: Callable[[np.ndarray, np.ndarray, np.ndarray], list[int]] | None = None,
        by_acquisition: bool = False,
    ) -> tuple[PseudoLabels, list[TrainingCase]]:
        """The reliable set (``name`` pseudo) or the anchor set (``name`` anchor, chosen by
        ``select``) with its pseudo-labeled cases: computed once, stored in the job folder as
        ``<name>.json`` and ``<name>/``, then read back (a resumed job)."""
        stored = job.folder / f"{name}.json"
        targets = job.folder / name
        targets.mkdir(exist_ok=True)

        def load_case(case_id: str) -> TrainingCase:
            return prepared.load(case_id, self.workspace.image_path(case_id))

        def store_target(case_id: str, target: torch.Tensor) -> None:
            save_torch_atomic({"target": target}, targets / f"{case_id}.pt")

        if distributed.broadcast(stored.is_file()):
            data = json.loads(stored.read_text())
            pseudo = PseudoLabels(data["confidence"], data["distance"], data["reliable"])
        else:
            t0 = time.perf_counter()
            progress.phase(
                "anchor" if name == "anchor" else "pseudo-labels",
                len(distributed.shard(unlabeled_rows)),
            )
            pseudo = pseudo_label(
                model,
                labeled_cases,
                [row["case_id"] for row in unlabeled_rows],
                load_case,
                store_target,
                self.config,
                select=select,
                by_acquisition=by_acquisition,
                on_case=lambda i: progress.update(i),
            )
            if distributed.is_main():
                write_json_atomic(stored, {**asdict(pseudo), "refreshed": refreshed})
            distributed.barrier()
            timing = f"{name}_labels_s" if name != "pseudo" else "pseudo_labels_s"
            self.timings[timing] = self.timings.get(timing, 0.0) + time.perf_counter() - t0
        cases = []
        for case_id in pseudo.reliable:
            target = load_torch_safely(targets / f"{case_id}.pt")
            cases.append(load_case(case_id).with_target(target["target"].long()))
        return pseudo, cases

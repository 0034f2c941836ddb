"""The steps of one fine-tuning run, in the order :meth:`FinetuneJob._run` takes them: prepare
the cases and the model, choose the anchor with the parent's weights, train the supervised stage,
choose the reliable set and train the semi-supervised stage, then validate on the held-out scans.
The anchor, the reliable set and stage 2 are :mod:`assft.training.semi_supervised_steps`; what the
steps share (a :class:`JobRun`, the label snapshot, their bookkeeping) is
:mod:`assft.training.job_run`; the job around them (the lock, the label snapshot, resuming,
registering and promoting the version) is :mod:`assft.training.finetune`.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch

from assft.errors import BadInputError
from assft.query.parts import ArchiveParts
from assft.runtime import distributed
from assft.runtime.progress import Progress, ProgressEvent
from assft.training.curves import CurveStore, LearningCurve
from assft.training.data import PreparedCases, TrainingCase
from assft.training.gate import (
    archive_weights,
    change_by_part,
    refuse_missing_structures,
    validation_gate,
)
from assft.training.inputs import load_resume_point
from assft.training.job_run import JobRun, labels_in_snapshot
from assft.training.partial_labels import (
    complete_target,
    labeled_channels,
    missing_structures,
    structure_agreement,
)
from assft.training.semi_supervised_steps import SemiSupervisedSteps
from assft.training.ssft import Trainer, run_stage, validation_dice
from assft.workspace.jobs import Job


class FinetuneSteps(SemiSupervisedSteps):
    """The steps of a fine-tuning run; :class:`assft.training.finetune.FinetuneJob` is the one
    class that takes them, and sets what they read."""

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

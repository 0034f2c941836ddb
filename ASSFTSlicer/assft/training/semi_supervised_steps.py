"""The pseudo-label steps of a fine-tuning run: the anchor (the parent's reliable cases, chosen
before any step), the reliable set of the model as trained so far, and the semi-supervised stage
(stage 2) that trains on them. Pseudo-labels are stored in the job folder and read back when the
job resumes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from assft.io.atomic import load_torch_safely, save_torch_atomic
from assft.models import LoadedModel
from assft.runtime import distributed
from assft.runtime.progress import Progress
from assft.training.anchor import parent_evidence
from assft.training.config import FinetuneMode
from assft.training.data import PreparedCases, TrainingCase
from assft.training.job_run import JobRun, RunBookkeeping
from assft.training.partial_labels import complete_target
from assft.training.reliability import nearest_borne_out, select_anchor_cases
from assft.training.ssft import PseudoLabels, pseudo_label, run_stage
from assft.workspace import write_json_atomic
from assft.workspace.jobs import Job


class SemiSupervisedSteps(RunBookkeeping):
    """The anchor, the reliable set and stage 2 (:class:`assft.training.steps.FinetuneSteps`
    takes them with the other steps)."""

    def _anchor_set(self, run: JobRun) -> None:
        """The anchor (``FinetuneConfig.anchor``): the parent pseudo-labels the unlabeled pool
        before any step, and keeps the cases it is sure of whose nearest labeled or held-out
        scan bore it out (``training.anchor.parent_evidence``), farthest from the labeled ones
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

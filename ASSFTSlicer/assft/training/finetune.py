"""A fine-tuning job: snapshot the labels, SSFT, validate, register a version, promote if it passes.

The job resumes from its last checkpoint when it was killed outright and is started again with
the same labels; a failed, cancelled or killed job never changes the current model version.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from assft.runtime import cancellation
from assft.io.atomic import save_torch_atomic
from assft.errors import AssftError, BadInputError, CancelledError
from assft.runtime.progress import Progress
from assft.training.config import FinetuneConfig, FinetuneMode
from assft.workspace import write_json_atomic


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot_labels(workspace, rows: list[dict], folder: Path) -> dict[str, str]:
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


def validation_gate(new_dice: float | None, parent_dice: float | None, parent: str) -> dict[str, Any]:
    """Promote only when the held-out Dice is not worse than the parent version's.

    Without held-out cases there is nothing to compare: the version is promoted, and the
    manifest says so.
    """
    if new_dice is None or parent_dice is None:
        return {"passed": True, "held_out": [],
                "reason": "no held-out cases: promoted without a validation gate"}
    if np.isnan(new_dice):
        return {"passed": False, "validation_dice": None, "parent_validation_dice": parent_dice,
                "reason": "held-out Dice could not be computed (no structure present)"}
    passed = bool(np.isnan(parent_dice) or new_dice >= parent_dice - 1e-9)
    return {
        "passed": passed,
        "validation_dice": new_dice,
        "parent_validation_dice": parent_dice,
        "reason": f"held-out Dice {new_dice:.4f} vs {parent_dice:.4f} of {parent}: "
        f"{'not worse' if passed else 'worse, not promoted'}",
    }


class FinetuneJob:
    """Runs one fine-tuning job of a workspace."""

    def __init__(
        self,
        workspace,
        config: FinetuneConfig,
        *,
        device: str = "auto",
        progress: Progress | None = None,
        argv: list[str] | None = None,
    ) -> None:
        from assft.workspace.jobs import JobStore
        from assft.workspace.model_versions import ModelRegistry

        self.workspace = workspace
        self.config = config
        self.device = device
        self.argv = argv or []
        self.registry = ModelRegistry(workspace)
        self.jobs = JobStore(workspace)
        self.user_progress = progress or Progress("none")
        self.timings: dict[str, float] = {}

    # The job's life ------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Run (or resume) the job under the workspace lock; returns the new version's manifest.

        Under torchrun, rank 0 holds the lock, snapshots the labels and registers the version;
        every rank trains (DistributedDataParallel) and pseudo-labels its share of the pool.
        """
        from assft.runtime import distributed
        from assft.models import resolve_device

        # Join the process group first: the ranks talk before any training starts.
        self.resolved_device = distributed.setup(resolve_device(self.device))
        main = distributed.is_main()
        lock = (
            self.workspace.job_lock("workspace", description="finetune")
            if main
            else contextlib.nullcontext()
        )
        with lock:
            start = self._begin() if main else None
            start = distributed.broadcast(start)
            job = self.jobs.get(start["job"])
            if start["resumed"]:
                self.config = FinetuneConfig.from_dict(job.info()["config"])
            progress = (
                Progress(self.user_progress.mode, self.user_progress.stream, sink=job.append_progress)
                if main
                else Progress("none")
            )
            try:
                manifest = self._run(job, progress, start["labeled"], start["held_out"],
                                     start["resumed"])
            except CancelledError as error:
                if main:
                    self.jobs.finish(job, "cancelled", 3, str(error))
                raise
            except AssftError as error:
                if main:
                    self.jobs.finish(job, "failed", error.exit_code, str(error))
                raise
            except BaseException as error:
                if main:
                    self.jobs.finish(job, "failed", 1, f"{type(error).__name__}: {error}")
                raise
            if main:
                self.jobs.finish(job, "done", 0, f"version {manifest['version']}"
                                 f" ({'promoted' if manifest['promoted'] else 'not promoted'})")
                job.resume_path.unlink(missing_ok=True)
            return manifest

    def _begin(self) -> dict[str, Any]:
        """Rank 0: find the cases, resume a killed job with the same labels or start one."""
        from assft.workspace.model_versions import ModelRegistry

        labeled = self.workspace.registry.cases(status="labeled")
        held_out = self.workspace.registry.cases(status="held-out")
        if not labeled:
            raise BadInputError(
                "no labeled cases to fine-tune on: label some first (assft next, assft submit)",
                self.workspace.root,
            )
        registry_hashes = {row["case_id"]: row.get("label_sha256") or "" for row in labeled}
        label_hash = ModelRegistry.label_set_hash(registry_hashes)
        job = self.jobs.resumable("finetune", label_hash)
        resumed = job is not None
        if job is None:
            job = self.jobs.create("finetune", self.argv)
            job.update(
                label_set_hash=label_hash,
                base_version=self.registry.current(),
                config=self.config.to_dict(),
            )
            snapshot_labels(self.workspace, labeled + held_out, job.folder / "snapshot")
        self.jobs.mark_running(job)
        return {"job": job.id, "resumed": resumed, "labeled": labeled, "held_out": held_out}

    def _run(self, job, progress: Progress, labeled_rows, held_out_rows, resumed: bool) -> dict[str, Any]:
        from assft.models import get_preset, load_model
        from assft.training.data import PreparedCases
        from assft.training.ssft import Trainer, pseudo_label, run_stage, validation_dice

        started = time.perf_counter()
        config = self.config
        workspace = self.workspace
        info = job.info()
        base_version = info.get("base_version") or self.registry.current()
        snapshot = job.folder / "snapshot"
        labels = labels_in_snapshot(snapshot)
        held_out_ids = [r["case_id"] for r in held_out_rows if r["case_id"] in labels]
        labeled_ids = [r["case_id"] for r in labeled_rows if r["case_id"] in labels]

        from assft.runtime import distributed
        main = distributed.is_main()
        device = self.resolved_device
        preset = get_preset(workspace.config.model)
        label_values = list(workspace.config.label_values)
        from assft.query.ranking import model_checkpoint

        checkpoint = model_checkpoint(workspace, base_version)
        model = load_model(preset, label_values=label_values, checkpoint=checkpoint, device=device)
        patch = tuple(config.patch_size or preset.patch_size)
        prepared = PreparedCases(workspace.cache_dir / "training", preset, label_values, patch)

        progress.phase("preparing", len(labels))
        labeled_cases, held_out_cases = [], []
        for i, case_id in enumerate(labeled_ids + held_out_ids, start=1):
            case = prepared.load(case_id, workspace.image_path(case_id), snapshot / f"{case_id}.nii.gz")
            (labeled_cases if case_id in labeled_ids else held_out_cases).append(case)
            progress.update(i, case=case_id)

        torch.manual_seed(config.seed)
        trainer = Trainer(model, config, patch)
        stage, step = 1, 0
        if resumed and job.resume_path.is_file():
            state = torch.load(job.resume_path, map_location=device, weights_only=True)
            trainer.load_state(state)
            stage, step = int(state["stage"]), int(state["step"])
            progress.emit("resumed", stage=stage, step=step, job=job.id)

        def checkpoint_every(stage_index: int):
            def on_step(done: int, metrics: dict[str, float]) -> None:
                progress.update(done, **{k: round(v, 5) for k, v in metrics.items()})
                if main and done % config.checkpoint_every == 0:
                    save_torch_atomic({"stage": stage_index, "step": done, **trainer.state()}, job.resume_path)
            return on_step

        # Stage 1: supervised on the labeled cases.
        t0 = time.perf_counter()
        if stage == 1:
            progress.phase("supervised", config.iterations)
            run_stage(trainer, stage=1, start=step, total=config.iterations, labeled=labeled_cases,
                      pseudo=None, config=config, on_step=checkpoint_every(1))
            if main:
                save_torch_atomic({"stage": 2, "step": 0, **trainer.state()}, job.resume_path)
            stage, step = 2, 0
        self.timings["supervised_s"] = time.perf_counter() - t0

        # Pseudo-labels of the reliable set, then stage 2.
        reliable_info: dict[str, Any] = {"mode": config.mode.value}
        unlabeled_rows = workspace.registry.cases(status="unlabeled")
        if config.mode != FinetuneMode.NONE and unlabeled_rows:
            pseudo, pseudo_cases = self._pseudo_labels(job, progress, model, prepared,
                                                       labeled_cases, unlabeled_rows, pseudo_label)
            reliable_info.update(
                reliable=pseudo.reliable,
                confidence=pseudo.confidence,
                distance=pseudo.distance,
            )
            if pseudo_cases:
                t0 = time.perf_counter()
                total = config.stage2_iterations
                progress.phase("semi-supervised", total)
                refresh_at = total // 2 if config.refresh_pseudo_labels else None
                if refresh_at is not None and step < refresh_at:
                    run_stage(trainer, stage=2, start=step, total=refresh_at, labeled=labeled_cases,
                              pseudo=pseudo_cases, config=config, on_step=checkpoint_every(2))
                    step = refresh_at
                    if main:
                        save_torch_atomic({"stage": 2, "step": step, **trainer.state()}, job.resume_path)
                        (job.folder / "pseudo.json").unlink(missing_ok=True)
                    distributed.barrier()
                    pseudo, pseudo_cases = self._pseudo_labels(
                        job, progress, model, prepared, labeled_cases, unlabeled_rows,
                        pseudo_label, refreshed=True,
                    )
                    reliable_info["refreshed_reliable"] = pseudo.reliable
                    progress.phase("semi-supervised", total)
                run_stage(trainer, stage=2, start=step, total=total, labeled=labeled_cases,
                          pseudo=pseudo_cases, config=config, on_step=checkpoint_every(2))
                self.timings["semi_supervised_s"] = time.perf_counter() - t0
            else:
                reliable_info["note"] = (
                    f"no unlabeled case reached the confidence threshold tau_c={config.tau_c}: "
                    "supervised stage only"
                )

        if not main:
            # Rank 0 validates and registers; the others wait for the version it made.
            return distributed.broadcast(None)

        # Validation gate against the version we started from.
        t0 = time.perf_counter()
        n_classes = 1 + len(label_values)
        metrics: dict[str, Any] = {}
        if held_out_cases:
            progress.phase("validation", 2)
            new_scores = validation_dice(model, held_out_cases, n_classes)
            progress.update(1, validation_dice=new_scores["mean_dice"])
            base_model = load_model(preset, label_values=label_values, checkpoint=checkpoint, device=device)
            base_scores = validation_dice(base_model, held_out_cases, n_classes)
            progress.update(2, validation_dice=new_scores["mean_dice"],
                            parent_dice=base_scores["mean_dice"])
            gate = validation_gate(new_scores["mean_dice"], base_scores["mean_dice"], base_version)
            gate["held_out"] = held_out_ids
            metrics["validation_dice"] = new_scores["mean_dice"]
            metrics["validation_per_structure"] = {
                workspace.config.label_names.get(label_values[c - 1], str(c)): v
                for c, v in new_scores["per_structure"].items()
            }
            metrics["parent_validation_dice"] = base_scores["mean_dice"]
        else:
            gate = validation_gate(None, None, base_version)
        self.timings["validation_s"] = time.perf_counter() - t0
        self.timings["total_s"] = time.perf_counter() - started
        steps = config.iterations + (config.stage2_iterations if "semi_supervised_s" in self.timings else 0)
        train_time = self.timings["supervised_s"] + self.timings.get("semi_supervised_s", 0.0)
        if not resumed and train_time > 0:
            self.timings["iterations_per_s"] = steps / train_time

        from assft.workspace.model_versions import ModelRegistry

        manifest = {
            "parent": base_version,
            "label_set_hash": ModelRegistry.label_set_hash({c: labels[c] for c in labeled_ids}),
            "labels": {c: labels[c] for c in labeled_ids},
            "held_out": held_out_ids,
            "mode": config.mode.value,
            "config": config.to_dict(),
            "seed": config.seed,
            "metrics": metrics,
            "gate": gate,
            "promoted": False,
            "ssft": reliable_info,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "job": job.id,
            "resumed": resumed,
            "device": str(device),
            "world_size": distributed.world_size(),
            "preset": preset.name,
            "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        state = {k: v.detach().cpu() for k, v in model.network.state_dict().items()}
        with cancellation.critical():
            version = self.registry.add_version(state, manifest)
            if gate["passed"]:
                self.registry.promote(version, reason=gate["reason"])
        manifest = self.registry.manifest(version)
        distributed.broadcast(manifest)
        progress.done(version=version, promoted=manifest.get("promoted", False),
                      gate=gate["reason"], job=job.id)
        return manifest

    def _pseudo_labels(self, job, progress, model, prepared, labeled_cases, unlabeled_rows,
                       pseudo_label, refreshed: bool = False):
        """The reliable set with its pseudo-labeled cases (computed once, then read back)."""
        from assft.runtime import distributed
        from assft.training.ssft import PseudoLabels

        stored = job.folder / "pseudo.json"
        targets = job.folder / "pseudo"
        targets.mkdir(exist_ok=True)

        def load_case(case_id: str):
            return prepared.load(case_id, self.workspace.image_path(case_id))

        def store_target(case_id: str, target: torch.Tensor) -> None:
            save_torch_atomic({"target": target}, targets / f"{case_id}.pt")

        if distributed.broadcast(stored.is_file()):
            data = json.loads(stored.read_text())
            pseudo = PseudoLabels(data["confidence"], data["distance"], data["reliable"])
        else:
            t0 = time.perf_counter()
            progress.phase("pseudo-labels", len(distributed.shard(unlabeled_rows)))
            pseudo = pseudo_label(
                model, labeled_cases, [row["case_id"] for row in unlabeled_rows], load_case,
                store_target, self.config, on_case=lambda i: progress.update(i),
            )
            if distributed.is_main():
                write_json_atomic(stored, {**asdict(pseudo), "refreshed": refreshed})
            distributed.barrier()
            self.timings["pseudo_labels_s"] = (
                self.timings.get("pseudo_labels_s", 0.0) + time.perf_counter() - t0
            )
        cases = []
        for case_id in pseudo.reliable:
            target = torch.load(targets / f"{case_id}.pt", map_location="cpu", weights_only=True)
            cases.append(load_case(case_id).with_target(target["target"].long()))
        return pseudo, cases


def run_finetune(workspace, config: FinetuneConfig, *, device: str = "auto",
                 progress: Progress | None = None, argv: list[str] | None = None) -> dict[str, Any]:
    """Fine-tune the workspace's current model (see :class:`FinetuneJob`)."""
    return FinetuneJob(workspace, config, device=device, progress=progress, argv=argv).run()

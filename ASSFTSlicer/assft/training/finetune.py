"""A fine-tuning job: snapshot the labels, SSFT, validate, register a version, promote if it passes.

The job resumes from its last checkpoint when it was killed outright and is started again with
the same labels, with the settings it started with (new ones are reported, not used; ``restart``
starts a new job instead). A failed, cancelled or killed job never changes the current model
version, and a diverged one (a NaN loss) stops and registers nothing.

Registering is two steps that each happen whole: the version is stored
(:meth:`ModelVersions.add_version`), then its promotion is decided in one registry transaction
(:meth:`ModelVersions.promote` with the version it was validated against, or
:meth:`ModelVersions.keep_unpromoted`). A job that stopped between them, or after them before
recording its state, is completed by the next ``assft finetune``: its stored version is found
(the manifest's ``job``), the decision made if it is missing, and the job recorded done; no
second version is trained.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from datetime import UTC, datetime
from typing import Any

from assft.errors import EXIT_CANCELLED, AssftError, BadInputError, CancelledError
from assft.models import get_preset, resolve_device
from assft.models.architectures import window_problem
from assft.runtime import cancellation, distributed, syncpoints
from assft.runtime.job_state import JobState
from assft.runtime.progress import Progress, ProgressEvent
from assft.training.config import FinetuneConfig, FinetuneMode
from assft.training.inputs import check_inputs
from assft.training.job_run import JobRun, snapshot_labels
from assft.training.steps import FinetuneSteps
from assft.workspace import Workspace
from assft.workspace.jobs import Job, JobStore
from assft.workspace.model_versions import ModelVersions


def outcome(manifest: dict[str, Any]) -> str:
    """The job message of a registered version: ``version v2 (promoted)``, or not and why."""
    version = manifest.get("version")
    if manifest.get("promoted"):
        return f"version {version} (promoted)"
    note = manifest.get("not_promoted_reason")
    return f"version {version} ({note})" if note else f"version {version} (not promoted)"


_SETTINGS_SHOWN = ("mode", "iterations", "semi_iterations", "lr", "batch_size", "seed")


def describe_settings(config: dict[str, Any]) -> str:
    """The main settings of a job's config, e.g. ``mode none, iterations 30, lr 0.0001``."""
    return ", ".join(f"{key} {config.get(key)}" for key in _SETTINGS_SHOWN if key in config)


class FinetuneJob(FinetuneSteps):
    """Runs one fine-tuning job of a workspace."""

    def __init__(
        self,
        workspace: Workspace,
        config: FinetuneConfig,
        *,
        device: str = "auto",
        progress: Progress | None = None,
        argv: list[str] | None = None,
        restart: bool = False,
    ) -> None:
        self.workspace = workspace
        self.config = config
        self.device = device
        self.argv = argv or []
        self.restart = restart
        self.versions = ModelVersions(workspace)
        self.jobs = JobStore(workspace)
        self.user_progress = progress or Progress("none")
        self.timings: dict[str, float] = {}
        self.ignored_settings: dict[str, Any] = {}

    # The job's life ------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Run (or resume) the job under the workspace lock; returns the new version's manifest.

        Under torchrun, rank 0 holds the lock, snapshots the labels and registers the version;
        every rank trains (DistributedDataParallel) and pseudo-labels its share of the pool.
        """
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
            progress = (
                Progress(
                    self.user_progress.mode, self.user_progress.stream, sink=job.append_progress
                )
                if main
                else Progress("none")
            )
            if start.get("settled") is not None:
                return self._report_settled(job, progress, start["settled"])
            if start["resumed"]:
                recorded = dict(job.info()["config"])
                # A job recorded before the anchor existed goes on without it, as it started.
                recorded.setdefault("anchor", False)
                self.config = FinetuneConfig.from_dict(recorded)
            try:
                manifest = self._run(
                    job, progress, start["labeled"], start["held_out"], start["resumed"]
                )
            except (CancelledError, KeyboardInterrupt) as error:
                if main:
                    self._record_end(
                        job, JobState.CANCELLED, EXIT_CANCELLED, str(error) or "cancelled"
                    )
                raise
            except AssftError as error:
                if main:
                    self._record_end(job, JobState.FAILED, error.exit_code, str(error))
                raise
            except BaseException as error:
                if main:
                    self._record_end(job, JobState.FAILED, 1, f"{type(error).__name__}: {error}")
                raise
            if main:
                self.jobs.finish(job, JobState.DONE, 0, outcome(manifest))
                job.resume_path.unlink(missing_ok=True)
            return manifest

    def _record_end(self, job: Job, state: JobState, code: int, message: str) -> None:
        """Record how a job ended; when the disk refuses even that (it is full), the job stays
        as it was (shown as killed, and resumable) and the error that ended it is the one said."""
        try:
            self.jobs.finish(job, state, code, message)
        except OSError as error:
            warnings.warn(f"{job.info_path}: could not record the job's end: {error}", stacklevel=2)

    def _begin(self) -> dict[str, Any]:
        """Rank 0: find the cases, complete a job that had stored its version, resume a
        killed job with the same labels, or start one."""
        labeled = self.workspace.registry.cases(status="labeled")
        held_out = self.workspace.registry.cases(status="held-out")
        if not labeled:
            raise BadInputError(
                "no labeled cases to fine-tune on: label some first (assft next, assft submit)",
                self.workspace.root,
            )
        unlabeled = self.workspace.registry.cases(status="unlabeled")
        uses_unlabeled = self.config.mode != FinetuneMode.NONE
        check_inputs(self.workspace, labeled + held_out, unlabeled if uses_unlabeled else [])
        if self.config.patch_size is not None:  # a patch the network cannot take fails in it
            preset = get_preset(self.workspace.config.model)
            problem = window_problem(preset.architecture, preset.arguments, self.config.patch_size)
            if problem:
                raise BadInputError(f"patch_size {problem} (nothing was started)")
        registry_hashes = {row["case_id"]: row.get("label_sha256") or "" for row in labeled}
        label_hash = ModelVersions.label_set_hash(registry_hashes)
        repaired = self.versions.recover()
        if repaired:
            warnings.warn(repaired, stacklevel=2)
        settled = self._settle_stored_versions(label_hash)
        if settled is not None and not self.restart:
            return {"job": settled[0].id, "settled": settled[1]}
        job = self.jobs.resumable("finetune", label_hash)
        superseded = job if self.restart else None
        if superseded is not None:
            job = None
        resumed = job is not None
        if job is None:
            # A damaged current model is refused before any job folder or label snapshot is
            # made: the pointer, the weights' sha256, and the weights read as weights only (a
            # checkpoint holding other Python objects is refused here, not inside the job).
            self.versions.load_state(self.versions.current())
            job = self.jobs.create("finetune", self.argv)
            job.update(
                label_set_hash=label_hash,
                base_version=self.versions.current(),
                config=self.config.to_dict(),
            )
            snapshot_labels(self.workspace, labeled + held_out, job.folder / "snapshot")
        else:
            self._compare_settings(job)
        if superseded is not None:
            superseded.finish(
                JobState.KILLED, None, f"not resumed: job {job.id} started afresh (--restart)"
            )
            superseded.resume_path.unlink(missing_ok=True)
        self.jobs.mark_running(job)
        return {"job": job.id, "resumed": resumed, "labeled": labeled, "held_out": held_out}

    def _compare_settings(self, job: Job) -> None:
        """Rank 0: a resumed job keeps the settings it started with; say which given now differ."""
        recorded = job.info().get("config") or {}
        requested = self.config.to_dict()
        self.ignored_settings = {
            key: value
            for key, value in requested.items()
            if key in recorded and recorded[key] != value
        }
        message = f"resuming job {job.id} with its own settings ({describe_settings(recorded)})"
        if self.ignored_settings:
            given = ", ".join(
                f"{key} {value} (the job's: {recorded[key]})"
                for key, value in self.ignored_settings.items()
            )
            message += (
                f"; the settings given now are not used: {given}; "
                "add --restart to start a new job with them"
            )
            warnings.warn(message, stacklevel=2)
        job.log(message)

    def _decide(self, job_id: str, version: str) -> dict[str, Any]:
        """Rank 0: promote a stored version whose gate passed if the version it was validated
        against is still current, else keep it unpromoted; decided once per version.

        Returns:
            The version's manifest as now stored.
        """
        if self.versions.decision(version) is None:
            manifest = self.versions.manifest(version)
            gate = manifest.get("gate") or {}
            reason = str(gate.get("reason", ""))
            if gate.get("passed"):
                parent = manifest.get("parent")
                self.versions.promote(
                    version,
                    reason=reason,
                    expect_current=str(parent) if parent is not None else None,
                    job=job_id,
                )
            else:
                self.versions.keep_unpromoted(version, reason=reason, job=job_id)
        return self.versions.manifest(version)

    def _settle_stored_versions(self, label_hash: str) -> tuple[Job, dict[str, Any]] | None:
        """Rank 0: record done every killed or failed fine-tune whose version was stored.

        Such a job stopped after storing its version (killed, or its promotion could not be
        recorded): its promotion is decided now if it was not, and it is recorded done.

        Returns:
            The job with these labels and its version's manifest, or None.
        """
        stored = self.versions.versions_by_job()
        found: tuple[Job, dict[str, Any]] | None = None
        for entry in self.jobs.list():
            if entry.get("kind") != "finetune" or entry.get("state") not in (
                JobState.KILLED,
                JobState.FAILED,
            ):
                continue
            version = stored.get(entry["id"])
            if version is None:
                continue
            job = self.jobs.get(entry["id"])
            manifest = self._decide(job.id, version)
            job.finish(
                JobState.DONE,
                0,
                f"{outcome(manifest)}; completed by a later run (the job had stopped after "
                "storing its version)",
            )
            job.resume_path.unlink(missing_ok=True)
            if found is None and entry.get("label_set_hash") == label_hash:
                found = (job, manifest)
        return found

    def _report_settled(
        self, job: Job, progress: Progress, manifest: dict[str, Any]
    ) -> dict[str, Any]:
        """Report a job completed by this run without training (every rank returns it)."""
        progress.emit(
            ProgressEvent.RESUMED,
            job=job.id,
            version=manifest["version"],
            note=f"job {job.id} had already stored version {manifest['version']}: "
            "nothing to train, no new version",
        )
        self._report_done(job, progress, manifest)
        return manifest

    @staticmethod
    def _report_done(job: Job, progress: Progress, manifest: dict[str, Any]) -> None:
        gate = manifest.get("gate") or {}
        progress.done(
            version=manifest["version"],
            promoted=bool(manifest.get("promoted", False)),
            gate=gate.get("reason"),
            job=job.id,
            **(
                {"note": manifest["not_promoted_reason"]}
                if manifest.get("not_promoted_reason")
                else {}
            ),
        )

    def _run(
        self,
        job: Job,
        progress: Progress,
        labeled_rows: list[dict[str, Any]],
        held_out_rows: list[dict[str, Any]],
        resumed: bool,
    ) -> dict[str, Any]:
        """The job's steps in order; every rank runs this, rank 0 alone registers the version."""
        started = time.perf_counter()
        run = self._prepare(job, progress, labeled_rows, held_out_rows, resumed)
        self._anchor_set(run)  # with the parent's weights, before a resume point is loaded
        self._start_training(run)
        self._supervised_stage(run)
        reliable_info = self._semi_supervised(run)
        if not run.main:
            # Rank 0 validates and registers; the others wait for the version it made.
            return distributed.broadcast(None)
        metrics, gate = self._validate(run)
        self._finish_timings(run, started)
        return self._register(run, metrics, gate, reliable_info)

    def _register(
        self,
        run: JobRun,
        metrics: dict[str, Any],
        gate: dict[str, Any],
        reliable_info: dict[str, Any],
    ) -> dict[str, Any]:
        """Rank 0: store the new version, promote it if the gate passed, tell the other ranks."""
        config = self.config
        labels = {c: run.labels[c] for c in run.labeled_ids}
        manifest = {
            "parent": run.base_version,
            "label_set_hash": ModelVersions.label_set_hash(labels),
            "labels": labels,
            "held_out": run.held_out_ids,
            "mode": config.mode.value,
            "config": config.to_dict(),
            "seed": config.seed,
            "metrics": metrics,
            "schedule": {
                "iterations": run.iterations,
                "semi_iterations": run.semi_iterations,
                # What the steps' rule counted (FinetuneConfig.steps_for): the next fine-tune's
                # estimate starts from it (training/estimate.py).
                "patches_per_case": round(run.patches_per_case, 3),
            },
            "learning_curve": run.curve.to_dict(),
            "gate": gate,
            "promoted": False,
            "ssft": reliable_info,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "job": run.job.id,
            "resumed": run.resumed,
            "device": str(run.device),
            "world_size": distributed.world_size(),
            "preset": run.model.preset.name,
            "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        state = {k: v.detach().cpu() for k, v in run.model.network.state_dict().items()}
        # Storing and deciding the promotion: a cancel arriving now waits until both are done;
        # a kill in between is completed by the next run (see the module's description).
        with cancellation.critical():
            version = self.versions.add_version(state, manifest)
            syncpoints.reach("model-version-stored")
            manifest = self._decide(run.job.id, version)
            syncpoints.reach("promotion-committed")
        distributed.broadcast(manifest)
        self._report_done(run.job, run.progress, manifest)
        return manifest


def run_finetune(
    workspace: Workspace,
    config: FinetuneConfig,
    *,
    device: str = "auto",
    progress: Progress | None = None,
    argv: list[str] | None = None,
    restart: bool = False,
) -> dict[str, Any]:
    """Fine-tune the workspace's current model (see :class:`FinetuneJob`).

    Args:
        restart: start a new job even when a killed one with the same labels could resume.
    """
    return FinetuneJob(
        workspace, config, device=device, progress=progress, argv=argv, restart=restart
    ).run()

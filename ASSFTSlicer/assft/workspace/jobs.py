"""Background jobs of a workspace: one folder per job, detached launch, cancel (design.md).

::

    jobs/<job_id>/job.json        id, kind, argv, pid, state, times, exit code, message
    jobs/<job_id>/progress.jsonl  one JSON object per line, as the job reports progress
    jobs/<job_id>/log.txt         free-form log lines
    jobs/<job_id>/resume.pt       training state a killed job can be resumed from
    jobs/<job_id>/cancel-request  written by ``assft cancel``: the job stops at its next safe point
    jobs/detached-<time>.log      stdout and stderr of a job started with ``--detach``
    jobs/detached-<time>.config.json  the settings it was launched with (``--config``)

Job ids read ``<kind>-<UTC yyyymmddTHHMMSS>-<4 hex>``, e.g. ``finetune-20250131T120000-3fa2``.
The states a ``job.json`` can hold are :class:`JobState`.

A job writes its own final state. When its process is gone while ``job.json`` still says
``running`` (killed outright, out of memory, power loss), readers report it ``killed``; the
process's start time recorded next to its pid tells a reused pid from the job's own process.

Cancelling is a request, not a signal: :func:`cancel` writes the job's ``cancel-request`` file,
which the job polls at safe points (:mod:`assft.runtime.cancellation`), so it works on Windows
and when the job runs under a launcher that does not forward signals (``PythonSlicer``). Only a
job that has not stopped in time has its process tree ended (:mod:`assft.runtime.portable`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from assft.errors import EXIT_BAD_INPUT, AssftError, BadInputError
from assft.runtime import cancellation
from assft.runtime.job_state import FINAL_STATES, JOB_STATES, JobState
from assft.runtime.portable import (
    ProcessTree,
    process_alive,
    process_start_time,
    start_process,
    wait_for_exit,
)
from assft.workspace.files import (
    compact_timestamp,
    read_json_document,
    utc_now,
    write_json_atomic,
)
from assft.workspace.locks import running_job

if TYPE_CHECKING:
    from assft.workspace import Workspace

__all__ = [
    "DETACHED_ENV",
    "FINAL_STATES",
    "JOB_ID_PATTERN",
    "JOB_STATES",
    "Job",
    "JobState",
    "JobStore",
    "cancel",
    "finish",
    "launch_detached",
    "launch_detached_job",
    "mark_running",
    "process_alive",
    "process_start_time",
]


JOB_ID_PATTERN = re.compile(r"^[a-z]+-[0-9T]+-[0-9a-f]{4}$")
DETACHED_ENV = "ASSFT_DETACHED"
"""Set to ``1`` in the environment of a job started by :func:`launch_detached`."""

_KIND_PATTERN = re.compile(r"^[a-z]+$")
_JOB_FILE = "job.json"
_detached: list[subprocess.Popen[bytes]] = []  # keeps launched children reaped, not warned about


def _start_time(info: dict[str, Any]) -> float | None:
    """The recorded start time of the job's process (None: unknown, or an older record's
    clock ticks, which cannot be compared with :func:`process_start_time`)."""
    value = info.get("pid_start_time")
    return value if isinstance(value, float) else None


# one job -----------------------------------------------------------------------------------


class Job:
    """One background job's folder.

    Args:
        folder: ``jobs/<job_id>``.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.id = self.folder.name

    def __repr__(self) -> str:
        return f"Job({str(self.folder)!r})"

    @property
    def info_path(self) -> Path:
        """``job.json``."""
        return self.folder / _JOB_FILE

    @property
    def progress_path(self) -> Path:
        """``progress.jsonl``."""
        return self.folder / "progress.jsonl"

    @property
    def log_path(self) -> Path:
        """``log.txt``."""
        return self.folder / "log.txt"

    @property
    def resume_path(self) -> Path:
        """``resume.pt``: the state a killed training job can continue from."""
        return self.folder / "resume.pt"

    @property
    def cancel_request_path(self) -> Path:
        """``cancel-request``: exists once someone asked the job to stop."""
        return self.folder / "cancel-request"

    def request_cancel(self) -> None:
        """Ask the job to stop at its next safe point (it records ``cancelled`` itself)."""
        cancellation.request(self.cancel_request_path)

    def cancel_requested(self) -> bool:
        """Whether someone asked the job to stop."""
        return self.cancel_request_path.exists()

    def recorded(self) -> dict[str, Any]:
        """``job.json`` as written (the state not checked against the process).

        Raises:
            BadInputError: the file is missing or not a JSON object (it is named).
        """
        return read_json_document(
            self.info_path, "job file", missing="is missing: the job folder is incomplete"
        )

    def info(self) -> dict[str, Any]:
        """``job.json`` with the *resolved* state.

        A job recorded ``running`` whose process is gone (or whose pid now belongs to another
        process) is reported ``killed``, with ``recorded_state`` saying what the file says.
        """
        info = self.recorded()
        state = _resolve_state(info)
        if state != info.get("state"):
            info["recorded_state"] = info.get("state")
            info["state"] = state
        return info

    def update(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into ``job.json`` (rewritten atomically) and return it."""
        info = {**self.recorded(), **fields}
        write_json_atomic(self.info_path, info)
        return info

    def append_progress(self, event: dict[str, Any]) -> None:
        """Append one JSON line to ``progress.jsonl`` (flushed at once)."""
        with open(self.progress_path, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(event, default=str) + "\n")
            stream.flush()

    def progress(self) -> list[dict[str, Any]]:
        """The progress events so far (a half-written last line is skipped)."""
        events = []
        with contextlib.suppress(FileNotFoundError):
            for line in self.progress_path.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(ValueError):
                    events.append(json.loads(line))
        return events

    def last_progress(self) -> dict[str, Any] | None:
        """The newest complete progress event, read from the end of ``progress.jsonl``."""
        try:
            with open(self.progress_path, "rb") as stream:
                stream.seek(0, os.SEEK_END)
                stream.seek(max(0, stream.tell() - 16384))
                lines = stream.read().decode("utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return None
        for line in reversed(lines):
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    return event
        return None

    def log(self, line: str) -> None:
        """Append a time-stamped line to ``log.txt``."""
        with open(self.log_path, "a", encoding="utf-8") as stream:
            stream.write(f"{utc_now()} {line.rstrip()}\n")
            stream.flush()

    def mark_running(self) -> dict[str, Any]:
        """Record that this process runs the job: pid, its start time, host, state.

        From now on this process also stops at its next safe point
        (:func:`assft.runtime.cancellation.check`) once the job's cancel request arrives; a
        request left over from an earlier run of the job (one resumed) is removed first.
        """
        pid = os.getpid()
        self.cancel_request_path.unlink(missing_ok=True)
        cancellation.watch(self.cancel_request_path)
        return self.update(
            state=JobState.RUNNING,
            pid=pid,
            pid_start_time=process_start_time(pid),
            host=socket.gethostname(),
            started_at=utc_now(),
        )

    def finish(
        self, state: JobState | str, exit_code: int | None = None, message: str | None = None
    ) -> dict[str, Any]:
        """Record the job's final state (one of :data:`FINAL_STATES`)."""
        if state not in FINAL_STATES:
            finals = ", ".join(FINAL_STATES)
            raise ValueError(f"a finished job's state is one of {finals}, got {state!r}")
        cancellation.unwatch(self.cancel_request_path)
        return self.update(
            state=JobState(state), exit_code=exit_code, message=message, finished_at=utc_now()
        )


def mark_running(job: Job) -> dict[str, Any]:
    """Record that the calling process runs ``job`` (see :meth:`Job.mark_running`)."""
    return job.mark_running()


def finish(
    job: Job, state: JobState | str, exit_code: int | None = None, message: str | None = None
) -> dict[str, Any]:
    """Record ``job``'s final state (see :meth:`Job.finish`)."""
    return job.finish(state, exit_code, message)


def _resolve_state(info: dict[str, Any]) -> str:
    state = str(info.get("state") or JobState.QUEUED)
    if state != JobState.RUNNING:
        return state
    pid = info.get("pid")
    if not isinstance(pid, int):
        return state
    host = info.get("host")
    if host and host != socket.gethostname():  # shared storage: cannot look at that machine
        return state
    return JobState.RUNNING if process_alive(pid, _start_time(info)) else JobState.KILLED


# all jobs of a workspace -------------------------------------------------------------------


def _jobs_dir(workspace: Workspace | str | Path) -> Path:
    """The jobs folder of a workspace (an open one, or its root folder)."""
    if isinstance(workspace, (str, Path)):
        return Path(workspace) / "jobs"
    return Path(workspace.jobs_dir)


class JobStore:
    """The job folders of one workspace.

    Args:
        workspace: The open workspace (or its root folder).
    """

    def __init__(self, workspace: Workspace | str | Path) -> None:
        self.jobs_dir = _jobs_dir(workspace)

    def __repr__(self) -> str:
        return f"JobStore({str(self.jobs_dir)!r})"

    def create(self, kind: str, argv: list[str], **fields: Any) -> Job:
        """Create a new job folder in state ``queued``.

        Args:
            kind: Lower-case letters, e.g. ``"finetune"``, ``"rank"``.
            argv: The command line arguments (recorded, e.g. to rerun it).
            **fields: More to record in ``job.json``, e.g. ``label_set_hash``.

        Raises:
            BadInputError: a malformed kind.
        """
        if not isinstance(kind, str) or not _KIND_PATTERN.match(kind):
            raise BadInputError(f"{kind!r} is not a valid job kind (lower-case letters only)")
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        while True:
            job_id = f"{kind}-{stamp}-{secrets.token_hex(2)}"
            folder = self.jobs_dir / job_id
            try:
                folder.mkdir()
                break
            except FileExistsError:
                continue
        job = Job(folder)
        info = {
            "id": job_id,
            "kind": kind,
            "argv": [str(arg) for arg in argv],
            "created_at": utc_now(),
            "pid": None,
            "pid_start_time": None,
            "host": socket.gethostname(),
            "state": JobState.QUEUED,
            "started_at": None,
            "finished_at": None,
            "exit_code": None,
            "message": None,
            **fields,
        }
        write_json_atomic(job.info_path, info)
        return job

    def get(self, job_id: str) -> Job:
        """An existing job.

        Raises:
            BadInputError: a malformed id (e.g. ``../x``) or no such job.
        """
        if not isinstance(job_id, str) or not JOB_ID_PATTERN.match(job_id):
            raise BadInputError(f"{job_id!r} is not a job id (like finetune-20250131T120000-3fa2)")
        folder = self.jobs_dir / job_id
        if not (folder / _JOB_FILE).is_file():
            raise BadInputError(f"unknown job {job_id!r}", self.jobs_dir)
        return Job(folder)

    def jobs(self) -> list[Job]:
        """Every job folder, newest first."""
        if not self.jobs_dir.is_dir():
            return []
        found = [
            Job(path)
            for path in self.jobs_dir.iterdir()
            if JOB_ID_PATTERN.match(path.name) and (path / _JOB_FILE).is_file()
        ]
        return sorted(found, key=lambda job: (job.id.split("-")[1], job.id), reverse=True)

    def list(self) -> list[dict[str, Any]]:
        """Every job's information with its resolved state and ``last_progress``, newest first.

        A job whose ``job.json`` cannot be read is listed with state ``unknown`` and an
        ``error`` message.
        """
        entries = []
        for job in self.jobs():
            try:
                entries.append({**job.info(), "last_progress": job.last_progress()})
            except BadInputError as error:
                entries.append({"id": job.id, "state": JobState.UNKNOWN, "error": str(error)})
        entries.sort(
            key=lambda entry: (str(entry.get("created_at") or ""), entry["id"]), reverse=True
        )
        return entries

    def mark_running(self, job: Job) -> dict[str, Any]:
        """Record that the calling process runs ``job`` (see :meth:`Job.mark_running`)."""
        return job.mark_running()

    def finish(
        self,
        job: Job,
        state: JobState | str,
        exit_code: int | None = None,
        message: str | None = None,
    ) -> dict[str, Any]:
        """Record ``job``'s final state (see :meth:`Job.finish`)."""
        return job.finish(state, exit_code, message)

    def latest(
        self, kind: str | None = None, states: tuple[JobState | str, ...] | None = None
    ) -> Job | None:
        """The newest job of ``kind`` (any kind when None) whose resolved state is in ``states``."""
        for entry in self.list():
            if kind is not None and entry.get("kind") != kind:
                continue
            if states is not None and entry.get("state") not in states:
                continue
            return Job(self.jobs_dir / entry["id"])
        return None

    def running(self) -> Job | None:
        """The newest job whose process is still running."""
        return self.latest(states=(JobState.RUNNING,))

    def resumable(self, kind: str, label_set_hash: str) -> Job | None:
        """The newest killed job of ``kind`` with the same label set and a resume file.

        A job already resumed by another (``resumed_by`` in its ``job.json``) does not count.
        """
        for entry in self.list():
            if entry.get("kind") != kind or entry.get("state") != JobState.KILLED:
                continue
            if entry.get("label_set_hash") != label_set_hash or entry.get("resumed_by"):
                continue
            job = Job(self.jobs_dir / entry["id"])
            if job.resume_path.is_file():
                return job
        return None


# launching and cancelling ------------------------------------------------------------------


def launch_detached(
    workspace: Workspace | str | Path,
    argv: list[str],
    *,
    python: str | None = None,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Start ``python -m assft ARGV`` detached from this process.

    The child survives the shell (and Slicer) that started it: it has its own process group
    (and session on POSIX, no console on Windows), no stdin, and its output goes to
    ``jobs/detached-<time>.log``. It creates its own job folder; this function only launches it.
    It is cancelled through that job (:func:`cancel`), not through the cancel request file of
    whoever launched it, which it does not inherit.

    Args:
        workspace: The workspace (open, or its root folder) whose ``jobs/`` gets the output.
        argv: Arguments after ``assft``, e.g. ``["finetune", ws, "--progress", "json"]``.
        python: The interpreter (default: this one).
        config: Resolved settings for the command, written beside its output
            (``detached-<time>.config.json``) and passed as ``--config FILE``, not as text on
            the command line.

    Returns:
        ``{"pid": ..., "log": <output file>, "config": <settings file or None>, "argv": [...]}``.
    """
    jobs_dir = _jobs_dir(workspace)
    jobs_dir.mkdir(parents=True, exist_ok=True)
    stem = f"detached-{compact_timestamp()}"
    log_path = jobs_dir / f"{stem}.log"
    config_path = None if config is None else jobs_dir / f"{stem}.config.json"
    if config_path is not None:
        write_json_atomic(config_path, config)
        argv = [*argv, "--config", str(config_path)]
    command = [python or sys.executable, "-m", "assft", *[str(arg) for arg in argv]]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", DETACHED_ENV: "1"}
    env.pop(cancellation.CANCEL_FILE_ENV, None)  # the launcher's cancel is not the job's
    engine_root = str(Path(__file__).resolve().parents[2])  # found even if not installed
    env["PYTHONPATH"] = os.pathsep.join(
        part for part in (engine_root, os.environ.get("PYTHONPATH", "")) if part
    )
    with open(log_path, "ab") as output:
        process = start_process(
            command,
            detach=True,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            close_fds=True,
        )
    _detached[:] = [child for child in _detached if child.poll() is None]
    _detached.append(process)
    return {
        "pid": process.pid,
        "log": str(log_path),
        "config": None if config_path is None else str(config_path),
        "argv": command[3:],
    }


_JOB_WORDS = {"finetune": "fine-tuning"}


def launch_detached_job(
    workspace: Workspace | str | Path,
    argv: list[str],
    *,
    config: dict[str, Any] | None = None,
    python: str | None = None,
) -> dict[str, Any]:
    """Start ``assft ARGV --progress json`` as a background job (:func:`launch_detached`) and
    return once it runs as a job, or has stopped before it could.

    Raises:
        BadInputError: a running job holds the workspace lock (nothing is started).
        AssftError: the process ended before it started a job; the last line of its output says
            why.

    Returns:
        :func:`launch_detached`'s ``{"pid", "log", "argv"}`` and ``"job"``: the job's id, or None
        while the process is still starting.
    """
    jobs_dir = _jobs_dir(workspace)
    running = running_job(jobs_dir)
    if running:
        raise BadInputError(
            f"workspace {jobs_dir.parent} is locked by a running job (pid {running.get('pid')}, "
            f"{running.get('description', '')})"
        )
    launched = launch_detached(
        workspace, [*argv, "--progress", "json"], python=python, config=config
    )
    launched["job"] = job_of_process(workspace, launched["pid"])
    if launched["job"] is None and not process_alive(launched["pid"]):
        log = Path(launched["log"])
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.is_file() else []
        why = tail[0].removeprefix("assft: error: ") if tail else "no output"
        word = _JOB_WORDS.get(argv[0], argv[0])
        stopped = f"the background {word} stopped before it started a job"
        if launched["config"]:  # its settings: needed by no one now
            Path(launched["config"]).unlink(missing_ok=True)
        if _exit_code(launched["pid"]) == EXIT_BAD_INPUT:
            # Refused as bad input (a damaged current model, say): said in its own words, and
            # nothing is left in jobs/, as a refusal in the foreground leaves nothing.
            log.unlink(missing_ok=True)
            raise BadInputError(f"{stopped}: {why}")
        raise AssftError(f"{stopped}: {why} (log: {log})")
    return launched


def _exit_code(pid: int) -> int | None:
    """The exit code of a detached child this process started and that has ended (None when it
    is not one of them or still runs)."""
    for child in _detached:
        if child.pid == pid:
            with contextlib.suppress(subprocess.TimeoutExpired):
                return child.wait(timeout=5)
    return None


def job_of_process(
    workspace: Workspace | str | Path, pid: int, *, timeout: float = 120.0, poll: float = 0.2
) -> str | None:
    """The id of the job that process ``pid`` runs, once it has marked itself running.

    A detached engine process imports its libraries, takes the workspace lock and only then
    picks its job (a new one, or the killed one it resumes), so the launcher cannot know the id
    in advance; it waits here. None when the process ends first or ``timeout`` passes (tell
    them apart with :func:`process_alive`).
    """
    store = JobStore(workspace)
    deadline = time.monotonic() + timeout
    while True:
        for job in store.jobs():
            with contextlib.suppress(BadInputError):  # a job.json being written
                if job.recorded().get("pid") == pid:
                    return job.id
        if not process_alive(pid) or time.monotonic() > deadline:
            return None
        time.sleep(poll)


def cancel(
    workspace: Workspace | str | Path,
    job_id: str | None = None,
    *,
    timeout: float = 30.0,
    grace: float = 5.0,
) -> dict[str, Any]:
    """Stop a running job: ask it to, and end its process tree if it has not stopped in time.

    The request is the job's ``cancel-request`` file. The job polls it at safe points (every
    training step, every case), stops there with exit code 3, records ``cancelled`` and changes
    nothing, however it was started (a launcher that does not forward signals, Windows). A job
    that has not stopped within ``timeout`` seconds has its process tree ended
    (:meth:`assft.runtime.portable.ProcessTree.end`: terminate, then kill after ``grace``) and is
    recorded ``cancelled`` here; so is one that ended without recording its state.

    Args:
        workspace: The workspace (open, or its root folder).
        job_id: The job; None for the newest running one.
        timeout: Seconds to wait for the job to stop by itself.
        grace: Seconds between terminating and killing processes that did not stop in time.

    Returns:
        The job's final information.

    Raises:
        BadInputError: unknown job, the job is not running, or no job is running; or a job of
            another machine (shared storage) did not stop in time: its processes cannot be ended
            from here.
    """
    store = JobStore(workspace)
    if job_id is None:
        job = store.running()
        if job is None:
            raise BadInputError("no job is running", store.jobs_dir)
    else:
        job = store.get(job_id)
    info = job.info()
    if info["state"] != JobState.RUNNING:
        raise BadInputError(f"job {job.id} is not running (state {info['state']})")
    host = info.get("host")
    if host and host != socket.gethostname():  # its pid means nothing on this machine
        job.request_cancel()
        deadline = time.monotonic() + timeout
        while job.recorded().get("state") == JobState.RUNNING:
            if time.monotonic() >= deadline:
                raise BadInputError(
                    f"job {job.id} runs on {host}: it was asked to stop but has not within "
                    f"{timeout:g} s; end it there"
                )
            time.sleep(0.2)
        return job.info()
    pid = int(info["pid"])
    start_time = _start_time(info)
    tree = ProcessTree(pid, start_time)  # listed now: helpers are re-parented once it ends
    job.request_cancel()
    stopped = wait_for_exit(pid, start_time, timeout)
    tree.refresh()
    tree.end(grace)  # what is left: the job itself if it did not stop, helpers it left behind
    recorded = job.recorded()
    if recorded.get("state") == JobState.RUNNING:
        message = (
            "ended without recording its state"
            if stopped
            else f"did not stop within {timeout:g} s of the cancel request: killed"
        )
        job.finish(JobState.CANCELLED, None, f"cancelled: {message}")
    return job.info()

"""Job folders, killed and resumable jobs, cancel and detached launch, with real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from assft.errors import BadInputError
from assft.workspace import jobs
from assft.workspace.jobs import JobStore, cancel, finish, launch_detached, mark_running

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups")

_CHILD_PRELUDE = """
import signal, sys, time
from assft.workspace.jobs import JobStore, finish, mark_running
job = JobStore(sys.argv[1]).get(sys.argv[2])
"""
_SLEEP = """
mark_running(job)
print("ready", flush=True)
time.sleep(60)
"""
# A job as the engine runs one: it polls cancellation.check() at safe points.
_POLL = """
from assft.errors import CancelledError
from assft.runtime import cancellation
mark_running(job)
print("ready", flush=True)
try:
    for _ in range(1200):
        cancellation.check()
        time.sleep(0.05)
except CancelledError as error:
    finish(job, "cancelled", 3, str(error))
    sys.exit(3)
"""


def _start_child(
    root: Path, job_id: str, body: str = "", run: str = _SLEEP
) -> subprocess.Popen[str]:
    """Run a job in a child process (own process group) and wait until it is running."""
    script = textwrap.dedent(_CHILD_PRELUDE) + textwrap.dedent(body) + textwrap.dedent(run)
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(root), job_id],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    return child


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A workspace root: JobStore and cancel only need its jobs/ folder."""
    (tmp_path / "ws" / "jobs").mkdir(parents=True)
    return tmp_path / "ws"


def test_create_list_get(root):
    store = JobStore(root)
    first = store.create("rank", ["rank", str(root)])
    time.sleep(0.01)
    second = store.create("finetune", ["finetune", str(root)], label_set_hash="abc")
    assert jobs.JOB_ID_PATTERN.match(first.id) and second.id.startswith("finetune-")
    info = store.get(second.id).info()
    assert info["state"] == "queued" and info["argv"] == ["finetune", str(root)]
    assert info["label_set_hash"] == "abc" and info["pid"] is None
    assert [entry["id"] for entry in store.list()] == [second.id, first.id]

    second.append_progress({"event": "progress", "done": 1})
    second.append_progress({"event": "done"})
    second.log("started")
    assert [event["event"] for event in second.progress()] == ["progress", "done"]
    with open(second.progress_path, "a") as stream:
        stream.write('{"event": "progr')  # a line being written is not read
    assert store.list()[0]["last_progress"] == {"event": "done"}
    assert store.list()[1]["last_progress"] is None
    assert second.log_path.read_text().strip().endswith("started")

    store.mark_running(second)
    running = second.info()
    assert running["state"] == "running" and running["pid"] == os.getpid()
    assert store.latest("finetune", states=("running",)).id == second.id
    store.finish(second, "done", 0, "ok")
    info = second.info()
    assert (info["state"], info["exit_code"], info["message"]) == ("done", 0, "ok")
    assert info["finished_at"] is not None
    assert store.latest("finetune", states=("running",)) is None
    assert store.latest(states=("queued",)).id == first.id


@pytest.mark.parametrize(
    "bad", ["../x", "finetune-20250101T000000-zzzz", "Finetune-20250101T000000-abcd", "", "a/b"]
)
def test_invalid_job_ids_are_refused(root, bad):
    with pytest.raises(BadInputError, match="is not a job id"):
        JobStore(root).get(bad)


def test_unknown_job_and_kind_are_refused(root):
    store = JobStore(root)
    with pytest.raises(BadInputError, match="unknown job"):
        store.get("finetune-20250101T000000-abcd")
    with pytest.raises(BadInputError, match="not a valid job kind"):
        store.create("../x", [])


def test_a_killed_job_shows_as_killed_and_can_be_resumed(root):
    store = JobStore(root)
    job = store.create("finetune", ["finetune"], label_set_hash="abc")
    child = _start_child(root, job.id)
    assert job.info()["state"] == "running"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)

    info = job.info()
    assert info["state"] == "killed" and info["recorded_state"] == "running"
    assert store.list()[0]["state"] == "killed"
    assert store.resumable("finetune", "abc") is None  # no resume file yet
    job.resume_path.write_bytes(b"state")
    assert store.resumable("finetune", "abc").id == job.id
    assert store.resumable("finetune", "other labels") is None
    assert store.resumable("rank", "abc") is None
    job.update(resumed_by="finetune-20990101T000000-0000")
    assert store.resumable("finetune", "abc") is None


def test_a_reused_pid_does_not_count_as_the_job(root):
    job = JobStore(root).create("finetune", [])
    mark_running(job)
    assert job.info()["state"] == "running"
    recorded = job.recorded()["pid_start_time"]
    if recorded is None:
        pytest.skip("no /proc: only pid existence can be checked")
    job.update(pid_start_time=recorded + 1)  # same pid, another process start
    assert job.info()["state"] == "killed"


def test_cancel_is_a_request_the_job_stops_on_by_itself(root):
    job = JobStore(root).create("finetune", [])
    child = _start_child(root, job.id, run=_POLL)
    assert not job.cancel_requested()
    started = time.monotonic()
    info = cancel(root, timeout=30)  # the running job, found without its id
    assert time.monotonic() - started < 10  # it stopped by itself, long before the timeout
    assert child.wait(timeout=10) == 3
    assert job.cancel_requested()
    assert info["id"] == job.id and info["state"] == jobs.JobState.CANCELLED
    assert info["exit_code"] == 3 and info["message"] == "cancelled by request"

    with pytest.raises(BadInputError, match=f"job {job.id} is not running \\(state cancelled\\)"):
        cancel(root, job.id)
    with pytest.raises(BadInputError, match="no job is running"):
        cancel(root)


def test_a_job_that_does_not_poll_is_terminated_after_the_timeout(root):
    """No request polling: after the timeout SIGTERM reaches it, and its handler still runs."""
    job = JobStore(root).create("finetune", [])
    handler = """
    def stop(signum, frame):
        finish(job, "cancelled", 3, "cancelled by SIGTERM")
        sys.exit(3)
    signal.signal(signal.SIGTERM, stop)
    """
    child = _start_child(root, job.id, handler)
    start = time.monotonic()
    info = cancel(root, job.id, timeout=0.5, grace=10)
    assert 0.5 <= time.monotonic() - start < 10
    assert child.wait(timeout=10) == 3
    assert info["state"] == "cancelled" and info["message"] == "cancelled by SIGTERM"


def test_cancel_kills_a_job_that_ignores_the_request_and_sigterm(root):
    job = JobStore(root).create("finetune", [])
    child = _start_child(root, job.id, "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n")
    start = time.monotonic()
    info = cancel(root, job.id, timeout=1, grace=0.5)
    assert time.monotonic() - start >= 1.5
    assert child.wait(timeout=10) == -signal.SIGKILL
    assert info["state"] == "cancelled" and "killed" in info["message"]
    assert info["exit_code"] is None


def test_a_job_of_another_machine_is_only_asked_to_stop(root):
    """Shared storage: the recorded pid is another machine's; nothing here is signalled."""
    job = JobStore(root).create("finetune", [])
    mark_running(job)  # this process's pid, recorded as if on another host
    job.update(host="another-machine")
    try:
        with pytest.raises(BadInputError, match="runs on another-machine: it was asked to stop"):
            cancel(root, job.id, timeout=0.3)
        assert job.cancel_requested() and job.info()["state"] == "running"
    finally:
        finish(job, "cancelled", 3)  # and this process stops watching the request


def test_cancel_refuses_a_finished_job(root):
    job = JobStore(root).create("rank", [])
    finish(job, "done", 0)
    with pytest.raises(BadInputError, match=f"job {job.id} is not running \\(state done\\)"):
        cancel(root, job.id)


def test_launch_detached_runs_in_its_own_session(tmp_path, tiny_preset_file):
    from assft.workspace.creation import create_workspace

    array = np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "scan.nii.gz"))
    workspace = create_workspace(
        tmp_path / "ws", [tmp_path / "scan.nii.gz"], model=str(tiny_preset_file)
    )

    launched = launch_detached(workspace, ["status", str(workspace.root), "--json"])
    pid = launched["pid"]
    assert os.getsid(pid) == pid and os.getpgid(pid) == pid  # alive or not yet reaped
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    output = Path(launched["log"])
    assert output.parent == workspace.jobs_dir and output.name.startswith("detached-")
    assert json.loads(output.read_text())["model_version"] == "v0"

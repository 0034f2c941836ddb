"""Tests of the job lock: one holder across processes, freed when the holder dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from assft.errors import WorkspaceLockedError
from assft.workspace import Workspace

HOLDER = textwrap.dedent(
    """
    import sys, time
    from assft.workspace import Workspace
    workspace = Workspace.open(sys.argv[1])
    with workspace.job_lock(description="finetune"):
        print("locked", flush=True)
        time.sleep(60)
    """
)


def _start_holder(workspace: Workspace) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(workspace.root)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "locked"
    return process


def test_lock_in_one_process(workspace: Workspace) -> None:
    assert workspace.running_job() is None
    with workspace.job_lock(description="rank") as info:
        assert info["pid"] == os.getpid()
        job = workspace.running_job()
        assert job is not None and job["pid"] == os.getpid() and job["description"] == "rank"
        assert (
            json.loads((workspace.jobs_dir / "workspace.json").read_text())["description"] == "rank"
        )
        with (
            pytest.raises(WorkspaceLockedError, match="is locked by a running job"),
            workspace.job_lock(),
        ):
            pass  # pragma: no cover
        with workspace.job_lock("predict"):  # another lock name is independent
            assert workspace.running_job("predict") is not None
    assert workspace.running_job() is None
    assert not (workspace.jobs_dir / "workspace.json").exists()


def test_second_process_is_refused_until_the_holder_is_killed(workspace: Workspace) -> None:
    holder = _start_holder(workspace)
    try:
        with pytest.raises(WorkspaceLockedError) as caught, workspace.job_lock(description="rank"):
            pass  # pragma: no cover
        message = str(caught.value)
        expected = f"workspace {workspace.root} is locked by a running job (pid {holder.pid}, "
        assert expected + "finetune, started " in message
        assert caught.value.exit_code == 2
        job = workspace.running_job()
        assert job is not None and job["pid"] == holder.pid
        assert workspace.status_summary()["running_job"]["pid"] == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        assert holder.stdout is not None
        holder.stdout.close()
    # the killed holder left its json behind; it is not a lock
    assert (workspace.jobs_dir / "workspace.json").exists()
    assert workspace.running_job() is None
    with workspace.job_lock(description="rank") as info:
        assert info["pid"] == os.getpid()
    assert workspace.running_job() is None


def test_lock_waits_out_a_running_job_probe(workspace: Workspace) -> None:
    started = time.monotonic()
    for _ in range(20):
        assert workspace.running_job() is None
        with workspace.job_lock():
            pass
    assert time.monotonic() - started < 5

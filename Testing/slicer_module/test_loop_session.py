"""The loop's control flow, once for both front ends (issue 22, "one loop for both front ends"):
:class:`ASSFTSlicerLib.session.LoopSession` on plain Python, over the real Logic and real engine
processes (a detached fine-tuning job of the tiny preset)."""

from __future__ import annotations

import sys
import time

import pytest

from assft_testing.slicer_side import require_slicer
from assft_testing.workspaces import tiny_workspace

slicer = require_slicer()

import ASSFTSlicer  # noqa: E402
from ASSFTSlicerLib.session import UNREADABLE, JobUpdate, LoopSession  # noqa: E402

QUICK = {"iterations": 4, "semi_iterations": 4, "views": 1, "mode": "none"}


@pytest.fixture
def workspace(tmp_path, synthetic_pool, tiny_preset_file):
    """Three synthetic cases with the tiny preset, one labeled."""
    return tiny_workspace(tmp_path, synthetic_pool[1][:3], tiny_preset_file, labeled=1)


def _session() -> LoopSession:
    return LoopSession(ASSFTSlicer.ASSFTSlicerLogic(python=sys.executable, launcher="thread"))


def _follow_to_the_end(session: LoopSession, workspace, rankAgain: bool) -> list[JobUpdate]:
    """Poll the followed job as a front end's timer does, until it has ended."""
    updates: list[JobUpdate] = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        command = session.logic.tasks.jobCommand
        if command is not None:
            command.drain()  # the launch's output (thread mode), as the web page's poll does
        if session.launchedJob:  # launched: a pid and a log
            updates.append(session.pollJob(workspace.root, rankAgain))
            if not updates[-1].active:
                return updates
        time.sleep(0.5)
    raise AssertionError(f"the job did not end: {updates[-3:]}")


def test_a_launched_job_is_followed_to_its_promotion_and_says_to_rank_again(workspace):
    session = _session()
    assert not session.followsJob
    launched = []
    session.launchFinetune(
        workspace.root,
        onLaunched=lambda result, problem: launched.append(problem),
        device="cpu",
        config=QUICK,
    )
    assert session.followsJob  # Cancel from now on, while the launch starts
    updates = _follow_to_the_end(session, workspace, rankAgain=True)
    assert launched == [""]
    last = updates[-1]
    assert last.state == "done" and last.error == "" and last.rankAgain
    assert "v1" in last.text and not session.followsJob
    assert all(u.active for u in updates[:-1])
    assert workspace.current_model_version() == "v1"


def test_a_promotion_ranks_again_only_in_the_workspace_the_front_end_still_shows(
    workspace, tmp_path
):
    from assft.workspace import Workspace

    other = Workspace.create(
        tmp_path / "other", [tmp_path / "images"], label_names={1: "a"}, user="tester"
    )
    session = _session()
    session.launchFinetune(workspace.root, device="cpu", config=QUICK)
    session.logic.tasks.jobCommand.wait(timeout=120)
    assert session.launchedJob.get("pid")
    deadline = time.monotonic() + 240
    update = session.pollJob(other.root, rankAgain=True)  # the panel now shows another one
    while update.active and time.monotonic() < deadline:
        time.sleep(0.5)
        update = session.pollJob(other.root, rankAgain=True)
    assert update.state == "done" and not update.rankAgain
    assert workspace.current_model_version() == "v1"  # promoted in its own workspace


def test_a_launch_that_fails_is_said_once_and_nothing_is_followed(workspace):
    session = _session()
    problems = []
    # A recipe the engine refuses: the launch command ends with its one-line error.
    session.launchFinetune(
        workspace.root,
        onLaunched=lambda result, problem: problems.append(problem),
        device="cpu",
        config={**QUICK, "batch_size": 0},
    )
    session.logic.tasks.jobCommand.wait(timeout=120)
    assert len(problems) == 1 and "batch_size" in problems[0]
    assert not session.followsJob


def test_a_job_that_ends_failed_gives_its_error_and_no_ranking(workspace):
    from assft.workspace.jobs import JobStore

    session = _session()
    job = JobStore(workspace).create("finetune", ["finetune"])
    job.mark_running()  # this process plays a job started before the front end opened
    assert session.followRunningJob(workspace.root) and session.followsJob
    assert not session.followRunningJob(workspace.root)  # already followed
    running = session.pollJob(workspace.root, rankAgain=True)
    assert running.active and running.text.startswith("Fine-tuning")
    job.finish("failed", 1, "out of memory")
    ended = session.pollJob(workspace.root, rankAgain=True)
    assert not ended.active and ended.state == "failed" and not ended.rankAgain
    assert "out of memory" in ended.error and not session.followsJob


def test_a_change_made_elsewhere_is_seen_once_and_not_while_a_task_runs(workspace):
    session = _session()
    session.markRead(workspace.root)
    assert not session.changedElsewhere(workspace.root)
    case = workspace.registry.cases(status="unlabeled")[0]["case_id"]
    workspace.skip(case)  # another program skips a case
    assert session.changedElsewhere(workspace.root)
    session.markRead(workspace.root)  # the front end read it again
    assert not session.changedElsewhere(workspace.root)
    # A workspace the front end could not read is read again at the next look.
    session.markUnreadable()
    assert session.mark == UNREADABLE and session.changedElsewhere(workspace.root)
    # No workspace in the field: nothing to look at.
    assert not session.changedElsewhere(workspace.root / "missing")


def test_progress_in_percent():
    assert JobUpdate("x", done=3, total=12).percent == pytest.approx(25.0)
    assert JobUpdate("x").percent is None

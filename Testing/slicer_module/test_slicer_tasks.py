"""The task state machine behind the panel (ASSFTSlicerLib/tasks.py, driven through the Logic):
one foreground task, a ranking that waits for it, the fine-tuning job's commands kept apart,
and a synchronous stop when Slicer closes. Real processes: toy scripts for the state machine,
the engine for the Logic."""

from __future__ import annotations

import shutil
import sys
import textwrap
import time
from pathlib import Path

import pytest

from assft_testing.slicer_side import MODULE_DIR, require_slicer

slicer = require_slicer()

import ASSFTSlicer  # noqa: E402
from ASSFTSlicerLib.process import BackgroundProcess, engineEnvironment, processIsAlive  # noqa: E402
from ASSFTSlicerLib.tasks import TaskKind, Tasks, TaskStart  # noqa: E402


def _logic():
    return ASSFTSlicer.ASSFTSlicerLogic(python=sys.executable, launcher="thread")


def _waiting_script(tmp_path: Path, name: str) -> Path:
    """A process that reports once, then runs until its cancel request (or 60 s)."""
    path = tmp_path / f"{name}.py"
    path.write_text(
        textwrap.dedent(
            """
            import json, os, sys, time
            from pathlib import Path
            request = Path(os.environ["ASSFT_CANCEL_FILE"])
            event = {"event": "progress", "phase": "x", "done": 0, "total": 1}
            print(json.dumps(event), flush=True)
            end = time.monotonic() + (float(sys.argv[1]) if len(sys.argv) > 1 else 60)
            while time.monotonic() < end:
                if request.exists():
                    sys.exit(3)
                time.sleep(0.02)
            print(json.dumps({"event": "done"}), flush=True)
            """
        ),
        encoding="utf-8",
    )
    return path


def _starter(script: Path, *args: str):
    def start(onFinished):
        return BackgroundProcess(
            [sys.executable, str(script), *args], onFinished=onFinished, launcher="thread"
        ).start()

    return start


def _drain_until(condition, processes, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        for process in processes():
            if process is not None:
                process.drain()
        time.sleep(0.02)


def test_one_foreground_task_at_a_time_and_cancel_stops_only_that_task(tmp_path):
    script = _waiting_script(tmp_path, "task")
    changes, results = [], {}
    tasks = Tasks(onChanged=lambda: changes.append((tasks.kind, tasks.busy)))

    predict = tasks.run(TaskKind.PREDICT, _starter(script), lambda r: results.update(predict=r))
    assert tasks.isRunning(TaskKind.PREDICT) and changes[-1] == (TaskKind.PREDICT, True)
    with pytest.raises(ValueError, match=r"Another task is running \(predicting\)"):
        tasks.run(TaskKind.RANK, _starter(script))
    # The fine-tuning job's command runs beside it and is not the current task.
    command = tasks.runJobCommand(_starter(script, "0.3"), lambda r: results.update(job=r))
    assert tasks.current is predict and tasks.jobCommand is command
    with pytest.raises(ValueError, match="fine-tuning command"):
        tasks.runJobCommand(_starter(script))
    _drain_until(lambda: "job" in results, lambda: [command])
    assert results["job"].ok and tasks.jobCommand is None
    assert predict.isRunning(), "the job's command ended the foreground task"

    assert tasks.cancel() is True
    _drain_until(lambda: "predict" in results, lambda: [predict])
    assert results["predict"].cancelled and not tasks.busy and tasks.kind is None
    assert tasks.cancel() is False and changes[-1] == (None, False)


def test_a_ranking_asked_for_while_a_task_runs_waits_for_it(tmp_path):
    script = _waiting_script(tmp_path, "task")
    order = []
    errors = []
    tasks = Tasks(onDeferredError=lambda kind, error: errors.append((kind, str(error))))
    predict = tasks.run(
        TaskKind.PREDICT,
        _starter(script, "0.5"),
        # The caller hears of the end with the task already over, before the next one starts.
        lambda r: order.append(("predicted", r.ok, tasks.busy)),
    )
    assert (
        tasks.runWhenFree(TaskKind.RANK, _starter(script, "0.1"), lambda r: order.append("old"))
        is TaskStart.DEFERRED
    )
    assert (
        tasks.runWhenFree(
            TaskKind.RANK, _starter(script, "0.1"), lambda r: order.append(("ranked", r.ok))
        )
        is TaskStart.DEFERRED
    )
    assert tasks.isPending(TaskKind.RANK) and len(tasks.pending) == 1  # the newest request
    assert tasks.isRunning(TaskKind.PREDICT) and "Then: ranking." in tasks.describe()

    _drain_until(lambda: order, lambda: [predict])
    assert order == [("predicted", True, False)]
    assert tasks.isRunning(TaskKind.RANK) and not tasks.pending
    _drain_until(lambda: len(order) == 2, lambda: [tasks.current])
    assert order[1] == ("ranked", True) and not tasks.busy

    # With nothing running it starts at once; a deferred task that cannot start is reported.
    assert tasks.runWhenFree(TaskKind.RANK, _starter(script, "5")) is TaskStart.STARTED
    tasks.runWhenFree(TaskKind.PREDICT, lambda done: (_ for _ in ()).throw(ValueError("no")))
    running = tasks.current
    tasks.cancel()  # a cancelled task hands over to the waiting one as well
    _drain_until(lambda: errors, lambda: [running])
    assert errors == [(TaskKind.PREDICT, "no")] and not tasks.busy


@pytest.fixture
def tiny_workspace(tmp_path, synthetic_pool, tiny_preset_file):
    from assft.workspace import Workspace

    _, cases = synthetic_pool
    images = tmp_path / "images"
    images.mkdir()
    for case in cases[:3]:
        shutil.copy(case.image, images / case.image.name)
    return Workspace.create(
        tmp_path / "ws",
        [images],
        label_names={1: "shell", 2: "core"},
        model=str(tiny_preset_file),
        user="tester",
    )


def test_the_ranking_after_a_promotion_waits_for_a_running_prediction(mrml, tiny_workspace):
    """The automatic re-rank used to press the Rank/Cancel toggle: it cancelled the prediction
    and ranked nothing."""
    workspace = tiny_workspace
    logic = _logic()
    predicted, ranked = [], []
    predict = logic.runPredict(workspace.root, "case_000", "cpu", onFinished=predicted.append)
    assert logic.tasks.isRunning(TaskKind.PREDICT)
    with pytest.raises(ValueError, match="Another task is running"):
        logic.runRank(workspace.root, 1, "attsq", "cpu")
    assert (
        logic.rankWhenFree(workspace.root, 1, "attsq", "cpu", onFinished=ranked.append)
        is TaskStart.DEFERRED
    )

    predict.wait(timeout=300)
    assert predicted[0].ok and not predicted[0].cancelled, predicted[0].errorMessage
    assert logic.predictionFiles(workspace.root, "case_000")[0] is not None
    assert logic.tasks.isRunning(TaskKind.RANK) and logic.tasks.current is not predict
    logic.tasks.current.wait(timeout=300)
    assert ranked[0].ok, ranked[0].errorMessage
    assert workspace.latest_ranking() is not None and not logic.tasks.busy


def _fake_finetune_job(tmp_path: Path, workspace) -> BackgroundProcess:
    """A process that plays a running fine-tuning job and stops at its cancel request."""
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, time
            from assft.runtime import cancellation
            from assft.workspace.jobs import JobStore
            job = JobStore(sys.argv[1]).create("finetune", ["finetune"])
            job.mark_running()
            print("running", flush=True)
            while True:
                try:
                    cancellation.check()
                except BaseException:
                    job.finish("cancelled", 3, "cancelled by request")
                    sys.exit(3)
                time.sleep(0.05)
            """
        ),
        encoding="utf-8",
    )
    process = BackgroundProcess(
        [sys.executable, str(script), str(workspace.root)],
        environment=engineEnvironment(MODULE_DIR),
        launcher="thread",
    ).start()
    _drain_until(lambda: "running" in process._output, lambda: [process], timeout=60)
    return process


def test_cancelling_fine_tuning_leaves_the_running_task_alone(mrml, tiny_workspace, tmp_path):
    """ "Cancel fine-tuning" used to become the current task: Cancel then stopped the wrong
    process."""
    workspace = tiny_workspace
    logic = _logic()
    job = _fake_finetune_job(tmp_path, workspace)
    script = _waiting_script(tmp_path, "task")
    predict = logic.tasks.run(TaskKind.PREDICT, _starter(script))
    cancelled = []
    command = logic.cancelFinetuneJob(workspace.root, onFinished=cancelled.append)
    assert command is not None and logic.tasks.jobCommand is command
    assert logic.tasks.current is predict
    command.wait(timeout=120)
    assert cancelled[0].ok, cancelled[0].errorMessage
    assert job.wait(timeout=30).returnCode == 3
    assert logic.finetuneJob(workspace.root)["state"] == "cancelled"
    assert predict.isRunning() and logic.tasks.isRunning(TaskKind.PREDICT)
    assert logic.cancelFinetuneJob(workspace.root) is None  # no job runs now
    logic.cancelTask()
    assert predict.wait(timeout=30).cancelled


def test_closing_stops_a_running_ranking_before_it_returns(mrml, tiny_workspace):
    """cleanup() calls Logic.shutdown(): the engine must be gone and the workspace lock free when
    it returns, with no help from a background thread."""
    import threading

    workspace = tiny_workspace
    logic = _logic()
    finished = []
    rank = logic.runRank(workspace.root, 1, "attsq", "cpu", onFinished=finished.append)
    deadline = time.monotonic() + 120
    while workspace.running_job() is None:  # the engine holds the workspace lock
        assert time.monotonic() < deadline and rank.isRunning(), "the ranking never started"
        rank.drain()
        time.sleep(0.05)
    threads = threading.active_count()

    stopped = logic.shutdown(grace=10.0)

    assert stopped == [rank] and not logic.tasks.busy
    assert not processIsAlive(rank.pid), "the engine process outlived cleanup()"
    assert workspace.running_job() is None, "the workspace lock is still held"
    assert threading.active_count() <= threads, "the stop relied on a new thread"
    rank.drain()
    assert finished == [], "callbacks ran into a panel that is going away"
    assert workspace.latest_ranking() is None

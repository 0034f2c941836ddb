"""The background-process helper against real subprocesses (no Qt, no MRML needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from assft_testing import signal_blind_launcher, slicer_side
from ASSFTSlicerLib.process import (
    BackgroundProcess,
    ProcessResult,
    descendantProcessIds,
    engineEnvironment,
    parseProgressLine,
    processIsAlive,
)

ENGINE_ROOT = slicer_side.MODULE_DIR


def _script(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return [sys.executable, str(path)]


def test_progress_lines_are_parsed_and_everything_else_is_log(tmp_path):
    args = _script(
        tmp_path,
        """
        import json, sys, time
        print("loading the model")
        for i in range(3):
            event = {"event": "progress", "phase": "ranking", "done": i, "total": 3, "eta_s": 3 - i}
            print(json.dumps(event), flush=True)
            time.sleep(0.05)
        print("a warning", file=sys.stderr, flush=True)
        print('{"not": "an event"}')
        done = {"event": "done", "file": "ranking-0001.json", "selected": ["a", "b"]}
        print(json.dumps(done), flush=True)
    """,
    )
    events, lines, finished = [], [], []
    process = BackgroundProcess(
        args,
        name="toy",
        onProgress=events.append,
        onLog=lines.append,
        onFinished=finished.append,
        launcher="thread",
    ).start()
    result = process.wait(timeout=30)

    assert result.ok and result.returnCode == 0 and not result.cancelled
    assert [e["event"] for e in events] == ["progress"] * 3 + ["done"]
    assert [e["done"] for e in events[:3]] == [0, 1, 2]
    assert process.lastProgress["done"] == 2
    assert result.doneEvent == {
        "event": "done",
        "file": "ranking-0001.json",
        "selected": ["a", "b"],
    }
    assert lines == ["loading the model", "a warning", '{"not": "an event"}']
    assert finished == [result] and not process.isRunning()


def test_a_crash_is_reported_with_its_message(tmp_path):
    args = _script(
        tmp_path,
        """
        import json
        event = {"event": "progress", "phase": "ranking", "done": 0, "total": 2}
        print(json.dumps(event), flush=True)
        raise RuntimeError("CUDA out of memory")
    """,
    )
    result = BackgroundProcess(args, launcher="thread").start().wait(timeout=30)
    assert not result.ok and result.returnCode == 1 and not result.cancelled
    assert "RuntimeError: CUDA out of memory" in result.errorMessage


def test_the_engines_error_event_and_exit_code_are_reported(tmp_path):
    env = engineEnvironment(ENGINE_ROOT)
    process = BackgroundProcess(
        [sys.executable, "-m", "assft", "rank", str(tmp_path / "nowhere"), "--progress", "json"],
        environment=env,
        launcher="thread",
    ).start()
    result = process.wait(timeout=120)
    assert result.returnCode == 2 and not result.ok
    assert (
        "does not exist" in result.errorMessage and str(tmp_path / "nowhere") in result.errorMessage
    )
    assert result.events[-1]["event"] == "error"


def test_a_json_document_is_read_from_the_output(tmp_path):
    args = _script(
        tmp_path,
        """
        import json, sys
        print("assft: warning: something", file=sys.stderr)
        print(json.dumps({"detached": True, "pid": 123, "log": "x.log"}, indent=2))
    """,
    )
    result = BackgroundProcess(args, launcher="thread").start().wait(timeout=30)
    assert result.jsonDocument() == {"detached": True, "pid": 123, "log": "x.log"}
    with pytest.raises(ValueError):
        ProcessResult(0, output=["no json here"]).jsonDocument()


def _tree_script(tmp_path: Path, ignore_term: bool, own_session: bool) -> list[str]:
    return _script(
        tmp_path,
        f"""
        import json, os, signal, subprocess, sys, time
        if {ignore_term}:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"],
            start_new_session={own_session})
        event = {{"event": "progress", "phase": "training", "done": 0, "total": 10}}
        print(json.dumps({{**event, "child": child.pid}}), flush=True)
        time.sleep(600)
    """,
    )


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
@pytest.mark.parametrize(
    "ignore_term,own_session",
    [(False, False), (True, False), (False, True)],
    ids=["terminates", "ignores-sigterm", "grandchild-in-own-session"],
)
def test_cancel_ends_the_whole_process_tree(tmp_path, ignore_term, own_session):
    finished = []
    process = BackgroundProcess(
        _tree_script(tmp_path, ignore_term, own_session),
        onFinished=finished.append,
        launcher="thread",
    ).start()
    deadline = time.monotonic() + 30
    while process.lastProgress is None:
        assert time.monotonic() < deadline, "the job never reported"
        process.drain()
        time.sleep(0.02)
    child = process.lastProgress["child"]
    assert processIsAlive(child) and child in [pid for pid, _ in descendantProcessIds(process.pid)]

    started = time.monotonic()
    process.cancel(grace=1.0)  # returns at once: the GUI never waits for the kill
    assert time.monotonic() - started < 0.5
    result = process.wait(timeout=30)

    assert result.cancelled and not result.ok and finished == [result]
    assert not processIsAlive(process.pid)
    deadline = time.monotonic() + 5
    while processIsAlive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not processIsAlive(child), "the grandchild survived the cancel"


def test_cancel_asks_the_process_to_stop_through_its_request_file(tmp_path):
    """The process finds its cancel request (ASSFT_CANCEL_FILE) and exits by itself (code 3)."""
    args = _script(
        tmp_path,
        """
        import json, os, sys, time
        from pathlib import Path
        request = Path(os.environ["ASSFT_CANCEL_FILE"])
        print(json.dumps({"event": "progress", "phase": "x", "done": 0, "total": 1}), flush=True)
        while not request.exists():
            time.sleep(0.02)
        error = {"event": "error", "message": "cancelled by request", "cancelled": True}
        print(json.dumps(error), flush=True)
        sys.exit(3)
    """,
    )
    process = BackgroundProcess(args, launcher="thread").start()
    assert not process.cancelFile.exists()
    while process.lastProgress is None:
        process.drain()
        time.sleep(0.02)
    started = time.monotonic()
    process.cancel(grace=60.0, wait=True)
    result = process.wait(timeout=10)
    assert time.monotonic() - started < 30  # it stopped by itself, long before the grace period
    assert (
        result.cancelled
        and result.returnCode == 3
        and result.errorMessage == "cancelled by request"
    )
    assert not process.cancelFile.exists()  # removed once it ended


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_a_process_that_ignores_the_request_still_gets_sigterm(tmp_path):
    """After the grace period the tree is terminated: a SIGTERM-aware process still exits
    cleanly."""
    args = _script(
        tmp_path,
        """
        import json, signal, sys, time
        def stop(*_):
            error = {"event": "error", "message": "cancelled by SIGTERM", "cancelled": True}
            print(json.dumps(error), flush=True)
            sys.exit(3)
        signal.signal(signal.SIGTERM, stop)
        print(json.dumps({"event": "progress", "phase": "x", "done": 0, "total": 1}), flush=True)
        time.sleep(600)
    """,
    )
    process = BackgroundProcess(args, launcher="thread").start()
    while process.lastProgress is None:
        process.drain()
        time.sleep(0.02)
    process.cancel(grace=0.5, wait=True)
    result = process.wait(timeout=10)
    assert (
        result.cancelled
        and result.returnCode == 3
        and result.errorMessage == "cancelled by SIGTERM"
    )


@pytest.mark.skipif(os.name == "nt", reason="the launcher ignores SIGTERM, a POSIX signal")
def test_cancel_reaches_the_engine_under_a_launcher_that_forwards_no_signal(
    tmp_path, synthetic_pool, tiny_preset_file
):
    """As ``PythonSlicer -m assft rank`` in Slicer: the engine, the launcher's child, stops by
    itself."""
    from assft.workspace import Workspace

    data, _ = synthetic_pool
    workspace = Workspace.create(
        tmp_path / "ws",
        [data / "images"],
        label_names={1: "shell", 2: "core"},
        model=str(tiny_preset_file),
        user="tester",
    )
    command = [
        *signal_blind_launcher(tmp_path),
        sys.executable,
        "-m",
        "assft",
        "rank",
        str(workspace.root),
        "--budget",
        "2",
        "--views",
        "1",
        "--device",
        "cpu",
        "--progress",
        "json",
    ]
    process = BackgroundProcess(
        command, environment=engineEnvironment(ENGINE_ROOT), launcher="thread"
    ).start()
    started = time.monotonic()
    # At once: the engine is still loading and finds the request at its first safe point.
    process.cancel(grace=90.0)
    result = process.wait(timeout=150)
    assert time.monotonic() - started < 90  # not ended after the grace period
    assert result.cancelled and result.returnCode == 3  # the engine's own exit code, relayed
    assert result.events[-1] == {
        "event": "error",
        "message": "cancelled by request",
        "cancelled": True,
    }
    assert workspace.latest_ranking() is None and workspace.running_job() is None


def test_the_slicer_launcher_path_reports_through_the_same_callbacks(tmp_path):
    """With Slicer >= 5.12, launchConsoleProcess(blocking=False) reads the output and calls back."""
    calls = {}

    def fake_launch(
        args,
        updateEnvironment=None,
        cwd=None,
        blocking=True,
        logCallback=None,
        completedCallback=None,
    ):
        calls.update(blocking=blocking, environment=updateEnvironment)
        proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(updateEnvironment or {})},
        )

        def read():
            for line in proc.stdout:
                logCallback(line.rstrip())
            proc.wait()
            completedCallback(proc.returncode)

        threading.Thread(target=read, daemon=True).start()
        return proc

    args = _script(
        tmp_path,
        """
        import json, os
        unbuffered = os.environ.get("PYTHONUNBUFFERED")
        event = {"event": "progress", "phase": "p", "done": 1, "total": 1, "unbuffered": unbuffered}
        print(json.dumps(event))
        print(json.dumps({"event": "done"}))
    """,
    )
    events = []
    process = BackgroundProcess(
        args,
        environment=engineEnvironment(ENGINE_ROOT),
        onProgress=events.append,
        launcher=fake_launch,
    ).start()
    result = process.wait(timeout=30)
    assert process.mode == "slicer" and calls["blocking"] is False
    assert calls["environment"]["PYTHONPATH"].split(os.pathsep)[0] == str(ENGINE_ROOT)
    assert (
        result.ok
        and [e["event"] for e in events] == ["progress", "done"]
        and events[0]["unbuffered"] == "1"
    )


def test_parse_progress_line():
    assert parseProgressLine('{"event": "progress", "done": 1}') == {"event": "progress", "done": 1}
    assert parseProgressLine("  " + json.dumps({"event": "done"}) + "\n") == {"event": "done"}
    for line in ("text", "{", '{"event": 3}', "[1, 2]", '{"no": "event"}', "{broken json}"):
        assert parseProgressLine(line) is None


def test_a_process_is_started_once_and_waiting_can_time_out(tmp_path):
    process = BackgroundProcess(
        _script(tmp_path, "import time; time.sleep(30)"), launcher="thread"
    ).start()
    with pytest.raises(RuntimeError, match="already started"):
        process.start()
    with pytest.raises(TimeoutError):
        process.wait(timeout=0.2)
    process.cancel(grace=0.5, wait=True)
    assert process.wait(timeout=10).cancelled

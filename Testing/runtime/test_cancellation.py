"""Cancellation at safe points: request files, SIGTERM, critical sections, never swallowed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from assft.errors import EXIT_CANCELLED, CancelledError
from assft.runtime import cancellation
from assft.runtime.progress import Progress


def test_a_request_file_stops_the_work_at_the_next_safe_point(tmp_path: Path, monkeypatch) -> None:
    request = tmp_path / "cancel"
    monkeypatch.setenv(cancellation.CANCEL_FILE_ENV, str(request))
    cancellation.check()  # no request yet
    progress = Progress("none")
    progress.phase("ranking", 3)
    cancellation.request(request)
    assert cancellation.requested() == "request"
    with pytest.raises(CancelledError, match="cancelled by request") as stopped:
        progress.update(1)  # every progress update is a safe point
    assert stopped.value.exit_code == EXIT_CANCELLED == 3


def test_no_except_exception_swallows_a_cancel(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(cancellation.CANCEL_FILE_ENV, str(tmp_path / "cancel"))
    cancellation.request(tmp_path / "cancel")
    swallowed = False
    with pytest.raises(CancelledError):
        try:
            cancellation.check()
        except Exception:  # noqa: BLE001 - what a library's optional_import does
            swallowed = True
    assert not swallowed


def test_a_critical_section_completes_and_the_next_safe_point_stops(tmp_path: Path) -> None:
    request = tmp_path / "jobs" / "cancel-request"
    cancellation.watch(request)
    try:
        cancellation.check()
        cancellation.request(request)
        with cancellation.critical():
            cancellation.check()  # deferred: a version being saved is saved whole
            completed = True
        assert completed
        with pytest.raises(CancelledError):
            cancellation.check()
    finally:
        cancellation.unwatch(request)
    cancellation.check()  # no longer watched


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_sigterm_is_noted_and_raised_at_the_next_safe_point() -> None:
    script = textwrap.dedent(
        """
        import os, signal, time
        from assft.errors import CancelledError
        from assft.runtime import cancellation
        cancellation.install()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)
        print("not interrupted", flush=True)
        with cancellation.critical():
            cancellation.check()
            print("critical section completed", flush=True)
        try:
            try:
                cancellation.check()
            except Exception:
                print("swallowed", flush=True)
        except CancelledError as error:
            print(error, flush=True)
            raise SystemExit(error.exit_code)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 3, result.stderr
    assert result.stdout.splitlines() == [
        "not interrupted",
        "critical section completed",
        "cancelled by SIGTERM",
    ]


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_ctrl_c_stops_at_once_outside_critical_sections() -> None:
    script = textwrap.dedent(
        """
        import os, signal, time
        from assft.runtime import cancellation
        # As in a terminal: a shell's background job ('&') inherits SIGINT ignored.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        cancellation.install()
        with cancellation.critical():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
            print("critical section completed", flush=True)
        print(cancellation.requested(), flush=True)
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    lines = result.stdout.splitlines()
    assert lines == ["critical section completed", "SIGINT", "interrupted"], result.stderr


def test_a_cancel_is_answered_between_the_windows_of_one_case(tmp_path, monkeypatch) -> None:
    """A preset may make one case's sliding window long (small windows, a large overlap): the
    re-attack of issue 21 saw a ranking ignore SIGTERM for 45 s inside one case."""
    import torch

    from assft.datasets.synthetic import TINY_PRESET
    from assft.models import load_model
    from assft.models.inference import sliding_window_probabilities
    from assft.models.model_preset import ModelPreset

    model = load_model(ModelPreset.from_dict({**TINY_PRESET, "overlap": 0.9}))
    image = torch.randn(1, 24, 24, 24)
    assert sliding_window_probabilities(model, image).shape == (3, 24, 24, 24)
    request = tmp_path / "cancel"
    monkeypatch.setenv(cancellation.CANCEL_FILE_ENV, str(request))
    cancellation.request(request)
    with pytest.raises(CancelledError):
        sliding_window_probabilities(model, image)


def test_pretrain_foundation_refuses_a_folder_inside_a_workspace_before_any_work(tmp_path):
    from assft.workspace.config import CONFIG_FILE_NAME
    from assft_testing import run_cli

    (tmp_path / "ws" / "models").mkdir(parents=True)
    (tmp_path / "ws" / CONFIG_FILE_NAME).write_text("{}")
    result = run_cli("pretrain-foundation", "--out", str(tmp_path / "ws" / "models"))
    assert result.returncode == 2 and "lies inside the workspace" in result.stderr
    assert list((tmp_path / "ws" / "models").iterdir()) == []

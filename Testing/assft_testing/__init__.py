"""The one test-helper package: running the CLI and torchrun, a launcher like PythonSlicer, and
the shared test data.

Submodules: :mod:`.workspaces` (tiny volumes, labels, snapshots), :mod:`.models` (tiny presets
and networks), :mod:`.slicer_side` (the module folder on ``sys.path``, scans for MRML tests),
:mod:`.pickles` (a torch file that would run code if loaded unsafely).
Fixtures are in ``Testing/conftest.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

_SIGNAL_BLIND_LAUNCHER = textwrap.dedent(
    """
    import signal, subprocess, sys

    child = subprocess.Popen(sys.argv[1:])
    # Set after the start: the child keeps the default handlers.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(child.wait())
    """
)


def signal_blind_launcher(folder: Path) -> list[str]:
    """The command prefix of a launcher that behaves like ``PythonSlicer``.

    It starts the rest of its command line as a child, relays the child's exit code, forwards no
    signal to it and ignores SIGTERM (and Ctrl-C) itself.

    Args:
        folder: Where the launcher script is written.

    Returns:
        ``[python, script]``: put the real command after it.
    """
    script = Path(folder) / "signal_blind_launcher.py"
    script.write_text(_SIGNAL_BLIND_LAUNCHER, encoding="utf-8")
    return [sys.executable, str(script)]


def pause_env(point: str, folder: Path) -> dict[str, str]:
    """Environment that makes an engine process pause at synchronisation point ``point``
    (:mod:`assft.runtime.syncpoints`), signalling through files in ``folder``."""
    return {"ASSFT_TEST_PAUSE_AT": point, "ASSFT_TEST_PAUSE_DIR": str(folder)}


def wait_until_paused(
    process: subprocess.Popen, folder: Path, point: str, timeout: float = 180.0
) -> None:
    """Wait until ``process`` has reached ``point`` and waits there (see :func:`pause_env`)."""
    import time

    deadline = time.monotonic() + timeout
    while not (Path(folder) / f"{point}.reached").exists():
        if process.poll() is not None:
            raise AssertionError(f"the process ended ({process.returncode}) before {point}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the process did not reach {point} within {timeout:g} s")
        time.sleep(0.05)


def let_go(folder: Path, point: str) -> None:
    """Let a process paused at ``point`` go on."""
    (Path(folder) / f"{point}.continue").write_text("go\n", encoding="utf-8")


def run_cli(
    *args: str, check: bool = False, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -m assft`` in a real subprocess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    result = subprocess.run(
        [sys.executable, "-m", "assft", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"assft {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result


def stop_process(process: subprocess.Popen, timeout: float = 10) -> None:
    """Terminate a server the tests started, killing it when it does not stop in time."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_cli_in_process(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    """Run ``assft.cli.main`` in this process, as :func:`run_cli` would run it in a new one.

    For the long tables of refused values: each subprocess start costs about a second of
    imports, and the exit code and the stderr line come from the same ``main``. Signal handlers
    and the warnings hook that ``main`` sets are put back afterwards. Keep at least one
    :func:`run_cli` call beside each table, so the real entry point is still checked.
    """
    import contextlib
    import io
    import signal
    import warnings

    from assft import cli

    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    showwarning = warnings.showwarning
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(list(args))
            except SystemExit as stop:  # argparse's own refusals
                code = stop.code if isinstance(stop.code, int) else 2
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
        warnings.showwarning = showwarning
    result = subprocess.CompletedProcess(["assft", *args], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"assft {' '.join(args)} exited {code}: {result.stderr}")
    return result


def torchrun(*args: str, processes: int = 2, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``torchrun --standalone`` with ``processes`` CPU ranks (one thread each); ``args`` name
    what to run (``-m assft ...`` or a script)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(processes),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"},
    )


def template_installed() -> bool:
    """Whether the MNI152 template files of nilearn's wheel can be found."""
    from assft.apps import mni_template
    from assft.errors import BadInputError

    try:
        mni_template.locate_template()
    except BadInputError:
        return False
    return True


def skip_without_template():
    """Skip a test that builds sample data when the template is not installed (CI installs it)."""
    import pytest

    from assft.apps.mni_template import NILEARN_VERSION

    return pytest.mark.skipif(
        not template_installed(),
        reason=f'the MNI152 template is not installed (pip install "assft[demo]" or '
        f"pip install --no-deps nilearn=={NILEARN_VERSION})",
    )

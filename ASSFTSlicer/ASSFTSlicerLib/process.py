"""Background processes that never block Slicer's GUI.

Ranking, prediction and fine-tuning run as ``PythonSlicer -m assft ...`` processes that print
one JSON object per line (``{"event": "progress", ...}`` then ``{"event": "done" | "error", ...}``).
A :class:`BackgroundProcess` starts one, hands every progress event and log line to callbacks on
the thread that drains it (Slicer's main thread), reports how it ended, and on cancel asks the
engine to stop (a request file named in ``ASSFT_CANCEL_FILE``: ``PythonSlicer`` forwards no
signal to the interpreter it starts, and Windows has none to send), then ends the whole process
tree if it has not stopped in time.

Two ways to read the output, chosen when the process starts:

- ``slicer``: ``slicer.util.launchConsoleProcess(..., blocking=False, logCallback=...,
  completedCallback=...)`` (Slicer 5.12 and later) reads it with its own thread and QTimer.
- ``thread``: this module's own process (in a process group of its own), a reader thread that
  queues lines, and :meth:`drain`, called by a QTimer when Qt is there, or by :meth:`wait` / the
  caller otherwise (tests).

Nothing here imports Qt at module level: the core is tested in plain Python. Operating-system
calls (process trees, process groups) go through the engine's :mod:`assft.runtime.portable`,
imported when first needed: it needs ``psutil``, which may not be installed yet when the module
loads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Both import only the standard library: the module loads before the engine's dependencies are.
from assft.runtime.cancellation import CANCEL_FILE_ENV
from assft.runtime.cancellation import request as requestCancel
from assft.runtime.progress import ProgressEvent

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_CANCELLED",
    "BackgroundProcess",
    "ProcessResult",
    "descendantProcessIds",
    "engineEnvironment",
    "parseProgressLine",
    "processIsAlive",
    "pythonExecutable",
    "terminateProcessTree",
]

EXIT_BAD_INPUT = 2
EXIT_CANCELLED = 3
_OUTPUT_LINES_KEPT = 2000
_TERMINATE_GRACE_S = 5.0  # after a cancel request was ignored: terminate, then kill this much later


def parseProgressLine(line: str) -> dict[str, Any] | None:
    """The JSON event on a line of engine output, or None for any other line.

    Args:
        line: One line of the process's output (stdout and stderr may be merged).

    Returns:
        The event (a dict with a string ``"event"``), or None for log text, warnings and
        lines of a multi-line JSON document.
    """
    text = line.strip()
    if not (text.startswith("{") and text.endswith("}")):
        return None
    try:
        event = json.loads(text)
    except ValueError:
        return None
    if isinstance(event, dict) and isinstance(event.get("event"), str):  # a ProgressEvent
        return event
    return None


def pythonExecutable() -> str:
    """The interpreter that runs ``-m assft``: ``PythonSlicer`` inside Slicer, else this one.

    Inside Slicer, ``sys.executable`` is the application itself; ``PythonSlicer`` is the
    launcher that runs Slicer's Python with Slicer's environment.
    """
    try:
        import slicer

        inSlicer = hasattr(slicer, "app")
    except ImportError:
        inSlicer = False
    if inSlicer:
        found = shutil.which("PythonSlicer")
        if found:
            return found
        raise RuntimeError(
            "PythonSlicer was not found next to Slicer: the installation is incomplete"
        )
    return sys.executable


def engineEnvironment(
    engineRoot: str | Path, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """Environment additions for an engine process.

    ``engineRoot`` (the folder that holds the ``assft`` package) goes first on ``PYTHONPATH``
    so ``-m assft`` works whether or not the engine is pip-installed, and output is unbuffered
    so progress arrives line by line.
    """
    parts = [str(engineRoot)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    environment = {
        "PYTHONPATH": os.pathsep.join(dict.fromkeys(parts)),
        "PYTHONUNBUFFERED": "1",
        "PYTHONIOENCODING": "utf-8",
    }
    environment.update(extra or {})
    return environment


# Process trees ------------------------------------------------------------------------------


def descendantProcessIds(pid: int) -> list[tuple[int, str]]:
    """Every process below ``pid`` (children, grandchildren...), with a start marker each."""
    from assft.runtime import portable

    below = portable.ProcessTree(pid).pids[1:]
    return [(child, str(portable.process_start_time(child))) for child in below]


def processIsAlive(pid: int) -> bool:
    """Whether a process with this id runs (a zombie does not count)."""
    from assft.runtime import portable

    return portable.process_alive(pid)


def terminateProcessTree(
    process: subprocess.Popen,
    grace: float = 10.0,
    cancelFile: str | Path | None = None,
) -> None:
    """End a process and everything it started, as gently as it allows.

    With ``cancelFile`` (the path the process got in ``ASSFT_CANCEL_FILE``) the request is written
    first and the process has ``grace`` seconds to stop by itself: the engine stops at its next
    safe point, releases its workspace lock and exits with code 3, through launchers that do not
    forward signals and on Windows. Whatever of the tree still runs then is terminated (SIGTERM
    on POSIX), and killed a few seconds later. Without ``cancelFile`` it is terminated at once
    and killed after ``grace`` seconds. The tree is listed before anything ends: children whose
    parent has ended are re-parented and could no longer be found.

    Args:
        process: The process started by this module or by ``launchConsoleProcess``.
        grace: Seconds to wait for a clean exit.
        cancelFile: The process's cancel request file.
    """
    from assft.runtime import portable

    tree = portable.ProcessTree(process.pid)
    if cancelFile is not None:
        if process.poll() is None:
            requestCancel(cancelFile)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=grace)
        tree.refresh()
        tree.end(min(grace, _TERMINATE_GRACE_S))
    else:
        tree.end(grace)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


# Results ---------------------------------------------------------------------------------------


@dataclass
class ProcessResult:
    """How a background process ended.

    Attributes:
        returnCode: The exit status (negative: killed by that signal).
        cancelled: Whether :meth:`BackgroundProcess.cancel` was called.
        events: Every JSON event the process printed, in order.
        output: The other lines (log text, warnings, a ``--json`` document), the last
            few thousand.
        seconds: Wall time from start to end.
    """

    returnCode: int | None
    cancelled: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)
    output: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Ended with exit status 0 and was not cancelled."""
        return self.returnCode == 0 and not self.cancelled

    @property
    def doneEvent(self) -> dict[str, Any] | None:
        """The last ``done`` event, if any."""
        done = (e for e in reversed(self.events) if e.get("event") == ProgressEvent.DONE)
        return next(done, None)

    @property
    def errorMessage(self) -> str:
        """Why it failed: the engine's ``error`` event, else the last lines of its output."""
        for event in reversed(self.events):
            if event.get("event") == ProgressEvent.ERROR and event.get("message"):
                return str(event["message"])
        lines = [line for line in self.output if line.strip()]
        if not lines:
            return f"exit code {self.returnCode}, no output"
        errors = [line for line in lines if "error" in line.lower()]
        return (errors[-1] if errors else lines[-1]).strip()

    def jsonDocument(self) -> Any:
        """The JSON document a ``--json`` command printed (possibly over several lines).

        Raises:
            ValueError: no parsable document in the output.
        """
        lines = self.output
        starts = [i for i, line in enumerate(lines) if line.startswith(("{", "["))]
        for start in starts:
            for end in range(len(lines), start, -1):
                with contextlib.suppress(ValueError):
                    return json.loads("\n".join(lines[start:end]))
        raise ValueError("the process printed no JSON document")


# The runner ------------------------------------------------------------------------------------

ProgressCallback = Callable[[dict[str, Any]], None]
LogCallback = Callable[[str], None]
FinishedCallback = Callable[[ProcessResult], None]


def _qtAvailable() -> bool:
    try:
        import qt  # noqa: F401
    except ImportError:
        return False
    return True


def _slicerLauncher() -> Callable[..., subprocess.Popen] | None:
    """``slicer.util.launchConsoleProcess`` when it can read output without blocking."""
    if not _qtAvailable():
        return None
    try:
        import inspect

        import slicer.util
    except ImportError:
        return None
    launcher = getattr(slicer.util, "launchConsoleProcess", None)
    if launcher is None:
        return None
    parameters = inspect.signature(launcher).parameters
    if not {"blocking", "logCallback", "completedCallback"} <= set(parameters):
        return None
    return launcher


def _startupEnvironment() -> dict[str, str]:
    """Slicer's environment at startup (clean for PythonSlicer), else this process's."""
    try:
        import slicer.util

        if hasattr(slicer, "app"):
            return dict(slicer.util.startupEnvironment())
    except (ImportError, AttributeError):
        pass
    return dict(os.environ)


class BackgroundProcess:
    """One engine command running in the background.

    Args:
        args: The command line, e.g. ``[python, "-m", "assft", "rank", ws, "--progress", "json"]``.
        name: A short description for messages (``"ranking"``).
        environment: Variables added to the environment (see :func:`engineEnvironment`).
        cwd: Working folder.
        onProgress: Called with each JSON event (``progress``, ``done``, ``error``...).
        onLog: Called with each other output line.
        onFinished: Called once with the :class:`ProcessResult`, after every line.
        launcher: ``"auto"`` (``slicer`` where available, else ``thread``), ``"thread"``,
            ``"slicer"``, or a callable with the signature of ``launchConsoleProcess``.

    All callbacks run on the thread that drains the process: Slicer's main thread in the
    application, the caller of :meth:`wait` elsewhere.

    The process gets ``ASSFT_CANCEL_FILE`` (:attr:`cancelFile`, a fresh path that does not exist
    yet) in its environment; :meth:`cancel` creates that file.
    """

    POLL_INTERVAL_MS = 100

    def __init__(
        self,
        args: Iterable[str],
        *,
        name: str = "",
        environment: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        onProgress: ProgressCallback | None = None,
        onLog: LogCallback | None = None,
        onFinished: FinishedCallback | None = None,
        launcher: str | Callable[..., subprocess.Popen] = "auto",
    ) -> None:
        self.args = [str(a) for a in args]
        self.name = name or (self.args[3] if len(self.args) > 3 else Path(self.args[0]).name)
        self.cancelFile = Path(tempfile.gettempdir()) / f"assft-cancel-{uuid.uuid4().hex}"
        self.environment = {**(environment or {}), CANCEL_FILE_ENV: str(self.cancelFile)}
        self.cwd = None if cwd is None else str(cwd)
        self.onProgress = onProgress
        self.onLog = onLog
        self.onFinished = onFinished
        self._launcherChoice = launcher
        self.mode = ""
        self.process: subprocess.Popen | None = None
        self.result: ProcessResult | None = None
        self.lastProgress: dict[str, Any] | None = None
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._events: list[dict[str, Any]] = []
        self._output: list[str] = []
        self._cancelRequested = False
        self._started = 0.0
        self._finishedReturnCode: int | None = None
        self._killer: threading.Thread | None = None

    def __repr__(self) -> str:
        state = "finished" if self.result else ("running" if self.process else "not started")
        return f"BackgroundProcess({self.name!r}, {state})"

    # starting ----------------------------------------------------------------------------

    def start(self) -> BackgroundProcess:
        """Start the process and begin reading its output; returns at once.

        Raises:
            RuntimeError: already started.
            OSError: the executable cannot be run.
        """
        if self.process is not None:
            raise RuntimeError(f"{self.name} was already started")
        self._started = time.monotonic()
        launcher = self._launcherChoice
        if launcher == "auto":
            launcher = _slicerLauncher() or "thread"
        elif launcher == "slicer":
            launcher = _slicerLauncher()
            if launcher is None:
                raise RuntimeError(
                    "slicer.util.launchConsoleProcess(blocking=False) is not available"
                )
        if callable(launcher):
            self.mode = "slicer"
            self.process = launcher(
                self.args,
                updateEnvironment=self.environment,
                cwd=self.cwd,
                blocking=False,
                logCallback=self._handleLine,
                completedCallback=self._handleCompleted,
            )
        else:
            self.mode = "thread"
            self._startThreadMode()
        logging.debug("started %s (pid %s): %s", self.name, self.pid, " ".join(self.args))
        return self

    def _startThreadMode(self) -> None:
        from assft.runtime.portable import start_process

        environment = _startupEnvironment()
        environment.update(self.environment)
        self.process = start_process(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=environment,
            cwd=self.cwd,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
        )
        reader = threading.Thread(
            target=self._readOutput, name=f"assft-{self.name}-reader", daemon=True
        )
        reader.start()
        if _qtAvailable():
            self._schedulePoll()

    def _readOutput(self) -> None:
        process = self.process
        assert process is not None and process.stdout is not None
        for line in process.stdout:
            self._queue.put(("line", line.rstrip("\r\n")))
        process.wait()
        self._queue.put(("done", process.returncode))

    def _schedulePoll(self) -> None:
        import qt

        qt.QTimer.singleShot(self.POLL_INTERVAL_MS, self._poll)

    def _poll(self) -> None:
        if self.drain():
            self._schedulePoll()

    # output ------------------------------------------------------------------------------

    def _handleLine(self, line: str) -> None:
        event = parseProgressLine(line)
        if event is None:
            self._output.append(line)
            del self._output[:-_OUTPUT_LINES_KEPT]
            if self.onLog:
                self.onLog(line)
            return
        self._events.append(event)
        if event.get("event") == ProgressEvent.PROGRESS:
            self.lastProgress = event
            del self._events[:-_OUTPUT_LINES_KEPT]
        if self.onProgress:
            self.onProgress(event)

    def _handleCompleted(self, returnCode: int) -> None:
        if self.result is not None:
            return
        self.cancelFile.unlink(missing_ok=True)
        self.result = ProcessResult(
            returnCode=returnCode,
            cancelled=self._cancelRequested,
            events=list(self._events),
            output=list(self._output),
            seconds=time.monotonic() - self._started,
        )
        if self.result.ok:
            logging.info("%s finished in %.1f s", self.name, self.result.seconds)
        elif self.result.cancelled:
            logging.info("%s was cancelled", self.name)
        else:
            logging.error(
                "%s failed (exit code %s): %s", self.name, returnCode, self.result.errorMessage
            )
        if self.onFinished:
            self.onFinished(self.result)

    def drain(self) -> bool:
        """Hand queued output to the callbacks (thread mode); returns whether it still runs."""
        while True:
            try:
                kind, value = self._queue.get_nowait()
            except queue.Empty:
                break
            if kind == "line":
                self._handleLine(value)
            else:
                self._handleCompleted(value)
        return self.result is None

    # state -------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The process id, once started."""
        return None if self.process is None else self.process.pid

    def isRunning(self) -> bool:
        """Started and not yet reported finished."""
        return self.process is not None and self.result is None

    @property
    def cancelRequested(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancelRequested

    def wait(self, timeout: float | None = None) -> ProcessResult:
        """Block until the process has finished and every callback has run.

        Inside Slicer, Qt events are processed meanwhile (the self-test uses this).

        Raises:
            TimeoutError: still running after ``timeout`` seconds (it is left running).
        """
        if self.process is None:
            raise RuntimeError(f"{self.name} was not started")
        deadline = None if timeout is None else time.monotonic() + timeout
        processEvents = None
        if _qtAvailable():  # the callbacks of both modes arrive through Qt's event loop
            import qt

            processEvents = qt.QApplication.processEvents
        while self.result is None:
            if processEvents is not None:
                processEvents()
            if self.mode == "thread":
                self.drain()
            if self.result is not None:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} still runs after {timeout:g} s")
            time.sleep(0.02)
        return self.result

    def cancel(self, grace: float = 10.0, wait: bool = False) -> None:
        """Ask the engine to stop, and end its whole tree if it has not within ``grace`` seconds.

        The request is :attr:`cancelFile`; the engine stops at its next safe point with exit
        code 3 (see :func:`terminateProcessTree`). Without ``wait`` it returns at once and a
        thread does the rest (the GUI never waits); :attr:`result` (and ``onFinished``) then tell
        that it was cancelled. With ``wait`` everything happens in the calling thread before it
        returns, relying on no other thread: what a closing application needs, where a
        background thread may never run again.
        """
        if self.process is None or self.result is not None:
            return
        self._cancelRequested = True
        if wait:
            self._stop(grace)
            return
        if self._killer is not None and self._killer.is_alive():
            return
        self._killer = threading.Thread(
            target=self._stop,
            args=(grace,),
            name=f"assft-{self.name}-cancel",
            daemon=True,
        )
        self._killer.start()

    def _stop(self, grace: float) -> None:
        """The cancel itself: on its own thread, or in the caller's with ``cancel(wait=True)``."""
        assert self.process is not None
        try:
            terminateProcessTree(self.process, grace, self.cancelFile)
        finally:
            self.cancelFile.unlink(missing_ok=True)

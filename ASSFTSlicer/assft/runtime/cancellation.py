"""Cancelling long work at safe points, without ever leaving it half-committed.

A cancel arrives as

- a request file. ``assft cancel`` writes ``jobs/<id>/cancel-request`` (the process that runs
  the job watches it: :func:`watch`), and each engine process the Slicer module starts is told
  the path of its own in :data:`CANCEL_FILE_ENV`. Files work where signals do not: on Windows,
  and through launchers such as ``PythonSlicer``, which starts the interpreter as a child and
  does not forward signals to it;
- SIGTERM (POSIX): the handler only notes it;
- Ctrl-C: ``KeyboardInterrupt`` at once, as Python does, except inside a critical section, where
  it is noted like SIGTERM.

Long work calls :func:`check` at safe points: every training step, every layer of a network
being trained (:func:`check_inside_layers`: a step of 64 patches of 64^3 takes about 20 s on a
CPU), and every progress update (:meth:`assft.runtime.progress.Progress.update`), so every case of
a ranking or a prediction.
``check`` raises :class:`CancelledError` there, except inside a :func:`critical` section (saving
a model version, moving the current pointer): the section completes, and the next safe point ends
the work (when there is none, the work ends as it would have). ``CancelledError`` is a
``BaseException``, so no ``except Exception`` on the stack swallows it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from assft.errors import CancelledError

__all__ = [
    "CANCEL_FILE_ENV",
    "check",
    "check_inside_layers",
    "critical",
    "install",
    "request",
    "requested",
    "unwatch",
    "watch",
]

CANCEL_FILE_ENV = "ASSFT_CANCEL_FILE"
"""Environment variable: the path of a file whose appearance asks this process to stop.

The Slicer module's ``BackgroundProcess`` sets it for every engine process it starts (``rank``,
``predict``...) and writes the file on cancel; the engine then stops at its next safe point with
exit code 3. The file does not exist before that: a fresh path per process.
"""

_state: dict[str, Any] = {"depth": 0, "signal": None}
_watched: list[Path] = []


def _handler(signum: int, frame: Any) -> None:
    if signum == signal.SIGINT and not _state["depth"]:
        raise KeyboardInterrupt  # Ctrl-C outside critical sections stops at once, as by default
    _state["signal"] = signal.Signals(signum).name


def install() -> None:
    """Note SIGTERM (and Ctrl-C inside critical sections) for :func:`check`.

    Only the main thread can set signal handlers; elsewhere this does nothing. A Ctrl-C handler
    set by someone else (a test runner) is kept.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGTERM, _handler)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _handler)


def watch(path: str | Path) -> None:
    """Also stop at the next safe point once ``path`` exists (a job's cancel request)."""
    path = Path(path)
    if path not in _watched:
        _watched.append(path)


def unwatch(path: str | Path) -> None:
    """Stop watching ``path`` (the job has finished)."""
    with contextlib.suppress(ValueError):
        _watched.remove(Path(path))


def request(path: str | Path) -> None:
    """Ask the process that watches ``path`` to stop: create the request file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"cancel requested by process {os.getpid()}\n", encoding="utf-8")


def requested() -> str | None:
    """Why the work should stop (``"SIGTERM"``, ``"request"``...), or None."""
    if _state["signal"]:
        return str(_state["signal"])
    named = os.environ.get(CANCEL_FILE_ENV)
    for path in ([Path(named)] if named else []) + _watched:
        if path.exists():
            return "request"
    return None


def check() -> None:
    """A safe point: stop here if a cancel was asked for, unless inside a critical section.

    Raises:
        CancelledError: a cancel request file exists, or SIGTERM arrived.
    """
    if _state["depth"]:
        return
    reason = requested()
    if reason is not None:
        raise CancelledError(f"cancelled by {reason}")


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """A section that a cancel request must not interrupt."""
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1


_LAYERS_CHECKED = "_assft_checks_cancellation"


def check_inside_layers(network: Any) -> None:
    """Safe points inside a network's forward and backward passes: :func:`check` before each of
    its layers runs and when the gradient of each layer's output is computed, so that a cancel
    is answered within one layer's time rather than one training step's. A step cancelled there
    never reaches the optimizer: the weights stay as the last whole step left them.

    Once per network (a second call adds nothing); a TorchScript network, which takes no
    hooks, keeps the per-step check only.
    """
    if getattr(network, _LAYERS_CHECKED, False):
        return

    def before(_module: Any, _inputs: Any) -> None:
        check()

    def passing_gradient(gradient: Any) -> Any:
        check()
        return gradient

    def after(_module: Any, _inputs: Any, output: Any) -> None:
        if getattr(output, "requires_grad", False):
            output.register_hook(passing_gradient)

    try:
        for module in network.modules():
            if not any(True for _ in module.children()):  # a layer, not a container
                module.register_forward_pre_hook(before)
                module.register_forward_hook(after)
        setattr(network, _LAYERS_CHECKED, True)
    except RuntimeError:  # a scripted module: no hooks
        return

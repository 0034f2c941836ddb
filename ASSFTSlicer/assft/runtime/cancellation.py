"""Cancelling long work with SIGTERM (or Ctrl-C) without ever leaving it half-committed.

The handler raises :class:`CancelledError` where the work stands, except inside a
:func:`critical` section (saving a model version, moving the current pointer), where the request
is deferred: the section completes, and the work then ends as it would have.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any

from assft.errors import CancelledError

_state = {"depth": 0, "deferred": None}


def _handler(signum: int, frame: Any) -> None:
    name = signal.Signals(signum).name
    if _state["depth"]:
        _state["deferred"] = name
        return
    raise CancelledError(f"cancelled by {name}")


def install() -> None:
    """Route SIGTERM to the cancellation handler (main thread only)."""
    signal.signal(signal.SIGTERM, _handler)


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """A section that a cancel request must not interrupt."""
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1


def deferred_request() -> str | None:
    """The signal that arrived during a critical section, if any."""
    return _state["deferred"]

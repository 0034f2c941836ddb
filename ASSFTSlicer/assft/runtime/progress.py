"""Progress reporting: JSON lines for machines (Slicer, jobs), a bar on a terminal.

Every update is also a safe point where a cancel request stops the work
(:func:`assft.runtime.cancellation.check`).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any, TextIO

from assft.runtime import cancellation, syncpoints


class ProgressEvent(StrEnum):
    """The ``"event"`` of a JSON progress line: the engine writes it, the Slicer module reads it.

    Values are plain strings in the JSON (``{"event": "progress", ...}``).
    """

    PROGRESS = "progress"
    """A phase's step count: ``phase``, ``done``, ``total``, ``eta_s`` and metrics."""
    RESUMED = "resumed"
    """A fine-tuning job continues a killed one: ``stage``, ``step``, ``job``."""
    DONE = "done"
    """The work finished; the command's results follow in the same object."""
    ERROR = "error"
    """The work failed (``message``) or was cancelled (``"cancelled": true``)."""


class Progress:
    """Reports phases of long work.

    Args:
        mode: ``json`` (one JSON object per line on ``stream``), ``bar`` (a progress bar on
            stderr), ``none``, or ``auto`` (bar when stderr is a terminal, else none).
        stream: where JSON lines go (stdout by default).
        sink: also receives every event as a dict, whatever the mode (a job's progress file).
    """

    def __init__(
        self,
        mode: str = "auto",
        stream: TextIO | None = None,
        sink: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "none"
        if mode not in ("json", "bar", "none"):
            raise ValueError(f"progress mode must be json, bar, none or auto, got {mode!r}")
        self.mode = mode
        self.stream = stream or sys.stdout
        self.sink = sink
        self._phase = ""
        self._total = 0
        self._start = time.monotonic()

    def emit(self, event: ProgressEvent | str, **fields: Any) -> None:
        """Write one JSON line (json mode), and hand the event to the sink."""
        record = {"event": event, **fields}
        if self.sink is not None:
            self.sink(record)
        if self.mode == "json":
            self.stream.write(json.dumps(record, default=str) + "\n")
            self.stream.flush()

    def phase(self, phase: str, total: int) -> None:
        """Start a phase of ``total`` steps."""
        if phase in syncpoints.PHASES:
            syncpoints.reach(f"phase:{phase}")
        self._phase, self._total, self._start = phase, total, time.monotonic()
        self.update(0)

    def update(self, done: int, **metrics: Any) -> None:
        """Report ``done`` steps of the current phase, with optional metrics.

        Raises:
            CancelledError: a cancel was requested (this is a safe point).
        """
        cancellation.check()
        elapsed = time.monotonic() - self._start
        eta = elapsed / done * (self._total - done) if done else None
        if self.mode == "json" or self.sink is not None:
            self.emit(
                ProgressEvent.PROGRESS,
                phase=self._phase,
                done=done,
                total=self._total,
                eta_s=None if eta is None else round(eta, 1),
                **metrics,
            )
        if self.mode == "bar":
            width = 30
            filled = int(width * done / self._total) if self._total else width
            eta_text = "" if eta is None else f" eta {eta:5.0f}s"
            sys.stderr.write(
                f"\r{self._phase:<16} [{'#' * filled}{'.' * (width - filled)}] "
                f"{done}/{self._total}{eta_text}"
            )
            if done >= self._total:
                sys.stderr.write("\n")
            sys.stderr.flush()

    def done(self, **fields: Any) -> None:
        """The work finished."""
        self.emit(ProgressEvent.DONE, **fields)

    def error(self, message: str, **fields: Any) -> None:
        """The work failed."""
        self.emit(ProgressEvent.ERROR, message=message, **fields)

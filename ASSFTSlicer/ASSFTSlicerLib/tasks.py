"""The module's task state: one foreground task at a time, a ranking that waits for it, and the
fine-tuning job's own commands.

Creating a workspace, ranking and predicting are *foreground tasks*: one runs at a time (they
share the workspace lock and the panel's progress bar), its button turns into Cancel, and Cancel
stops that task and nothing else. A ranking asked for while another task runs (the automatic
ranking after fine-tuning promoted a new model version) waits and starts when that task ends,
whether it succeeded, failed or was cancelled. Fine-tuning is a detached job: the commands that
launch or cancel it are kept apart from the foreground task, so cancelling the job never stops
a prediction, and the Cancel button never ends up pointing at the job's cancel command.

Plain Python (no Qt, no MRML): the state machine is tested with real processes on slicer-core.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from ASSFTSlicerLib.i18n import tr as _
from ASSFTSlicerLib.process import BackgroundProcess, ProcessResult

__all__ = ["TaskKind", "TaskStart", "Tasks"]

FinishedCallback = Callable[[ProcessResult], None]
Starter = Callable[[FinishedCallback], BackgroundProcess]
"""Starts a task's process with the given ``onFinished`` and returns it (already started)."""


class TaskKind(StrEnum):
    """The foreground tasks (the Widget maps each to the button that turns into Cancel)."""

    CREATE = "create"
    CREATE_FROM_VOLUMES = "createFromVolumes"
    CREATE_FROM_DICOMWEB = "createFromDicomweb"
    RANK = "rank"
    PREDICT = "predict"
    PROPOSE = "propose"
    SEND_DICOM_SEG = "sendDicomSeg"

    def describe(self) -> str:
        return {
            "create": _("creating the workspace"),
            "createFromVolumes": _("creating the workspace"),
            "createFromDicomweb": _("fetching the scans from the DICOMweb server"),
            "rank": _("ranking"),
            "predict": _("predicting"),
            "propose": _("proposing validation scans"),
            "sendDicomSeg": _("sending labels as DICOM SEG"),
        }[self.value]


class TaskStart(StrEnum):
    """What :meth:`Tasks.runWhenFree` did."""

    STARTED = "started"
    DEFERRED = "deferred"


@dataclass
class _Pending:
    kind: TaskKind
    starter: Starter
    onFinished: FinishedCallback | None


class Tasks:
    """The foreground task, the tasks waiting for it, and the fine-tuning job's command.

    Args:
        onChanged: Called (no arguments) whenever the state changes: a task started or ended,
            a task was deferred, the job's command started or ended. The Widget updates its
            buttons there.
        onDeferredError: Called with ``(kind, error)`` when a deferred task could not start
            when its turn came (e.g. nothing left to rank). Default: logged.
    """

    def __init__(
        self,
        onChanged: Callable[[], None] | None = None,
        onDeferredError: Callable[[TaskKind, Exception], None] | None = None,
    ) -> None:
        self.onChanged = onChanged
        self.onDeferredError = onDeferredError
        self.current: BackgroundProcess | None = None
        self.kind: TaskKind | None = None
        self.detail = ""
        self.pending: list[_Pending] = []
        self.jobCommand: BackgroundProcess | None = None

    # state -------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Whether a foreground task runs."""
        return self.current is not None and self.current.isRunning()

    def isRunning(self, kind: TaskKind) -> bool:
        """Whether the foreground task that runs is of this kind."""
        return self.busy and self.kind is kind

    def isPending(self, kind: TaskKind) -> bool:
        """Whether a task of this kind waits for the current one."""
        return any(item.kind is kind for item in self.pending)

    @property
    def jobCommandRunning(self) -> bool:
        """Whether a fine-tuning launch or cancel command runs."""
        return self.jobCommand is not None and self.jobCommand.isRunning()

    def describe(self) -> str:
        """What runs and what waits, for the status line ("" when idle)."""
        if not self.busy:
            return ""
        text = self.detail or self.kind.describe().capitalize() + "..."
        if self.pending:
            text += " " + _("Then: {tasks}.").format(
                tasks=", ".join(item.kind.describe() for item in self.pending)
            )
        return text

    def _changed(self) -> None:
        if self.onChanged is not None:
            self.onChanged()

    # running -----------------------------------------------------------------------------

    def run(
        self,
        kind: TaskKind,
        starter: Starter,
        onFinished: FinishedCallback | None = None,
        detail: str = "",
    ) -> BackgroundProcess:
        """Start a foreground task now.

        Raises:
            ValueError: another foreground task runs (the message names it).
        """
        if self.busy:
            raise ValueError(
                _("Another task is running ({task}): wait for it to end, or cancel it.").format(
                    task=self.kind.describe()
                )
            )
        return self._start(kind, starter, onFinished, detail)

    def runWhenFree(
        self, kind: TaskKind, starter: Starter, onFinished: FinishedCallback | None = None
    ) -> TaskStart:
        """Start a task now, or when the running one ends (a task of the same kind that already
        waits is replaced: only the newest request counts)."""
        if not self.busy:
            self._start(kind, starter, onFinished)
            return TaskStart.STARTED
        self.pending = [item for item in self.pending if item.kind is not kind]
        self.pending.append(_Pending(kind, starter, onFinished))
        logging.info("%s waits for %s to end", kind.describe(), self.kind.describe())
        self._changed()
        return TaskStart.DEFERRED

    def _start(
        self,
        kind: TaskKind,
        starter: Starter,
        onFinished: FinishedCallback | None,
        detail: str = "",
    ) -> BackgroundProcess:
        holder: list[BackgroundProcess] = []

        def finished(result: ProcessResult) -> None:
            # The state is updated before the caller hears of the end, so that its callback sees
            # the task over (and may start another one); then the next waiting task starts.
            if holder and self.current is holder[0]:
                self.current, self.kind, self.detail = None, None, ""
            try:
                if onFinished is not None:
                    onFinished(result)
            finally:
                self._startNext()
                self._changed()

        process = starter(finished)
        holder.append(process)
        if process.result is None:  # it may already have ended (and reported) inside starter
            self.current, self.kind, self.detail = process, kind, detail
        self._changed()
        return process

    def _startNext(self) -> None:
        while self.pending and not self.busy:
            item = self.pending.pop(0)
            try:
                self._start(item.kind, item.starter, item.onFinished)
            except (ValueError, OSError, RuntimeError) as error:
                logging.warning("%s could not start: %s", item.kind.describe(), error)
                if self.onDeferredError is not None:
                    self.onDeferredError(item.kind, error)

    def cancel(self) -> bool:
        """Cancel the foreground task (never the fine-tuning job); returns whether one ran.

        The task's ``onFinished`` then reports it cancelled; tasks waiting for it still start.
        """
        if not self.busy:
            return False
        self.current.cancel()
        return True

    def dropPending(self) -> None:
        """Forget the tasks that wait."""
        if self.pending:
            self.pending = []
            self._changed()

    # the fine-tuning job's commands -------------------------------------------------------

    def runJobCommand(
        self, starter: Starter, onFinished: FinishedCallback | None = None
    ) -> BackgroundProcess:
        """Run a fine-tuning launch or cancel command, apart from the foreground task.

        Raises:
            ValueError: another such command still runs.
        """
        if self.jobCommandRunning:
            raise ValueError(_("The previous fine-tuning command has not ended yet."))

        def finished(result: ProcessResult) -> None:
            if self.jobCommand is process:
                self.jobCommand = None
            try:
                if onFinished is not None:
                    onFinished(result)
            finally:
                self._changed()

        process = starter(finished)
        if process.result is None:
            self.jobCommand = process
        self._changed()
        return process

    # closing -----------------------------------------------------------------------------

    def shutdown(self, grace: float = 5.0) -> list[BackgroundProcess]:
        """Stop the foreground task now, in this thread, before returning (Slicer is closing).

        Waiting tasks are dropped and no callback runs any more: the panel is going away.
        The cancel request is written, the engine has ``grace`` seconds to stop at a safe point
        and release the workspace lock, then its process tree is ended. Nothing depends on a
        background thread, which may never run again while the application exits. A
        fine-tuning job is detached and goes on; its launch or cancel command is left to end.

        Returns:
            The processes that were stopped.
        """
        self.pending = []
        stopped = []
        process = self.current
        if process is not None and process.isRunning():
            process.onProgress = process.onLog = process.onFinished = None
            process.cancel(grace=grace, wait=True)
            stopped.append(process)
        self.current, self.kind, self.detail = None, None, ""
        return stopped

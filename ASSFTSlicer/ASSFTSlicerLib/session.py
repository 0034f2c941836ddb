"""The loop's control flow, written once for both front ends.

The Slicer panel (``ASSFTSlicer.py``) and the web page (``assft_web/app.py``) are views of a
:class:`LoopSession`: it launches fine-tuning and follows the job to its end, then says what
follows (read the workspace again, show a failure once, rank again with the version the job
promoted), and whether the workspace changed elsewhere since the view last read it. It holds no
Qt, VTK or trame object and is tested once on plain Python; a third front end writes only its
views. The work itself is the Logic's (:class:`ASSFTSlicerLib.logic.WorkspaceLogic`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from assft.runtime.job_state import JobState

__all__ = ["UNREADABLE", "JobUpdate", "LoopSession"]

UNREADABLE = "unreadable"
"""The workspace mark of a workspace that cannot be read (so a readable one counts as a change)."""


@dataclass(frozen=True)
class JobUpdate:
    """What a front end shows after one look at the fine-tuning job it follows.

    Attributes:
        text: The monitor's line (phase, loss, held-out Dice, time left; or how it ended).
        done, total: Its progress, when it reports some.
        active: Still starting or running; when False, the job has ended and is no longer
            followed: read the workspace again.
        state: The job's state once it ended (``done``, ``failed``, ``cancelled``...).
        error: The failure to show, once ("" unless it failed).
        rankAgain: It promoted a version, the user asked to rank again after a promotion, and
            the front end still shows that job's workspace.
    """

    text: str
    done: int | None = None
    total: int | None = None
    active: bool = True
    state: str = ""
    error: str = ""
    rankAgain: bool = False

    @property
    def percent(self) -> float | None:
        """``done`` of ``total`` in percent (None without a total)."""
        return 100.0 * (self.done or 0) / self.total if self.total else None


class LoopSession:
    """One front end's session of the loop over the Logic.

    Args:
        logic: The front end's :class:`~ASSFTSlicerLib.logic.WorkspaceLogic`.
    """

    def __init__(self, logic: Any) -> None:
        self.logic = logic
        self.launchedJob: dict[str, Any] | None = None
        """The followed job's launch (``{"pid", "log"}``; ``{}`` while it starts or for a job
        found running), or None when no job is followed."""
        self.mark: str | None = None
        """The workspace's mark when the front end last read it."""

    # the fine-tuning job -----------------------------------------------------------------

    @property
    def followsJob(self) -> bool:
        """Whether a fine-tuning job is followed (its button is then Cancel)."""
        return self.launchedJob is not None

    def launchFinetune(
        self,
        workspacePath,
        onLaunched: Callable[[Any, str], None] | None = None,
        **settings: Any,
    ) -> None:
        """Launch fine-tuning as a detached job (:meth:`WorkspaceLogic.launchFinetune`) and follow
        it; ``onLaunched(result, problem)`` once the launch has ended (``problem`` "" when the
        job started, else why not: the job is then not followed).

        Raises:
            ValueError, OSError: the launch could not start (nothing is followed).
        """

        def launched(result: Any) -> None:
            problem = self.logic.launchProblem(result)
            self.launchedJob = None if problem else self.logic.launchedJob(result)
            if onLaunched is not None:
                onLaunched(result, problem)

        self.logic.launchFinetune(workspacePath, onFinished=launched, **settings)
        self.launchedJob = {}

    def followRunningJob(self, workspacePath) -> bool:
        """Follow the job already running in the workspace (started before this front end was
        opened, or by another program) when none is followed; whether it started following."""
        if self.launchedJob is None and self.logic.followRunningJob(workspacePath):
            self.launchedJob = {}
            return True
        return False

    def cancelJob(self, onFinished: Callable[[Any], None] | None = None) -> bool:
        """Cancel the followed job in its own workspace (``assft cancel``; the foreground task is
        left alone); whether a cancel was started."""
        return self.logic.cancelFollowedJob(onFinished=onFinished) is not None

    def pollJob(self, workspacePath, rankAgain: bool) -> JobUpdate:
        """One look at the followed job. Once it has ended it is no longer followed.

        Args:
            workspacePath: The workspace the front end shows now (a promotion ranks again only
                when it is still the job's).
            rankAgain: The user's choice to rank again after a promotion.
        """
        status = self.logic.followedJobStatus(self.launchedJob or {})
        progress = status.get("last_progress") or {}
        text = self.logic.describeJob(status)
        done, total = progress.get("done"), progress.get("total")
        if self.logic.jobIsActive(status):
            return JobUpdate(text, done, total)
        self.launchedJob = None
        state = str(status.get("state", ""))
        failed = state == JobState.FAILED
        promoted = self.logic.jobPromotedVersion(status) is not None
        return JobUpdate(
            text,
            done,
            total,
            active=False,
            state=state,
            error=text if failed else "",
            rankAgain=bool(
                not failed and promoted and rankAgain and self.logic.isJobWorkspace(workspacePath)
            ),
        )

    # the workspace -----------------------------------------------------------------------

    def markRead(self, workspacePath) -> None:
        """Note the workspace as the front end has just read it."""
        self.mark = self._markOf(workspacePath)

    def markUnreadable(self) -> None:
        """Note that the front end could not read the workspace: the next look reads it again."""
        self.mark = UNREADABLE

    def changedElsewhere(self, workspacePath) -> bool:
        """Whether the workspace changed since the front end last read it (a fine-tune or a
        rollback from the command line, labels from the other front end). Not asked while the
        front end's own task runs: it reads the workspace when the task ends."""
        if self.logic.tasks.busy or not self.logic.hasWorkspace(workspacePath):
            return False
        return self._markOf(workspacePath) != self.mark

    def _markOf(self, workspacePath) -> str:
        try:
            return str(self.logic.workspaceMark(workspacePath))
        except Exception as error:  # noqa: BLE001 - the front end says once what is wrong
            logging.debug("cannot read the workspace's mark: %s", error)
            return UNREADABLE

"""Exceptions with the exit codes of the command line (design.md)."""

from __future__ import annotations

from pathlib import Path

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_CANCELLED = 3


class AssftError(Exception):
    """Base class of the engine's own errors."""

    exit_code = EXIT_FAILURE


class BadInputError(AssftError, ValueError):
    """Input the user can fix: a bad file, a bad argument, an unknown case.

    The message is one line and names the file (when there is one) and the problem.
    """

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        text = " ".join(str(message).split())
        super().__init__(f"{self.path}: {text}" if self.path else text)


class DivergedError(AssftError):
    """Training produced non-finite numbers (a NaN or infinite loss or weight).

    The job stops and registers nothing: a diverged model would predict background everywhere.
    """


class WorkspaceLockedError(BadInputError):
    """Another process holds the workspace's job lock."""


class CancelledError(BaseException):
    """The work was cancelled (cancel request or signal); nothing was committed.

    Like ``KeyboardInterrupt`` it is a ``BaseException``, not an :class:`AssftError`: no
    ``except Exception`` on the stack (ours, or a library's such as MONAI's ``optional_import``)
    may swallow a cancel and carry on. Only the command line's ``main`` turns it into exit code 3.
    """

    exit_code = EXIT_CANCELLED

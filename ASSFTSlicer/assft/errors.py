"""Exceptions with the exit codes of the command line (design.md)."""

from __future__ import annotations

import errno
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


class StorageError(BadInputError):
    """The disk refused a write: it is full, or the workspace is read-only. Nothing was changed."""


_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_READ_ONLY = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied"}
_READ_ONLY[errno.EPERM] = "operation not permitted"


def storage_error(
    error: OSError, path: str | Path | None = None, *, in_workspace: bool = True
) -> StorageError | None:
    """The one-line :class:`StorageError` for a full disk or a read-only workspace, else None.

    Args:
        error: What a write raised.
        path: The file or folder to name (default: the one the error names).
        in_workspace: ``error`` surely comes from a write into the workspace: say "the
            workspace is read-only", and count "permission denied" as that too.

    Returns:
        e.g. ``"<path>: no space left on device; free some space and try again"``,
        ``"<path>: the workspace is read-only (read-only file system)"`` or, outside the
        workspace, ``"<path>: permission denied"``; None for any other error.
    """
    where = path if path is not None else error.filename
    if error.errno in _NO_SPACE:
        return StorageError("no space left on device; free some space and try again", where)
    if error.errno == errno.EROFS or (in_workspace and error.errno in _READ_ONLY):
        reason = _READ_ONLY[error.errno or errno.EROFS]
        text = (
            f"the workspace is read-only ({reason})"
            if in_workspace
            else f"cannot be written ({reason})"
        )
        return StorageError(text, where)
    if error.errno in _READ_ONLY and where is not None:
        # Outside the workspace (an export's or a new workspace's folder the user may not write).
        return StorageError(_READ_ONLY[error.errno], where)
    if error.errno == errno.EIO:  # a disk error, or a written file that reads back differently
        return StorageError(f"could not be written completely ({error.strerror})", where)
    return None

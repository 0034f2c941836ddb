"""Job locks: one training (or other exclusive) job per workspace at a time.

A lock is an exclusive operating-system lock on ``jobs/<name>.lock``
(:func:`assft.runtime.portable.try_lock`: ``flock`` on POSIX, a Windows file lock there). The
kernel drops it when the holding process ends, however it ends (even killed outright), so a
crashed job never leaves the workspace locked. While held, ``jobs/<name>.json`` says who holds
it; that file alone is not a lock: a left-over one from a killed job is ignored and overwritten.

On POSIX the lock belongs to the open file, so a child process forked while the lock is held
keeps it held until the child ends too.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from assft.errors import BadInputError, WorkspaceLockedError
from assft.runtime.portable import try_lock, unlock
from assft.workspace.files import utc_now, write_json_atomic

__all__ = ["job_lock", "running_job"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_RETRY_S = 0.3  # a running_job() probe holds the lock for microseconds: do not fail on it


def _paths(jobs_dir: Path, name: str) -> tuple[Path, Path]:
    if not _NAME.match(name):
        raise BadInputError(f"{name!r} is not a valid lock name (letters, digits, '.', '_', '-')")
    return jobs_dir / f"{name}.lock", jobs_dir / f"{name}.json"


def _read_info(info_path: Path) -> dict[str, Any]:
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _describe(info: dict[str, Any]) -> str:
    parts = [f"pid {info.get('pid', 'unknown')}"]
    label = info.get("description") or info.get("command")
    if label:
        parts.append(str(label))
    if info.get("started_at"):
        parts.append(f"started {info['started_at']}")
    return ", ".join(parts)


@contextlib.contextmanager
def job_lock(
    jobs_dir: str | Path,
    name: str = "workspace",
    *,
    description: str = "",
    workspace: str | Path | None = None,
) -> Iterator[dict[str, Any]]:
    """Hold the exclusive job lock ``name`` for the duration of a ``with`` block.

    Args:
        jobs_dir: The workspace's ``jobs/`` folder (created if missing).
        name: Lock name; one lock file per name.
        description: What the job does (e.g. ``"finetune"``), shown to whoever finds it locked.
        workspace: Workspace root, for the message.

    Yields:
        The job information written to ``jobs/<name>.json`` (pid, command, start time...).

    Raises:
        WorkspaceLockedError: another process (or another open of the lock in this process)
            holds it; the message says which pid, job and start time.
    """
    jobs_dir = Path(jobs_dir)
    lock_path, info_path = _paths(jobs_dir, name)
    jobs_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + _RETRY_S
    while (held := try_lock(lock_path)) is None:
        if time.monotonic() >= deadline:
            where = workspace if workspace is not None else jobs_dir.parent
            raise WorkspaceLockedError(
                f"workspace {where} is locked by a running job "
                f"({_describe(_read_info(info_path))}); wait for it or cancel it"
            )
        time.sleep(0.02)
    try:
        info = {
            "name": name,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(sys.argv) if sys.argv and sys.argv[0] else sys.executable,
            "description": description,
            "started_at": utc_now(),
        }
        write_json_atomic(info_path, info)
        try:
            yield info
        finally:
            info_path.unlink(missing_ok=True)
    finally:
        unlock(held)


def running_job(jobs_dir: str | Path, name: str = "workspace") -> dict[str, Any] | None:
    """The job holding lock ``name``, if a live process holds it.

    The test is whether the lock can be taken right now (then released), so a left-over
    ``jobs/<name>.json`` from a killed job does not count.

    Args:
        jobs_dir: The workspace's ``jobs/`` folder.
        name: Lock name.

    Returns:
        The holder's job information (``pid``, ``command``, ``description``, ``started_at``;
        ``{"name": name}`` alone if the holder has not written it yet), or None.
    """
    lock_path, info_path = _paths(Path(jobs_dir), name)
    try:
        probe = try_lock(lock_path, shared=True, create=False)
    except FileNotFoundError:
        return None
    if probe is None:
        return {"name": name, **_read_info(info_path)}
    unlock(probe)
    return None

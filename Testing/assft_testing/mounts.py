"""Real small and read-only file systems for the durability tests (Linux, as root).

A test that needs a full disk or a read-only workspace mounts a tiny ``tmpfs`` of its own; where
mounting is not permitted (not root, no ``CAP_SYS_ADMIN``, not Linux) the test is skipped with
the reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), capture_output=True, text=True, check=False)


@contextlib.contextmanager
def tmpfs(folder: Path, size: str = "1m") -> Iterator[Path]:
    """Mount a fresh ``tmpfs`` of ``size`` on ``folder`` (created) for a ``with`` block.

    Skips the calling test when mounting is not possible here.
    """
    if not sys.platform.startswith("linux") or shutil.which("mount") is None:
        pytest.skip("needs Linux and mount(8) to make a small or read-only file system")
    folder.mkdir(parents=True, exist_ok=True)
    mounted = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        if _run("umount", str(folder)).returncode != 0:
            _run("umount", "-l", str(folder))  # still busy (a child left running): detach it


def remount_read_only(folder: Path) -> None:
    """Make the tmpfs mounted on ``folder`` read-only."""
    result = _run("mount", "-o", "remount,ro", str(folder))
    if result.returncode != 0:
        pytest.skip(f"cannot remount {folder} read-only: {result.stderr.strip()}")


def remount_size(folder: Path, size: str) -> None:
    """Grow (or shrink) the tmpfs mounted on ``folder``: space freed, as a lab would free it."""
    result = _run("mount", "-o", f"remount,size={size}", str(folder))
    if result.returncode != 0:
        raise AssertionError(f"cannot resize the tmpfs on {folder}: {result.stderr.strip()}")


def fill(folder: Path) -> Path:
    """Fill the file system holding ``folder`` to the last byte; returns the filler file.

    The filler is a hidden file, which the workspace leaves alone.
    """
    filler = folder / ".filler.bin"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 16, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(descriptor, b"\0" * size)
    finally:
        os.close(descriptor)
    return filler

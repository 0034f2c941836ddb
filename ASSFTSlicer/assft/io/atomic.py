"""Writing files so that a reader sees the old file or the complete new one, never half of it.

Everything the engine stores (labels, manifests, checkpoints, caches, resume states) goes through
:func:`atomic_path`: a hidden temporary file in the destination's folder, flushed to disk, then
renamed over the destination; on any failure (a full disk, a signal) the temporary file is removed
and the destination is untouched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from assft.runtime.portable import process_umask

# torch is imported inside save_torch_atomic only: the workspace modules the Slicer module uses
# in its own process write through here, before PyTorch may be installed.

__all__ = ["atomic_path", "file_mode", "fsync_directory", "process_umask", "save_torch_atomic"]


def fsync_directory(folder: Path) -> None:
    """Make a rename durable (best effort: not every platform can open a directory)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def file_mode(path: Path) -> int:
    """Permissions for a new file at ``path``: the old file's, else 0o666 less the umask."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        return 0o666 & ~process_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path, *, suffix: str | None = None) -> Iterator[Path]:
    """A temporary path to write; on success it replaces ``path`` atomically.

    Args:
        path: the destination (its folder is created).
        suffix: the temporary file's suffix (default: the destination's, so that writers that
            choose the format by suffix, such as SimpleITK, pick the right one).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(
        prefix=".tmp-", suffix=path.suffix if suffix is None else suffix, dir=path.parent
    )
    os.close(descriptor)
    temporary = Path(name)
    try:
        os.chmod(temporary, file_mode(path))
        yield temporary
        with open(temporary, "rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def save_torch_atomic(payload: Any, path: str | Path) -> Path:
    """``torch.save`` a payload (tensors, dicts, lists, numbers) atomically."""
    import torch

    with atomic_path(path) as temporary:
        torch.save(payload, temporary)
    return Path(path)

"""Writing files so that a reader sees the old file or the complete new one, never half of it.

Everything the engine stores (labels, manifests, checkpoints, caches, resume states) goes through
:func:`atomic_path`: a hidden temporary file in the destination's folder, flushed to disk, then
renamed over the destination; on any failure (a full disk, a signal) the temporary file is removed
and the destination is untouched. :func:`load_torch_safely` reads such torch files back with
PyTorch's weights-only unpickler and one-line errors.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from assft.errors import BadInputError
from assft.runtime.portable import (
    close_folder,
    open_folder,
    process_alive,
    process_umask,
    replace_in_folder,
)

# torch is imported inside save_torch_atomic only: the workspace modules the Slicer module uses
# in its own process write through here, before PyTorch may be installed.

__all__ = [
    "FolderReplacedError",
    "PinnedFolder",
    "UnsafePickleError",
    "atomic_path",
    "file_mode",
    "fsync_directory",
    "load_torch_safely",
    "process_umask",
    "save_torch_atomic",
]


class UnsafePickleError(BadInputError):
    """A torch file holds Python objects besides tensors; it was refused, none of it ran."""


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


_TEMPORARY = re.compile(r"^\.tmp-(\d+)-")


def temporary_prefix() -> str:
    """The name every temporary file of an atomic write starts with: ``.tmp-<pid>-``, so that
    one left by a killed writer is told from one being written (:func:`sweep_temporaries`)."""
    return f".tmp-{os.getpid()}-"


def sweep_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files in ``folder`` (not below it) whose writer is no longer
    running: what a write killed outright (SIGKILL, power loss) left. Files it cannot remove
    (a read-only workspace) stay; nothing else is touched.

    Returns:
        The files removed.
    """
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is None or not entry.is_file() or entry.is_symlink():
            continue
        if process_alive(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            entry.unlink()
            removed.append(entry)
    return removed


class FolderReplacedError(BadInputError):
    """An output folder was replaced (a link or another folder put at its path) while files
    were written into it; nothing was written where its path now leads."""


class PinnedFolder:
    """An output folder held from the moment it was checked, for :func:`atomic_path`.

    Files are renamed into the folder held open, so a link swapped in for its path meanwhile
    (towards a workspace's ``labels/``, say) cannot redirect them: the write is refused instead,
    and the temporary file it left at the new place is removed. Where the system cannot rename
    relative to an open folder (Windows), the folder's identity is compared before each rename.

    Args:
        path: the folder (existing; resolved by the caller after its checks).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._identity = self._identity_of(self.path)
        self._descriptor = open_folder(self.path)

    @staticmethod
    def _identity_of(path: Path) -> tuple[int, int] | None:
        try:
            found = os.stat(path)
        except OSError:
            return None
        return (found.st_dev, found.st_ino)

    def __enter__(self) -> PinnedFolder:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        close_folder(self._descriptor)
        self._descriptor = None

    def replace(self, temporary: Path, destination: Path) -> None:
        """Rename ``temporary`` (written at this folder's path) to ``destination`` inside it.

        Raises:
            FolderReplacedError: the folder at its path is no longer the one held.
        """
        replaced = FolderReplacedError(
            "was replaced while files were written into it (a link or another folder now stands "
            "at its path): nothing more is written there",
            self.path,
        )
        if temporary.parent != self.path or destination.parent != self.path:
            raise ValueError(f"{temporary} -> {destination}: not in {self.path}")
        if self._identity_of(self.path) != self._identity:
            raise replaced
        if self._descriptor is None:
            os.replace(temporary, destination)
            return
        try:
            replace_in_folder(self._descriptor, temporary.name, destination.name)
        except FileNotFoundError:  # the temporary file went to where the path leads now
            raise replaced from None


@contextlib.contextmanager
def atomic_path(
    path: str | Path, *, suffix: str | None = None, pinned: PinnedFolder | None = None
) -> Iterator[Path]:
    """A temporary path to write; on success it replaces ``path`` atomically.

    Args:
        path: the destination (its folder is created).
        suffix: the temporary file's suffix (default: the destination's, so that writers that
            choose the format by suffix, such as SimpleITK, pick the right one).
        pinned: the destination's folder as held when it was checked (:class:`PinnedFolder`):
            the file lands in that folder or nowhere.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(
        prefix=temporary_prefix(), suffix=path.suffix if suffix is None else suffix, dir=path.parent
    )
    os.close(descriptor)
    temporary = Path(name)
    try:
        os.chmod(temporary, file_mode(path))
        yield temporary
        with open(temporary, "rb+") as stream:
            os.fsync(stream.fileno())
        if pinned is None:
            os.replace(temporary, path)
        else:
            pinned.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        if error.filename is None:  # a write or a close names no file: name the destination
            raise OSError(error.errno, error.strerror or str(error), str(path)) from error
        raise
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


NEARLY_FULL_BYTES = 1 << 20
"""Free space under which a failed or short write is put down to a full disk."""


def short_write_error(written: Path, destination: Path, what: str) -> OSError:
    """The error for a write that a library reported in its own words, or not at all (ITK
    leaves a short file; torch's archive writer raises ``RuntimeError: unexpected pos``):
    ENOSPC when the disk holding ``written`` is (nearly) full, else EIO with ``what``."""
    try:
        full = shutil.disk_usage(written.parent).free < NEARLY_FULL_BYTES
    except OSError:
        full = False
    if full:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(destination))
    return OSError(errno.EIO, what, str(destination))


def save_torch_atomic(payload: Any, path: str | Path) -> Path:
    """``torch.save`` a payload (tensors, dicts, lists, numbers) atomically.

    Raises:
        OSError: ENOSPC when the disk filled up while writing (torch says it as a
            ``RuntimeError``), EIO for another failed write; ``path`` is left as it was.
    """
    import torch

    with atomic_path(path) as temporary:
        try:
            torch.save(payload, temporary)
        except RuntimeError as error:
            raise short_write_error(temporary, Path(path), f"torch.save failed: {error}") from None
    return Path(path)


def load_torch_safely(path: str | Path, map_location: Any = "cpu") -> Any:
    """Read a torch file (tensors, dicts, lists, numbers) with the weights-only unpickler.

    Unlike a bare ``torch.load`` there is no multi-line message recommending
    ``weights_only=False``: a refused file is refused in one line, and nothing of it runs.

    Args:
        path: the file.
        map_location: where tensors go (``torch.load``'s argument).

    Raises:
        UnsafePickleError: the file names a class or function the weights-only unpickler
            refuses (a pickle that could run code).
        BadInputError: the file is missing, truncated or not a torch file.
    """
    import torch

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # The weights-only unpickler names the function or class it refused as a "GLOBAL".
        if "global" in str(error).lower():
            raise UnsafePickleError(
                "holds Python objects besides tensors and was refused unopened (opening it "
                "could run code)",
                path,
            ) from None
        raise BadInputError("is truncated or not a PyTorch file", path) from None
    except FileNotFoundError:
        raise BadInputError("does not exist", path) from None
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception:  # torch.load raises OSError, EOFError, RuntimeError... on damaged files
        raise BadInputError("is truncated or not a PyTorch file", path) from None

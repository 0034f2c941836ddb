"""Small file helpers: atomic text/JSON writes, hashing, UTC time stamps."""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from assft.errors import BadInputError, storage_error
from assft.io.atomic import atomic_path, file_mode, fsync_directory, temporary_prefix

__all__ = [
    "own_regular_file",
    "compact_timestamp",
    "create_text_exclusive",
    "sha256_file",
    "utc_now",
    "write_json_atomic",
    "write_text_atomic",
]


def default_user() -> str:
    """Who is acting: ``$ASSFT_USER``, else the login name, else ``"unknown"``."""
    user = os.environ.get("ASSFT_USER", "").strip()
    if user:
        return user
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (some containers)
        return "unknown"


@contextlib.contextmanager
def storing(path: Path) -> Iterator[None]:
    """Turn a full disk or a read-only workspace into a one-line :class:`StorageError` naming
    ``path``."""
    try:
        yield
    except OSError as error:
        converted = storage_error(error, path)
        if converted is None:
            raise
        raise converted from error


def utc_now() -> str:
    """Current UTC time as ISO 8601 with milliseconds, e.g. ``2025-01-31T12:00:00.123+00:00``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def compact_timestamp() -> str:
    """Current UTC time usable in a file name, e.g. ``20250131T120000.123456Z``."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


_KNOWN_DIGESTS: dict[tuple, str] = {}
_KNOWN_DIGESTS_KEPT = 64


def sha256_file_known(path: str | Path) -> str:
    """:func:`sha256_file`, remembered for as long as the file is the same file with the same
    size, modification and change times (any write changes the change time, which no program
    can set back): what a panel that lists the versions again and again may use. Whatever
    loads a file's bytes hashes them afresh (:func:`sha256_file`)."""
    status = os.stat(path)
    key = (
        os.path.abspath(path),
        status.st_dev,
        status.st_ino,
        status.st_size,
        status.st_mtime_ns,
        status.st_ctime_ns,
    )
    known = _KNOWN_DIGESTS.get(key)
    if known is None:
        known = sha256_file(path)
        if len(_KNOWN_DIGESTS) >= _KNOWN_DIGESTS_KEPT:
            _KNOWN_DIGESTS.clear()
        _KNOWN_DIGESTS[key] = known
    return known


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write a text file through a temporary file and a rename (never half-written).

    Args:
        path: Destination; its folder must exist.
        text: Content, written as UTF-8.

    Returns:
        The destination path.
    """
    path = Path(path)
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return path


def write_json_atomic(path: str | Path, document: Any) -> Path:
    """Write a JSON document (indented) atomically; see :func:`write_text_atomic`."""
    return write_text_atomic(path, json.dumps(document, indent=2) + "\n")


def create_text_exclusive(path: str | Path, text: str) -> Path:
    """Create a complete new text file, failing if ``path`` already exists.

    The content is written to a temporary file first and then hard-linked to ``path``, so the
    file appears complete or not at all, and two writers never overwrite each other.

    Raises:
        FileExistsError: ``path`` exists.
    """
    path = Path(path)
    descriptor, temporary_name = tempfile.mkstemp(
        prefix=temporary_prefix(), suffix=path.suffix, dir=path.parent
    )
    temporary = Path(temporary_name)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, file_mode(path))
        os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_directory(path.parent)
    return path


def own_regular_file(path: Path, root: Path) -> Path:
    """``path``, checked to be a file the workspace owns before it is read: a regular file (not
    a pipe, a device or a folder) that does not lead out of ``root`` through a link. A missing
    file passes (the caller says what its absence means).

    Raises:
        BadInputError: a link leading out of ``root``, or not a regular file.
    """
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise BadInputError(
            "is a link leading out of the workspace; a workspace's own files stay inside it", path
        )
    if resolved.exists() and not resolved.is_file():
        raise BadInputError("is not a regular file (a pipe, a device or a folder)", path)
    return path


def read_json_document(
    path: Path, what: str, *, missing: str = "is missing", max_bytes: int | None = None
) -> dict[str, Any]:
    """The JSON object stored in ``path`` (a ``what``: "job file", "model manifest"...).

    Raises:
        BadInputError: one line naming the file: it is missing (``missing`` says what that
            means), larger than ``max_bytes``, unreadable or not JSON, or not a JSON object.
    """
    try:
        size = path.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise BadInputError(f"is too large to be a {what}", path)
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInputError(missing, path) from None
    except BadInputError:
        raise
    except (OSError, ValueError) as error:
        raise BadInputError(f"cannot be read as a {what} ({error})", path) from None
    if not isinstance(document, dict):
        raise BadInputError(f"is not a {what} (not a JSON object)", path)
    return document

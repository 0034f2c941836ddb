"""Model version names: ``v0`` (the preset as configured), ``v1``, ``v2``...

The one place that knows what a version name looks like. It imports neither torch nor the
model code, so the CLI parser, the workspace and the Slicer module can check names cheaply.

A name is ``v`` and a number without leading zeros: no name can leave ``models/`` and no
version has two names (``v01`` would be a second name of ``v1``).
"""

from __future__ import annotations

import re
from pathlib import Path

from assft.errors import BadInputError

__all__ = [
    "BASE_VERSION",
    "PARTIAL_PATTERN",
    "VERSION_PATTERN",
    "check_version",
    "parse_partial",
    "parse_version",
    "partial_name",
    "read_pointer",
    "version_name",
    "version_number",
]

POINTER_ACTIONS = ("promote-model", "rollback-model", "restore-model-pointer")
"""Audit actions that move ``models/current``; the last one names the current version."""
BASE_VERSION = "v0"
"""The preset as configured in ``assft.json``; it has no folder under ``models/``."""

VERSION_PATTERN = re.compile(r"^v(0|[1-9][0-9]*)$")
"""A canonical version name; group 1 is its number."""

PARTIAL_PATTERN = re.compile(r"^\.v(0|[1-9][0-9]*)\.partial$")
"""The hidden folder a version is written into before it is renamed into place."""

_LOOSE_PATTERN = re.compile(r"^v([0-9]+)$")  # only to suggest the canonical name


def version_name(number: int) -> str:
    """The name of version ``number`` (``3`` -> ``"v3"``).

    Raises:
        ValueError: a negative or non-integer number (a programming error, not bad input).
    """
    if isinstance(number, bool) or not isinstance(number, int) or number < 0:
        raise ValueError(f"a model version number is an integer >= 0, not {number!r}")
    return f"v{number}"


def parse_version(name: object) -> int | None:
    """The number of a canonical version name, or None for anything else (never raises)."""
    match = VERSION_PATTERN.match(name) if isinstance(name, str) else None
    return int(match.group(1)) if match else None


def version_number(name: object) -> int:
    """The number of a version name such as ``v3``.

    Raises:
        BadInputError: anything but ``v`` and a number without leading zeros, in one line
            (``v03`` is answered with the name it probably means).
    """
    number = parse_version(name)
    if number is not None:
        return number
    loose = _LOOSE_PATTERN.match(name) if isinstance(name, str) else None
    if loose is not None:
        raise BadInputError(
            f"{name!r} is not a model version name (did you mean v{int(loose.group(1))}?)"
        )
    raise BadInputError(f"{name!r} is not a model version name (v0, v1, v2, ...)")


def check_version(name: object) -> str:
    """Return ``name`` when it is a well-formed version name (it need not exist).

    Raises:
        BadInputError: see :func:`version_number`.
    """
    version_number(name)
    return str(name)


def partial_name(version: str) -> str:
    """The hidden folder name a version is written into (``v3`` -> ``.v3.partial``).

    Raises:
        BadInputError: a malformed version name.
    """
    return f".{check_version(version)}.partial"


def parse_partial(name: str) -> int | None:
    """The version number of a ``.vN.partial`` folder name, or None for anything else."""
    match = PARTIAL_PATTERN.match(name)
    return int(match.group(1)) if match else None


_MAX_POINTER_BYTES = 64


def read_pointer(path: Path) -> str:
    """The version a ``models/current`` file names; ``v0`` when the file does not exist.

    A workspace that never promoted anything has no pointer: that is ``v0``. A pointer that
    exists but is empty, not text, or names no version is damaged (a crash cannot leave it so:
    it is written atomically); it is never taken for ``v0``.

    Raises:
        BadInputError: a pointer that cannot be read or is damaged, in one line naming the
            file and saying how to repair it.
    """
    repair = "make a version current with 'assft rollback WORKSPACE VERSION'"
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        # Written atomically as a small file, never as anything else: nothing is read through it.
        raise BadInputError(f"is damaged (not a regular file); {repair}", path)
    try:
        with open(path, "rb") as stream:
            raw = stream.read(_MAX_POINTER_BYTES + 1)
    except FileNotFoundError:
        return BASE_VERSION
    except OSError as error:
        raise BadInputError(f"cannot be read ({error.strerror or error}); {repair}", path) from None
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise BadInputError(f"is damaged (not text); {repair}", path) from None
    if not text:
        raise BadInputError(f"is damaged (empty); {repair}", path)
    if len(raw) > _MAX_POINTER_BYTES:
        raise BadInputError(f"is damaged (too long for a version name); {repair}", path)
    if parse_version(text) is None:
        shown = text if len(text) <= 20 else text[:20] + "..."
        raise BadInputError(f"is damaged ({shown!r} is not a version name); {repair}", path)
    return text

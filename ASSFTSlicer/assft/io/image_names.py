"""Image file names: which names are images (:data:`IMAGE_SUFFIXES`), the entries of a scanned
folder that are image files, and the case id a file or DICOM folder name gives."""

from __future__ import annotations

import re
from pathlib import Path

from assft.errors import BadInputError

__all__ = ["IMAGE_SUFFIXES", "case_id_from_path", "image_suffix", "scanned_image_file"]


IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
"""File name endings recognised as images (matched case-insensitively)."""

_CASE_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def image_suffix(path: str | Path) -> str:
    """Return the image suffix of a file name (``".nii.gz"`` counts as one), or ``""``.

    Args:
        path: A file path or name.

    Returns:
        The matching entry of :data:`IMAGE_SUFFIXES` in lower case, or ``""`` if none matches.
    """
    name = Path(path).name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return ""


def scanned_image_file(path: Path) -> bool:
    """Whether an entry of a scanned folder is an image file: named like one and a regular file.

    Raises:
        BadInputError: it is named like an image but is a pipe, a device or a broken link (a
            folder scan never drops such a case or label without a word).
    """
    if path.name.startswith(".") or not image_suffix(path):
        return False
    if path.is_file():
        return True
    if path.is_dir():
        return False  # a folder named like a file (a DICOM series is found as a folder)
    raise BadInputError(
        "is named like an image but is not a regular file (a pipe, a device or a broken link)",
        path,
    )


def case_id_from_path(path: str | Path) -> str:
    """Derive a case id from an image file name or a DICOM series folder name.

    The image suffix is dropped, characters outside ``[A-Za-z0-9._-]`` become ``_`` and
    leading ``.``, ``_`` and ``-`` are removed, so the id is safe as a file name and starts
    with a letter or a digit (``"case"`` when nothing is left).

    Args:
        path: Image file or DICOM folder.

    Returns:
        The case id, e.g. ``"sub-01_T1w"`` for ``/data/sub-01 T1w.nii.gz``.
    """
    name = Path(path).name
    suffix = image_suffix(name)
    if suffix:
        name = name[: -len(suffix)]
    case_id = _CASE_ID_UNSAFE.sub("_", name).lstrip("._-")
    return case_id or "case"

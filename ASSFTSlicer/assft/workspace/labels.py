"""Checking a clinician's label map against its image and the workspace's declared labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from assft.errors import BadInputError
from assft.io.imaging import geometry_mismatch, read_image, read_label

__all__ = ["check_label_values", "load_label_for_image"]


def check_label_values(label: sitk.Image, label_names: dict[int, str], path: str | Path) -> None:
    """Refuse a label map holding values other than 0 and the declared label values.

    Args:
        label: The label map.
        label_names: Declared ``{value: name}`` (background 0 is always allowed).
        path: The label file, for the message.

    Raises:
        BadInputError: e.g. ``"holds undeclared label values [7, 9]; declared: 1 (grey
            matter), 2 (white matter)"``.
    """
    present = np.unique(sitk.GetArrayViewFromImage(label))
    undeclared = [int(v) for v in present if v != 0 and int(v) not in label_names]
    if undeclared:
        declared = ", ".join(f"{value} ({name})" for value, name in sorted(label_names.items()))
        raise BadInputError(
            f"holds undeclared label values {undeclared}; declared: {declared}", path
        )


def load_label_for_image(
    label_file: str | Path,
    image: sitk.Image | str | Path,
    label_names: dict[int, str],
    *,
    case_id: str | None = None,
) -> sitk.Image:
    """Read a label map, check it against its image and the declared labels, regrid exactly.

    Args:
        label_file: The label map file.
        image: The case's image, or its path.
        label_names: Declared ``{value: name}``.
        case_id: For the message.

    Returns:
        A uint16 label map whose size, spacing, origin and direction are the image's, bit for
        bit (the label's own geometry matched within tolerance).

    Raises:
        BadInputError: naming ``label_file``: unreadable, not an integer 3D map, another
            grid than the image's, or undeclared values.
    """
    label = read_label(label_file)
    if not isinstance(image, sitk.Image):
        image = read_image(image)
    mismatch = geometry_mismatch(label, image)
    if mismatch is not None:
        whose = f"case {case_id!r}" if case_id else "the image"
        raise BadInputError(f"does not fit the image of {whose}: {mismatch}", label_file)
    check_label_values(label, label_names, label_file)
    stored = sitk.GetImageFromArray(sitk.GetArrayFromImage(label).astype(np.uint16))
    stored.CopyInformation(image)
    return stored

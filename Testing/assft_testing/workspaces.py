"""Helpers for the workspace tests: tiny synthetic volumes and state snapshots."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from assft.workspace import Workspace

SIZE_XYZ = (8, 9, 10)
SPACING = (0.8, 0.9, 2.5)
ORIGIN = (-10.0, 5.0, 3.25)
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
LABEL_NAMES = {1: "grey matter", 2: "white matter"}


def write_volume(
    path: Path,
    array: np.ndarray | None = None,
    *,
    dtype: type = np.float32,
    spacing: tuple[float, ...] = SPACING,
    origin: tuple[float, ...] = ORIGIN,
    direction: tuple[float, ...] = DIRECTION,
    seed: int = 0,
) -> Path:
    """Write a small volume (array in z, y, x order; random intensities by default)."""
    if array is None:
        array = np.random.default_rng(seed).normal(100, 20, SIZE_XYZ[::-1])
    image = sitk.GetImageFromArray(np.asarray(array).astype(dtype))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def label_array(values: tuple[int, ...] = (1, 2)) -> np.ndarray:
    """A z, y, x label array holding background and ``values`` in separate blocks."""
    array = np.zeros(SIZE_XYZ[::-1], np.uint16)
    for index, value in enumerate(values):
        array[2 * index : 2 * index + 2, 1:5, 2:6] = value
    return array


def snapshot(workspace: Workspace) -> dict[str, Any]:
    """Files (bytes) and registry content of a workspace, to prove that nothing changed."""
    files = {
        str(path.relative_to(workspace.root)): path.read_bytes()
        for path in sorted(workspace.root.rglob("*"))
        if path.is_file() and not path.name.startswith("registry.sqlite")
    }
    registry = workspace.registry
    return {
        "files": files,
        "cases": registry.cases(),
        "audit": registry.audit_trail(),
        "rankings": registry.rankings(),
    }


def write_dicom_series(path: Path, seed: int = 0) -> Path:
    """Write a small volume as a DICOM series (one file per slice) into folder ``path``."""
    array = np.random.default_rng(seed).integers(0, 500, SIZE_XYZ[::-1]).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    path.mkdir(parents=True, exist_ok=True)
    orientation = "\\".join(str(v) for v in (*DIRECTION[0:7:3], *DIRECTION[1:8:3]))
    series_uid = f"1.2.826.0.1.3680043.2.1125.{seed + 1}"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetImageIO("GDCMImageIO")  # file names without suffix, as scanners write them
    for index in range(image.GetDepth()):
        slice_ = image[:, :, index]
        position = image.TransformIndexToPhysicalPoint((0, 0, index))
        for tag, value in (
            ("0008|0060", "MR"),
            ("0020|000d", f"{series_uid}.0"),
            ("0020|000e", series_uid),
            ("0020|0037", orientation),
            ("0020|0013", str(index + 1)),
            ("0008|0018", f"{series_uid}.{index + 1}"),
            ("0020|0032", "\\".join(str(v) for v in position)),
        ):
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(path / f"IM{index:04d}"))
        writer.Execute(slice_)
    return path


def tiny_workspace(
    tmp_path: Path, cases: Sequence[Any], preset_file: Path, labeled: int = 0
) -> Workspace:
    """A workspace of ``cases``' scans (copied into ``tmp_path/images``) with the tiny preset and
    the structures shell and core, its first ``labeled`` cases labeled by "tester"."""
    images = tmp_path / "images"
    images.mkdir()
    for case in cases:
        shutil.copy(case.image, images / case.image.name)
    workspace = Workspace.create(
        tmp_path / "ws",
        [images],
        label_names={1: "shell", 2: "core"},
        model=str(preset_file),
        user="tester",
    )
    for case in cases[:labeled]:
        workspace.submit_label(case.case_id, case.label, user="tester")
    return workspace

"""Tests of label submission: exact geometry, backups, refusals that change nothing."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from assft.errors import BadInputError
from assft.io.imaging import read_image
from assft.workspace import Workspace
from assft_testing.workspaces import SPACING, label_array, snapshot, write_volume


def test_submit_stores_label_at_the_exact_image_geometry(
    tmp_path: Path, workspace: Workspace
) -> None:
    # within tolerance but not bit-identical to the image: stored with the image's own grid
    submitted = write_volume(
        tmp_path / "drawn.nrrd",
        label_array(),
        dtype=np.uint8,
        spacing=(SPACING[0] + 1e-6, *SPACING[1:]),
    )
    stored = workspace.submit_label("case_b", submitted, user="ana")
    assert stored == workspace.labels_dir / "case_b.nii.gz" == workspace.label_path("case_b")
    image = read_image(workspace.image_path("case_b"))  # a NIfTI image
    label = sitk.ReadImage(str(stored))
    assert label.GetPixelID() == sitk.sitkUInt16
    assert label.GetSize() == image.GetSize()
    assert label.GetSpacing() == image.GetSpacing()
    assert label.GetOrigin() == image.GetOrigin()
    assert label.GetDirection() == image.GetDirection()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), label_array())

    case = workspace.registry.case("case_b")
    assert (case["status"], case["updated_by"]) == ("labeled", "ana")
    trail = workspace.registry.audit_trail("case_b")
    assert trail[-1]["action"] == "submit-label"
    assert trail[-1]["detail"]["sha256"] == case["label_sha256"]
    assert trail[-1]["detail"]["source"] == str(submitted)
    assert not list(workspace.labels_dir.glob(".tmp-*"))


def test_resubmitting_keeps_a_backup(tmp_path: Path, workspace: Workspace) -> None:
    first = write_volume(tmp_path / "first.nii.gz", label_array((1,)), dtype=np.uint8)
    second = write_volume(tmp_path / "second.nii.gz", label_array((2, 1)), dtype=np.uint8)
    stored = workspace.submit_label("case_a", first)
    old_bytes = stored.read_bytes()
    workspace.submit_label("case_a", second)
    workspace.submit_label("case_a", second)

    backups = sorted(workspace.label_backup_dir.iterdir())
    assert len(backups) == 2
    assert all(b.name.startswith("case_a-") and b.name.endswith("Z.nii.gz") for b in backups)
    assert backups[0].read_bytes() == old_bytes
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(sitk.ReadImage(str(backups[0]))), label_array((1,))
    )
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(sitk.ReadImage(str(stored))), label_array((2, 1))
    )
    assert workspace.registry.audit_trail("case_a")[-1]["detail"]["backup"] == backups[1].name


def _bad_labels(tmp_path: Path) -> list[tuple[Path, str]]:
    """(label file, expected message) for every way a label can be wrong."""
    folder = tmp_path / "bad"
    fractional = label_array().astype(np.float32)
    fractional[0, 0, 0] = 0.25
    return [
        (
            write_volume(
                folder / "spacing.nii.gz", label_array(), dtype=np.uint8, spacing=(1.0, 1.0, 1.0)
            ),
            "spacing (1.0, 1.0, 1.0) differs from the image's",
        ),
        (
            write_volume(
                folder / "origin.nii.gz", label_array(), dtype=np.uint8, origin=(0.0, 0.0, 0.0)
            ),
            "origin (0.0, 0.0, 0.0) differs",
        ),
        (
            write_volume(
                folder / "direction.nii.gz",
                label_array(),
                dtype=np.uint8,
                direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
            ),
            "direction",
        ),
        (
            write_volume(folder / "size.nii.gz", np.zeros((10, 9, 7), np.uint8)),
            "size (7, 9, 10) differs from the image's (8, 9, 10)",
        ),
        (
            write_volume(folder / "values.nii.gz", label_array((1, 7, 9)), dtype=np.uint8),
            "holds undeclared label values [7, 9]; declared: 1 (grey matter), 2 (white matter)",
        ),
        (write_volume(folder / "soft.nii.gz", fractional), "non-integer values"),
        (folder / "missing.nii.gz", "does not exist"),
    ]


def test_bad_labels_are_refused_and_change_nothing(tmp_path: Path, workspace: Workspace) -> None:
    good = write_volume(tmp_path / "good.nii.gz", label_array(), dtype=np.uint8)
    workspace.submit_label("case_c", good)
    before = snapshot(workspace)
    for label_file, message in _bad_labels(tmp_path):
        for case_id in ("case_a", "case_c"):  # unlabeled, and labeled (would be replaced)
            with pytest.raises(BadInputError, match=re.escape(message)) as caught:
                workspace.submit_label(case_id, label_file)
            assert str(caught.value).startswith(f"{label_file}: ")
    assert snapshot(workspace) == before


@pytest.mark.parametrize(
    ("case_id", "message"),
    [
        ("../../etc/passwd", "is not a valid case id"),
        ("a/b", "is not a valid case id"),
        (".hidden", "is not a valid case id"),
        ("", "is not a valid case id"),
        ("case_z", r"unknown case id 'case_z' \(3 cases in the workspace\)"),
    ],
)
def test_bad_case_ids_are_refused(
    tmp_path: Path, workspace: Workspace, case_id: str, message: str
) -> None:
    good = write_volume(tmp_path / "good.nii.gz", label_array(), dtype=np.uint8)
    before = snapshot(workspace)
    for call in (
        lambda: workspace.submit_label(case_id, good),
        lambda: workspace.skip(case_id),
        lambda: workspace.image_path(case_id),
        lambda: workspace.label_path(case_id),
    ):
        with pytest.raises(BadInputError, match=message):
            call()
    assert snapshot(workspace) == before
    assert not (tmp_path / "etc").exists()


def test_failed_write_keeps_the_old_label(
    tmp_path: Path, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = workspace.submit_label(
        "case_a", write_volume(tmp_path / "first.nii.gz", label_array((1,)), dtype=np.uint8)
    )
    before = snapshot(workspace)

    def broken_replace(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    new = write_volume(tmp_path / "second.nii.gz", label_array((2,)), dtype=np.uint8)
    with pytest.raises(OSError, match="disk full"):
        workspace.submit_label("case_a", new)
    monkeypatch.undo()
    assert snapshot(workspace) == before  # old label intact, no backup, no temp file, same DB
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(sitk.ReadImage(str(stored))), label_array((1,))
    )


def test_skip_and_set_status(tmp_path: Path, workspace: Workspace) -> None:
    workspace.skip("case_a", user="ana")
    workspace.submit_label(
        "case_b", write_volume(tmp_path / "b.nii.gz", label_array(), dtype=np.uint8)
    )
    workspace.set_status("case_b", "held-out")
    assert workspace.registry.counts() == {
        "unlabeled": 1,
        "labeled": 0,
        "skipped": 1,
        "held-out": 1,
    }
    assert workspace.registry.audit_trail("case_a")[-1]["action"] == "skip"
    with pytest.raises(BadInputError, match="unknown case status"):
        workspace.set_status("case_a", "finished")
    for status in ("labeled", "held-out"):
        with pytest.raises(BadInputError, match="has no stored label"):
            workspace.set_status("case_c", status)
    workspace.submit_label(
        "case_c", write_volume(tmp_path / "l.nii.gz", label_array(), dtype=np.uint8)
    )
    workspace.set_status("case_c", "unlabeled")
    workspace.set_status("case_c", "labeled")
    assert workspace.registry.case("case_c")["status"] == "labeled"


def test_resolve_inside(workspace: Workspace, tmp_path: Path) -> None:
    assert (
        workspace.resolve_inside("labels/case_a.nii.gz")
        == workspace.root / "labels" / "case_a.nii.gz"
    )
    assert workspace.resolve_inside("labels/../models") == workspace.root / "models"
    for outside in ("../pool", "labels/../../pool", "/etc/passwd", tmp_path):
        with pytest.raises(BadInputError):
            workspace.resolve_inside(outside)
    (workspace.root / "cache" / "escape").symlink_to(tmp_path)
    with pytest.raises(BadInputError, match="leaves the workspace"):
        workspace.resolve_inside("cache/escape/pool")

"""Tests of Workspace.create and Workspace.open: all or nothing, bad inputs named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from assft.errors import BadInputError
from assft.workspace import Workspace, find_images
from assft_testing.workspaces import LABEL_NAMES, label_array, write_dicom_series, write_volume


def test_create_from_a_folder(tmp_path: Path, pool: Path) -> None:
    workspace = Workspace.create(tmp_path / "ws", [pool], label_names=LABEL_NAMES, user="ana")
    assert workspace.root == (tmp_path / "ws").resolve()
    assert [case["case_id"] for case in workspace.cases()] == ["case_a", "case_b", "case_c"]
    assert workspace.image_path("case_a") == (pool / "case_a.nrrd").resolve()
    assert all(case["status"] == "unlabeled" for case in workspace.cases())
    assert workspace.config.label_names == LABEL_NAMES
    assert workspace.config.model == "demo"
    for folder in ("labels", "rankings", "models", "jobs", "cache"):
        assert (workspace.root / folder).is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool", "ws"]  # no staging left
    create = workspace.registry.audit_trail()[0]
    assert (create["action"], create["user"], create["detail"]["images"]) == ("create", "ana", 3)
    assert list(pool.glob("*")) and not list(workspace.root.rglob("*.nrrd"))  # nothing copied

    reopened = Workspace.open(workspace.root)
    assert reopened.config == workspace.config
    assert reopened.registry.counts()["unlabeled"] == 3


def test_create_from_files_dicom_and_duplicate_names(tmp_path: Path) -> None:
    first = write_volume(tmp_path / "site1" / "scan.nii.gz")
    second = write_volume(tmp_path / "site2" / "scan.nrrd", seed=4)
    dicom = write_dicom_series(tmp_path / "dicom" / "scan")
    assert find_images([tmp_path / "dicom"]) == [dicom.resolve()]
    workspace = Workspace.create(tmp_path / "ws", [first, second, tmp_path / "dicom"])
    assert [(case["case_id"], Path(case["image_path"])) for case in workspace.cases()] == [
        ("scan", first.resolve()),
        ("scan_2", second.resolve()),
        ("scan_3", dicom.resolve()),
    ]
    assert workspace.config.label_names == {1: "foreground"}


def test_create_imports_matching_labels(tmp_path: Path, pool: Path) -> None:
    labels = tmp_path / "truth"
    write_volume(labels / "case_b.nii.gz", label_array(), dtype=np.uint8)
    write_volume(labels / "unrelated.nii.gz", label_array(), dtype=np.uint8)
    workspace = Workspace.create(
        tmp_path / "ws", [pool], label_names=LABEL_NAMES, labels_dir=labels, user="ana"
    )
    assert workspace.registry.counts() == {
        "unlabeled": 2,
        "labeled": 1,
        "skipped": 0,
        "held-out": 0,
    }
    stored = workspace.label_path("case_b")
    assert stored == workspace.labels_dir / "case_b.nii.gz"
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(sitk.ReadImage(str(stored))), label_array()
    )
    imported = workspace.registry.audit_trail("case_b")
    assert [row["action"] for row in imported] == ["import-label"]
    assert imported[0]["detail"]["sha256"] == workspace.registry.case("case_b")["label_sha256"]


def _refused(
    tmp_path: Path, images: list[Path], message: str, named: Path | None, **kwargs: object
) -> None:
    """Creation must fail with ``message`` (naming ``named``) and leave nothing behind."""
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(BadInputError, match=message) as caught:
        Workspace.create(tmp_path / "new" / "ws", images, **kwargs)  # type: ignore[arg-type]
    if named is not None:
        assert str(named) in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_create_refuses_bad_images_leaving_nothing(tmp_path: Path, pool: Path) -> None:
    corrupt = pool / "case_d.nii.gz"
    corrupt.write_bytes(b"\x00garbage" * 50)
    _refused(tmp_path, [pool], "not an image", corrupt)

    corrupt.unlink()
    flat = pool / "flat.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((9, 8), np.float32)), str(flat))
    _refused(tmp_path, [pool], "is 2D", flat)

    flat.unlink()
    nan = np.zeros((10, 9, 8), np.float32)
    nan[0, 0, 0] = np.nan
    nan_path = write_volume(pool / "nan.nii.gz", nan)
    _refused(tmp_path, [pool], "contains 1 NaN voxels", nan_path)
    nan_path.unlink()

    _refused(tmp_path, [pool / "missing.nii.gz"], "does not exist", pool / "missing.nii.gz")


def test_create_refuses_an_empty_pool(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    _refused(tmp_path, [empty], "no images found in", empty)


def test_create_refuses_bad_labels_leaving_nothing(tmp_path: Path, pool: Path) -> None:
    labels = tmp_path / "truth"
    bad = write_volume(labels / "case_a.nii.gz", label_array((1, 7)), dtype=np.uint8)
    _refused(
        tmp_path,
        [pool],
        r"undeclared label values \[7\]",
        bad,
        label_names=LABEL_NAMES,
        labels_dir=labels,
    )


def test_create_refuses_an_existing_workspace(
    tmp_path: Path, workspace: Workspace, pool: Path
) -> None:
    config = (workspace.root / "assft.json").read_bytes()
    with pytest.raises(BadInputError, match="already holds an ASSFT workspace") as caught:
        Workspace.create(workspace.root, [pool])
    assert str(workspace.root) in str(caught.value)
    assert (workspace.root / "assft.json").read_bytes() == config
    assert len(Workspace.open(workspace.root).cases()) == 3

    other = tmp_path / "busy"
    other.mkdir()
    (other / "thesis.docx").write_text("precious")
    with pytest.raises(BadInputError, match="not an empty folder"):
        Workspace.create(other, [pool])
    assert [p.name for p in other.iterdir()] == ["thesis.docx"]


def test_create_in_an_existing_empty_folder(tmp_path: Path, pool: Path) -> None:
    (tmp_path / "ws").mkdir()
    assert len(Workspace.create(tmp_path / "ws", [pool]).cases()) == 3


def test_open_refuses_what_is_not_a_workspace(tmp_path: Path, workspace: Workspace) -> None:
    with pytest.raises(BadInputError, match="does not exist"):
        Workspace.open(tmp_path / "nowhere")
    with pytest.raises(BadInputError, match=r"is not an ASSFT workspace \(no assft.json\)"):
        Workspace.open(tmp_path / "pool")

    config = workspace.root / "assft.json"
    config.write_text("{broken")
    with pytest.raises(BadInputError, match="not a valid ASSFT configuration") as caught:
        Workspace.open(workspace.root)
    assert str(config) in str(caught.value)

    config.write_text(json.dumps({"labels": [{"value": 1, "name": "a", "color": [0, 0, 0]}]}))
    (workspace.root / "registry.sqlite").unlink()
    with pytest.raises(BadInputError, match="registry.sqlite: is missing"):
        Workspace.open(workspace.root)


def test_a_pipe_or_a_device_among_the_images_is_refused_in_one_line(tmp_path):
    import os

    from assft.errors import BadInputError

    if not hasattr(os, "mkfifo"):
        pytest.skip("named pipes are POSIX")
    pipe = tmp_path / "scan.nii.gz"
    os.mkfifo(pipe)
    for item in (pipe, Path("/dev/zero")):
        with pytest.raises(BadInputError, match="is neither an image file nor a folder"):
            find_images([item])


def test_a_workspace_is_never_made_inside_another(tmp_path, synthetic_pool):
    """Not in its labels/ folder nor anywhere below it: the other workspace stays as it was."""
    _, cases = synthetic_pool
    outer = Workspace.create(tmp_path / "outer", [cases[0].image])
    before = sorted(p.relative_to(outer.root) for p in outer.root.rglob("*"))
    for inside in (outer.root / "labels" / "nested", outer.root / "deeper" / "ws"):
        with pytest.raises(BadInputError, match=f"lies inside the workspace {outer.root}"):
            Workspace.create(inside, [cases[1].image])
        assert not inside.exists()
    assert sorted(p.relative_to(outer.root) for p in outer.root.rglob("*")) == before

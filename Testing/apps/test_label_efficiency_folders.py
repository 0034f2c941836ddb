"""``assft bench label-efficiency --images DIR --labels DIR``: the benchmark on a lab's own labeled
scans. Cases are matched by name across image formats, every refusal is one line naming the file,
and a tiny run goes end to end without touching the project's BENCHMARKS.md."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from assft.apps import simulation
from assft.apps.simulation import Dataset
from assft.errors import BadInputError
from assft_testing import run_cli
from assft_testing.workspaces import (
    LABEL_NAMES,
    SIZE_XYZ,
    label_array,
    write_dicom_series,
    write_volume,
)

REPO = Path(__file__).resolve().parents[2]

# Image and label formats per case: the label need not share its image's format.
FORMATS = [
    ("a01", ".nii.gz", ".nrrd"),
    ("a02", ".nrrd", ".nii.gz"),
    ("a03", ".mha", ".nii"),
    ("a04", ".nii", ".mha"),
    ("a05", ".mhd", ".nii.gz"),
    ("a06", ".nii.gz", ".mhd"),
    ("a07", ".nrrd", ".nrrd"),
    ("a08", ".nii.gz", ".nii.gz"),
]


def _folders(tmp_path: Path, formats=FORMATS) -> tuple[Path, Path]:
    images, labels = tmp_path / "images", tmp_path / "labels"
    for index, (case_id, image_suffix, label_suffix) in enumerate(formats):
        write_volume(images / f"{case_id}{image_suffix}", seed=index)
        write_volume(labels / f"{case_id}{label_suffix}", label_array(), dtype=np.uint16)
    return images, labels


def _refusal(images: Path, labels: Path, **kwargs) -> str:
    with pytest.raises(BadInputError) as raised:
        Dataset.from_folders(images, labels, **kwargs)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_cases_are_matched_by_name_across_formats(tmp_path):
    images, labels = _folders(tmp_path)
    # Not images: left alone (a note, a hidden file, a MetaImage's data file, a plain folder).
    (images / "notes.txt").write_text("scanner protocol\n")
    (labels / ".DS_Store").write_bytes(b"\0")
    (images / "not-a-series").mkdir()
    dataset = Dataset.from_folders(images, labels, label_names=LABEL_NAMES)
    # Every 4th case in sorted order is a test scan, as in the sample data.
    assert [c.case_id for c in dataset.test] == ["a04", "a08"]
    assert [c.case_id for c in dataset.pool] == ["a01", "a02", "a03", "a05", "a06", "a07"]
    for case in dataset.pool + dataset.test:
        _, image_suffix, label_suffix = next(f for f in FORMATS if f[0] == case.case_id)
        assert case.image == images / f"{case.case_id}{image_suffix}"
        assert case.truth == labels / f"{case.case_id}{label_suffix}"
    other = Dataset.from_folders(images, labels, test_every=2)
    assert [c.case_id for c in other.test] == ["a02", "a04", "a06", "a08"]


def test_a_dicom_series_folder_is_a_case(tmp_path):
    images, labels = _folders(tmp_path, FORMATS[:3])
    write_dicom_series(images / "d01")
    write_volume(labels / "d01.nii.gz", label_array(), dtype=np.uint16)
    dataset = Dataset.from_folders(images, labels, label_names=LABEL_NAMES)
    assert [c.case_id for c in dataset.pool] == ["a01", "a02", "a03"]
    assert [(c.case_id, c.image.name) for c in dataset.test] == [("d01", "d01")]


def test_geometry_is_checked_from_the_headers(tmp_path, monkeypatch):
    """Without label names nothing but headers is read (a lab's scans may be large)."""
    images, labels = _folders(tmp_path)

    def no_pixels(path, *args, **kwargs):
        raise AssertionError(f"read the pixels of {path}")

    monkeypatch.setattr(simulation, "read_image", no_pixels)
    monkeypatch.setattr(simulation, "read_label", no_pixels)
    assert len(Dataset.from_folders(images, labels).pool) == 6
    write_volume(labels / "a02.nii.gz", label_array(), dtype=np.uint16, spacing=(1, 1, 1))
    assert "spacing" in _refusal(images, labels)


def test_an_image_without_a_label_is_refused(tmp_path):
    images, labels = _folders(tmp_path)
    (labels / "a03.nii").unlink()
    message = _refusal(images, labels)
    assert str(images / "a03.mha") in message
    assert "has no label in" in message and "matched to images by file name" in message
    (labels / "a05.nii.gz").unlink()
    assert "1 other image(s) have none either" in _refusal(images, labels)


def test_a_label_without_an_image_is_refused(tmp_path):
    images, labels = _folders(tmp_path)
    write_volume(labels / "a09.nrrd", label_array(), dtype=np.uint16)
    message = _refusal(images, labels)
    assert message.startswith(f"{labels / 'a09.nrrd'}: matches no image in {images}")
    assert "matched to images by file name" in message


@pytest.mark.parametrize("folder", ["images", "labels"])
def test_two_files_of_one_case_are_refused(tmp_path, folder):
    images, labels = _folders(tmp_path)
    write_volume(tmp_path / folder / "a01.mha", label_array(), dtype=np.uint16)
    message = _refusal(images, labels)
    first, second = sorted(p.name for p in (tmp_path / folder).glob("a01.*") if p.suffix != ".raw")
    assert message.startswith(f"{tmp_path / folder / second}: gives case id 'a01', like {first}")
    assert f"two {folder} of one case" in message


def test_a_label_off_its_image_grid_is_refused(tmp_path):
    images, labels = _folders(tmp_path)
    smaller = label_array()[:, :, :-1]
    write_volume(labels / "a02.nii.gz", smaller, dtype=np.uint16)
    message = _refusal(images, labels)
    assert message.startswith(f"{labels / 'a02.nii.gz'}: does not fit its image {images}/a02.nrrd")
    assert f"size {(SIZE_XYZ[0] - 1, *SIZE_XYZ[1:])} differs from the image's {SIZE_XYZ}" in message
    write_volume(labels / "a02.nii.gz", label_array(), dtype=np.uint16, origin=(0.0, 0.0, 0.0))
    message = _refusal(images, labels)
    assert "origin (0.0, 0.0, 0.0) differs" in message
    assert f"sizes: label {SIZE_XYZ}, image {SIZE_XYZ}" in message
    write_volume(labels / "a02.nii.gz", label_array(), dtype=np.uint16)
    write_volume(
        labels / "a03.nii", label_array(), dtype=np.uint16, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)
    )
    assert "direction" in _refusal(images, labels)


def test_undeclared_label_values_are_refused(tmp_path):
    images, labels = _folders(tmp_path)
    write_volume(labels / "a06.mhd", label_array((1, 7)), dtype=np.uint16)
    message = _refusal(images, labels, label_names=LABEL_NAMES)
    assert message.startswith(f"{labels / 'a06.mhd'}: holds undeclared label values [7]")
    assert "1 (grey matter), 2 (white matter)" in message
    assert Dataset.from_folders(images, labels, label_names={**LABEL_NAMES, 7: "lesion"})


def test_empty_missing_and_shared_folders_are_refused(tmp_path):
    images, labels = _folders(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("labels come later\n")
    assert _refusal(empty, labels).startswith(f"{empty}: holds no images (.nii.gz, .nii")
    assert _refusal(images, empty).startswith(f"{empty}: holds no labels")
    assert _refusal(tmp_path / "nowhere", labels).startswith(f"{tmp_path / 'nowhere'}: does not")
    assert "both the images and the labels folder" in _refusal(images, images)


def test_too_few_cases_for_a_pool_and_a_test_set_are_refused(tmp_path):
    images, labels = _folders(tmp_path, FORMATS[:3])
    message = _refusal(images, labels)
    assert message.startswith(f"{images}: holds 3 labeled case(s); at least 4 are needed")
    assert "every 4th case is a test scan" in message
    assert len(Dataset.from_folders(images, labels, test_every=3).test) == 1
    assert "test_every must be 2 or more" in _refusal(images, labels, test_every=1)


def test_a_budget_larger_than_the_pool_is_refused(tmp_path):
    from assft.apps.label_efficiency import run_label_efficiency

    images, labels = _folders(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(
        BadInputError,
        match="budget 8 needs a pool of at least 8 cases, that is "
        r"at least 10 labeled cases .*; there are 8 \(6 for the pool, 2 to test\)",
    ):
        run_label_efficiency(
            out, images=images, labels=labels, label_names=LABEL_NAMES, budgets=(2, 8)
        )
    assert not out.exists()  # refused before anything was written


def test_the_cli_refuses_in_one_line(tmp_path):
    images, labels = _folders(tmp_path)
    common = ["bench", "label-efficiency", "--out", str(tmp_path / "out")]
    result = run_cli(
        *common, "--images", str(images), "--labels", str(labels), "--label-names", "1:grey matter"
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"assft: error: {labels / 'a01.nrrd'}: holds undeclared label values [2]; "
        "declared: 1 (grey matter)"
    ]
    result = run_cli(*common, "--images", str(images))
    assert result.returncode == 2 and "--images and --labels go together" in result.stderr
    result = run_cli("bench", "speed", "--out", str(tmp_path / "out"), "--images", str(images))
    assert result.returncode == 2 and "only for assft bench label-efficiency" in result.stderr
    assert not (tmp_path / "out").exists()


def _copy_as(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.ReadImage(str(source)), str(destination))


def test_bench_on_own_folders_end_to_end(tmp_path, synthetic_pool, tiny_preset_file):
    """A tiny grid (random, budget 1, one seed, 2 steps) on 8 synthetic cases in mixed formats;
    the project's BENCHMARKS.md is left alone, the section goes into --out."""
    _, cases = synthetic_pool
    images, labels, out = tmp_path / "scans", tmp_path / "segmentations", tmp_path / "le"
    for index, case in enumerate(cases):
        suffix = (".nii.gz", ".nrrd")[index % 2]
        _copy_as(case.image, images / f"{case.case_id}{suffix}")
        _copy_as(case.label, labels / f"{case.case_id}{('.nrrd', '.mha')[index % 2]}")
    benchmarks = REPO / "BENCHMARKS.md"
    before = hashlib.sha256(benchmarks.read_bytes()).hexdigest(), benchmarks.stat().st_mtime_ns
    args = [
        "bench",
        "label-efficiency",
        "--images",
        str(images),
        "--labels",
        str(labels),
        "--model",
        str(tiny_preset_file),
        "--label-names",
        "1:shell,2:core",
        "--out",
        str(out),
        "--strategies",
        "random",
        "--budgets",
        "1",
        "--seeds",
        "0",
        "--iterations",
        "2",
        "--views",
        "1",
        "--no-ablations",
        "--device",
        "cpu",
        "--progress",
        "none",
    ]
    document = json.loads(run_cli(*args, "--json", check=True).stdout)
    setup = document["setup"]
    assert (setup["pool"], setup["test"], setup["images"]) == (6, 2, str(images))
    assert setup["label_names"] == {"1": "shell", "2": "core"}
    assert [c["case_id"] for c in document["test_cases"]] == ["case_003", "case_007"]
    runs = {(r["strategy"], r["mode"], r["budget"]) for r in document["runs"]}
    assert {("random", m, 1) for m in ("none", "all", "selective")} <= runs
    assert all(math.isfinite(r["test_dice"]) for r in document["runs"])
    assert set(document["runs"][0]["test_per_case"]) == {"case_003", "case_007"}
    section = out / "label-efficiency.md"
    assert document["written"]["markdown"] == str(section)
    assert f"pool of 6 labeled scans of `{images}`" in section.read_text(encoding="utf-8")
    assert json.loads((out / "label-efficiency.json").read_text())["runs"] == document["runs"]
    # Rerun without --json: nothing is repeated, and the summary says where everything went.
    lines = (out / "runs.jsonl").read_text()
    # The table holds non-ASCII signs (±); read them as UTF-8 whatever this process's locale is
    # (GDCM sets it to "C" once a DICOM series has been written, as an earlier test does).
    printed = subprocess.run(
        [sys.executable, "-m", "assft", *args],
        capture_output=True,
        encoding="utf-8",
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"},
        timeout=300,
        check=True,
    ).stdout
    assert "± 0.0000" in printed
    assert (out / "runs.jsonl").read_text() == lines
    assert f"Results: {out / 'label-efficiency.json'}" in printed
    assert f"this summary: {section}" in printed
    after = hashlib.sha256(benchmarks.read_bytes()).hexdigest(), benchmarks.stat().st_mtime_ns
    assert after == before
    shutil.rmtree(out)

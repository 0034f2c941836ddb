"""Sample data from the MNI152 template: deterministic, valid labels, one geometry, shift info."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from assft.datasets import sampledata
from assft.datasets.sampledata import LEVELS, SHIFT_KINDS, make_case, plan_case, write_sample_data
from assft.errors import BadInputError
from assft_testing import run_cli, skip_without_template

SPACING = 8.0  # 24^3 voxels: the coarse grid keeps these tests fast


needs_template = skip_without_template()


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    manifest = write_sample_data(out, 3, n_source=2, seed=5, spacing=SPACING)
    return out, manifest


def _read(path: Path) -> sitk.Image:
    return sitk.ReadImage(str(path))


@needs_template
def test_layout_and_manifest(sample) -> None:
    out, manifest = sample
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["labels"] == {
        "1": "grey matter",
        "2": "white matter",
        "3": "cerebrospinal fluid",
    }
    assert manifest["shape"] == [24, 24, 24] and manifest["spacing_mm"] == SPACING
    assert "nilearn" in (manifest["template"]["package"] or "")
    ids = [c["case"] for c in manifest["cases"]]
    assert ids == ["src_000", "src_001", "tgt_000", "tgt_001", "tgt_002"]
    for case in manifest["cases"]:
        assert (out / case["image"]).is_file() and (out / case["label"]).is_file()
        assert Path(case["image"]).name == Path(case["label"]).name
        assert case["image"].startswith(f"{case['domain']}/images/")
        assert case["seed"] == [5, 0 if case["domain"] == "source" else 1, case["index"]]


@needs_template
def test_geometry_is_shared_and_labels_are_valid(sample) -> None:
    out, manifest = sample
    first = _read(out / manifest["cases"][0]["image"])
    for case in manifest["cases"]:
        image, label = _read(out / case["image"]), _read(out / case["label"])
        for item in (image, label):
            assert item.GetSize() == (24, 24, 24)
            assert item.GetSpacing() == pytest.approx((SPACING,) * 3)
            assert item.GetOrigin() == pytest.approx(first.GetOrigin())
            assert item.GetDirection() == pytest.approx(first.GetDirection())
        assert label.GetPixelID() == sitk.sitkUInt8 and image.GetPixelID() == sitk.sitkFloat32
        values = sitk.GetArrayFromImage(label)
        assert set(np.unique(values)) == {0, 1, 2, 3}
        pixels = sitk.GetArrayFromImage(image)
        assert np.isfinite(pixels).all() and pixels.min() >= 0.0
        # The brain sits inside the field of view, away from its faces.
        assert not values[[0, -1]].any() and not values[:, :, [0, -1]].any()


@needs_template
def test_deterministic_for_a_seed_and_independent_of_pool_size(sample) -> None:
    out, _ = sample
    again = make_case("target", 1, seed=5, spacing=SPACING)
    written = sitk.GetArrayFromImage(_read(out / "target/images/tgt_001.nii.gz"))
    assert np.array_equal(again.image, written)
    label = sitk.GetArrayFromImage(_read(out / "target/labels/tgt_001.nii.gz"))
    assert np.array_equal(again.label, label)
    other = make_case("target", 1, seed=6, spacing=SPACING)
    assert not np.array_equal(again.image, other.image)


@needs_template
def test_shift_metadata_and_its_effect(sample) -> None:
    out, manifest = sample
    cases = {c["case"]: c for c in manifest["cases"]}
    for case_id in ("src_000", "src_001", "tgt_000"):
        assert cases[case_id]["near_source"] and cases[case_id]["shifts"] == []
    assert [s["kind"] for s in cases["tgt_001"]["shifts"]][0] == "contrast"
    assert [s["kind"] for s in cases["tgt_002"]["shifts"]][0] == "t2like"
    for case in manifest["cases"]:
        for shift in case["shifts"]:
            assert shift["kind"] in SHIFT_KINDS
            levels = {(n, round(v, 4)) for n, v in LEVELS.values()}
            assert (shift["level"], shift["severity"]) in levels
        assert case["max_severity"] == max((s["severity"] for s in case["shifts"]), default=0.0)

    def tissue_means(case_id: str) -> dict[int, float]:
        c = cases[case_id]
        image = sitk.GetArrayFromImage(_read(out / c["image"]))
        label = sitk.GetArrayFromImage(_read(out / c["label"]))
        return {v: float(image[label == v].mean()) for v in (1, 2, 3)}

    t1 = tissue_means("src_000")
    assert t1[2] > t1[1] > t1[3]  # T1: white matter brightest, CSF darkest
    t2 = tissue_means("tgt_002")
    assert t2[3] > t2[1] > t2[2]  # the T2-like inversion


def test_plans_cover_every_kind_and_severity() -> None:
    seen = set()
    near = 0
    for index in range(60):
        plan = plan_case("target", index, np.random.default_rng(index))
        near += plan.near_source
        assert plan.near_source == (not plan.shifts)
        assert len(plan.shifts) <= 2 and len({s["kind"] for s in plan.shifts}) == len(plan.shifts)
        seen |= {(s["kind"], s["level"]) for s in plan.shifts}
    assert near == 12
    assert seen == {(k, n) for k in SHIFT_KINDS for n, _ in LEVELS.values()}
    source = plan_case("source", 3, np.random.default_rng(0))
    assert source.near_source and not source.shifts
    assert source.atrophy is None and source.lesions is None


@needs_template
def test_brain_mask_labels(tmp_path, sample) -> None:
    out, _ = sample
    manifest = write_sample_data(tmp_path, 1, n_source=0, seed=5, spacing=SPACING, brain_mask=True)
    assert manifest["labels"] == {"1": "brain"} and manifest["brain_mask"]
    mask = sitk.GetArrayFromImage(_read(tmp_path / "target/labels/tgt_000.nii.gz"))
    tissue = sitk.GetArrayFromImage(_read(out / "target/labels/tgt_000.nii.gz"))
    assert np.array_equal(mask, (tissue > 0).astype(np.uint8))


def test_missing_nilearn_is_explained(monkeypatch) -> None:
    monkeypatch.delenv(sampledata.TEMPLATE_DIR_ENV, raising=False)

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(sampledata.importlib.metadata, "distribution", missing)
    how = r'pip install "assft\[demo\]" \(or pip install --no-deps nilearn==\d'
    with pytest.raises(BadInputError, match=how):
        sampledata.locate_template()
    with pytest.raises(BadInputError, match="not installed"):
        make_case("source", 0, spacing=SPACING)


def test_template_folder_override_must_hold_the_files(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(sampledata.TEMPLATE_DIR_ENV, str(tmp_path))
    with pytest.raises(BadInputError, match="mni_icbm152_t1_tal_nlin_sym_09a_converted"):
        sampledata.locate_template()


def test_bad_arguments(tmp_path) -> None:
    with pytest.raises(BadInputError, match="spacing"):
        sampledata.grid_shape(0.1)
    with pytest.raises(BadInputError, match="domain"):
        make_case("elsewhere", 0)
    with pytest.raises(BadInputError, match="at least one case"):
        write_sample_data(tmp_path, 0, n_source=0)


@needs_template
def test_cli_sample_data(tmp_path) -> None:
    result = run_cli(
        "sample-data",
        str(tmp_path / "out"),
        "--n",
        "1",
        "--n-source",
        "1",
        "--spacing",
        "12",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["shape"] == [16, 16, 16] and "cases" not in summary
    assert (tmp_path / "out/target/images/tgt_000.nii.gz").is_file()
    missing = run_cli(
        "sample-data",
        str(tmp_path / "none"),
        "--n",
        "1",
        env={sampledata.TEMPLATE_DIR_ENV: str(tmp_path / "empty")},
    )
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "MNI152" in missing.stderr

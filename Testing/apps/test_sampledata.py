"""Sample data from the MNI152 template: deterministic, valid labels, one geometry, shift info."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from assft.apps import mni_template, sample_imaging, sampledata
from assft.apps.sample_plans import LEVELS, SHIFT_KINDS, plan_case
from assft.apps.sampledata import SITES, make_case, site_folder, write_sample_data
from assft.apps.sites import ACQUISITIONS, ARCHIVE_NAMES, SITE_NAMES, TEST_EVERY, Archive, Stratum
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
    prefixes = ["src", "t2", "lowfield", "flair", "tgt", "hospital", "multicentre"]
    assert ids == [f"{p}_{i:03d}" for p in prefixes for i in range(2 if p == "src" else 3)]
    assert list(manifest["sites"]) == list(SITE_NAMES)
    assert SITE_NAMES == ("t2", "lowfield", "flair", "mixed", "hospital", "multicentre")
    assert manifest["target"]["folder"] == manifest["sites"]["mixed"]["folder"] == "target"
    codes = {"source": 0, **{name: SITES[name].code for name in SITE_NAMES}}
    assert sorted(codes.values()) == [0, 1, 2, 3, 4, 5, 6] and codes["mixed"] == 1
    for case in manifest["cases"]:
        assert (out / case["image"]).is_file() and (out / case["label"]).is_file()
        assert Path(case["image"]).name == Path(case["label"]).name
        folder = site_folder(out, case["site"])
        assert out / case["image"] == folder / "images" / f"{case['case']}.nii.gz"
        assert case["domain"] == ("source" if case["site"] == "source" else "target")
        assert case["seed"] == [5, codes[case["site"]], case["index"]]


@needs_template
def test_geometry_is_shared_and_labels_are_valid(sample) -> None:
    out, manifest = sample
    first = _read(out / manifest["cases"][0]["image"])
    for case in manifest["cases"]:
        image, label = _read(out / case["image"]), _read(out / case["label"])
        if case["orientation"] != "RAS":  # flair is stored in LPS (see the flair test)
            image, label = sitk.DICOMOrient(image, "RAS"), sitk.DICOMOrient(label, "RAS")
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
    monkeypatch.delenv(mni_template.TEMPLATE_DIR_ENV, raising=False)

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(mni_template.importlib.metadata, "distribution", missing)
    how = r'pip install "assft\[demo\]" \(or pip install --no-deps nilearn==\d'
    with pytest.raises(BadInputError, match=how):
        mni_template.locate_template()
    with pytest.raises(BadInputError, match="not installed"):
        make_case("source", 0, spacing=SPACING)


def test_template_folder_override_must_hold_the_files(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(mni_template.TEMPLATE_DIR_ENV, str(tmp_path))
    with pytest.raises(BadInputError, match="mni_icbm152_t1_tal_nlin_sym_09a_converted"):
        mni_template.locate_template()


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
        env={mni_template.TEMPLATE_DIR_ENV: str(tmp_path / "empty")},
    )
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "MNI152" in missing.stderr


# Target sites (issue 10) ----------------------------------------------------------------------

SITE_SPACING = 6.0  # 32^3: fine enough for the tissue contrast and slice thickness to show
ACQUIRED = ("t2", "lowfield", "flair")  # the sites of one acquisition each (not mixed)


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    out = tmp_path_factory.mktemp("sites")
    manifest = write_sample_data(
        out, 4, n_source=2, sites=list(ACQUIRED), seed=3, spacing=SITE_SPACING
    )
    return out, manifest


def _arrays(out: Path, case: dict) -> tuple[np.ndarray, np.ndarray]:
    """A written case's image and label, in the template's (RAS) axis order."""
    image, label = (sitk.DICOMOrient(_read(out / case[k]), "RAS") for k in ("image", "label"))
    return sitk.GetArrayFromImage(image).astype(np.float64), sitk.GetArrayFromImage(label)


def _site_cases(manifest: dict, site: str) -> list[dict]:
    return [c for c in manifest["cases"] if c["site"] == site]


def _relative_medians(image: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """Median intensity of CSF and GM over that of WM."""
    wm = float(np.median(image[label == 2]))
    return {
        "csf": float(np.median(image[label == 3])) / wm,
        "gm": float(np.median(image[label == 1])) / wm,
    }


def _edge_transfer(image: np.ndarray, label: np.ndarray, axis: int) -> float:
    """How much of a sharp tissue edge along ``axis`` the image keeps (1: all of it).

    The image's steps between neighbours regressed on those of the piecewise-constant image
    (each label at its median): noise, independent of the labels, averages out, and a thick
    slice profile spreads an edge over several voxels along its axis.
    """
    ideal = np.zeros_like(image)
    for value in (1, 2, 3):
        ideal[label == value] = np.median(image[label == value])
    steps, ideal_steps = np.diff(image, axis=axis), np.diff(ideal, axis=axis)
    return float((steps * ideal_steps).sum() / (ideal_steps**2).sum())


def _noise(image: np.ndarray, label: np.ndarray) -> float:
    """Noise sigma over the median brain intensity, from the field of view's x faces.

    Outside the head the image is Rician noise on zero signal (Rayleigh): mean of squares 2 s^2.
    """
    background = image[:, :, [0, 1, -2, -1]]
    return float(np.sqrt((background**2).mean() / 2.0)) / float(np.median(image[label > 0]))


def test_site_names_parse_and_find_their_folders(tmp_path) -> None:
    assert sampledata.parse_sites(None) == SITE_NAMES
    assert sampledata.parse_sites("flair, t2,flair") == ("flair", "t2")
    assert sampledata.parse_sites(["mixed"]) == ("mixed",)
    with pytest.raises(BadInputError, match=r"unknown site 'mri': the sites are t2, lowfield"):
        sampledata.parse_sites("t2,mri")
    assert site_folder(tmp_path, "source") == tmp_path / "source"
    assert site_folder(tmp_path, "mixed") == tmp_path / "target"
    assert site_folder(tmp_path, "lowfield") == tmp_path / "sites" / "lowfield"
    with pytest.raises(BadInputError, match="unknown site 'target'"):
        site_folder(tmp_path, "target")


def test_site_plans_vary_as_subjects_do() -> None:
    for name in ACQUIRED:
        site = SITES[name]
        plans = [plan_case(name, i, np.random.default_rng(i)) for i in range(60)]
        assert all(p.site == name and p.domain == "target" for p in plans)
        assert not any(p.near_source or p.shifts for p in plans)
        assert all(2.5 <= p.deformation["elastic_rms_mm"] <= 4.0 for p in plans)
        atrophy = [p.atrophy["level"] for p in plans if p.atrophy]
        assert 8 <= len(atrophy) <= 30 and len(set(atrophy)) == 3  # some, of varying grades
        lesions = sum(p.lesions is not None for p in plans)
        assert lesions >= 40 if name == "flair" else 8 <= lesions <= 30  # FLAIR: most subjects
        for key, nominal in (
            ("noise_sigma", site.noise_sigma),
            ("bias_amplitude", site.bias_amplitude),
        ):
            drawn = np.array([p.acquisition[key] for p in plans]) / nominal
            assert np.all(np.abs(drawn - 1.0) <= site.jitter + 1e-3) and drawn.std() > 0.02


@needs_template
def test_site_layout_and_manifest(sites) -> None:
    out, manifest = sites
    assert list(manifest["sites"]) == list(ACQUIRED) and manifest["target"]["n"] == 0
    assert not (out / "target").exists()
    for name in ACQUIRED:
        entry = manifest["sites"][name]
        assert entry["folder"] == f"sites/{name}" and entry["prefix"] == name and entry["n"] == 4
        assert entry["seed_code"] == SITES[name].code
        description = entry["description"]
        for key in ("models", "contrast", "resolution_mm", "thickness", "noise_sigma"):
            assert key in description
        assert {"bias_amplitude", "orientation", "anatomy"} <= set(description)
        images = sorted(p.name for p in (site_folder(out, name) / "images").iterdir())
        assert images == [f"{name}_{i:03d}.nii.gz" for i in range(4)]
    lowfield = manifest["sites"]["lowfield"]["description"]
    assert lowfield["thickness"] == {"axis": "z", "factor": 1.7} and lowfield["contrast"] == "T1"
    assert manifest["sites"]["flair"]["description"]["orientation"] == "LPS"


@needs_template
def test_site_cases_are_deterministic_and_independent_of_the_count(sites, tmp_path) -> None:
    out, manifest = sites
    alone = write_sample_data(
        tmp_path, 1, n_source=0, sites="flair,t2", seed=3, spacing=SITE_SPACING
    )
    assert [c["case"] for c in alone["cases"]] == ["flair_000", "t2_000"]
    for name in ("flair", "t2"):  # written in a set of one case: the same bytes of image
        first = f"sites/{name}/images/{name}_000.nii.gz"
        assert np.array_equal(
            sitk.GetArrayFromImage(_read(tmp_path / first)),
            sitk.GetArrayFromImage(_read(out / first)),
        )
    for name in ACQUIRED:
        case = _site_cases(manifest, name)[2]
        again = make_case(name, 2, seed=3, spacing=SITE_SPACING)
        image, label = _arrays(out, case)
        assert np.array_equal(again.image, image) and np.array_equal(again.label, label)
        other = make_case(name, 2, seed=4, spacing=SITE_SPACING)
        assert not np.array_equal(again.image, other.image)


@needs_template
def test_within_a_site_the_acquisition_is_coherent(sites) -> None:
    out, manifest = sites
    measured: dict[str, list[dict[str, float]]] = {}
    for case in manifest["cases"]:
        image, label = _arrays(out, case)
        measured.setdefault(case["site"], []).append(
            {
                **_relative_medians(image, label),
                "noise": _noise(image, label),
                "z_over_x": _edge_transfer(image, label, 0) / _edge_transfer(image, label, 2),
            }
        )
    for row in measured["t2"]:  # T2: CSF > GM > WM in every case
        assert row["csf"] > row["gm"] > 1.05
    for row in measured["flair"]:  # FLAIR: CSF < WM < GM in every case
        assert row["csf"] < 0.95 and row["gm"] > 1.02
    for row in measured["lowfield"]:  # still T1: WM brightest
        assert row["gm"] < 0.95 and row["csf"] < 1.0
    source_noise = max(row["noise"] for row in measured["source"])
    assert source_noise < 0.02
    assert min(row["noise"] for row in measured["lowfield"]) > 2.5 * source_noise
    # Thick slices along z: edges blurred along z, not along x; isotropic sites keep both.
    for site, thick in (("source", False), ("t2", False), ("lowfield", True), ("flair", True)):
        for row in measured[site]:
            assert row["z_over_x"] < 0.78 if thick else row["z_over_x"] > 0.85, (site, row)


@needs_template
def test_subjects_vary_within_a_site(sites) -> None:
    _, manifest = sites
    for name in ACQUIRED:
        volumes = [tuple(c["volumes_ml"].values()) for c in _site_cases(manifest, name)]
        assert len(set(volumes)) == len(volumes)
        deformations = [json.dumps(c["deformation"]) for c in _site_cases(manifest, name)]
        assert len(set(deformations)) == len(deformations)


@needs_template
def test_lesions_are_hyperintense_on_flair_and_hypointense_on_t1(monkeypatch) -> None:
    def with_lesions(name: str) -> sampledata.SampleCase:
        for index in range(10):
            case = make_case(name, index, seed=3, spacing=SITE_SPACING)
            if case.meta["lesions"] and case.meta["lesions"]["volume_ml"] > 2.0:
                return case
        raise AssertionError(f"no {name} case with lesions among the first ten")

    cases = {name: with_lesions(name) for name in ("flair", "lowfield")}
    # The same cases without lesions: every other draw comes from its own generator.
    monkeypatch.setattr(sampledata, "_lesions", lambda *_: (None, {}))
    for name, case in cases.items():
        bare = make_case(name, case.meta["index"], seed=3, spacing=SITE_SPACING)
        assert np.array_equal(bare.label, case.label)  # lesions stay labelled as white matter
        change = (case.image - bare.image) / float(np.median(bare.image[bare.label > 0]))
        if name == "flair":
            assert change.max() > 0.2 and change.sum() > 0 and change.min() > -0.05
        else:
            assert change.min() < -0.1 and change.sum() < 0 and change.max() < 0.05


@needs_template
def test_flair_is_stored_in_another_orientation(sites) -> None:
    out, manifest = sites
    template_direction = _read(out / manifest["cases"][0]["image"]).GetDirection()  # source
    for case in _site_cases(manifest, "flair"):
        image, label = _read(out / case["image"]), _read(out / case["label"])
        orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines
        assert orientation(image.GetDirection()) == "LPS" == case["orientation"]
        assert image.GetDirection() != pytest.approx(template_direction)
        assert label.GetDirection() == image.GetDirection()
        assert label.GetOrigin() == pytest.approx(image.GetOrigin())
        assert label.GetSize() == image.GetSize() and label.GetSpacing() == image.GetSpacing()
    for case in _site_cases(manifest, "t2"):
        assert case["orientation"] == "RAS"


@needs_template
def test_the_mixed_site_is_the_old_target_pool_bit_for_bit(sample) -> None:
    out, manifest = sample
    for index in range(3):
        old, new = (
            make_case("target", index, seed=5, spacing=SPACING),
            make_case("mixed", index, seed=5, spacing=SPACING),
        )
        assert new.case_id == old.case_id == f"tgt_{index:03d}"
        assert np.array_equal(new.image, old.image) and np.array_equal(new.label, old.label)
        assert new.meta == old.meta and new.meta["site"] == "mixed"
        written = sitk.GetArrayFromImage(_read(out / f"target/images/tgt_{index:03d}.nii.gz"))
        assert np.array_equal(written, new.image)
    plan = plan_case("mixed", 7, np.random.default_rng(1))
    assert plan == plan_case("target", 7, np.random.default_rng(1))
    # The mixed pool is written once, in target/.
    assert not (out / "sites" / "mixed").exists()
    assert [c["site"] for c in manifest["cases"]].count("mixed") == 3


def test_cli_refuses_an_unknown_site_in_one_line(tmp_path) -> None:
    result = run_cli("sample-data", str(tmp_path / "out"), "--sites", "t2,3tesla", "--n", "1")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "'3tesla'" in lines[0]
    assert "t2, lowfield, flair, mixed, hospital, multicentre" in lines[0]
    assert not (tmp_path / "out").exists()


@needs_template
def test_cli_sample_data_sites(tmp_path) -> None:
    result = run_cli(
        "sample-data",
        str(tmp_path / "out"),
        "--sites",
        "lowfield,mixed",
        "--n",
        "1",
        "--n-source",
        "0",
        "--spacing",
        "12",
    )
    assert result.returncode == 0, result.stderr
    assert "lowfield 1 (sites/lowfield/)" in result.stdout and "mixed 1 (target/)" in result.stdout
    assert (tmp_path / "out/sites/lowfield/images/lowfield_000.nii.gz").is_file()
    assert (tmp_path / "out/target/labels/tgt_000.nii.gz").is_file()
    assert not (tmp_path / "out/sites/t2").exists()


# Lab archives (issue 19) -----------------------------------------------------------------------


def test_archive_strata_give_the_test_scans_and_the_pool_the_same_mix() -> None:
    for name in ARCHIVE_NAMES:
        archive = SITES[name]
        strata = [archive.stratum(i) for i in range(40)]
        test = [s.name for i, s in enumerate(strata) if i % TEST_EVERY == TEST_EVERY - 1]
        pool = [s.name for i, s in enumerate(strata) if i % TEST_EVERY != TEST_EVERY - 1]
        for stratum in archive.strata:
            for part in (test, pool):
                # Smooth weighted round robin: within one case of the share, and present in both.
                assert abs(part.count(stratum.name) - stratum.share * len(part)) < 1.0 + 1e-9
                assert part.count(stratum.name) >= 1, (name, stratum.name)
        # The first cases do not depend on how many follow.
        assert [archive.stratum(i) for i in range(12)] == strata[:12]
    majority = {name: SITES[name].strata[0] for name in ARCHIVE_NAMES}
    assert all(s.acquisition == "t1-3t" and s.share >= 0.5 for s in majority.values())
    rare = [s for name in ARCHIVE_NAMES for s in SITES[name].strata if s.artefact]
    assert [s.name for s in rare] == ["t1-3t + motion"] and rare[0].share < 0.1


def test_an_archive_must_add_up_and_name_known_acquisitions() -> None:
    with pytest.raises(ValueError, match="add up to 0.9"):
        Archive("lab", 9, "a lab", (Stratum("t2", 0.5), Stratum("flair", 0.4)))
    with pytest.raises(ValueError, match="unknown stratum"):
        Archive("lab", 9, "a lab", (Stratum("t2", 0.5), Stratum("ct", 0.5)))
    with pytest.raises(ValueError, match="unknown stratum"):
        Archive("lab", 9, "a lab", (Stratum("t2", 0.5), Stratum("t2", 0.5, artefact="wrap")))
    assert set(ACQUISITIONS) == {"t2", "lowfield", "flair", "t1-3t", "t1-se-1.5t"}


@needs_template
def test_archive_cases_record_and_follow_their_acquisition(sample) -> None:
    out, manifest = sample
    cases = {c["case"]: c for c in manifest["cases"]}
    for name in ARCHIVE_NAMES:
        entry = manifest["sites"][name]
        assert entry["folder"] == f"sites/{name}" and entry["prefix"] == name
        described = [s["stratum"] for s in entry["description"]["strata"]]
        assert described == [s.name for s in SITES[name].strata]
        for index in range(3):
            case = cases[f"{name}_{index:03d}"]
            stratum = SITES[name].stratum(index)
            assert case["site"] == name and case["seed"] == [5, SITES[name].code, index]
            assert case["protocol"] == stratum.acquisition and case["stratum"] == stratum.name
            assert (case["artefact"] is None) == (stratum.artefact is None)
    # Single sites record their protocol too; the source and the mixed pool have none.
    assert cases["t2_000"]["protocol"] == cases["t2_000"]["stratum"] == "t2"
    assert cases["src_000"]["protocol"] is None and cases["tgt_001"]["protocol"] is None
    # hospital_000 is the 3 T T1 majority, hospital_001 the FLAIR minority (stored in LPS).
    assert (cases["hospital_000"]["stratum"], cases["hospital_001"]["stratum"]) == (
        "t1-3t",
        "flair",
    )
    assert cases["hospital_001"]["orientation"] == "LPS"
    t1 = _relative_medians(*_arrays(out, cases["hospital_000"]))
    flair = _relative_medians(*_arrays(out, cases["hospital_001"]))
    assert t1["gm"] < 0.95 and t1["csf"] < t1["gm"]  # T1: WM > GM > CSF
    assert flair["gm"] > 1.02 and flair["csf"] < 0.95  # FLAIR: GM > WM > CSF


@needs_template
def test_motion_leaves_the_label_and_ghosts_the_image_along_y(monkeypatch) -> None:
    index = next(i for i in range(40) if SITES["multicentre"].stratum(i).artefact == "motion")
    moved = make_case("multicentre", index, seed=0, spacing=SITE_SPACING)
    moves = moved.meta["artefact"]["moves"]
    assert moved.meta["artefact"]["kind"] == "motion" and 1 <= len(moves) <= 2
    assert all(0.55 <= m["after_fraction_of_lines"] <= 0.85 for m in moves)
    # The same case without the motion: every other draw comes from its own generator.
    monkeypatch.setattr(sample_imaging, "_motion", lambda image, artefact, spacing: image)
    still = make_case("multicentre", index, seed=0, spacing=SITE_SPACING)
    assert np.array_equal(still.label, moved.label)
    brain = still.label > 0
    reference = float(np.median(still.image[brain]))
    change = np.abs(moved.image - still.image) / reference
    assert change[brain].mean() > 0.03  # the brain is blurred and ghosted
    # Ghosts spread along the phase-encoding axis (y), outside the head: the background on
    # the head's y sides brightens more than on its x sides.
    z, y, x = np.nonzero(brain)
    lo_y, hi_y, lo_x, hi_x = y.min(), y.max(), x.min(), x.max()
    rows = slice(z.min(), z.max() + 1)
    y_sides = np.concatenate(
        [change[rows, : lo_y - 1, lo_x:hi_x], change[rows, hi_y + 2 :, lo_x:hi_x]], 1
    )
    x_sides = np.concatenate(
        [change[rows, lo_y:hi_y, : lo_x - 1], change[rows, lo_y:hi_y, hi_x + 2 :]], 2
    )
    assert y_sides.mean() > 1.5 * x_sides.mean()

"""Prediction onto the scan's exact grid and Dice evaluation, with a tiny real MONAI UNet."""

from __future__ import annotations

import io
import json
import math
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from assft.errors import BadInputError
from assft.evaluate import evaluate_workspace
from assft.io.imaging import read_image, read_label, write_image_atomic
from assft.models import get_preset, load_model
from assft.predict import Predictor, predict_workspace
from assft.runtime.progress import Progress
from assft.workspace.creation import create_workspace

LABELS = {1: "shell", 2: "core"}


@pytest.fixture
def workspace(tmp_path, synthetic_pool, tiny_preset_file):
    data, _ = synthetic_pool
    return create_workspace(
        tmp_path / "ws", [data / "images"], model=str(tiny_preset_file), label_names=LABELS
    )


def _same_grid(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    assert a.GetSpacing() == b.GetSpacing()
    assert a.GetOrigin() == b.GetOrigin()
    assert a.GetDirection() == b.GetDirection()


def _check_prediction(label: sitk.Image, uncertainty: sitk.Image, image: sitk.Image) -> None:
    _same_grid(label, image)
    _same_grid(uncertainty, image)
    assert label.GetPixelID() == sitk.sitkUInt16
    assert uncertainty.GetPixelID() == sitk.sitkFloat32
    assert set(np.unique(sitk.GetArrayViewFromImage(label))) <= {0, 1, 2}
    entropy = sitk.GetArrayViewFromImage(uncertainty)
    assert np.isfinite(entropy).all() and entropy.min() >= 0.0 and entropy.max() <= 1.0
    assert entropy.max() > 0.0


def test_predict_maps_back_onto_the_scan_grid(workspace):
    predictor = Predictor(workspace, device="cpu", views=1)
    assert predictor.version == "v0"
    prediction = predictor.predict("case_000")
    image = read_image(workspace.image_path("case_000"))
    _check_prediction(prediction.label, prediction.uncertainty, image)
    assert prediction.case_id == "case_000" and prediction.seconds > 0


def test_predict_rotated_anisotropic_scan(tmp_path, tiny_preset_file):
    rng = np.random.default_rng(0)
    array = rng.normal(size=(9, 17, 21)).astype(np.float32)  # (z, y, x)
    array[3:6, 5:12, 6:15] += 4.0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.3, 0.7, 3.1))
    image.SetOrigin((12.5, -40.25, 7.0))
    angle = math.radians(30)
    c, s = math.cos(angle), math.sin(angle)
    # A rotation about z composed with a flip of y: no axis-aligned orientation.
    image.SetDirection((c, s, 0.0, s, -c, 0.0, 0.0, 0.0, 1.0))
    (tmp_path / "scans").mkdir()
    write_image_atomic(image, tmp_path / "scans" / "oblique.nii.gz")
    ws = create_workspace(
        tmp_path / "ws", [tmp_path / "scans"], model=str(tiny_preset_file), label_names=LABELS
    )
    rows = Predictor(ws, device="cpu", views=2).predict_to_files(["oblique"], uncertainty=True)
    scan = read_image(ws.image_path("oblique"))
    label = read_label(rows[0]["label"])
    uncertainty = sitk.ReadImage(rows[0]["uncertainty"])
    for written in (label, uncertainty):
        assert written.GetSize() == scan.GetSize()
        assert np.allclose(written.GetSpacing(), scan.GetSpacing(), atol=1e-6)
        assert np.allclose(written.GetOrigin(), scan.GetOrigin(), atol=1e-5)
        assert np.allclose(written.GetDirection(), scan.GetDirection(), atol=1e-6)
    assert set(np.unique(sitk.GetArrayViewFromImage(label))) <= {0, 1, 2}
    entropy = sitk.GetArrayViewFromImage(uncertainty)
    assert entropy.min() >= 0.0 and entropy.max() <= 1.0


def test_predict_to_files_default_folder_inside_workspace(workspace):
    predictor = Predictor(workspace, device="cpu", views=1)
    rows = predictor.predict_to_files(["case_001", "case_002"], uncertainty=True)
    folder = workspace.root / "predictions" / "v0"
    assert [row["case"] for row in rows] == ["case_001", "case_002"]
    for row in rows:
        assert row["label"] == str(folder / f"{row['case']}.nii.gz")
        assert row["uncertainty"] == str(folder / f"{row['case']}_uncertainty.nii.gz")
        assert row["seconds"] >= 0
        image = read_image(workspace.image_path(row["case"]))
        _check_prediction(read_label(row["label"]), sitk.ReadImage(row["uncertainty"]), image)
    assert not any(p.name.startswith(".tmp") for p in folder.iterdir())


def test_predict_workspace_all_cases_to_an_outside_folder(workspace, tmp_path):
    stream = io.StringIO()
    out = tmp_path / "elsewhere" / "preds"
    document = predict_workspace(
        workspace, None, True, out, None, "cpu", False, Progress("json", stream), views=1
    )
    assert document["model_version"] == "v0"
    assert len(document["predictions"]) == 8
    assert all(row["uncertainty"] is None for row in document["predictions"])
    assert sorted(p.name for p in out.iterdir()) == [f"case_{i:03d}.nii.gz" for i in range(8)]
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert events[0]["phase"] == "predict" and events[0]["total"] == 8
    assert events[-1]["done"] == 8 and events[-1]["case"] == "case_007"


def test_predict_workspace_refuses_bad_requests(workspace, tmp_path):
    with pytest.raises(BadInputError, match="either"):
        predict_workspace(workspace, None, False, None, None, "cpu", False, None, views=1)
    with pytest.raises(BadInputError, match="either"):
        predict_workspace(workspace, "case_000", True, None, None, "cpu", False, None, views=1)
    with pytest.raises(BadInputError, match="unknown case"):
        predict_workspace(workspace, "case_999", False, None, None, "cpu", False, None, views=1)
    with pytest.raises(BadInputError, match="not a valid case id"):
        Predictor(workspace, device="cpu", views=1).predict_to_files(["../x"], tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_model_versions(workspace, tiny_preset_file):
    with pytest.raises(BadInputError, match="v7"):
        Predictor(workspace, version="v7", device="cpu")
    for bad in ("latest", "../v1", "v1/../v2", "V1"):
        with pytest.raises(BadInputError, match="not a model version"):
            Predictor(workspace, version=bad, device="cpu")
    preset = get_preset(str(tiny_preset_file))
    from assft.workspace.model_versions import ModelVersions

    version = ModelVersions(workspace).add_version(
        load_model(preset, label_values=[1, 2]).network.state_dict(), {"mode": "test"}
    )
    assert version == "v1"
    predictor = Predictor(workspace, version="v1", device="cpu", views=1)
    assert predictor.version == "v1" and predictor.has_head
    rows = predictor.predict_to_files(["case_003"])
    assert rows[0]["label"] == str(workspace.root / "predictions" / "v1" / "case_003.nii.gz")
    workspace.set_current_model_version("v1")
    assert Predictor(workspace, device="cpu", views=1).version == "v1"


def test_evaluate_dice_per_case_and_structure(workspace, synthetic_pool):
    data, _ = synthetic_pool
    chosen = ["case_000", "case_002", "case_005"]
    stream = io.StringIO()
    document = evaluate_workspace(
        workspace,
        data / "truth",
        device="cpu",
        cases=chosen,
        views=1,
        progress=Progress("json", stream),
    )
    assert document["model_version"] == "v0"
    assert document["n_cases"] == 3
    assert [row["case"] for row in document["cases"]] == chosen
    for row in document["cases"]:
        assert row["status"] == "unlabeled"
        assert set(row["dice"]) == {"shell", "core"}
        for value in row["dice"].values():
            assert value is not None and 0.0 <= value <= 1.0
        assert row["mean_dice"] == pytest.approx(np.mean(list(row["dice"].values())), abs=1e-6)
    for name, mean in document["per_structure"].items():
        expected = np.mean([row["dice"][name] for row in document["cases"]])
        assert mean == pytest.approx(expected, abs=1e-6)
        assert 0.0 <= mean <= 1.0
    assert document["mean_dice"] == pytest.approx(
        np.mean(list(document["per_structure"].values())), abs=1e-6
    )
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert events[0]["phase"] == "evaluate" and events[-1]["done"] == 3


def test_evaluate_only_cases_with_a_truth_file(workspace, synthetic_pool, tmp_path):
    data, _ = synthetic_pool
    truth = tmp_path / "truth"
    truth.mkdir()
    shutil.copy(data / "truth" / "case_004.nii.gz", truth / "case_004.nii.gz")
    (truth / "notes.txt").write_text("not a label")
    (truth / "unrelated.nii.gz").write_bytes(b"")
    document = evaluate_workspace(workspace, truth, device="cpu", views=1)
    assert [row["case"] for row in document["cases"]] == ["case_004"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BadInputError, match="no reference label") as raised:
        evaluate_workspace(workspace, empty, device="cpu", views=1)
    assert str(empty) in str(raised.value)
    with pytest.raises(BadInputError, match="does not exist"):
        evaluate_workspace(workspace, tmp_path / "missing", device="cpu", views=1)


def test_evaluate_refuses_a_truth_on_another_grid(workspace, synthetic_pool, tmp_path):
    data, _ = synthetic_pool
    truth = tmp_path / "truth"
    truth.mkdir()
    label = read_label(data / "truth" / "case_001.nii.gz")
    label.SetSpacing((2.0, 2.0, 2.0))
    write_image_atomic(label, truth / "case_001.nrrd")
    with pytest.raises(BadInputError, match="spacing") as raised:
        evaluate_workspace(workspace, truth, device="cpu", views=1)
    assert str(truth / "case_001.nrrd") in str(raised.value)


def test_evaluate_refuses_unknown_cases_and_versions(workspace, synthetic_pool):
    data, _ = synthetic_pool
    with pytest.raises(BadInputError, match="unknown case"):
        evaluate_workspace(workspace, data / "truth", device="cpu", cases=["nope"], views=1)
    with pytest.raises(BadInputError, match="v3"):
        evaluate_workspace(workspace, data / "truth", version="v3", device="cpu", views=1)

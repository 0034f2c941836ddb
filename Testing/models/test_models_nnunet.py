"""nnU-Net v2 results folders as models (``--model nnunet:PATH``) and as what ``assft export
--format nnunet`` gives back.

The folder is made by nnU-Net itself (its planner, preprocessing and trainer:
``assft_testing.nnunet``); what the engine predicts is compared with nnU-Net's own
``nnUNetPredictor`` on the same scans, before and after fine-tuning.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from assft.errors import BadInputError
from assft.models import get_preset, load_model
from assft.models.checkpoints import read_checkpoint
from assft.models.nnunet import NnunetNetwork, preset_from_nnunet
from assft.predict import Predictor
from assft.training import FinetuneConfig
from assft.training.finetune import run_finetune
from assft.workspace.creation import create_workspace
from assft.workspace.export import export_version
from assft_testing import run_cli

pytest.importorskip("nnunetv2", reason="nnU-Net models need nnunetv2")

from assft_testing.nnunet import (  # noqa: E402
    DATASET,
    build_nnunet_model,
    nnunet_predict,
    prebuilt_nnunet_model,
)


@pytest.fixture(scope="module")
def nnunet_model(tmp_path_factory) -> Path:
    """The model ``make setup`` built (read only here), else one built now (about 30 s)."""
    return prebuilt_nnunet_model() or build_nnunet_model(tmp_path_factory.mktemp("nnunet"))


def _images(model: Path) -> list[Path]:
    raw = model.parents[2] / "raw" / DATASET
    return sorted((raw / "imagesTr").glob("*.nii.gz"))


def _dice_per_structure(a: sitk.Image, b: sitk.Image) -> list[float]:
    x = sitk.GetArrayFromImage(a)
    y = sitk.GetArrayFromImage(b)
    assert x.shape == y.shape
    return [
        float(2 * ((x == k) & (y == k)).sum() / max(1, (x == k).sum() + (y == k).sum()))
        for k in (1, 2)
    ]


def test_an_nnunet_folder_opens_with_nnunets_plans_labels_and_weights(nnunet_model) -> None:
    preset = get_preset(f"nnunet:{nnunet_model}")
    plans = json.loads((nnunet_model / "plans.json").read_text())["configurations"]["3d_fullres"]
    # nnU-Net's arrays are SimpleITK's (z, y, x); the engine's are (x, y, z).
    assert preset.patch_size == tuple(reversed(plans["patch_size"])) == (40, 40, 32)
    assert preset.spacing == (4.0, 4.0, 4.0)
    assert preset.label_names == {1: "shell", 2: "core"}
    assert preset.intensity == {"kind": "zscore", "nonzero": False}
    assert "PlainConvUNet" in preset.description
    assert "prototype estimator" in preset.description  # instance normalisation
    model = load_model(preset)
    assert model.pretrained and model.has_head and not model.head_reinitialised
    assert not model.has_batchnorm


def test_the_engine_predicts_what_nnunet_predicts_before_and_after_fine_tuning(
    nnunet_model, tmp_path
) -> None:
    images = _images(nnunet_model)
    # nnU-Net's test-time mirroring (all 8 flips here) against the engine's 8 views.
    reference = nnunet_predict(nnunet_model, images[:3], tmp_path / "nnunet-v0", mirroring=True)
    workspace = create_workspace(tmp_path / "ws", images, model=f"nnunet:{nnunet_model}")
    assert workspace.config.model == f"nnunet:{nnunet_model}"
    _assert_same_predictions(workspace, reference, views=8)

    labels = nnunet_model.parents[2] / "raw" / DATASET / "labelsTr"
    for case in ("case_000", "case_001"):
        workspace.submit_label(f"{case}_0000", labels / f"{case}.nii.gz", user="test")
    run_finetune(workspace, FinetuneConfig(iterations=4, semi_iterations=2, views=1), device="cpu")
    out = tmp_path / "export" / nnunet_model.name
    result = export_version(workspace, None, out, format="nnunet")
    assert result["version"] == "v1" and result["format"] == "nnunet"
    assert {p.name for p in out.iterdir()} == {"plans.json", "dataset.json", "fold_0"}
    exported = read_checkpoint(out / "fold_0" / "checkpoint_final.pth")
    source = read_checkpoint(nnunet_model / "fold_0" / "checkpoint_final.pth")
    assert exported["trainer_name"] == source["trainer_name"]
    assert exported["init_args"]["configuration"] == "3d_fullres"
    changed = [
        k
        for k in source["network_weights"]
        if not torch.equal(source["network_weights"][k], exported["network_weights"][k])
    ]
    assert changed, "the export holds the fine-tuned weights, not the source's"

    theirs = nnunet_predict(out, images[:3], tmp_path / "nnunet-v1")
    _assert_same_predictions(workspace, theirs)


def test_several_folds_run_as_nnunets_ensemble_and_export_fold_by_fold(
    nnunet_model, tmp_path
) -> None:
    folder = _copy(nnunet_model, tmp_path)
    # A second fold: fold 0's checkpoint with its weights moved, in nnU-Net's own layout (the
    # move is a function of each value: nnU-Net saves shared weights under two names).
    checkpoint = read_checkpoint(folder / "fold_0" / "checkpoint_final.pth")
    checkpoint["network_weights"] = {
        key: value + 0.2 * value.std() * torch.sin(37.0 * value)
        if value.is_floating_point() and value.numel() > 1
        else value
        for key, value in checkpoint["network_weights"].items()
    }
    (folder / "fold_1").mkdir()
    torch.save(checkpoint, folder / "fold_1" / "checkpoint_final.pth")
    preset = get_preset(f"nnunet:{folder}")
    assert preset.arguments["folds"] == 2
    assert "folds 0, 1 run as nnU-Net runs them, an ensemble" in preset.description
    network = load_model(preset).network
    x = torch.randn(1, 1, 40, 40, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        each = [NnunetNetwork(fold, network.axes)(x) for fold in network.network.folds]
        # nnU-Net's predictor averages the folds' logits; the two folds do differ.
        assert torch.allclose(network(x), torch.stack(each).mean(0), atol=1e-5)
    assert (each[0].argmax(1) != each[1].argmax(1)).float().mean() > 0.01
    images = _images(nnunet_model)[:1]
    theirs = nnunet_predict(folder, images, tmp_path / "nnunet", folds=(0, 1))
    workspace = create_workspace(tmp_path / "ws", images, model=f"nnunet:{folder}")
    _assert_same_predictions(workspace, theirs)
    out = tmp_path / "export" / folder.name
    export_version(workspace, "v0", out, format="nnunet")
    for fold in ("0", "1"):
        exported = read_checkpoint(out / f"fold_{fold}" / "checkpoint_final.pth")
        source = read_checkpoint(folder / f"fold_{fold}" / "checkpoint_final.pth")
        different = [
            k
            for k, v in source["network_weights"].items()
            if not torch.equal(exported["network_weights"][k], v)
        ]
        assert not different, (fold, different[:3])


def _assert_same_predictions(workspace, theirs: list[Path], views: int = 1) -> None:
    """The engine's prediction of every scan (the current version) against nnU-Net's
    (CASE.nii.gz for CASE_0000): Dice >= 0.99 for each structure."""
    predictor = Predictor(workspace, device="cpu", views=views)
    for their in theirs:
        ours = predictor.predict(their.name.replace(".nii.gz", "_0000")).label
        assert min(_dice_per_structure(ours, sitk.ReadImage(str(their)))) >= 0.99, their.name


def _copy(model: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy" / model.name
    shutil.copytree(model, copy, ignore=shutil.ignore_patterns("*.png", "*.txt"))
    return copy


def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _architecture(data: dict) -> dict:
    return data["configurations"]["3d_fullres"]["architecture"]


BAD_FOLDERS = {
    "no plans.json": (lambda m: (m / "plans.json").unlink(), "no plans.json"),
    "plans not JSON": (lambda m: (m / "plans.json").write_text("{"), "not readable JSON"),
    "no dataset.json": (lambda m: (m / "dataset.json").unlink(), "is missing"),
    "before 2.4": (
        lambda m: _edit(
            m / "plans.json", lambda d: d["configurations"]["3d_fullres"].pop("architecture")
        ),
        "before 2.4",
    ),
    "foreign network": (
        lambda m: _edit(
            m / "plans.json",
            lambda d: _architecture(d).update(network_class_name="subprocess.Popen"),
        ),
        "not one of dynamic-network-architectures",
    ),
    "foreign layer": (
        lambda m: _edit(
            m / "plans.json",
            lambda d: _architecture(d)["arch_kwargs"].update(nonlin="os.system"),
        ),
        "not a torch.nn layer",
    ),
    "two channels": (
        lambda m: _edit(
            m / "dataset.json", lambda d: d.update(channel_names={"0": "T1", "1": "T2"})
        ),
        "2 input channels",
    ),
    "regions": (
        lambda m: _edit(
            m / "dataset.json",
            lambda d: d.update(labels={"background": 0, "whole": [1, 2], "core": 2}),
        ),
        "region-based labels",
    ),
    "no fold": (lambda m: shutil.rmtree(m / "fold_0"), "no fold with a checkpoint"),
}


@pytest.mark.parametrize("damage", BAD_FOLDERS, ids=list(BAD_FOLDERS))
def test_a_bad_nnunet_folder_is_refused_in_one_line(nnunet_model, tmp_path, damage) -> None:
    folder = _copy(nnunet_model, tmp_path)
    change, expected = BAD_FOLDERS[damage]
    change(folder)
    with pytest.raises(BadInputError) as error:
        load_model(preset_from_nnunet(f"nnunet:{folder}"))
    assert expected in str(error.value)
    assert "\n" not in str(error.value)


def test_a_preset_file_naming_an_nnunet_network_imports_nothing_else(nnunet_model, tmp_path):
    preset = get_preset(f"nnunet:{nnunet_model}").to_dict()
    preset["name"] = "edited"
    preset["arguments"]["arch_kwargs"]["nonlin"] = "os.system"
    preset["arguments"]["arch_kwargs"]["nonlin_kwargs"] = {"command": f"touch {tmp_path}/ran"}
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(preset))
    with pytest.raises(BadInputError, match="'os.system' is not a torch.nn layer"):
        load_model(get_preset(path))
    preset["arguments"]["network_class_name"] = "subprocess.Popen"
    path.write_text(json.dumps(preset))
    with pytest.raises(BadInputError, match="'subprocess.Popen' is not one of dynamic"):
        load_model(get_preset(path))
    assert not (tmp_path / "ran").exists()


def test_a_checkpoint_holding_code_is_refused_and_init_creates_nothing(
    nnunet_model, tmp_path
) -> None:
    folder = _copy(nnunet_model, tmp_path)
    checkpoint = folder / "fold_0" / "checkpoint_final.pth"
    loaded = read_checkpoint(checkpoint)
    loaded["logging"] = {"hook": _Marker()}
    torch.save(loaded, checkpoint)
    workspace = tmp_path / "ws"
    result = run_cli(
        "init",
        str(workspace),
        "--images",
        str(_images(nnunet_model)[0]),
        "--model",
        f"nnunet:{folder}",
    )
    assert result.returncode == 2
    assert "refused (opening it could run code)" in result.stderr
    assert str(checkpoint) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not workspace.exists()
    # Only the numpy scalars of nnU-Net's training log are let through, not numpy arrays.
    loaded["logging"] = {"array": np.zeros(3)}
    torch.save(loaded, checkpoint)
    with pytest.raises(BadInputError, match="refused"):
        read_checkpoint(checkpoint)


class _Marker:
    def __reduce__(self):
        return (pickle.loads, (b"N.",))


def test_export_as_nnunet_needs_a_workspace_made_from_nnunet(tmp_path, synthetic_pool) -> None:
    from assft.datasets.synthetic import write_tiny_preset

    _, cases = synthetic_pool
    preset = write_tiny_preset(tmp_path / "tiny.json")
    workspace = create_workspace(tmp_path / "ws", [c.image for c in cases[:2]], model=preset)
    with pytest.raises(BadInputError, match="not an nnU-Net folder"):
        export_version(workspace, None, tmp_path / "out", format="nnunet")
    assert not (tmp_path / "out").exists()

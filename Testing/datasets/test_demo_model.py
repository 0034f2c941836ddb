"""The shipped pretrained demo model: safe to load, its manifest true, its figures reproducible."""

from __future__ import annotations

import hashlib
import json

import pytest
import SimpleITK as sitk
import torch

from assft.apps import sampledata
from assft.apps.pretrain import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    PretrainConfig,
    evaluate_cases,
    pretrain_demo,
)
from assft.models import get_preset, load_checkpoint_state, load_model, resources_dir
from assft_testing import skip_without_template

WEIGHTS = resources_dir() / WEIGHTS_FILE
MANIFEST = resources_dir() / MANIFEST_FILE


needs_template = skip_without_template()


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads(MANIFEST.read_text())


def test_shipped_weights_are_small_and_load_as_weights_only(manifest) -> None:
    assert WEIGHTS.stat().st_size <= 10 * 1024 * 1024
    assert hashlib.sha256(WEIGHTS.read_bytes()).hexdigest() == manifest["weights_sha256"]
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert load_checkpoint_state(WEIGHTS).keys() == state.keys()
    model = load_model(get_preset("demo"))
    assert model.pretrained and model.has_head and not model.head_reinitialised
    assert model.label_values == [1, 2, 3] and model.has_batchnorm
    for key, value in model.network.state_dict().items():
        assert torch.equal(value, state[key])


def test_manifest_matches_the_preset_and_shows_the_domain_gap(manifest) -> None:
    preset = get_preset("demo")
    assert manifest["labels"] == {str(k): v for k, v in preset.label_names.items()}
    assert {str(k): v for k, v in sampledata.LABEL_NAMES.items()} == manifest["labels"]
    assert manifest["data"]["spacing_mm"] == preset.spacing[0]
    assert manifest["command"].startswith("assft pretrain-demo")
    source = manifest["dice"]["source_validation"]
    target = manifest["dice"]["target"]
    assert source["mean"] >= 0.8  # decent on the domain it was trained on
    assert target["mean"] <= source["mean"] - 0.1  # clearly worse on the shifted pool
    for name in manifest["labels"].values():
        assert target["per_structure"][name] < source["per_structure"][name]
    near = manifest["dice"]["target_by_group"]["near_source"]["mean"]
    assert near > manifest["dice"]["target_by_group"]["t2like"]["mean"]


@needs_template
def test_source_dice_is_reproduced_on_two_validation_cases(manifest, tmp_path) -> None:
    from assft.training.data import PreparedCases

    data = manifest["data"]
    model = load_model(get_preset("demo"))
    prepared = PreparedCases(tmp_path / "prepared", model.preset, [1, 2, 3], (64, 64, 64))
    cases = []
    for case_id in data["source_validation"][:2]:
        index = int(case_id.split("_")[1])
        case = sampledata.make_case("source", index, seed=data["seed"], spacing=data["spacing_mm"])
        image, label = case.to_images()
        sitk.WriteImage(image, str(tmp_path / f"{case_id}.nii.gz"))
        sitk.WriteImage(label, str(tmp_path / f"{case_id}-label.nii.gz"))
        cases.append(
            prepared.load(
                case_id, tmp_path / f"{case_id}.nii.gz", tmp_path / f"{case_id}-label.nii.gz"
            )
        )
    for case, scores in zip(cases, evaluate_cases(model, cases, [1, 2, 3]), strict=True):
        recorded = manifest["dice"]["per_case"][case.case_id]
        for value, name in manifest["labels"].items():
            assert scores[int(value)] == pytest.approx(recorded[name], abs=0.01)


@needs_template
def test_pretraining_is_deterministic(tmp_path) -> None:
    config = PretrainConfig(
        n_source=3,
        n_source_validation=1,
        n_target=1,
        spacing=8.0,
        iterations=2,
        patch_size=(32, 32, 32),
        warmup=1,
    )
    first = pretrain_demo(tmp_path / "a", config, device="cpu", time_inference=False)
    second = pretrain_demo(tmp_path / "b", config, device="cpu", time_inference=False)
    assert first["state_sha256"] == second["state_sha256"]
    assert first["dice"] == second["dice"]
    assert first["config"]["iterations"] == 2 and first["data"]["source_validation"] == ["src_002"]
    assert (tmp_path / "a" / WEIGHTS_FILE).is_file()
    assert not (tmp_path / "a" / "data").exists()  # the data went to a removed temporary folder


def test_a_wider_demo_network_is_built_only_where_it_cannot_replace_the_shipped_weights(tmp_path):
    """``pretrain-demo --channels`` (a wider UNet, for measuring what capacity changes) builds the
    demo preset with those channels, and refuses to write over the shipped weights."""
    from assft.apps.pretrain import demo_preset
    from assft.validation import ConfigFieldError
    from assft_testing import run_cli

    wide = load_model(demo_preset((32, 64, 128, 256), checkpoint=False), device="cpu")
    shipped = load_model(get_preset("demo"), device="cpu")

    def parameters(model) -> int:
        return sum(p.numel() for p in model.network.parameters())

    assert 3.5 < parameters(wide) / parameters(shipped) < 4.5  # twice the channels
    with pytest.raises(ConfigFieldError, match="4 levels"):
        demo_preset((32, 64, 128))  # type: ignore[arg-type]
    before = WEIGHTS.read_bytes()
    refused = run_cli("pretrain-demo", "--channels", "32,64,128,256")
    assert refused.returncode == 2 and "--channels needs --out" in refused.stderr
    refused = run_cli("pretrain-demo", "--channels", "32,wide", "--out", str(tmp_path))
    assert refused.returncode == 2 and "whole numbers" in refused.stderr
    refused = run_cli("pretrain-demo", "--channels", "32,64", "--out", str(tmp_path))
    assert refused.returncode == 2 and "--channels" in refused.stderr
    assert WEIGHTS.read_bytes() == before and not list(tmp_path.iterdir())

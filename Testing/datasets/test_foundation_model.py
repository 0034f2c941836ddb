"""The shipped demo foundation encoder: safe to load, its manifest true, and the loop from it
(cold-start ranking, a new head fine-tuned, then the full ATTSQ score) on real sample scans."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from assft.apps.pretrain import state_sha256
from assft.apps.pretrain_foundation import CONTRASTS, MANIFEST_FILE, PRESET, WEIGHTS_FILE
from assft.apps.sampledata import LABEL_NAMES, write_sample_data
from assft.apps.simulation import SMALL_MODEL_FINETUNE
from assft.models import get_preset, load_checkpoint_state, load_model, resources_dir
from assft.query.config import QueryConfig
from assft.query.ranking import rank_workspace
from assft.training import FinetuneConfig
from assft.training.finetune import run_finetune
from assft.workspace.creation import create_workspace
from assft.workspace.model_versions import ModelVersions
from assft_testing import skip_without_template

WEIGHTS = resources_dir() / WEIGHTS_FILE
MANIFEST = resources_dir() / MANIFEST_FILE


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads(MANIFEST.read_text())


def test_the_shipped_encoder_is_small_has_no_head_and_its_manifest_is_true(manifest):
    assert WEIGHTS.stat().st_size <= 10 * 1024 * 1024
    assert hashlib.sha256(WEIGHTS.read_bytes()).hexdigest() == manifest["weights_sha256"]
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    assert state_sha256(state) == manifest["state_sha256"]
    preset = get_preset(PRESET)
    assert not preset.has_head and preset.label_names == {}
    assert not any(preset.in_head(key) for key in state)
    assert manifest["command"].startswith("assft pretrain-foundation")
    assert not manifest["data"]["labels_read"]
    assert set(manifest["data"]["contrasts"]) == {"t1", *CONTRASTS}
    # What it learned, on volumes of every contrast it did not train on.
    before, after = manifest["held_out"]["before"], manifest["held_out"]["after"]
    for contrast in manifest["data"]["contrasts"]:
        assert after[contrast]["inpainting_l1"] < 0.5 * before[contrast]["inpainting_l1"]

    model = load_model(preset, label_values=sorted(LABEL_NAMES))
    assert model.pretrained and not model.has_head and model.head_reinitialised
    assert model.has_batchnorm  # DKD's bn estimator reads the pretraining's statistics
    for key, value in model.network.state_dict().items():
        if not preset.in_head(key):
            assert torch.equal(value, state[key]), key
    assert load_checkpoint_state(WEIGHTS).keys() == state.keys()


@skip_without_template()
def test_the_loop_from_the_encoder_starts_cold_then_ranks_with_its_new_head(tmp_path):
    data = tmp_path / "data"
    sample = write_sample_data(data, 6, n_source=0, sites=["t2"], seed=5)
    images = sorted(data / c["image"] for c in sample["cases"])
    workspace = create_workspace(tmp_path / "ws", images, model=PRESET, label_names=LABEL_NAMES)

    versions = ModelVersions(workspace)
    assert versions.has_head() is False  # its prediction would be noise: cases open empty
    cold = rank_workspace(workspace, QueryConfig(budget=2, views=1), device="cpu")
    assert cold["cold_start"] and cold["notes"]["gap_estimator"] == "bn"
    assert all(row["asd"] is None and row["dkd"] > 0 for row in cold["cases"])
    assert len(cold["selected"]) == 2

    truth = {c["case"]: data / c["label"] for c in sample["cases"]}
    for case_id in cold["selected"]:
        workspace.submit_label(case_id, truth[case_id], user="test")
    config = FinetuneConfig.from_dict(
        {**SMALL_MODEL_FINETUNE, "iterations": 6, "semi_iterations": 6, "views": 1}
    )
    manifest = run_finetune(workspace, config, device="cpu")
    assert manifest["version"] == "v1" and manifest["promoted"]
    assert versions.has_head() and not versions.has_head("v0")

    warm = rank_workspace(workspace, QueryConfig(budget=2, views=1), device="cpu")
    assert warm["model_version"] == workspace.current_model_version()
    assert not warm["cold_start"]
    unlabeled = [row for row in warm["cases"] if row["case"] not in cold["selected"]]
    assert unlabeled and all(0.0 <= row["asd"] <= 1.0 for row in unlabeled)

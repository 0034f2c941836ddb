"""The self-supervised objective of the demo foundation encoder, on real sample volumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from assft.apps.pretrain_foundation import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    FoundationConfig,
    pretrain_foundation,
)
from assft.models import get_preset, load_checkpoint_state, load_model
from assft.models.model_preset import ModelPreset
from assft.training.self_supervised import make_views, masking, rotate
from assft_testing import skip_without_template


def test_each_view_is_its_patch_turned_then_corrupted():
    rng = np.random.default_rng(0)
    patches = torch.randn(3, 1, 16, 16, 16)
    views = make_views(patches, rng, masking(16, seed=0))
    assert views.inputs.shape == views.targets.shape == (6, 1, 16, 16, 16)
    for i, turns in enumerate(views.turns.tolist()):
        original = patches[i % 3]
        assert torch.equal(rotate(views.targets[i : i + 1], torch.tensor([-turns]))[0], original)
        changed = (views.inputs[i] != views.targets[i]).float().mean()
        assert 0.01 < changed < 0.9  # cubes dropped and shuffled, most of the patch kept
    assert rotate(patches[:1], torch.tensor([1])).shape == patches[:1].shape
    assert not torch.equal(rotate(patches[:1], torch.tensor([1])), patches[:1])


@skip_without_template()
def test_pretraining_learns_to_inpaint_and_ships_no_head(tmp_path):
    config = FoundationConfig(iterations=120, n_per_contrast=2)
    manifest = pretrain_foundation(tmp_path, config, argv=["pretrain-foundation", "--seed", "0"])
    assert manifest["command"] == "assft pretrain-foundation --seed 0"
    assert not manifest["data"]["labels_read"]
    assert manifest["data"]["contrasts"] == {"t1": 1, "t2": 1, "flair": 1, "lowfield": 1}
    before, after = manifest["held_out"]["before"], manifest["held_out"]["after"]
    for contrast in ("t1", "t2", "flair", "lowfield"):  # unseen volumes of every contrast
        assert after[contrast]["inpainting_l1"] < 0.7 * before[contrast]["inpainting_l1"]
    saved = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert saved["state_sha256"] == manifest["state_sha256"]

    # The weights are the encoder and decoder: no output layer, so no segmentation head.
    state = load_checkpoint_state(tmp_path / WEIGHTS_FILE)
    preset = get_preset("foundation-demo")
    assert state and not any(preset.in_head(key) for key in state)
    data = preset.to_dict()
    data["checkpoint"] = {"source": "path", "path": str(tmp_path / WEIGHTS_FILE)}
    model = load_model(ModelPreset.from_dict(data), label_values=[1, 2, 3])
    assert model.pretrained and not model.has_head and model.head_reinitialised
    assert f"{len(state)} of " in model.summary and "new head for labels [1, 2, 3]" in model.summary
    for key, value in model.network.state_dict().items():
        if key in state:
            assert torch.equal(value, state[key])


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"batch_size": 1}, "batch_size"),
        ({"batch_size": 100_000}, "batch_size"),
        ({"n_per_contrast": 1}, "n_per_contrast"),
        ({"n_per_contrast": 10**6}, "n_per_contrast"),
        ({"iterations": 10**9}, "iterations"),
    ],
)
def test_a_recipe_the_objective_cannot_run_is_refused(change, field):
    with pytest.raises(ValueError, match=field):
        FoundationConfig(**change)

"""Shared fixtures: a tiny model preset and tiny synthetic pools, written to temporary folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TINY_PRESET = {
    "name": "tiny-unet",
    "description": "A 3-level MONAI UNet with BatchNorm, small enough for tests.",
    "architecture": "monai.UNet",
    "arguments": {
        "spatial_dims": 3,
        "in_channels": 1,
        "channels": [4, 8, 16],
        "strides": [2, 2],
        "num_res_units": 1,
        "norm": "batch",
    },
    "checkpoint": None,
    "preprocessing": {
        "spacing": [3.0, 3.0, 3.0],
        "orientation": "RAS",
        "intensity": {"kind": "zscore", "nonzero": False},
    },
    "patch_size": [16, 16, 16],
    "sw_batch_size": 2,
    "overlap": 0.25,
    "label_names": {"1": "shell", "2": "core"},
    "embedding_layer": "model.1.submodule.1.submodule",
    "encoder_prefixes": ["model.0", "model.1.submodule.0", "model.1.submodule.1.submodule"],
    "head_layer": "model.2",
    "has_head": True,
    "output_activation": "softmax",
}


@pytest.fixture(scope="session")
def tiny_preset_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("preset") / "tiny-unet.json"
    path.write_text(json.dumps(TINY_PRESET))
    return path


@pytest.fixture(scope="session")
def synthetic_pool(tmp_path_factory):
    """Eight 24^3 synthetic cases with ground truth (read-only: copy before changing)."""
    from assft.synthetic import write_synthetic_pool

    out = tmp_path_factory.mktemp("pool")
    cases = write_synthetic_pool(out, 8, seed=3, size=24)
    return out, cases

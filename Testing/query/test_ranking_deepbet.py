"""The real third-party TorchScript network (deepbet) ranks through the same path."""

from __future__ import annotations

import importlib.metadata

import pytest

from assft.query.config import QueryConfig
from assft.query.ranking import rank_workspace
from assft.workspace.creation import create_workspace

try:
    importlib.metadata.distribution("deepbet")
except importlib.metadata.PackageNotFoundError:
    pytest.skip("deepbet is not installed (pip install --no-deps deepbet)", allow_module_level=True)


def test_deepbet_preset_ranks_a_pool(tmp_path, synthetic_pool):
    data, _ = synthetic_pool
    workspace = create_workspace(tmp_path / "ws", [data / "images"], model="deepbet")
    assert workspace.config.label_names == {1: "brain"}
    document = rank_workspace(workspace, QueryConfig(budget=2, views=1), device="cpu")
    assert document["preset"] == "deepbet" and not document["cold_start"]
    # No BatchNorm in this network: DKD falls back to the prototype estimator.
    assert document["notes"]["gap_estimator"] == "prototype"
    assert len(document["selected"]) == 2
    assert all(0.0 <= row["asd"] <= 1.0 for row in document["cases"])
    assert len({row["dkd"] for row in document["cases"]}) > 1

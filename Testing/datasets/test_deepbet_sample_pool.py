"""The real third-party network (deepbet) ranks a brain-mask version of the sample target pool."""

from __future__ import annotations

import importlib.metadata
import math

import pytest

from assft.apps import mni_template, sampledata
from assft.errors import BadInputError
from assft.query.config import QueryConfig
from assft.query.ranking import rank_workspace
from assft.workspace.creation import create_workspace

try:
    importlib.metadata.distribution("deepbet")
except importlib.metadata.PackageNotFoundError:
    pytest.skip("deepbet is not installed (pip install --no-deps deepbet)", allow_module_level=True)
try:
    mni_template.locate_template()
except BadInputError as error:
    pytest.skip(str(error), allow_module_level=True)


def test_deepbet_ranks_and_evaluates_the_brain_mask_pool(tmp_path) -> None:
    from assft.evaluate import evaluate_workspace

    data = tmp_path / "data"
    # 6 mm keeps generation fast; deepbet resamples to 1.5 mm: one 128^3 window per case.
    manifest = sampledata.write_sample_data(
        data, 3, n_source=0, sites=["mixed"], seed=2, spacing=6.0, brain_mask=True
    )
    assert manifest["labels"] == {"1": "brain"}
    workspace = create_workspace(tmp_path / "ws", [data / "target" / "images"], model="deepbet")
    assert workspace.config.label_names == {1: "brain"}

    document = rank_workspace(workspace, QueryConfig(budget=1, views=1), device="cpu")
    assert document["preset"] == "deepbet" and not document["cold_start"]
    assert document["notes"]["gap_estimator"] == "prototype"  # no BatchNorm in deepbet
    assert sorted(row["case"] for row in document["cases"]) == ["tgt_000", "tgt_001", "tgt_002"]
    assert len(document["selected"]) == 1
    assert all(0.0 <= row["asd"] <= 1.0 for row in document["cases"])

    # The pool's ground truth scores the network through the evaluation path.
    result = evaluate_workspace(workspace, data / "target" / "labels", device="cpu", views=1)
    brain = result["per_structure"]["brain"]
    assert brain is not None and not math.isnan(brain) and brain > 0.5

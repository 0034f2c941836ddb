"""Ranking a real workspace of tiny synthetic NIfTI volumes with a real MONAI UNet."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from assft.errors import BadInputError
from assft.io.imaging import read_image
from assft.io.preprocessing import to_model_grid
from assft.models import get_preset, load_model
from assft.models.inference import infer_case, sliding_window_probabilities
from assft.query.config import QueryConfig
from assft.query.ranking import rank_workspace
from assft.query.strategies import STRATEGIES
from assft.workspace import Workspace
from assft.workspace.model_versions import ModelVersions
from assft_testing import skip_without_template


@pytest.fixture
def workspace(tmp_path, synthetic_pool, tiny_preset_file):
    data, _ = synthetic_pool
    return Workspace.create(
        tmp_path / "ws",
        [data / "images"],
        label_names={1: "shell", 2: "core"},
        model=str(tiny_preset_file),
    )


def test_attsq_ranking_document(workspace):
    document = rank_workspace(workspace, QueryConfig(budget=3, views=2), device="cpu")
    cases = document["cases"]
    assert [row["rank"] for row in cases] == list(range(1, 9))
    assert document["selected"] == [row["case"] for row in cases[:3]]
    assert all(row["selected"] == (row["rank"] <= 3) for row in cases)
    assert document["model_version"] == "v0" and document["strategy"] == "attsq"
    assert document["notes"]["gap_estimator"] == "bn"
    assert not document["cold_start"]
    for row in cases:
        assert set(row) >= {
            "case",
            "rank",
            "score",
            "dkd",
            "asd",
            "asd_per_class",
            "diversity",
            "reason",
        }
        assert 0.0 <= row["asd"] <= 1.0 and row["dkd"] > 0.0
        assert 0.0 <= row["score"] <= 1.0
        assert row["reason"]
    # The first pick is the highest combined score: nothing is labeled, so diversity is flat.
    assert cases[0]["score"] == max(row["score"] for row in cases)
    saved = json.loads((workspace.rankings_dir / document["file"]).read_text())
    assert saved["selected"] == document["selected"]
    assert workspace.latest_ranking()["selected"] == document["selected"]


def test_ranking_is_deterministic_and_uses_the_cache(workspace):
    config = QueryConfig(budget=3, views=1)
    first = rank_workspace(workspace, config, device="cpu")
    cached = sorted(p.name for p in (workspace.cache_dir / "pretrained").iterdir())
    assert len(cached) == 8
    second = rank_workspace(workspace, config, device="cpu")
    assert first["selected"] == second["selected"]
    assert [r["dkd"] for r in first["cases"]] == [r["dkd"] for r in second["cases"]]


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_strategy_ranks_the_pool(workspace, strategy):
    document = rank_workspace(
        workspace, QueryConfig(budget=2, views=1, strategy=strategy), device="cpu"
    )
    assert document["strategy"] == strategy
    assert len(document["selected"]) == 2 and len(set(document["selected"])) == 2
    assert sorted(r["case"] for r in document["cases"]) == sorted(
        c["case_id"] for c in workspace.registry.cases()
    )
    if STRATEGIES[strategy].needs_mc_dropout:
        # The tiny UNet has no active dropout: it was injected, and the ranking says so.
        assert document["mc_dropout_injected"] is True
        assert all(r["epistemic"] > 0 for r in document["cases"])
    again = rank_workspace(
        workspace, QueryConfig(budget=2, views=1, strategy=strategy), device="cpu"
    )
    assert again["selected"] == document["selected"]


def test_labeled_cases_leave_the_pool_and_enter_the_diversity_term(workspace, synthetic_pool):
    _, cases = synthetic_pool
    truth = {c.case_id: c.label for c in cases}
    first = rank_workspace(workspace, QueryConfig(budget=2, views=1), device="cpu")
    for case_id in first["selected"]:
        workspace.submit_label(case_id, truth[case_id], user="test")
    second = rank_workspace(workspace, QueryConfig(budget=2, views=1), device="cpu")
    assert second["pool_size"] == 6 and second["labeled"] == 2
    assert not set(first["selected"]) & {r["case"] for r in second["cases"]}
    # With labeled cases, the diversity is a distance over the pool's spread, capped at 1.
    assert all(0.0 <= r["diversity"] <= 1.0 for r in second["cases"])
    assert any(r["diversity"] < 1.0 for r in second["cases"])
    # The worklist's order follows the priority it shows.
    priorities = [r["priority"] for r in second["cases"]]
    assert priorities == sorted(priorities, reverse=True)
    assert all(r["reason"].endswith(".") and r["reason"][0].isupper() for r in second["cases"])


def test_prototype_estimator_and_ablations(workspace):
    document = rank_workspace(
        workspace,
        QueryConfig.from_dict(
            {"budget": 2, "views": 1, "dkd": {"gap": "prototype"}, "lambda_div": 0.0}
        ),
        device="cpu",
    )
    assert document["notes"]["gap_estimator"] == "prototype"
    assert len(document["notes"]["prototypes"]) == 3
    # Without the diversity term, the picks are the top two combined scores.
    scores = sorted((r["score"] for r in document["cases"]), reverse=True)
    assert [r["score"] for r in document["cases"][:2]] == scores[:2]


def test_drift_applies_once_a_fine_tuned_model_is_current(workspace):
    base = rank_workspace(workspace, QueryConfig(budget=2, views=1), device="cpu")
    preset = get_preset(workspace.config.model)
    model = load_model(preset, label_values=[1, 2])
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.network.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    registry = ModelVersions(workspace)
    registry.promote(
        registry.add_version(model.network.state_dict(), {"mode": "test"}), reason="test"
    )
    tuned = rank_workspace(workspace, QueryConfig(budget=2, views=1), device="cpu")
    assert tuned["model_version"] == "v1" and tuned["notes"]["drift"] is True
    base_gap = {r["case"]: r["kg_bn"] for r in base["cases"]}
    for row in tuned["cases"]:
        # KG = bn gap (from f0, unchanged) + drift, drift > 0 since the weights moved.
        assert row["kg_bn"] == pytest.approx(base_gap[row["case"]])
        assert row["dkd"] > row["kg_bn"]


def test_cold_start_when_the_labels_differ_from_the_preset(
    tmp_path, synthetic_pool, tiny_preset_file
):
    data, _ = synthetic_pool
    workspace = Workspace.create(
        tmp_path / "cold", [data / "images"], label_names={1: "lesion"}, model=str(tiny_preset_file)
    )
    document = rank_workspace(workspace, QueryConfig(budget=2, views=1), device="cpu")
    assert document["cold_start"] is True
    assert all(r["asd"] is None for r in document["cases"])
    assert document["notes"]["gap_estimator"] == "bn"
    with pytest.raises(BadInputError, match="segmentation head"):
        rank_workspace(workspace, QueryConfig(budget=2, views=1, strategy="entropy"), device="cpu")


def test_bad_requests(workspace, synthetic_pool):
    with pytest.raises(BadInputError, match="larger than the unlabeled pool"):
        rank_workspace(workspace, QueryConfig(budget=9), device="cpu")
    _, cases = synthetic_pool
    for case in cases:
        workspace.submit_label(case.case_id, case.label)
    with pytest.raises(BadInputError, match="no unlabeled cases"):
        rank_workspace(workspace, QueryConfig(budget=1), device="cpu")


def test_metrics_come_from_the_same_forward_passes(synthetic_pool, tiny_preset_file):
    """Ranking a case calls the network exactly as often as bare TTA inference does."""
    data, cases = synthetic_pool
    preset = get_preset(str(tiny_preset_file))
    model = load_model(preset, label_values=[1, 2])
    grid = to_model_grid(
        read_image(cases[0].image),
        spacing=preset.spacing,
        orientation=preset.orientation,
        intensity=preset.intensity,
    )
    calls = []
    handle = model.network.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    try:
        for flips in ((), (2,), (3,), (4,)):
            sliding_window_probabilities(model, grid.tensor, flips)
        bare = sum(calls)
        calls.clear()
        result = infer_case(model, grid.tensor, views=4)
        ranked = sum(calls)
    finally:
        handle.remove()
    assert ranked == bare
    assert np.linalg.norm(result.embedding) == pytest.approx(1.0, abs=1e-5)
    assert len(result.batchnorm) == len(model.running_statistics()) > 0


def test_a_changed_image_invalidates_the_cache(tmp_path, synthetic_pool, tiny_preset_file):
    data, _ = synthetic_pool
    images = tmp_path / "images"
    shutil.copytree(data / "images", images)
    workspace = Workspace.create(
        tmp_path / "ws", [images], label_names={1: "shell", 2: "core"}, model=str(tiny_preset_file)
    )
    config = QueryConfig(budget=1, views=1)
    rank_workspace(workspace, config, device="cpu")
    cached = workspace.cache_dir / "pretrained" / "case_000.npz"
    before = cached.stat().st_mtime_ns
    # The scan is replaced on disk (a rescan): f0's statistics must be computed again.
    path = workspace.image_path("case_000")
    shutil.copy(images / "case_001.nii.gz", path)
    rank_workspace(workspace, config, device="cpu")
    assert cached.stat().st_mtime_ns > before


@pytest.fixture
def two_scanners(tmp_path):
    """Six scans of the sample `hospital` archive with the demo model: three of its 3 T T1
    majority, three of its T2 minority."""
    from assft.apps.sampledata import make_case
    from assft.io.imaging import write_image_atomic

    truth = {}
    for index in (0, 2, 3, 4, 13, 15):  # hospital_000, _002, _003: t1-3t; _004, _013, _015: t2
        case = make_case("hospital", index, seed=0, spacing=6.0)
        image, label = case.to_images()
        write_image_atomic(image, tmp_path / "images" / f"{case.case_id}.nii.gz")
        truth[case.case_id] = write_image_atomic(
            label, tmp_path / "truth" / f"{case.case_id}.nii.gz"
        )
        assert case.meta["stratum"] == ("t1-3t" if index < 4 else "t2")
    names = {1: "grey matter", 2: "white matter", 3: "cerebrospinal fluid"}
    workspace = Workspace.create(
        tmp_path / "ws", [tmp_path / "images"], model="demo", label_names=names
    )
    return workspace, truth


@skip_without_template()
def test_held_out_scans_are_proposed_one_per_acquisition(two_scanners):
    from assft.query.ranking import archive_parts, propose_validation_set

    workspace, truth = two_scanners
    parts, statuses = archive_parts(workspace, device="cpu", views=1)
    assert parts.count == 2 and sorted(parts.sizes) == [3, 3]
    t1 = {parts.of_case[f"hospital_{i:03d}"] for i in (0, 2, 3)}
    t2 = {parts.of_case[f"hospital_{i:03d}"] for i in (4, 13, 15)}
    assert len(t1) == len(t2) == 1 and t1 != t2
    proposal = propose_validation_set(workspace, device="cpu")
    proposed = [row["case"] for row in proposal["proposed"]]
    assert {parts.of_case[c] for c in proposed} == {0, 1} and len(proposed) == 2
    assert proposal["notes"] == []
    # A labeled (training) scan is never proposed; one held out already is kept.
    first, second = proposed
    workspace.submit_label(first, truth[first], user="t")
    workspace.submit_label(second, truth[second], user="t")
    workspace.hold_out([second])
    again = [row["case"] for row in propose_validation_set(workspace, device="cpu")["proposed"]]
    assert again[0] == second and first not in again and len(again) == 2
    # The ranking records the parts, and says the labeled scan's part has no held-out scan.
    workspace.hold_out([second], release=True)
    document = rank_workspace(workspace, QueryConfig(budget=1, views=1), device="cpu")
    assert document["parts"]["count"] == 2
    notes = document["notes"]["held_out_coverage"]
    assert len(notes) == 2 and any(first in note for note in notes)

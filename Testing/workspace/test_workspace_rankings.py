"""Tests of rankings, the model version pointer and the status summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from assft.errors import BadInputError
from assft.workspace import Workspace
from assft_testing.workspaces import label_array, write_volume


def _document(strategy: str = "attsq", **extra: object) -> dict[str, object]:
    return {
        "strategy": strategy,
        "cases": [
            {"case": "case_c", "rank": 1, "score": 0.9, "dkd": 0.4, "asd": 1.5},
            {"case": "case_a", "rank": 2, "score": 0.3, "dkd": 0.1, "asd": 0.2},
        ],
        **extra,
    }


def test_save_ranking_numbers_and_registers(workspace: Workspace) -> None:
    assert workspace.latest_ranking() is None
    first = workspace.save_ranking(_document())
    assert first == workspace.rankings_dir / "ranking-0001.json"
    second = workspace.save_ranking(_document("random", model_version="v3"))
    assert second.name == "ranking-0002.json"
    assert json.loads(second.read_text()) == _document("random", model_version="v3")
    assert workspace.latest_ranking() == _document("random", model_version="v3")

    rows = workspace.registry.rankings()
    assert [(r["file_name"], r["model_version"], r["strategy"]) for r in rows] == [
        ("ranking-0001.json", "v0", "attsq"),
        ("ranking-0002.json", "v3", "random"),
    ]
    scores = workspace.registry.scores(rows[0]["ranking_id"])
    assert [(s["case_id"], s["rank"], s["score"]) for s in scores] == [
        ("case_c", 1, 0.9),
        ("case_a", 2, 0.3),
    ]
    assert scores[0]["data"]["asd"] == 1.5

    (workspace.rankings_dir / "ranking-0007.json").write_text(
        "{}"
    )  # an orphan file is never overwritten
    assert workspace.save_ranking(_document()).name == "ranking-0008.json"
    assert not list(workspace.rankings_dir.glob(".tmp-*"))


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"strategy": "x"}, "'cases' list"),
        ({"cases": [{"case": "case_a", "rank": 1}]}, "'case', 'rank' and 'score'"),
        ({"cases": [{"case": "nope", "rank": 1, "score": 1.0}]}, "unknown case id 'nope'"),
        ({"cases": [{"case": "../x", "rank": 1, "score": 1.0}]}, "not a valid case id"),
        ({"cases": [{"case": "case_a", "rank": 1, "score": 1.0}] * 2}, "appears twice"),
    ],
)
def test_bad_rankings_are_refused(
    workspace: Workspace, document: dict[str, object], message: str
) -> None:
    with pytest.raises(BadInputError, match=message):
        workspace.save_ranking(document)
    assert list(workspace.rankings_dir.iterdir()) == []
    assert workspace.registry.rankings() == []


def test_model_version_pointer(workspace: Workspace) -> None:
    assert workspace.current_model_version() == "v0"
    workspace.set_current_model_version("v2")
    assert (workspace.models_dir / "current").read_text() == "v2\n"
    assert workspace.current_model_version() == "v2"
    with pytest.raises(BadInputError, match="not a model version name"):
        workspace.set_current_model_version("../v3")
    with pytest.raises(BadInputError, match=r"did you mean v3\?"):
        workspace.set_current_model_version("v03")
    assert workspace.current_model_version() == "v2"


def _ranked(*order: str) -> dict[str, object]:
    """A ranking document as ``assft rank`` writes it, best case first."""
    return {
        "strategy": "attsq",
        "model_version": "v0",
        "cases": [
            {
                "case": case,
                "rank": rank,
                "score": 1.0 / rank,
                "selected": rank == 1,
                "reason": f"reason {rank}",
                "hardest_structure": "left",
            }
            for rank, case in enumerate(order, start=1)
        ],
    }


def test_next_case_follows_the_latest_ranking_and_current_statuses(
    tmp_path: Path, workspace: Workspace
) -> None:
    with pytest.raises(BadInputError, match="no ranking yet: run 'assft rank' first") as caught:
        workspace.next_case()
    assert "\n" not in str(caught.value) and str(workspace.root) in str(caught.value)

    workspace.save_ranking(_ranked("case_b", "case_c", "case_a"))
    first = workspace.next_case()
    assert first == {
        "case": "case_b",
        "image": str(workspace.image_path("case_b")),
        "rank": 1,
        "selected": True,
        "score": 1.0,
        "reason": "reason 1",
        "hardest_structure": "left",
        "model_version": "v0",
        "ranking": None,
        "remaining": 3,
    }
    workspace.skip("case_b")  # statuses are read now, not when the ranking was made
    assert (workspace.next_case()["case"], workspace.next_case()["remaining"]) == ("case_c", 2)
    workspace.submit_label(
        "case_c", write_volume(tmp_path / "l.nii.gz", label_array(), dtype=np.uint8)
    )
    third = workspace.next_case()
    assert (third["case"], third["rank"], third["remaining"]) == ("case_a", 3, 1)

    workspace.save_ranking(_ranked("case_a", "case_b"))  # the newest ranking decides
    assert workspace.next_case()["rank"] == 1
    workspace.skip("case_a")
    assert workspace.next_case() == {"case": None, "ranking": None, "remaining": 0}


def test_status_summary(tmp_path: Path, workspace: Workspace) -> None:
    assert workspace.status_summary() == {
        "model_version": "v0",
        "counts": {"unlabeled": 3, "labeled": 0, "skipped": 0, "held-out": 0},
        "total": 3,
        "running_job": None,
        "latest_ranking": None,
        "latest_ranking_model": None,
        "labeled_structures": ["grey matter", "white matter"],
        "dicomweb": False,
    }
    workspace.submit_label(
        "case_a", write_volume(tmp_path / "l.nii.gz", label_array(), dtype=np.uint8)
    )
    workspace.skip("case_b")
    workspace.save_ranking(_document())
    summary = workspace.status_summary()
    assert summary["counts"] == {"unlabeled": 1, "labeled": 1, "skipped": 1, "held-out": 0}
    assert summary["latest_ranking"] == "ranking-0001.json"
    assert summary["latest_ranking_model"] == "v0"  # the version that ranked it
    json.dumps(summary)

"""``assft bench partial-labels`` end to end on the tiny synthetic pool: the three ways run on the
same picks and held-out scans, the partial labels hold the labeled structure alone, and the
section renders."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk

from assft.apps.partial_labels_bench import MARK_BEGIN, MARK_END, WAYS, markdown, run_partial_labels
from assft.apps.simulation import Case, Dataset


def test_three_ways_on_the_same_picks_and_the_section(tmp_path, synthetic_pool, tiny_preset_file):
    _, cases = synthetic_pool
    items = [Case(c.case_id, c.image, c.label) for c in cases]
    document = run_partial_labels(
        tmp_path,
        dataset=Dataset(pool=items[:6], test=items[6:]),
        seeds=(0,),
        budget=2,
        structures="core",
        model=str(tiny_preset_file),
        device="cpu",
        views=1,
        iterations=2,
        candidate={"partial_distill": 1.0},
    )
    written = json.loads((tmp_path / "partial-labels.json").read_text())
    assert written["runs"] == document["runs"] and written["site"] == "given scans"
    assert document["labeled"] == ["core"] and document["others"] == ["shell"]
    runs = document["runs"]
    candidate = "labeled structures only, partial_distill=1.0"
    assert [r["way"] for r in runs] == [*WAYS, candidate]
    assert document["candidate"] == {"partial_distill": 1.0}
    assert len({(tuple(r["picks"]), tuple(r["held_out"])) for r in runs}) == 1
    assert not set(runs[0]["picks"]) & set(runs[0]["held_out"])
    for run in runs:
        assert set(run["dice"]) == {"shell", "core"}
        assert set(run["agreement_with_parent"]) == set(run["agreement_away_from_labeled"])
        assert set(run["agreement_with_parent"]) == {"shell"}
        assert 0.0 <= run["agreement_with_parent"]["shell"] <= 1.0
    for case_id in runs[0]["picks"] + runs[0]["held_out"]:
        drawn = sitk.GetArrayFromImage(
            sitk.ReadImage(str(tmp_path / "partial-labels" / f"{case_id}.nii.gz"))
        )
        assert set(np.unique(drawn).tolist()) == {0, 2}  # the core alone
    assert not (tmp_path / "runs" / "s0-0").exists()  # each run's workspace is removed
    text = markdown(document, "assft bench partial-labels")
    assert text.startswith(MARK_BEGIN) and text.endswith(MARK_END)
    ways = [*WAYS, candidate]
    assert sum(line.startswith(f"| {way} |") for way in ways for line in text.splitlines()) == 4

"""A clinician's label is never written over by a prediction, and never trained on once it is not
the one submitted (issue 21, third attack, N9: a link swapped in for ``predict --out`` during a
run wrote predictions over ``labels/``, and the next fine-tune trained on them)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

from assft.errors import BadInputError
from assft.io.atomic import FolderReplacedError, PinnedFolder, atomic_path
from assft_testing import let_go, pause_env, run_cli, wait_until_paused

LABELS = {1: "shell", 2: "core"}


@pytest.fixture
def workspace(tmp_path, synthetic_pool, tiny_preset_file):
    """Eight synthetic cases with the tiny preset, two labeled."""
    from assft.workspace import Workspace

    data, cases = synthetic_pool
    workspace = Workspace.create(
        tmp_path / "ws",
        [data / "images"],
        label_names=LABELS,
        model=str(tiny_preset_file),
        user="tester",
    )
    for case in cases[:2]:
        workspace.submit_label(case.case_id, case.label, user="tester")
    return workspace


def _files(folder: Path) -> dict[str, str]:
    """Every file directly in ``folder`` (hidden ones too): name -> sha256."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


def test_a_pinned_folder_refuses_a_write_once_a_link_stands_at_its_path(tmp_path):
    out, victim = tmp_path / "out", tmp_path / "victim"
    out.mkdir()
    victim.mkdir()
    (victim / "x.txt").write_text("the clinician's", encoding="utf-8")
    with PinnedFolder(out) as pinned:
        with atomic_path(out / "a.txt", pinned=pinned) as temporary:
            temporary.write_text("first", encoding="utf-8")
        out.rename(tmp_path / "out.old")
        out.symlink_to(victim)
        with pytest.raises(FolderReplacedError, match="was replaced"):
            with atomic_path(out / "x.txt", pinned=pinned) as temporary:
                temporary.write_text("a prediction", encoding="utf-8")
    assert _files(victim) == {"x.txt": hashlib.sha256(b"the clinician's").hexdigest()}
    assert (tmp_path / "out.old" / "a.txt").read_text(encoding="utf-8") == "first"


def test_predict_all_never_writes_through_a_link_swapped_in_for_its_folder(workspace, tmp_path):
    labels = workspace.labels_dir
    before = _files(labels)
    out, pause = tmp_path / "out", tmp_path / "pause"
    process = subprocess.Popen(
        [sys.executable, "-m", "assft", "predict", str(workspace.root), "--all"]
        + ["--out", str(out), "--views", "1", "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **pause_env("prediction-written", pause)},
    )
    wait_until_paused(process, pause, "prediction-written")
    out.rename(tmp_path / "out.old")  # the first prediction is there
    out.symlink_to(labels)
    let_go(pause, "prediction-written")
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 2, stderr
    assert "was replaced while files were written" in stderr and str(out) in stderr, stderr
    assert _files(labels) == before  # no label replaced, no temporary file left there
    assert len(list((tmp_path / "out.old").glob("*.nii.gz"))) == 1


def test_a_label_written_over_outside_assft_is_not_trained_on(workspace, synthetic_pool, tmp_path):
    _, cases = synthetic_pool
    case = cases[0].case_id
    stored = workspace.labels_dir / f"{case}.nii.gz"
    other = sitk.ReadImage(str(cases[1].label))
    other.CopyInformation(sitk.ReadImage(str(stored)))
    sitk.WriteImage(other, str(stored), True)  # by hand, or a tool writing through a link
    recipe = tmp_path / "quick.json"
    recipe.write_text(json.dumps({"iterations": 2, "semi_iterations": 2, "views": 1}))
    result = run_cli("finetune", str(workspace.root), "--config", str(recipe), "--device", "cpu")
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and str(stored) in line
    assert f"is not the label submitted for case {case}" in line and "assft submit" in line
    assert not [p for p in workspace.jobs_dir.glob("finetune-*")]  # nothing was started
    # Submitted again, it is the one trained on.
    workspace.submit_label(case, stored, user="tester")
    from assft.training.inputs import check_inputs

    rows = workspace.registry.cases(status="labeled")
    check_inputs(workspace, rows, [])  # no error now


def test_the_check_names_the_label_without_reading_it_as_an_image(workspace, synthetic_pool):
    from assft.training.inputs import check_inputs

    _, cases = synthetic_pool
    stored = workspace.labels_dir / f"{cases[1].case_id}.nii.gz"
    stored.write_bytes(b"not an image any more")
    with pytest.raises(BadInputError, match="is not the label submitted"):
        check_inputs(workspace, workspace.registry.cases(status="labeled"), [])

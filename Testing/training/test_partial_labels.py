"""A lab that labels only some of the model's structures: the workspace records which, a
fine-tune completes each label from the parent, and the gate scores the labeled ones only."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from assft.errors import BadInputError
from assft.training import FinetuneConfig
from assft.training.finetune import run_finetune
from assft.training.losses import IGNORE
from assft.training.partial_labels import complete_target, labeled_channels, structure_agreement
from assft.workspace import Workspace
from assft.workspace.creation import create_workspace
from assft_testing import run_cli

FAST = {"iterations": 6, "semi_iterations": 6, "views": 1, "tau_c": 0.0, "checkpoint_every": 2}
NAMES = {1: "shell", 2: "core"}


def _workspace(tmp_path, synthetic_pool, tiny_preset_file, **kwargs) -> Workspace:
    data, _ = synthetic_pool
    return create_workspace(
        tmp_path / "ws",
        [data / "images"],
        model=str(tiny_preset_file),
        label_names=NAMES,
        **kwargs,
    )


def test_the_workspace_records_the_labeled_structures_by_name_or_value(
    tmp_path, synthetic_pool, tiny_preset_file
):
    workspace = _workspace(tmp_path, synthetic_pool, tiny_preset_file, labeled_structures="Core")
    assert json.loads(workspace.config_path.read_text())["labeled_structures"] == [2]
    reopened = Workspace.open(workspace.root)
    assert reopened.config.labeled_values == [2] and reopened.config.partially_labeled
    status = run_cli("status", str(workspace.root), check=True).stdout
    assert "  labeled structures: core (the others are kept as the model predicts them)" in status
    assert reopened.status_summary()["labeled_structures"] == ["core"]
    everything = _workspace(tmp_path / "b", synthetic_pool, tiny_preset_file)
    assert "labeled_structures" not in json.loads(everything.config_path.read_text())
    assert everything.config.labeled_values == [1, 2]
    assert not everything.config.partially_labeled
    assert "labeled structures" not in run_cli("status", str(everything.root), check=True).stdout
    assert labeled_channels([1, 2, 5], [5]) == [3]


def test_unknown_structures_are_refused_in_one_line_and_nothing_is_created(
    tmp_path, synthetic_pool, tiny_preset_file
):
    data, _ = synthetic_pool
    with pytest.raises(BadInputError, match=r"'liver' is not a structure of the model; known: "):
        _workspace(tmp_path, synthetic_pool, tiny_preset_file, labeled_structures="core,liver")
    with pytest.raises(BadInputError, match=r"names \[7\], which are not label values"):
        _workspace(tmp_path, synthetic_pool, tiny_preset_file, labeled_structures=[7])
    assert not (tmp_path / "ws").exists()
    result = run_cli(
        "init",
        str(tmp_path / "ws"),
        "--images",
        str(data / "images"),
        "--model",
        str(tiny_preset_file),
        "--label-names",
        "1:shell,2:core",
        "--labeled-structures",
        "kidney",
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "assft: error: --labeled-structures: 'kidney' is not a structure of the model; "
        "known: 1 (shell), 2 (core)"
    ]
    assert not (tmp_path / "ws").exists()
    # A hand-edited assft.json naming a structure the workspace lacks: one line naming it.
    workspace = _workspace(tmp_path, synthetic_pool, tiny_preset_file)
    document = json.loads(workspace.config_path.read_text())
    workspace.config_path.write_text(json.dumps({**document, "labeled_structures": [3]}))
    with pytest.raises(BadInputError) as caught:
        Workspace.open(workspace.root)
    assert str(workspace.config_path) in str(caught.value)
    assert "'labeled_structures' names [3]" in str(caught.value)


def test_the_labeled_structures_change_on_an_existing_workspace_and_widening_is_guarded(
    tmp_path, synthetic_pool, tiny_preset_file
):
    from assft_testing import run_cli_in_process

    _, cases = synthetic_pool
    workspace = _workspace(tmp_path, synthetic_pool, tiny_preset_file)
    ws = str(workspace.root)
    shown = run_cli("structures", ws, check=True).stdout.splitlines()
    assert shown == ["    1  shell: labeled", "    2  core: labeled"]
    # Narrowing: always allowed, by name or value; the workspace file and the audit say so.
    run_cli_in_process("structures", ws, "--labeled", "core", check=True)
    assert json.loads(workspace.config_path.read_text())["labeled_structures"] == [2]
    assert Workspace.open(ws).registry.audit_trail()[-1]["action"] == "set-labeled-structures"
    # A label drawn now holds the core only; widening would teach its shell as background.
    run_cli_in_process("submit", ws, cases[0].case_id, str(cases[0].label), check=True)
    refused = run_cli("structures", ws, "--all")
    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith(f"assft: error: {workspace.config_path}: 1 label(s) were drawn while ")
    assert "only core were labeled: they hold no shell" in line and "--labels-complete" in line
    assert Workspace.open(ws).config.labeled_values == [2]  # unchanged
    document = json.loads(
        run_cli_in_process("structures", ws, "--all", "--labels-complete", "--json").stdout
    )
    assert document == {
        "structures": [
            {"value": 1, "name": "shell", "labeled": True},
            {"value": 2, "name": "core", "labeled": True},
        ],
        "partially_labeled": False,
    }
    assert "labeled_structures" not in json.loads(workspace.config_path.read_text())
    # Refused in one line: an unknown name, both options, a fine-tune holding the workspace.
    unknown = run_cli_in_process("structures", ws, "--labeled", "liver")
    assert unknown.returncode == 2 and "--labeled: 'liver' is not a structure" in unknown.stderr
    both = run_cli_in_process("structures", ws, "--labeled", "core", "--all")
    assert both.returncode == 2 and "not both" in both.stderr
    with Workspace.open(ws).job_lock(description="finetune"):
        busy = run_cli("structures", ws, "--labeled", "core")
    assert busy.returncode == 2 and "finetune" in busy.stderr
    assert Workspace.open(ws).config.labeled_values == [1, 2]


def test_a_target_is_completed_from_the_parent_outside_the_labeled_structures(
    tmp_path, synthetic_pool, tiny_preset_file
):
    from assft.models.inference import sliding_window_probabilities
    from assft.training.data import PreparedCases
    from assft.workspace.model_versions import ModelVersions

    data, cases = synthetic_pool
    workspace = _workspace(tmp_path, synthetic_pool, tiny_preset_file)
    parent = ModelVersions(workspace).load("v0")
    prepared = PreparedCases(tmp_path / "cache", parent.preset, [1, 2], (16, 16, 16))
    case = prepared.load(cases[0].case_id, cases[0].image, cases[0].label)
    target = case.target.clone()
    target[:2] = IGNORE  # padding stays ignored
    case = case.with_target(target)
    parent.network.eval()
    with torch.no_grad():
        probabilities = sliding_window_probabilities(parent, case.image).cpu()
    predicted = probabilities.argmax(0)
    # The random tiny network predicts both structures somewhere: the rule is seen at work.
    assert (predicted == 1).any() and (predicted == 2).any()

    completed = complete_target(parent, case, [2]).target
    drawn = target == 2
    assert torch.equal(completed[drawn], target[drawn])  # the clinician's core, as drawn
    rest = ~drawn & (target != IGNORE)
    # Elsewhere: the parent's shell or background, whichever it finds more likely; where it saw
    # a core the clinician did not draw, that is its second guess, never the core.
    second = torch.where(probabilities[1] > probabilities[0], 1, 0)
    assert torch.equal(completed[rest], second[rest])
    assert torch.equal(completed[rest & (predicted != 2)], predicted[rest & (predicted != 2)])
    assert not (completed[rest] == 2).any()
    assert (completed[target == IGNORE] == IGNORE).all()
    # Everything labeled: nothing changes.
    assert torch.equal(complete_target(parent, case, [1, 2]).target, target)
    assert structure_agreement(parent, parent, [case], [1, 2]) == {1: 1.0, 2: 1.0}


def test_a_finetune_on_partial_labels_scores_the_labeled_structures_and_measures_the_others(
    tmp_path, synthetic_pool, tiny_preset_file
):
    _, cases = synthetic_pool
    workspace = _workspace(tmp_path, synthetic_pool, tiny_preset_file, labeled_structures="core")
    for case in cases[:4]:  # only the core reviewed; the shell is what was pre-filled
        workspace.submit_label(case.case_id, case.label, user="test")
    workspace.set_status(cases[3].case_id, "held-out")
    manifest = run_finetune(workspace, FinetuneConfig(**FAST), device="cpu")
    metrics = manifest["metrics"]
    assert list(metrics["validation_per_structure"]) == ["core"]
    agreement = metrics["unlabeled_structures_agreement"]
    assert list(agreement) == ["shell"] and 0.0 <= agreement["shell"] <= 1.0
    assert manifest["timings"]["completion_s"] > 0
    # The held-out Dice is the core's alone (one held-out scan: its mean is the core's Dice).
    assert metrics["validation_dice"] == pytest.approx(metrics["validation_per_structure"]["core"])
    # partial_distill: the labeled patches' voxels outside the core learn the parent's soft
    # predictions, every step; a workspace that labels every structure has nothing to distil.
    distilled = run_finetune(
        workspace, FinetuneConfig(**FAST, partial_distill=1.0, seed=4), device="cpu", restart=True
    )
    job = workspace.root / "jobs" / distilled["job"]
    events = [json.loads(line) for line in (job / "progress.jsonl").read_text().splitlines()]
    steps = [
        e for e in events if e.get("phase") in ("supervised", "semi-supervised") and "done" in e
    ]
    steps = [e for e in steps if "loss" in e]
    assert steps and all(e["distill_supervised"] >= 0 for e in steps)
    assert any(e["distill_supervised"] > 0 for e in steps)

    # Every structure labeled: no completion, both scored, nothing to agree with.
    full = _workspace(tmp_path / "full", synthetic_pool, tiny_preset_file)
    for case in cases[:4]:
        full.submit_label(case.case_id, case.label, user="test")
    full.set_status(cases[3].case_id, "held-out")
    manifest = run_finetune(full, FinetuneConfig(**FAST, partial_distill=1.0), device="cpu")
    events = (full.root / "jobs" / manifest["job"] / "progress.jsonl").read_text()
    assert "distill_supervised" not in events
    assert list(manifest["metrics"]["validation_per_structure"]) == ["shell", "core"]
    assert "unlabeled_structures_agreement" not in manifest["metrics"]
    assert "completion_s" not in manifest["timings"]


def test_ranking_evidence_scores_only_the_labeled_structures(
    tmp_path, synthetic_pool, tiny_preset_file
):
    """A held-out label whose shell was never reviewed does not count against the model."""
    from assft.query.config import QueryConfig
    from assft.query.scoring import PoolScorer

    _, cases = synthetic_pool
    workspace = _workspace(tmp_path, synthetic_pool, tiny_preset_file, labeled_structures=[2])
    scorer = PoolScorer(workspace, QueryConfig(budget=1, views=1), device="cpu")
    label = tmp_path / "core-only.nii.gz"
    truth = sitk.ReadImage(str(cases[0].label))
    array = sitk.GetArrayFromImage(truth)
    shell_moved = np.where(array == 1, 0, array).astype(array.dtype)  # the shell is wrong
    written = sitk.GetImageFromArray(shell_moved)
    written.CopyInformation(truth)
    sitk.WriteImage(written, str(label))
    assert scorer.dice_of(cases[0].image, label) == pytest.approx(
        scorer.dice_of(cases[0].image, cases[0].label)
    )


def test_completed_labels_keep_the_unlabeled_structure_that_background_labels_erase(
    tmp_path, synthetic_pool, tiny_preset_file
):
    """A parent that knows both structures (trained here on full labels), then two fine-tunes
    on core-only labels from it: completed from the parent (the workspace records that only the
    core is labeled) and taken as complete (the shell becomes background). The completed one
    keeps the shell where the parent put it; the other erases it."""
    from assft.workspace.model_versions import ModelVersions

    data, cases = synthetic_pool
    core_only = tmp_path / "core-only"
    core_only.mkdir()
    for case in cases:
        truth = sitk.ReadImage(str(case.label))
        array = sitk.GetArrayFromImage(truth)
        image = sitk.GetImageFromArray(np.where(array == 2, 2, 0).astype(array.dtype))
        image.CopyInformation(truth)
        sitk.WriteImage(image, str(core_only / case.label.name))
    learn = {**FAST, "mode": "none", "lr": 0.02, "iterations": 60}
    workspace = _workspace(tmp_path, synthetic_pool, tiny_preset_file)
    for case in cases[:4]:
        workspace.submit_label(case.case_id, case.label, user="test")
    workspace.set_status(cases[3].case_id, "held-out")
    parent = run_finetune(workspace, FinetuneConfig(**learn), device="cpu")["version"]
    ModelVersions(workspace).promote(parent, reason="the parent of this test")
    assert parent == "v1"

    agreement, gates = {}, {}
    for partial in (True, False):
        folder = tmp_path / f"partial-{partial}"
        shutil.copytree(workspace.root, folder)
        document = json.loads((folder / "assft.json").read_text())
        if partial:
            document["labeled_structures"] = [2]
        (folder / "assft.json").write_text(json.dumps(document))
        copy = Workspace.open(folder)
        for case in cases[:4]:
            copy.submit_label(case.case_id, core_only / case.label.name, user="test")
        config = FinetuneConfig(**{**learn, "iterations": 30})
        manifest = run_finetune(copy, config, device="cpu")
        made = manifest["version"]
        gates[partial] = manifest
        registry = ModelVersions(copy)
        held_out = [_held_out_case(copy, cases[3])]
        agreement[partial] = structure_agreement(
            registry.load(made), registry.load(parent), held_out, [1]
        )[1]
    assert agreement[True] > 0.9, agreement
    assert agreement[False] < agreement[True] - 0.3, agreement
    # Labels without the shell in a workspace that says every structure is labeled: the gate
    # keeps that version from becoming current, and says why and what to do.
    naive = gates[False]
    assert naive["gate"]["missing_structures"] == ["shell"] and not naive["promoted"]
    reason = naive["gate"]["reason"]
    assert (
        reason.startswith("not promoted: no label holds shell (")
        and "--labeled-structures" in reason
    )
    assert "missing_structures" not in gates[True]["gate"]


def _held_out_case(workspace: Workspace, case):
    from assft.training.data import PreparedCases
    from assft.workspace.model_versions import ModelVersions

    preset = ModelVersions(workspace).load("v0").preset
    prepared = PreparedCases(workspace.cache_folder("training"), preset, [1, 2], (16, 16, 16))
    return prepared.load(case.case_id, case.image, case.label)

"""Every verb of the command line with its exit codes: the annotation loop, signals, locks and
what native libraries print through a real subprocess; set-up steps and the long tables of
refused values through the same ``main`` in this process (``run_cli_in_process``), which saves
the suite a process start (and the imports) each."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk

from assft_testing import run_cli, run_cli_in_process
from assft_testing.mounts import remount_read_only, tmpfs
from assft_testing.workspaces import snapshot


def _init(tmp_path, synthetic_pool, tiny_preset_file):
    data, _ = synthetic_pool
    ws = tmp_path / "ws"
    result = run_cli_in_process(
        "init",
        str(ws),
        "--images",
        str(data / "images"),
        "--label-names",
        "1:shell,2:core",
        "--model",
        str(tiny_preset_file),
        "--json",
        check=True,
    )
    assert json.loads(result.stdout)["counts"]["unlabeled"] == 8
    return ws


def test_the_annotation_loop_through_the_cli(tmp_path, synthetic_pool, tiny_preset_file):
    _, cases = synthetic_pool
    truth = {c.case_id: c.label for c in cases}
    ws = _init(tmp_path, synthetic_pool, tiny_preset_file)

    ranked = run_cli(
        "rank", str(ws), "--budget", "2", "--views", "1", "--device", "cpu", "--json", check=True
    )
    document = json.loads(ranked.stdout)
    assert {"cases", "selected", "model_version", "strategy"} <= set(document)
    assert document["model_version"] == "v0" and len(document["selected"]) == 2
    for row in document["cases"]:
        assert {
            "case",
            "rank",
            "score",
            "dkd",
            "asd",
            "asd_per_class",
            "diversity",
            "reason",
        } <= set(row)

    nxt = json.loads(run_cli("next", str(ws), "--json", check=True).stdout)
    assert nxt["case"] == document["selected"][0] and nxt["rank"] == 1

    run_cli("submit", str(ws), nxt["case"], str(truth[nxt["case"]]), "--user", "dr-a", check=True)
    run_cli("skip", str(ws), document["selected"][1], check=True)
    nxt2 = json.loads(run_cli("next", str(ws), "--json", check=True).stdout)
    assert nxt2["case"] == document["cases"][2]["case"]

    status = json.loads(run_cli("status", str(ws), "--json", check=True).stdout)
    assert status["model_version"] == "v0"
    assert status["counts"] == {"unlabeled": 6, "labeled": 1, "skipped": 1, "held-out": 0}
    assert status["running_job"] is None

    text = run_cli("status", str(ws), check=True).stdout
    assert "6 unlabeled" in text


def test_progress_json_lines(tmp_path, synthetic_pool, tiny_preset_file):
    ws = _init(tmp_path, synthetic_pool, tiny_preset_file)
    result = run_cli(
        "rank", str(ws), "--budget", "1", "--views", "1", "--device", "cpu", "--progress", "json"
    )
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    progress = [e for e in events if e["event"] == "progress"]
    assert progress[0]["done"] == 0 and progress[-1]["done"] == progress[-1]["total"] == 8
    assert all(e["phase"] == "ranking" for e in progress)
    assert events[-1]["event"] == "done" and len(events[-1]["selected"]) == 1


def test_bad_input_exits_2_with_one_line(tmp_path, synthetic_pool, tiny_preset_file):
    ws = _init(tmp_path, synthetic_pool, tiny_preset_file)
    bad_label = tmp_path / "bad.nii.gz"
    image = sitk.ReadImage(str(synthetic_pool[0] / "images" / "case_000.nii.gz"))
    label = sitk.GetImageFromArray(np.full(sitk.GetArrayFromImage(image).shape, 7, np.uint8))
    label.CopyInformation(image)
    sitk.WriteImage(label, str(bad_label))
    typo = tmp_path / "typo.json"
    typo.write_text('{"budjet": 3}')
    cases = [
        (("rank", str(ws), "--budget", "99", "--device", "cpu"), "larger than the unlabeled pool"),
        (
            ("rank", str(ws), "--config", str(typo)),
            f"{typo}: unknown QueryConfig field(s) ['budjet']",
        ),
        (
            ("finetune", str(ws), "--config", str(typo), "--config-json", "{}"),
            "--config and --config-json cannot be given together",
        ),
        (("submit", str(ws), "case_000", str(bad_label)), "undeclared"),
        (("submit", str(ws), "../../etc/passwd", str(bad_label)), "not a valid case id"),
        (("skip", str(ws), "nope"), "unknown case id"),
        (("status", str(tmp_path)), "not an ASSFT workspace"),
        (("next", str(ws)), "no ranking yet"),
        (
            ("init", str(tmp_path / "w2"), "--images", str(tmp_path / "missing.nii.gz")),
            "missing.nii.gz",
        ),
    ]
    for index, (args, message) in enumerate(cases):
        # The first through a real process, the rest through the same main in this one.
        result = (run_cli if index == 0 else run_cli_in_process)(*args)
        assert result.returncode == 2, (args, result.stderr)
        lines = [
            x for x in result.stderr.strip().splitlines() if not x.startswith("assft: warning:")
        ]
        assert len(lines) == 1 and message in lines[0], (args, result.stderr)
    assert not (tmp_path / "w2").exists()
    status = json.loads(run_cli_in_process("status", str(ws), "--json", check=True).stdout)
    assert status["counts"]["labeled"] == 0


def test_a_locked_workspace_is_refused(tmp_path, synthetic_pool, tiny_preset_file):
    ws = _init(tmp_path, synthetic_pool, tiny_preset_file)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom assft.workspace import Workspace\n"
            f"w = Workspace.open({str(ws)!r})\n"
            "with w.job_lock('workspace', description='finetune'):\n"
            "    print('held', flush=True); time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        result = run_cli("rank", str(ws), "--budget", "1", "--device", "cpu")
        assert result.returncode == 2 and "locked by a running job" in result.stderr
        status = json.loads(run_cli_in_process("status", str(ws), "--json", check=True).stdout)
        assert status["running_job"]["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    assert (
        json.loads(run_cli_in_process("status", str(ws), "--json", check=True).stdout)[
            "running_job"
        ]
        is None
    )


def test_cancel_with_sigterm_exits_3_and_saves_nothing(tmp_path, synthetic_pool, tiny_preset_file):
    ws = _init(tmp_path, synthetic_pool, tiny_preset_file)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "assft",
            "rank",
            str(ws),
            "--budget",
            "1",
            "--device",
            "cpu",
            "--progress",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Wait for the first progress line (the model is loaded and the work has begun).
    first = process.stdout.readline()
    assert json.loads(first)["event"] == "progress"
    process.terminate()
    out, err = process.communicate(timeout=60)
    assert process.returncode == 3, err
    assert "cancelled" in err
    assert not list((ws / "rankings").glob("*.json"))


def test_a_checkpoint_that_does_not_fit_is_refused(tmp_path, synthetic_pool, tiny_preset_file):
    import torch
    from monai.networks.nets import UNet

    other = UNet(3, 1, 3, (8, 16, 32), (2, 2), num_res_units=1, norm="batch")
    checkpoint = tmp_path / "other.pt"
    torch.save(other.state_dict(), checkpoint)
    preset = json.loads(tiny_preset_file.read_text())
    preset["name"] = "tiny-with-wrong-weights"
    preset["checkpoint"] = {"source": "path", "path": str(checkpoint)}
    preset_file = tmp_path / "wrong.json"
    preset_file.write_text(json.dumps(preset))
    data, _ = synthetic_pool
    result = run_cli(
        "init", str(tmp_path / "ws"), "--images", str(data / "images"), "--model", str(preset_file)
    )
    assert result.returncode == 2
    assert "other.pt" in result.stderr and "do not fit" in result.stderr
    assert not (tmp_path / "ws").exists()


def test_settings_resolve_flags_over_config_over_workspace_over_defaults(
    tmp_path, synthetic_pool, tiny_preset_file
):
    from assft.query.config import QueryConfig

    ws = _init(tmp_path, synthetic_pool, tiny_preset_file)
    # A fresh workspace sets nothing, so a ranking takes QueryConfig's budget.
    assert json.loads((ws / "assft.json").read_text())["settings"] == {}
    config = tmp_path / "query.json"
    config.write_text('{"views": 1}')
    ranked = run_cli(
        "rank", str(ws), "--config", str(config), "--device", "cpu", "--json", check=True
    )
    document = json.loads(ranked.stdout)
    assert len(document["selected"]) == QueryConfig().budget == 5
    assert document["config"]["views"] == 1
    # The workspace's own budget overrides the default; a config file that does not name the
    # budget leaves it in force; a flag overrides all of them.
    settings = json.loads((ws / "assft.json").read_text())
    settings["settings"] = {"budget": 3, "strategy": "dkd"}
    (ws / "assft.json").write_text(json.dumps(settings))
    document = json.loads(
        run_cli_in_process(
            "rank", str(ws), "--config", str(config), "--device", "cpu", "--json", check=True
        ).stdout
    )
    assert (len(document["selected"]), document["strategy"], document["config"]["views"]) == (
        3,
        "dkd",
        1,
    )
    document = json.loads(
        run_cli_in_process(
            "rank",
            str(ws),
            "--config",
            str(config),
            "--budget",
            "2",
            "--device",
            "cpu",
            "--json",
            check=True,
        ).stdout
    )
    assert (len(document["selected"]), document["strategy"]) == (2, "dkd")


def test_help_states_the_dataclass_defaults_and_the_registered_strategies():
    from assft.query.config import QueryConfig
    from assft.query.strategies import STRATEGIES
    from assft.training.config import FinetuneConfig

    rank = " ".join(run_cli_in_process("rank", "--help", check=True).stdout.split())
    assert f"cases to select (default {QueryConfig().budget})" in rank
    assert (
        "{" + ",".join(STRATEGIES) + "}" in rank
        and f"default {QueryConfig().strategy.value}" in rank
    )
    finetune = " ".join(run_cli_in_process("finetune", "--help", check=True).stdout.split())
    assert f"steps of the supervised stage (default {FinetuneConfig().iterations})" in finetune
    assert "--config-json" not in finetune  # the detached relaunch's, not the user's
    bench = " ".join(run_cli_in_process("bench", "--help", check=True).stdout.split())
    assert ", ".join(STRATEGIES) in bench
    verbs = run_cli("--help", check=True).stdout
    for verb in (
        "init",
        "rank",
        "next",
        "submit",
        "skip",
        "status",
        "structures",
        "hold-out",
        "finetune",
        "jobs",
        "cancel",
        "models",
        "rollback",
        "predict",
        "evaluate",
        "demo",
        "bench",
        "sample-data",
        "pretrain-demo",
        "pretrain-foundation",
    ):
        assert f"    {verb} " in verbs or f"    {verb}\n" in verbs, verb


def test_the_cli_starts_without_torch():
    code = (
        "import sys\nfrom assft.cli import build_parser\nbuild_parser()\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


# Nothing lost, nothing escapes (issue 11) ------------------------------------------------------


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    """The refusal: exit 2 and exactly one line on stderr."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_predict_never_writes_into_a_folder_the_workspace_owns(
    tmp_path, synthetic_pool, tiny_preset_file
):
    from assft.workspace import Workspace

    _, cases = synthetic_pool
    ws = _init(tmp_path, synthetic_pool, tiny_preset_file)
    run_cli_in_process("submit", str(ws), "case_000", str(cases[0].label), check=True)
    link = tmp_path / "looks-harmless"
    link.symlink_to(ws / "labels", target_is_directory=True)
    other = _init(tmp_path / "second", synthetic_pool, tiny_preset_file)  # another lab's
    before = snapshot(Workspace.open(ws)), snapshot(Workspace.open(other))
    refused = [
        (("case_000", "--out", str(ws / "labels")), "is in the workspace's labels/ folder;"),
        (("--all", "--out", str(ws / "labels")), "is in the workspace's labels/ folder;"),
        (("case_001", "--out", str(link)), f"(it resolves to {ws / 'labels'})"),
        (("case_001", "--out", str(link / "sub")), "is in the workspace's labels/ folder"),
        (("case_000", "--out", str(ws / "models")), "is in the workspace's models/ folder;"),
        (("case_000", "--out", str(ws / "cache" / "x")), "is in the workspace's cache/ folder;"),
        (("case_000", "--out", str(ws)), "is inside the workspace"),
        (("case_000", "--out", str(ws / "elsewhere")), "outside predictions/"),
        (("--all", "--out", str(cases[0].image.parent)), "holds the scan of case 'case_000'"),
        (("--all", "--out", str(other / "labels")), f"is inside another workspace, {other},"),
        (("case_000", "--out", str(other)), f"is inside another workspace, {other},"),
    ]
    # The first through the command line (exit 2, one line); the rest in-process, where the same
    # check refuses them (a subprocess each would cost the suite half a minute).
    from assft.errors import BadInputError
    from assft.predict import predict_workspace

    first_args, first_message = refused[0]
    line = _one_error_line(run_cli("predict", str(ws), *first_args, "--device", "cpu"))
    assert first_message in line and "predictions never go into a folder" in line, line
    for args, message in refused[1:]:
        case = None if args[0] == "--all" else args[0]
        with pytest.raises(BadInputError) as caught:
            predict_workspace(
                Workspace.open(ws), case, case is None, out_dir=args[2], device="cpu", views=1
            )
        line = str(caught.value)
        assert "\n" not in line and message in line, (args, line)
        assert "predictions never go into a folder" in line or "scan" in line
    after = snapshot(Workspace.open(ws)), snapshot(Workspace.open(other))
    assert after == before  # the clinician's label, the audit trail: all as they were
    assert not (ws / "labels" / "case_001.nii.gz").exists() and not (ws / "elsewhere").exists()

    mine = ws / "predictions" / "mine"
    result = run_cli_in_process(
        "predict", str(ws), "case_001", "--out", str(mine), "--views", "1", "--json"
    )
    assert result.returncode == 0, result.stderr
    assert (mine / "case_001.nii.gz").is_file()


def test_finetune_refuses_a_missing_scan_before_it_creates_a_job(
    tmp_path, synthetic_pool, tiny_preset_file
):
    data, cases = synthetic_pool
    images = tmp_path / "images"
    shutil.copytree(data / "images", images)
    ws = tmp_path / "ws"
    run_cli_in_process(
        "init", str(ws), "--images", str(images), "--model", str(tiny_preset_file), check=True
    )
    run_cli_in_process("submit", str(ws), "case_000", str(cases[0].label), check=True)
    run_cli_in_process("submit", str(ws), "case_001", str(cases[1].label), check=True)
    (images / "case_001.nii.gz").unlink()
    line = _one_error_line(
        run_cli_in_process("finetune", str(ws), "--device", "cpu", "--iterations", "2")
    )
    assert line == (
        f"assft: error: {images / 'case_001.nii.gz'}: the scan of labeled case case_001 does not "
        "exist: restore it (nothing was started)"
    )
    assert not [p for p in (ws / "jobs").iterdir() if p.name.startswith("finetune-")]
    jobs = json.loads(run_cli_in_process("jobs", str(ws), "--json", check=True).stdout)["jobs"]
    assert jobs == []


def test_bad_scans_are_refused_at_init_in_one_line_and_itk_stays_quiet(tmp_path):
    from assft_testing.workspaces import write_dicom_series, write_volume

    wide = write_volume(tmp_path / "wide" / "wide.nii.gz", spacing=(400.0, 400.0, 400.0))
    whole = write_volume(tmp_path / "whole.mha")
    sitk.WriteImage(sitk.ReadImage(str(whole)), str(whole), True)
    cut = tmp_path / "cut" / "cut.mha"
    cut.parent.mkdir()
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    two = tmp_path / "two-series"
    two.mkdir()
    for seed in (0, 1):
        for file in write_dicom_series(tmp_path / f"series{seed}", seed=seed).iterdir():
            shutil.copyfile(file, two / f"{seed}-{file.name}")
    for images, message in (
        (wide, "spans 3200 mm along axis x (8 voxels of 400 mm)"),
        (cut, "is corrupted, truncated or not an image"),
        (two, "holds 2 DICOM series (1.2.826.0.1.3680043.2.1125.1 (10 files)"),
    ):
        result = run_cli("init", str(tmp_path / "ws"), "--images", str(images))
        line = _one_error_line(result)  # no MetaIO or ITK line before ours
        assert line.startswith(f"assft: error: {images}: {message}"), line
        assert not (tmp_path / "ws").exists()


def test_rank_refuses_a_scan_too_large_on_the_model_grid(tmp_path, tiny_preset_file):
    from assft_testing.workspaces import write_volume

    scans = tmp_path / "scans"
    write_volume(scans / "normal.nii.gz")
    vast = write_volume(
        scans / "vast.nii.gz", np.zeros((8, 8, 8), np.float32), spacing=(300.0, 300.0, 300.0)
    )
    ws = tmp_path / "ws"
    run_cli_in_process(
        "init", str(ws), "--images", str(scans), "--model", str(tiny_preset_file), check=True
    )
    line = _one_error_line(
        run_cli_in_process("rank", str(ws), "--budget", "1", "--views", "1", "--device", "cpu")
    )
    assert line.startswith(f"assft: error: {vast}: would be 800x800x800 = 512000000 voxels"), line
    assert "MAX_MODEL_GRID_VOXELS" in line


def test_a_read_only_workspace_is_said_in_one_line(tmp_path, synthetic_pool, tiny_preset_file):
    """Every verb that writes says "the workspace is read-only" (exit 2), not a traceback."""
    data, cases = synthetic_pool
    with tmpfs(tmp_path / "disk", "16m") as disk:
        ws = _init(disk, synthetic_pool, tiny_preset_file)
        run_cli_in_process("submit", str(ws), cases[0].case_id, str(cases[0].label), check=True)
        remount_read_only(disk)
        for index, args in enumerate(
            (
                ("rank", "--budget", "1", "--device", "cpu"),
                ("finetune", "--iterations", "1", "--device", "cpu"),
                ("submit", cases[1].case_id, str(cases[1].label)),
                ("skip", cases[1].case_id),
                ("hold-out", cases[0].case_id),
                ("rollback", "v0"),
            )
        ):
            runner = run_cli if index == 0 else run_cli_in_process
            result = runner(args[0], str(ws), *args[1:])
            lines = [x for x in result.stderr.strip().splitlines() if x.startswith("assft:")]
            assert result.returncode == 2, (args, result.stderr)
            assert len(lines) == 1 and "the workspace is read-only" in lines[0], (args, lines)
            assert "Traceback" not in result.stderr
        assert run_cli_in_process("status", str(ws)).returncode == 0


def _promoted_v1(ws):
    """Store and promote a v1 whose weights fit the workspace's preset (no training)."""
    from assft.workspace import Workspace
    from assft.workspace.model_versions import ModelVersions

    registry = ModelVersions(Workspace.open(ws))
    state = registry.load("v0").network.state_dict()
    tuned = {k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}
    registry.promote(registry.add_version(tuned, {"mode": "none"}), reason="test")
    return registry


def test_a_damaged_pointer_is_one_line_and_rollback_repairs_it(
    tmp_path, synthetic_pool, tiny_preset_file
):
    ws = _init(tmp_path, synthetic_pool, tiny_preset_file)
    _promoted_v1(ws)
    pointer = ws / "models" / "current"
    pointer.write_bytes(b"\xff\xfe\x00\x01")
    status = run_cli_in_process("status", str(ws), check=True).stdout
    assert "model version: unknown (damaged pointer)  [PROBLEM]" in status
    assert f"problem: {pointer}: is damaged (not text)" in status
    document = json.loads(run_cli_in_process("status", str(ws), "--json", check=True).stdout)
    assert document["model_version"] is None and len(document["model_problems"]) == 1
    for verb in (("rank", "--budget", "1", "--views", "1", "--device", "cpu"), ("models",)):
        result = run_cli_in_process(verb[0], str(ws), *verb[1:])
        if verb[0] == "models":  # lists the versions and flags the pointer
            assert result.returncode == 0 and result.stdout.startswith("PROBLEM: ")
            continue
        assert result.returncode == 2
        (line,) = result.stderr.strip().splitlines()
        assert str(pointer) in line and "is damaged (not text)" in line and "rollback" in line
    repaired = run_cli_in_process("rollback", str(ws), "v1", check=True).stdout
    assert repaired.startswith("Repaired the damaged pointer")
    assert "Current model version: v1" in repaired
    status = json.loads(run_cli_in_process("status", str(ws), "--json", check=True).stdout)
    assert status["model_version"] == "v1" and status["model_problems"] == []
    pointer.write_text("")  # empty is damaged too, never v0
    result = run_cli_in_process("rank", str(ws), "--budget", "1", "--views", "1", "--device", "cpu")
    assert result.returncode == 2 and "is damaged (empty)" in result.stderr


def test_status_and_models_flag_a_current_version_that_cannot_be_used(
    tmp_path, synthetic_pool, tiny_preset_file
):
    ws = _init(tmp_path, synthetic_pool, tiny_preset_file)
    registry = _promoted_v1(ws)
    checkpoint = registry.checkpoint_path("v1")
    checkpoint.write_bytes(checkpoint.read_bytes()[:500])
    status = run_cli_in_process("status", str(ws), check=True).stdout
    assert "model version: v1  [PROBLEM]" in status
    assert "problem: the current model version v1 cannot be used" in status
    assert "is damaged: sha256 differs" in status
    models = run_cli_in_process("models", str(ws), check=True).stdout.splitlines()
    assert models[0].startswith("PROBLEM: the current model version v1 cannot be used")
    assert models[-1].startswith("* v1    DAMAGED: ") and "model.pt" in models[-1]

    (ws / "models" / "v1" / "manifest.json").write_text('{"version": "v1", "par')
    models = run_cli_in_process("models", str(ws), check=True).stdout.splitlines()
    assert models[-1].startswith("* v1    DAMAGED: ")
    assert "cannot be read as a model manifest" in models[-1]
    assert "[PROBLEM]" in run_cli_in_process("status", str(ws), check=True).stdout
    # Rolling back to a version that loads clears it; the damaged one is refused.
    refused = run_cli_in_process("rollback", str(ws), "v1")
    assert refused.returncode == 2 and "manifest.json" in refused.stderr
    assert run_cli_in_process("rollback", str(ws), "v0").returncode == 0
    assert "[PROBLEM]" not in run_cli_in_process("status", str(ws), check=True).stdout


# Config values: every field checked before anything is made (issue 11, items 13 and 15) ------

RANK_FILE_CASES = [
    ('{"lambda_div": NaN}', "lambda_div must be a finite number, got nan"),
    ('{"lambda_div": Infinity}', "lambda_div must be a finite number, got inf"),
    ('{"lambda_div": -0.5}', "lambda_div must be at least 0, got -0.5"),
    ('{"weight": -Infinity}', "weight must be a finite number, got -inf"),
    ('{"weight": 1.5}', "weight must be between 0 and 1, got 1.5"),
    ('{"budget": true}', "budget must be an integer, got true"),
    ('{"budget": 0}', "budget must be at least 1, got 0"),
    ('{"budget": "5"}', 'budget must be an integer, got "5"'),
    ('{"budget": 2.5}', "budget must be an integer, got 2.5"),
    ('{"views": 0}', "views must be between 1 and 4, got 0"),
    ('{"views": 5}', "views must be between 1 and 4, got 5"),
    ('{"seed": -1}', "seed must be between 0 and 4294967295, got -1"),
    ('{"mc_samples": 1}', "mc_samples must be at least 2, got 1"),
    ('{"mc_dropout": 1}', "mc_dropout must be at least 0 and below 1, got 1.0"),
    ('{"clasp_beta": NaN}', "clasp_beta must be a finite number, got nan"),
    ('{"strategy": 3}', "strategy must be one of attsq, "),
    ('{"asd": {"radius": -1}}', "asd.radius must be between 0 and 64, got -1"),
    ('{"asd": {"tau": 2}}', "asd.tau must be between 0 and 1, got 2.0"),
    ('{"dkd": {"prototypes": 0}}', "dkd.prototypes must be at least 1, got 0"),
    ('{"dkd": {"drift": "no"}}', 'dkd.drift must be true or false, got "no"'),
    (
        '{"dkd": {"gap": "best"}}',
        'dkd.gap must be one of auto, bn, prototype, evidence, got "best"',
    ),
    ('{"dkd": "bn"}', 'dkd must be an object of drift, gap, prototypes, got "bn"'),
    ('{"lambda_dv": 1}', "unknown QueryConfig field(s) ['lambda_dv'] (did you mean lambda_div?)"),
]
RANK_FLAG_CASES = [
    ("--lambda-div", "nan", "lambda_div must be a finite number, got nan"),
    ("--lambda-div", "inf", "lambda_div must be a finite number, got inf"),
    ("--lambda-div", "-1", "lambda_div must be at least 0, got -1.0"),
    ("--weight", "nan", "weight must be a finite number, got nan"),
    ("--weight", "2", "weight must be between 0 and 1, got 2.0"),
    ("--budget", "0", "budget must be at least 1, got 0"),
    ("--views", "5", "views must be between 1 and 4, got 5"),
    ("--seed", "-1", "seed must be between 0 and 4294967295, got -1"),
]
RANK_SETTINGS_CASES = [
    ({"budget": True}, "settings.budget must be an integer, got true"),
    ({"budget": 2.5}, "settings.budget must be an integer, got 2.5"),
    ({"budget": -3}, "settings.budget must be at least 1, got -3"),
    ({"strategy": 7}, "settings.strategy must be one of attsq, "),
    ({"budjet": 3}, "unknown setting(s) ['budjet'] in settings (did you mean budget?); known: "),
]
FINETUNE_FILE_CASES = [
    ('{"lr": NaN}', "lr must be a finite number, got nan"),
    ('{"lr": Infinity}', "lr must be a finite number, got inf"),
    ('{"lr": 0}', "lr must be above 0, got 0.0"),
    ('{"semi_iterations": -5}', "semi_iterations must be at least 1, got -5"),
    ('{"semi_iterations": "5"}', 'semi_iterations must be an integer, got "5"'),
    ('{"iterations": "10"}', 'iterations must be an integer, got "10"'),
    ('{"iterations": true}', "iterations must be an integer, got true"),
    ('{"checkpoint_every": 0}', "checkpoint_every must be at least 1, got 0"),
    (
        '{"patch_size": [0, 0, 0]}',
        "patch_size must be three integers each at least 1, got [0, 0, 0]",
    ),
    ('{"patch_size": "32"}', 'patch_size must be three integers each at least 1, got "32"'),
    ('{"patch_size": [16, 16]}', "patch_size must be three integers each at least 1, got [16, 16]"),
    ('{"views": 0}', "views must be between 1 and 4, got 0"),
    ('{"batch_size": true}', "batch_size must be an integer, got true"),
    ('{"batch_size": 1}', "batch_size must be at least 2 with pseudo-labels (1:1 mix; mode "),
    ('{"rho": 1.5}', "rho must be between 0 and 1, got 1.5"),
    ('{"tau_c": NaN}', "tau_c must be a finite number, got nan"),
    ('{"warmup_fraction": -Infinity}', "warmup_fraction must be a finite number, got -inf"),
    ('{"encoder_lr_scale": -1}', "encoder_lr_scale must be at least 0, got -1.0"),
    ('{"weight_decay": NaN}', "weight_decay must be a finite number, got nan"),
    ('{"roi_radius": -2}', "roi_radius must be between 0 and 64, got -2"),
    ('{"roi_tau": 2}', "roi_tau must be between 0 and 1, got 2.0"),
    ('{"amp": "yes"}', 'amp must be true or false, got "yes"'),
    ('{"augment": 1}', "augment must be true or false, got 1"),
    ('{"mode": "most"}', 'mode must be one of none, all, selective, got "most"'),
    ('{"seed": 4294967296}', "seed must be between 0 and 4294967295, got 4294967296"),
    (
        '{"iteration": 10}',
        "unknown FinetuneConfig field(s) ['iteration'] (did you mean iterations?)",
    ),
]
FINETUNE_FLAG_CASES = [
    ("--lr", "nan", "lr must be a finite number, got nan"),
    ("--lr", "-inf", "lr must be a finite number, got -inf"),
    ("--lr", "0", "lr must be above 0, got 0.0"),
    ("--iterations", "0", "iterations must be at least 1, got 0"),
    ("--semi-iterations", "-5", "semi_iterations must be at least 1, got -5"),
    ("--batch-size", "1", "batch_size must be at least 2 with pseudo-labels"),
    ("--seed", "-1", "seed must be between 0 and 4294967295, got -1"),
]
FINETUNE_SETTINGS_CASES = [
    ({"finetune_mode": 3}, "settings.finetune_mode must be one of none, all, selective, got 3"),
    ({"finetune_mode": "most"}, "settings.finetune_mode must be one of none, all, selective, got"),
    ({"finetune_mod": "all"}, "unknown setting(s) ['finetune_mod'] in settings (did you mean "),
]


def _refused_config_values(ws, verb, tmp_path, *, files=(), flags=(), settings=(), extra=()) -> int:
    """Run ``verb`` with each bad value (in a config file, a flag, the workspace's settings):
    each exits 2 with one stderr line naming the file or flag and the field, and leaves the
    workspace as it was (no job folder, no label snapshot, no ranking, no model version)."""
    from assft.workspace import Workspace

    config = tmp_path / f"{verb}-config.json"
    settings_file = ws / "assft.json"
    original = settings_file.read_text()
    runs = [(text, {}, ("--config", str(config)), f"{config}: {m}") for text, m in files]
    runs += [(None, {}, (f"{flag}={value}",), f"{flag}: {m}") for flag, value, m in flags]
    runs += [(None, values, (), f"{settings_file}: {m}") for values, m in settings]
    for index, (text, values, args, expected) in enumerate(runs):
        if text is not None:
            config.write_text(text)
        settings_file.write_text(json.dumps({**json.loads(original), "settings": values}))
        before = snapshot(Workspace.open(ws))
        # The first through a real process, the rest through the same main in this one.
        runner = run_cli if index == 0 else run_cli_in_process
        line = _one_error_line(runner(verb, str(ws), "--device", "cpu", *extra, *args))
        assert line.startswith(f"assft: error: {expected}"), (args, values, line)
        assert snapshot(Workspace.open(ws)) == before, (args, values)
    settings_file.write_text(original)
    return len(runs)


def test_rank_refuses_every_bad_config_value_in_one_line(
    tmp_path, synthetic_pool, tiny_preset_file
):
    ws = _init(tmp_path, synthetic_pool, tiny_preset_file)
    count = _refused_config_values(
        ws,
        "rank",
        tmp_path,
        files=RANK_FILE_CASES,
        flags=RANK_FLAG_CASES,
        settings=RANK_SETTINGS_CASES,
    )
    assert count >= 30
    assert not list((ws / "rankings").iterdir())


def test_finetune_refuses_every_bad_config_value_before_it_makes_a_job(
    tmp_path, synthetic_pool, tiny_preset_file
):
    from assft.workspace import Workspace

    _, cases = synthetic_pool
    ws = _init(tmp_path, synthetic_pool, tiny_preset_file)
    workspace = Workspace.open(ws)
    for case in cases[:2]:  # labeled: the old code went on to make a job and a label snapshot
        workspace.submit_label(case.case_id, case.label, user="test")
    count = _refused_config_values(
        ws,
        "finetune",
        tmp_path,
        files=FINETUNE_FILE_CASES,
        flags=FINETUNE_FLAG_CASES,
        settings=FINETUNE_SETTINGS_CASES,
    )
    assert count >= 30
    # Detached too: refused by the launching command, before any background process.
    _refused_config_values(
        ws,
        "finetune",
        tmp_path,
        files=FINETUNE_FILE_CASES[:2],
        flags=FINETUNE_FLAG_CASES[:1],
        settings=FINETUNE_SETTINGS_CASES[:1],
        extra=("--detach",),
    )
    assert list((ws / "jobs").iterdir()) == []
    assert (
        json.loads(run_cli_in_process("models", str(ws), "--json", check=True).stdout)["current"]
        == "v0"
    )


def test_the_apps_verbs_work_from_the_sources_without_installed_metadata(monkeypatch):
    """Run from a checkout on PYTHONPATH (or Slicer's module paths), no entry point names the
    apps' verbs: the CLI still finds them where they live, and only an absent package gets the
    install hint."""
    import importlib.metadata

    from assft.apps.commands import cmd_bench
    from assft.cli import build_parser

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **_: [])
    args = build_parser().parse_args(["bench", "speed", "--markdown", ""])
    assert args.handler is cmd_bench and not getattr(args, "absent_verb", False)


def test_an_encoder_without_structures_is_opened_named_and_never_exported_headless(
    tmp_path, synthetic_pool
):
    """The re-attack of issue 21: ``init`` of an encoder without --label-names made a one-label
    workspace in silence, ``model-info`` refused the shipped encoder, and ``export`` of its v0
    wrote a bundle whose random head looked trained. ``predict`` says its labels are noise."""
    data, _ = synthetic_pool
    ws = tmp_path / "ws"
    line = _one_error_line(
        run_cli_in_process(
            "init", str(ws), "--images", str(data / "images"), "--model", "foundation-demo"
        )
    )
    assert "foundation-demo has no structures of its own" in line and "--label-names" in line
    assert not ws.exists()
    info = run_cli_in_process("model-info", "foundation-demo")
    assert info.returncode == 0 and "an encoder without a head" in info.stdout
    run_cli_in_process(
        "init",
        str(ws),
        "--images",
        str(data / "images"),
        "--model",
        "foundation-demo",
        "--label-names",
        "1:shell,2:core",
        check=True,
    )
    result = run_cli_in_process("predict", str(ws), "case_000", "--views", "1", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "model v0 has no segmentation head for this workspace's labels yet" in result.stderr
    assert (ws / "predictions" / "v0" / "case_000.nii.gz").is_file()
    line = _one_error_line(
        run_cli_in_process("export", str(ws), "v0", "--out", str(tmp_path / "bundle"))
    )
    assert "v0 has no segmentation head" in line and not (tmp_path / "bundle").exists()


def test_a_pipe_named_like_a_scan_is_refused_not_skipped(tmp_path, synthetic_pool):
    if os.name == "nt":
        pytest.skip("named pipes of POSIX")
    data, _ = synthetic_pool
    images = tmp_path / "images"
    shutil.copytree(data / "images", images)
    os.mkfifo(images / "case_999.nii.gz")
    line = _one_error_line(
        run_cli_in_process("init", str(tmp_path / "ws"), "--images", str(images))
    )
    assert "case_999.nii.gz: is named like an image but is not a regular file" in line
    assert not (tmp_path / "ws").exists()


def test_output_cut_short_by_its_reader_is_no_internal_error(tmp_path, synthetic_pool):
    data, _ = synthetic_pool
    ws = tmp_path / "ws"
    run_cli_in_process("init", str(ws), "--images", str(data / "images"), check=True)
    reader = subprocess.Popen(
        [sys.executable, "-m", "assft", "models", str(ws), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert reader.stdout is not None
    reader.stdout.close()  # as `| head -0` does
    _, err = reader.communicate(timeout=120)
    assert reader.returncode in (0, 141) and b"internal error" not in err, err


def test_a_folder_the_user_may_not_write_is_said_in_one_line():
    """The re-attack of issue 21: export and init into a folder that cannot be written ended in
    'internal error: PermissionError'."""
    import errno

    from assft.errors import storage_error

    denied = PermissionError(errno.EPERM, "Operation not permitted", "/ro/.exp.partial")
    known = storage_error(denied, in_workspace=False)
    assert known is not None and known.exit_code == 2
    assert str(known) == "/ro/.exp.partial: operation not permitted"
    inside = storage_error(denied, in_workspace=True)
    assert inside is not None and "the workspace is read-only" in str(inside)
    assert storage_error(OSError(errno.ENOENT, "gone", "/x"), in_workspace=False) is None

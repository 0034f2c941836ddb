"""Fine-tuning jobs end to end: versions, the gate, resume after SIGKILL, cancel, locks,
label snapshots, damaged checkpoints and a full disk; promotion as one step (killed or failing
at each point), divergence, rollback while a job runs, resumed settings."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from assft.errors import BadInputError
from assft.training import FinetuneConfig
from assft.training.curves import LearningCurve
from assft.training.finetune import run_finetune
from assft.training.gate import validation_gate
from assft.workspace.jobs import JobStore, process_alive
from assft.workspace.model_versions import ModelVersions
from assft_testing import (
    let_go,
    pause_env,
    run_cli,
    run_cli_in_process,
    signal_blind_launcher,
    torchrun,
    wait_until_paused,
)
from assft_testing.pickles import write_malicious_pickle

FAST = {"iterations": 6, "semi_iterations": 6, "views": 1, "tau_c": 0.0, "checkpoint_every": 2}


@pytest.fixture
def labeled_workspace(tmp_path, synthetic_pool, tiny_preset_file):
    from assft.workspace.creation import create_workspace

    data, cases = synthetic_pool
    workspace = create_workspace(
        tmp_path / "ws",
        [data / "images"],
        model=str(tiny_preset_file),
        label_names={1: "shell", 2: "core"},
    )
    for case in cases[:4]:
        workspace.submit_label(case.case_id, case.label, user="test")
    workspace.set_status(cases[3].case_id, "held-out")
    return workspace


def _config_file(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "finetune.json"
    path.write_text(json.dumps({**FAST, **changes}))
    return path


def test_the_best_checkpoint_by_held_out_dice_is_the_version_stored(labeled_workspace):
    """Held-out Dice at every step (validate_every 1): the curve has a point per step from the
    parent's (step 0) on, the job keeps the best one's weights, and those are what is stored."""
    config = FinetuneConfig(**{**FAST, "mode": "none", "validate_every": 1, "lr": 0.05})
    manifest = run_finetune(labeled_workspace, config, device="cpu")
    curve = manifest["learning_curve"]
    assert curve["steps"] == {"1": 6, "2": 6} and manifest["schedule"]["iterations"] == 6
    # Supervised only (mode none): stage 2 was planned, stage 1 ran.
    assert LearningCurve.from_dict(curve).ran_steps() == {"1": 6}
    assert [p[:2] for p in curve["validation"]] == [[1, step] for step in range(7)]
    assert [p[1] for p in curve["loss"]] == list(range(1, 7))
    trained = [p for p in curve["validation"] if p[1] > 0]
    best = max(trained, key=lambda p: p[2])
    assert curve["best"] == {"stage": 1, "step": best[1], "validation_dice": best[2]}
    kept = manifest["metrics"]["best_checkpoint"]
    assert kept["step"] == best[1] and kept["last_validation_dice"] == trained[-1][2]
    # The stored version is the best checkpoint: its held-out Dice is the best point's.
    assert manifest["metrics"]["validation_dice"] == pytest.approx(best[2], abs=1e-4)
    job = JobStore(labeled_workspace).get(manifest["job"])
    stored = torch.load(
        ModelVersions(labeled_workspace).checkpoint(manifest["version"]), weights_only=True
    )
    best_weights = torch.load(job.folder / "best.pt", weights_only=True)
    state = stored.get("state_dict", stored) if isinstance(stored, dict) else stored
    assert all(torch.equal(state[k], v) for k, v in best_weights.items() if k in state)
    assert json.loads((job.folder / "curve.json").read_text())["best"] == curve["best"]


def test_steps_follow_the_labeled_set_when_not_given(labeled_workspace):
    config = FinetuneConfig(
        **{k: v for k, v in FAST.items() if "iterations" not in k},
        mode="none",
        min_iterations=3,
        epochs=1,
        batch_size=2,
        patch_size=(8, 8, 8),
    )
    manifest = run_finetune(labeled_workspace, config, device="cpu")
    job = JobStore(labeled_workspace).get(manifest["job"])
    steps = manifest["schedule"]["iterations"]
    # 3 labeled cases of 24^3 voxels at 1.5 mm are 12^3 on the 3 mm model grid: 3.375 patches of
    # 8^3 each, so 1 epoch is ceil(3 x 3.375 / 2) = 6 steps (above the minimum of 3).
    assert steps == 6 and job.info()["schedule"] == {"iterations": 6, "semi_iterations": 6}
    assert manifest["learning_curve"]["loss"][-1][1] == 6


def test_gate_rules():
    assert validation_gate(0.8, 0.7, "v1")["passed"]
    assert validation_gate(0.7, 0.7, "v1")["passed"]
    worse = validation_gate(0.6, 0.7, "v1")
    assert not worse["passed"] and "worse" in worse["reason"]
    assert validation_gate(None, None, "v0")["reason"].startswith("no held-out cases")


def test_refreshed_pseudo_labels_train_the_second_half_on_the_new_reliable_set(labeled_workspace):
    config = FinetuneConfig(**{**FAST, "refresh_pseudo_labels": True, "semi_iterations": 4})
    manifest = run_finetune(labeled_workspace, config, device="cpu")
    ssft = manifest["ssft"]
    assert len(ssft["reliable"]) == 1 and len(ssft["refreshed_reliable"]) == 1
    assert set(ssft["refreshed_reliable"]) <= set(ssft["confidence"])
    assert manifest["version"] == "v1"


def test_selective_finetune_registers_and_promotes_a_version(labeled_workspace):
    workspace = labeled_workspace
    manifest = run_finetune(workspace, FinetuneConfig(**FAST), device="cpu")
    assert manifest["version"] == "v1" and manifest["parent"] == "v0"
    assert manifest["mode"] == "selective" and manifest["held_out"] == ["case_003"]
    assert set(manifest["labels"]) == {"case_000", "case_001", "case_002"}
    assert manifest["label_set_hash"] == ModelVersions.label_set_hash(manifest["labels"])
    gate = manifest["gate"]
    assert gate["passed"] == (gate["validation_dice"] >= gate["parent_validation_dice"])
    assert manifest["promoted"] == gate["passed"]
    assert 0.0 <= manifest["metrics"]["validation_dice"] <= 1.0
    # Reliability of each unlabeled case; the reliable set is rho = 30 % of the pool of 4.
    ssft = manifest["ssft"]
    assert set(ssft["confidence"]) == {"case_004", "case_005", "case_006", "case_007"}
    assert len(ssft["reliable"]) == 1
    assert {"supervised_s", "semi_supervised_s", "pseudo_labels_s", "total_s"} <= set(
        manifest["timings"]
    )
    versions = ModelVersions(workspace).to_json()
    assert [v["version"] for v in versions["versions"]] == ["v0", "v1"]
    if manifest["promoted"]:
        assert versions["current"] == "v1"
        # The next ranking uses the new version, and DKD's drift term applies.
        from assft.query.config import QueryConfig
        from assft.query.ranking import rank_workspace

        document = rank_workspace(workspace, QueryConfig(budget=1, views=1), device="cpu")
        assert document["model_version"] == "v1" and document["notes"]["drift"] is True


def test_modes_none_and_all(labeled_workspace):
    none = run_finetune(labeled_workspace, FinetuneConfig(**FAST, mode="none"), device="cpu")
    assert "reliable" not in none["ssft"] and "semi_supervised_s" not in none["timings"]
    everything = run_finetune(labeled_workspace, FinetuneConfig(**FAST, mode="all"), device="cpu")
    assert len(everything["ssft"]["reliable"]) == 4
    current = ModelVersions(labeled_workspace).current()
    assert current == (everything["version"] if everything["promoted"] else everything["parent"])


def test_no_labels_is_refused(tmp_path, synthetic_pool, tiny_preset_file):
    from assft.workspace.creation import create_workspace

    data, _ = synthetic_pool
    workspace = create_workspace(
        tmp_path / "empty",
        [data / "images"],
        model=str(tiny_preset_file),
        label_names={1: "shell", 2: "core"},
    )
    with pytest.raises(BadInputError, match="no labeled cases"):
        run_finetune(workspace, FinetuneConfig(**FAST), device="cpu")


def test_a_damaged_current_model_is_refused_before_a_job_folder_is_made(labeled_workspace):
    """Issue 21, item 11: no failed job folder with a label snapshot is left behind."""
    registry = ModelVersions(labeled_workspace)
    model = registry.load("v0")
    registry.promote(registry.add_version(model.network.state_dict(), {}), reason="test")
    (labeled_workspace.models_dir / "v1" / "model.pt").write_bytes(b"truncated")
    before = sorted(p.name for p in labeled_workspace.jobs_dir.iterdir() if p.is_dir())
    with pytest.raises(BadInputError, match="is damaged: sha256 differs") as refused:
        run_finetune(labeled_workspace, FinetuneConfig(**FAST), device="cpu")
    assert "\n" not in str(refused.value) and "model.pt" in str(refused.value)
    assert sorted(p.name for p in labeled_workspace.jobs_dir.iterdir() if p.is_dir()) == before
    # Found by the attack rerun: weights that hold a pickle payload, their sha256 recorded (the
    # checksum agrees): refused before a job folder too, and the payload never runs.
    import json

    from assft.workspace.files import sha256_file
    from assft_testing.pickles import write_malicious_pickle

    weights = labeled_workspace.models_dir / "v1" / "model.pt"
    marker = labeled_workspace.root.parent / "payload-ran"
    write_malicious_pickle(weights, marker)
    manifest_path = labeled_workspace.models_dir / "v1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "checkpoint_sha256": sha256_file(weights)}))
    with pytest.raises(BadInputError, match="model.pt") as refused:
        run_finetune(labeled_workspace, FinetuneConfig(**FAST), device="cpu")
    assert "\n" not in str(refused.value) and not marker.exists()
    assert sorted(p.name for p in labeled_workspace.jobs_dir.iterdir() if p.is_dir()) == before


def test_disk_full_while_saving_leaves_everything_current(labeled_workspace, monkeypatch):
    import torch

    real_save = torch.save

    def full_disk_for_models(obj, f, *args, **kwargs):
        # Resume checkpoints (in jobs/) still fit; the new model version (in models/) does not.
        target = str(f) if isinstance(f, (str, Path)) else str(getattr(f, "name", ""))
        if "/models/" in target:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk_for_models)
    with pytest.raises(Exception, match="No space left"):
        run_finetune(labeled_workspace, FinetuneConfig(**FAST), device="cpu")
    monkeypatch.undo()
    models = labeled_workspace.models_dir
    assert ModelVersions(labeled_workspace).current() == "v0"
    assert not [p for p in models.iterdir() if p.name.startswith(("v", ".v"))]
    from assft.workspace.jobs import JobStore

    assert JobStore(labeled_workspace).list()[0]["state"] == "failed"


def test_truncated_checkpoint_is_a_clear_error_and_the_previous_version_loads(labeled_workspace):
    workspace = labeled_workspace
    run_finetune(workspace, FinetuneConfig(**FAST, mode="none"), device="cpu")
    registry = ModelVersions(workspace)
    registry.promote("v1", reason="test")
    checkpoint = registry.checkpoint_path("v1")
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    result = run_cli_in_process(
        "rank", str(workspace.root), "--budget", "1", "--views", "1", "--device", "cpu"
    )
    assert result.returncode == 2 and "model.pt" in result.stderr and "damaged" in result.stderr
    assert run_cli_in_process("rollback", str(workspace.root), "v0").returncode == 0
    assert (
        run_cli_in_process(
            "rank", str(workspace.root), "--budget", "1", "--views", "1", "--device", "cpu"
        ).returncode
        == 0
    )


def _finetune_command(ws: Path, config: Path, *extra: str) -> list[str]:
    """``python -m assft finetune`` on ``ws`` with a config file, JSON progress, on the CPU."""
    return [
        sys.executable,
        "-m",
        "assft",
        "finetune",
        str(ws),
        "--config",
        str(config),
        "--device",
        "cpu",
        "--progress",
        "json",
        *extra,
    ]


def _start(ws: Path, config: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        _finetune_command(ws, config, *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def _wait_for(process: subprocess.Popen, predicate, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        event = json.loads(line)
        if predicate(event):
            return event
    raise AssertionError(
        f"no such event; stderr: {process.stderr.read() if process.poll() is not None else ''}"
    )


def test_sigkill_then_restart_resumes_from_the_last_checkpoint(labeled_workspace, tmp_path):
    ws = labeled_workspace.root
    config = _config_file(tmp_path, iterations=30, mode="none")
    process = _start(ws, config)
    _wait_for(process, lambda e: e.get("phase") == "supervised" and e.get("done", 0) >= 5)
    process.kill()
    process.wait()
    jobs = json.loads(run_cli_in_process("jobs", str(ws), "--json", check=True).stdout)["jobs"]
    assert jobs[0]["state"] == "killed"
    assert ModelVersions(labeled_workspace).current() == "v0"
    assert not (labeled_workspace.models_dir / "v1").exists()

    # Asked for other settings, the job resumes with its own and says so.
    again = _start(ws, config, "--iterations", "40", "--mode", "all")
    resumed = _wait_for(again, lambda e: e["event"] == "resumed")
    assert resumed["stage"] == 1 and resumed["step"] >= 4 and resumed["job"] == jobs[0]["id"]
    assert resumed["settings"]["iterations"] == 30 and resumed["settings"]["mode"] == "none"
    assert resumed["ignored"] == {"iterations": 40, "mode": "all"}
    done = _wait_for(again, lambda e: e["event"] == "done")
    assert again.wait(60) == 0 and done["version"] == "v1"
    warning = " ".join(again.stderr.read().split())
    job_id = jobs[0]["id"]
    assert f"resuming job {job_id} with its own settings (mode none, iterations 30" in warning
    assert "not used: mode all (the job's: none), iterations 40 (the job's: 30)" in warning
    assert "--restart" in warning
    manifest = ModelVersions(labeled_workspace).manifest("v1")
    assert manifest["resumed"] is True and manifest["job"] == jobs[0]["id"]
    assert manifest["config"]["iterations"] == 30 and manifest["mode"] == "none"


def test_restart_starts_a_new_job_instead_of_resuming(labeled_workspace, tmp_path):
    ws = labeled_workspace.root
    process = _start(ws, _config_file(tmp_path, iterations=30, mode="none"))
    _wait_for(process, lambda e: e.get("phase") == "supervised" and e.get("done", 0) >= 3)
    process.kill()
    process.wait()
    killed = JobStore(ws).list()[0]["id"]
    result = run_cli(
        "finetune",
        str(ws),
        "--config",
        str(_config_file(tmp_path, iterations=4, mode="none")),
        "--device",
        "cpu",
        "--restart",
        "--json",
        check=True,
    )
    manifest = json.loads(result.stdout)
    assert manifest["resumed"] is False and manifest["job"] != killed
    assert manifest["config"]["iterations"] == 4
    old = JobStore(ws).get(killed).info()
    assert old["state"] == "killed" and "started afresh (--restart)" in old["message"]
    assert not JobStore(ws).get(killed).resume_path.exists()  # never resumed later either


def test_a_resume_point_that_cannot_be_loaded_safely_is_refused_in_one_line(
    labeled_workspace, tmp_path
):
    ws = labeled_workspace.root
    config = _config_file(tmp_path, iterations=30, mode="none")
    process = _start(ws, config)
    _wait_for(process, lambda e: e.get("phase") == "supervised" and e.get("done", 0) >= 5)
    process.kill()
    process.wait()
    killed = JobStore(labeled_workspace).list()[0]
    assert killed["state"] == "killed"
    resume = ws / "jobs" / killed["id"] / "resume.pt"
    marker = tmp_path / "ran"
    write_malicious_pickle(resume, marker)

    result = run_cli("finetune", str(ws), "--config", str(config), "--device", "cpu")
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"assft: error: {resume}: cannot be loaded safely (it holds Python objects besides "
        f"tensors; it was not opened): start the fine-tune afresh with 'assft finetune {ws}' "
        "(this job will not be resumed)"
    ]
    assert "weights_only" not in result.stderr and not marker.exists()
    assert JobStore(labeled_workspace).list()[0]["state"] == "failed"
    assert JobStore(labeled_workspace).resumable("finetune", killed["label_set_hash"]) is None
    assert ModelVersions(labeled_workspace).current() == "v0"


def test_cancel_a_detached_job_changes_nothing(labeled_workspace, tmp_path):
    ws = labeled_workspace.root
    # Steps take milliseconds: enough of them that the job still runs when the cancel comes.
    config = _config_file(tmp_path, iterations=20000, mode="none")
    launched = run_cli(
        "finetune",
        str(ws),
        "--config",
        str(config),
        "--device",
        "cpu",
        "--detach",
        "--json",
        check=True,
    )
    document = json.loads(launched.stdout)
    pid = document["pid"]
    assert os.getsid(pid) == pid  # its own session: it outlives the shell
    # The launch names the job the background process runs.
    recorded = JobStore(ws).get(document["job"]).recorded()
    assert recorded["pid"] == pid
    # The resolved settings travel as a file beside the job's output, not as text on the argv.
    argv = document["argv"]
    assert "--config-json" not in argv
    settings = Path(argv[argv.index("--config") + 1])
    assert settings.parent.resolve() == (ws / "jobs").resolve()
    assert json.loads(settings.read_text())["iterations"] == 20000
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        jobs = json.loads(run_cli_in_process("jobs", str(ws), "--json", check=True).stdout)["jobs"]
        if jobs and (jobs[0].get("last_progress") or {}).get("phase") == "supervised":
            break
        time.sleep(0.5)
    # A second fine-tune while the first runs is refused.
    second = run_cli_in_process("finetune", str(ws), "--config", str(config), "--device", "cpu")
    assert second.returncode == 2 and "locked by a running job" in second.stderr
    cancelled = run_cli("cancel", str(ws), "--json", check=True)
    info = json.loads(cancelled.stdout)
    assert info["state"] == "cancelled" and info["exit_code"] == 3
    assert ModelVersions(labeled_workspace).current() == "v0"
    assert not (labeled_workspace.models_dir / "v1").exists()
    # The process is gone (or a zombie waiting for init to reap it).
    stat = Path(f"/proc/{pid}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_a_cancel_right_after_a_detached_launch_stops_the_job_and_it_never_promotes(
    labeled_workspace, tmp_path
):
    """Issue 11 item 5: ``finetune --detach`` followed at once by ``cancel``, twice (with the job
    id the launch printed, then without): every cancel finds the job running and stops it;
    nothing is registered, the current version stays."""
    ws = labeled_workspace.root
    registry = ModelVersions(labeled_workspace)
    versions_before = sorted(p.name for p in labeled_workspace.models_dir.iterdir())
    config = _config_file(tmp_path, iterations=20000, mode="none")
    seen: set[str] = set()
    for attempt, with_id in enumerate((True, False)):
        launched = run_cli(
            "finetune",
            str(ws),
            "--config",
            str(config),
            "--device",
            "cpu",
            "--detach",
            "--json",
            check=True,
        )
        document = json.loads(launched.stdout)
        job_id = document["job"]
        # The launch returns once the job is registered and running, so the cancel finds it.
        assert isinstance(job_id, str) and job_id not in seen, document
        seen.add(job_id)
        cancelled = run_cli(
            "cancel", str(ws), *([job_id] if with_id else []), "--timeout", "120", "--json"
        )
        assert cancelled.returncode == 0, (attempt, cancelled.stderr)
        info = json.loads(cancelled.stdout)
        assert info["id"] == job_id and info["state"] == "cancelled", (attempt, info)
        assert info["exit_code"] == 3, info  # it stopped by itself at a safe point
        assert JobStore(ws).get(job_id).info()["state"] == "cancelled"
        assert not process_alive(document["pid"])
        assert sorted(p.name for p in labeled_workspace.models_dir.iterdir()) == versions_before
        assert registry.current() == "v0"
        assert [v["version"] for v in registry.to_json()["versions"]] == ["v0"]
    jobs = json.loads(run_cli_in_process("jobs", str(ws), "--json", check=True).stdout)["jobs"]
    assert {job["id"]: job["state"] for job in jobs} == dict.fromkeys(seen, "cancelled")


@pytest.mark.skipif(sys.platform == "win32", reason="the launcher ignores SIGTERM, a POSIX signal")
def test_cancel_reaches_a_job_under_a_launcher_that_forwards_no_signal(labeled_workspace, tmp_path):
    """As under PythonSlicer: the job runs in the launcher's child, which no signal reaches."""
    ws = labeled_workspace.root
    config = _config_file(tmp_path, iterations=20000, mode="none")
    # Output to a file: a pipe nobody reads would block the job before its next step.
    with open(tmp_path / "output.txt", "w") as output:
        launcher = subprocess.Popen(
            [*signal_blind_launcher(tmp_path), *_finetune_command(ws, config)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    store = JobStore(ws)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = store.running()
        if job and (job.last_progress() or {}).get("phase") == "supervised":
            break
        assert launcher.poll() is None, (tmp_path / "output.txt").read_text()
        time.sleep(0.2)
    else:
        raise AssertionError("the job never reached its supervised stage")
    engine = job.recorded()["pid"]
    assert engine != launcher.pid  # the job runs in the launcher's child

    started = time.monotonic()
    cancelled = run_cli("cancel", str(ws), job.id, "--timeout", "90", "--json", check=True)
    assert time.monotonic() - started < 90  # stopped by itself, not ended after the timeout
    info = json.loads(cancelled.stdout)
    assert info["state"] == "cancelled" and info["exit_code"] == 3
    assert info["message"] == "cancelled by request"
    assert launcher.wait(30) == 3  # the engine's own exit code, relayed by the launcher
    lines = (tmp_path / "output.txt").read_text().strip().splitlines()
    assert lines[-1] == "assft: cancelled: cancelled by request"
    assert json.loads(lines[-2]) == {
        "event": "error",
        "message": "cancelled by request",
        "cancelled": True,
    }
    assert ModelVersions(labeled_workspace).current() == "v0"
    assert not (labeled_workspace.models_dir / "v1").exists()
    assert labeled_workspace.running_job() is None  # the lock went with it


def test_a_label_replaced_during_the_job_does_not_reach_it(
    labeled_workspace, tmp_path, synthetic_pool
):
    ws = labeled_workspace.root
    before = labeled_workspace.registry.case("case_000")["label_sha256"]
    process = _start(ws, _config_file(tmp_path, iterations=12, mode="none"))
    _wait_for(process, lambda e: e.get("phase") == "supervised")
    # The clinician corrects case_000 while the job trains: case_001's truth, a different label.
    _, cases = synthetic_pool
    labeled_workspace.submit_label("case_000", cases[5].label, user="test")
    after = labeled_workspace.registry.case("case_000")["label_sha256"]
    assert after != before
    _wait_for(process, lambda e: e["event"] == "done")
    assert process.wait(60) == 0
    manifest = ModelVersions(labeled_workspace).manifest("v1")
    assert manifest["labels"]["case_000"] == before
    # The promotion kept the new label, and the next fine-tune trains on it.
    assert manifest["promoted"] and ModelVersions(labeled_workspace).current() == "v1"
    stored = labeled_workspace.label_path("case_000")
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == after
    assert labeled_workspace.registry.case("case_000")["label_sha256"] == after
    following = run_finetune(
        labeled_workspace, FinetuneConfig(**{**FAST, "mode": "none"}), device="cpu"
    )
    assert following["labels"]["case_000"] == after


def test_torchrun_ranking_matches_one_process(labeled_workspace):
    ws = str(labeled_workspace.root)
    single = json.loads(
        run_cli(
            "rank", ws, "--budget", "2", "--views", "1", "--device", "cpu", "--json", check=True
        ).stdout
    )
    result = torchrun(
        "-m", "assft", "rank", ws, "--budget", "2", "--views", "1", "--device", "cpu", "--json"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    split = json.loads(result.stdout)
    assert split["world_size"] == 2
    assert split["selected"] == single["selected"]
    assert [r["case"] for r in split["cases"]] == [r["case"] for r in single["cases"]]
    assert [r["dkd"] for r in split["cases"]] == pytest.approx(
        [r["dkd"] for r in single["cases"]], rel=1e-4
    )


def test_torchrun_finetune_trains_with_ddp(labeled_workspace, tmp_path):
    ws = str(labeled_workspace.root)
    config = _config_file(tmp_path, iterations=4, semi_iterations=4)
    result = torchrun(
        "-m", "assft", "finetune", ws, "--config", str(config), "--device", "cpu", "--json"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads(result.stdout)
    assert manifest["version"] == "v1" and manifest["world_size"] == 2
    assert (
        len(manifest["ssft"]["confidence"]) == 4
    )  # every unlabeled case, gathered from both ranks
    assert ModelVersions(labeled_workspace).verify("v1") is None


# Promotion as one step ---------------------------------------------------------------------------


def _no_held_out(workspace) -> None:
    """Without held-out cases the gate passes: every finished job promotes its version."""
    workspace.set_status("case_003", "labeled")


def _model_audit(workspace) -> list[tuple[str, str]]:
    return [
        (row["action"], row["detail"]["version"])
        for row in workspace.registry.audit_trail()
        if row["action"].endswith("-model") or row["action"] == "restore-model-pointer"
    ]


@pytest.mark.parametrize(
    "point", ["model-version-stored", "model-pointer-moved", "promotion-committed"]
)
def test_a_job_killed_while_registering_is_completed_by_the_next_run(
    labeled_workspace, tmp_path, point
):
    workspace = labeled_workspace
    _no_held_out(workspace)
    ws = workspace.root
    config = _config_file(tmp_path, mode="none")
    pause = tmp_path / "pause"
    process = _start(ws, config, env=pause_env(point, pause))
    try:
        wait_until_paused(process, pause, point)
    finally:
        process.kill()  # SIGKILL at the synchronisation point
        process.wait()
    registry = ModelVersions(workspace)
    (job,) = JobStore(ws).list()
    assert job["state"] == "killed"
    assert [v["version"] for v in registry.versions()] == ["v0", "v1"]
    committed = point == "promotion-committed"
    assert registry.recorded_current() == ("v1" if committed else "v0")
    # Only a kill between the pointer's move and the commit leaves a pointer nobody recorded:
    # reported until the next run puts it back (and then promotes v1 for real).
    assert registry.current() == ("v0" if point == "model-version-stored" else "v1")
    problems = registry.problems()
    if point == "model-pointer-moved":
        status = json.loads(run_cli_in_process("status", str(ws), "--json", check=True).stdout)
        assert status["model_problems"] == problems
        assert "names v1, but the registry records v0" in problems[0]
        # Written inside the transaction that never committed: put back with the pointer.
        assert registry.manifest("v1")["promoted"] is True
        assert "put back to v0" in registry.recover()
        assert registry.current() == "v0" and registry.manifest("v1")["promoted"] is False
        assert registry.problems() == []
    else:
        assert problems == []

    rerun = run_cli(
        "finetune", str(ws), "--config", str(config), "--device", "cpu", "--progress", "json"
    )
    assert rerun.returncode == 0, rerun.stderr
    events = [json.loads(line) for line in rerun.stdout.splitlines()]
    assert events[0]["event"] == "resumed" and events[0]["version"] == "v1"
    assert "nothing to train" in events[0]["note"]
    assert events[-1]["event"] == "done" and events[-1]["version"] == "v1"
    assert events[-1]["promoted"] is True and events[-1]["job"] == job["id"]
    # No second version, v1 current, promoted once, the job done.
    assert [v["version"] for v in registry.versions()] == ["v0", "v1"]
    assert registry.current() == "v1" and registry.recorded_current() == "v1"
    assert registry.manifest("v1")["promoted"] is True
    expected = [("promote-model", "v1")]
    if point == "model-pointer-moved":  # put back first, then promoted for real
        expected.insert(0, ("restore-model-pointer", "v0"))
    assert _model_audit(workspace) == expected
    assert registry.decision("v1")["detail"]["job"] == job["id"]
    info = JobStore(ws).get(job["id"]).info()
    assert info["state"] == "done" and info["exit_code"] == 0
    assert info["message"].startswith("version v1 (promoted); completed by a later run")
    assert registry.problems() == []


def test_a_promotion_the_registry_refuses_fails_the_job_and_changes_nothing(
    labeled_workspace,
):
    workspace = labeled_workspace
    _no_held_out(workspace)
    with sqlite3.connect(workspace.registry.path) as connection:
        connection.execute(
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit "
            "BEGIN SELECT RAISE(ABORT, 'audit rows refused by the test'); END"
        )
    with pytest.raises(BadInputError, match="audit rows refused by the test"):
        run_finetune(workspace, FinetuneConfig(**FAST, mode="none"), device="cpu")
    registry = ModelVersions(workspace)
    (job,) = JobStore(workspace).list()
    assert job["state"] == "failed" and "audit rows refused" in job["message"]
    assert registry.current() == "v0" and not (workspace.models_dir / "current").exists()
    assert registry.manifest("v1")["promoted"] is False  # stored, never promoted
    assert _model_audit(workspace) == []

    with sqlite3.connect(workspace.registry.path) as connection:
        connection.execute("DROP TRIGGER refuse_audit")
    # The next run completes the stored version instead of training a duplicate.
    manifest = run_finetune(workspace, FinetuneConfig(**FAST, mode="none"), device="cpu")
    assert manifest["version"] == "v1" and manifest["promoted"] is True
    assert [v["version"] for v in registry.versions()] == ["v0", "v1"]
    assert registry.current() == "v1" and _model_audit(workspace) == [("promote-model", "v1")]
    assert JobStore(workspace).get(job["id"]).info()["state"] == "done"


def test_a_diverged_finetune_is_never_registered(labeled_workspace, tmp_path):
    workspace = labeled_workspace
    _no_held_out(workspace)  # nothing held out: the gate alone would have promoted it
    ws = workspace.root
    result = run_cli(
        "finetune",
        str(ws),
        "--config",
        str(_config_file(tmp_path, mode="none", lr=1e6)),
        "--device",
        "cpu",
    )
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "fine-tuning diverged: the loss is nan" in line and "learning rate 1e+06" in line
    assert "nothing was registered" in line
    registry = ModelVersions(workspace)
    assert registry.current() == "v0" and [v["version"] for v in registry.versions()] == ["v0"]
    assert not [p for p in workspace.models_dir.iterdir() if p.name.startswith(("v", ".v"))]
    (job,) = JobStore(ws).list()
    assert job["state"] == "failed" and job["exit_code"] == 1
    assert "diverged" in job["message"]
    # The workspace still ranks and predicts with the preset.
    rank = run_cli_in_process("rank", str(ws), "--budget", "1", "--views", "1", "--device", "cpu")
    assert rank.returncode == 0, rank.stderr


def test_a_rollback_while_the_job_runs_is_not_undone(labeled_workspace, tmp_path):
    workspace = labeled_workspace
    _no_held_out(workspace)
    ws = workspace.root
    first = run_finetune(workspace, FinetuneConfig(**FAST, mode="none"), device="cpu")
    assert first["version"] == "v1" and ModelVersions(workspace).current() == "v1"

    pause = tmp_path / "pause"
    config = _config_file(tmp_path, mode="none", seed=1)
    process = _start(ws, config, "--json", env=pause_env("model-version-stored", pause))
    wait_until_paused(process, pause, "model-version-stored")  # trained from v1, v2 stored
    rollback = run_cli_in_process("rollback", str(ws), "v0", "--json", check=True)
    assert json.loads(rollback.stdout)["current"] == "v0"
    let_go(pause, "model-version-stored")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err

    events = [json.loads(line) for line in out.splitlines()]
    done = next(e for e in events if e.get("event") == "done")
    assert done["version"] == "v2" and done["promoted"] is False
    assert "the current version is v0, not v1" in done["note"]
    manifest = events[-1]  # --json prints the manifest last
    assert manifest["version"] == "v2" and manifest["parent"] == "v1"
    assert manifest["gate"]["passed"] is True and manifest["promoted"] is False
    assert "not promoted: the current version is v0, not v1" in manifest["not_promoted_reason"]
    registry = ModelVersions(workspace)
    assert registry.current() == "v0"  # the clinician's rollback stands
    (job,) = [j for j in JobStore(ws).list() if j["id"] == manifest["job"]]
    assert job["state"] == "done" and "not promoted: the current version is v0" in job["message"]
    assert _model_audit(workspace) == [
        ("promote-model", "v1"),
        ("rollback-model", "v0"),
        ("register-model", "v2"),
    ]


def test_the_anchor_holds_the_parent_where_a_label_showed_it_right(labeled_workspace):
    from assft.query.config import QueryConfig
    from assft.query.ranking import rank_workspace

    workspace = labeled_workspace
    rank_workspace(workspace, QueryConfig(budget=1, views=1), device="cpu")  # finds the parts
    # With no margin every scan bears the parent out: the surest 30 % of the 4 unlabeled cases.
    config = FinetuneConfig(**FAST, anchor_margin=0.0)
    manifest = run_finetune(workspace, config, device="cpu")
    ssft = manifest["ssft"]
    assert len(ssft["anchor"]) == 1
    assert set(ssft["anchor_confidence"]) == {"case_004", "case_005", "case_006", "case_007"}
    # The evidence: each labeled and held-out scan, the parent's Dice and confidence there.
    evidence = {e["case"]: e for e in ssft["anchor_evidence"]}
    assert set(evidence) == {"case_000", "case_001", "case_002", "case_003"}
    assert all(e["borne_out"] and 0.0 <= e["dice"] <= 1.0 for e in evidence.values())
    assert [e["training"] for e in evidence.values()] == [True, True, True, False]
    # A case the anchor holds is taught by the parent alone, never by the stage-2 set too.
    assert not set(ssft["anchor"]) & set(ssft["reliable"])
    job = JobStore(workspace).get(manifest["job"])
    assert (job.folder / "anchor" / f"{ssft['anchor'][0]}.pt").is_file()
    events = [json.loads(line) for line in (job.folder / "progress.jsonl").read_text().splitlines()]
    stage_1 = [e for e in events if e.get("phase") == "supervised" and e.get("done")]
    assert stage_1 and all("anchor" in e for e in stage_1)  # in every batch of stage 1
    stage_2 = [e for e in events if e.get("phase") == "semi-supervised" and e.get("done")]
    assert stage_2 and all("anchor" in e or "pseudo" in e for e in stage_2)
    # The gate's change per part of the archive covers the held-out scan.
    assert [p["cases"] for p in manifest["gate"]["parts"]] == [["case_003"]]
    # Where no scan showed the parent right, nothing is anchored; without the anchor, no record.
    strict = run_finetune(
        workspace, FinetuneConfig(**FAST, anchor_margin=1.0, seed=1), device="cpu", restart=True
    )
    assert not any(e["borne_out"] for e in strict["ssft"]["anchor_evidence"])
    assert strict["ssft"]["anchor"] == []
    off = run_finetune(
        workspace, FinetuneConfig(**FAST, anchor=False, seed=2), device="cpu", restart=True
    )
    assert "anchor" not in off["ssft"]

    # anchor_distill: the anchor's patches also teach the parent's soft predictions, every step
    # the anchor is in the batch; without anchor cases there is no teacher and no such term.
    taught = run_finetune(
        workspace,
        FinetuneConfig(**FAST, anchor_margin=0.0, anchor_distill=1.0, seed=3),
        device="cpu",
        restart=True,
    )
    assert taught["ssft"]["anchor"]
    job = JobStore(workspace).get(taught["job"])
    events = [json.loads(line) for line in (job.folder / "progress.jsonl").read_text().splitlines()]
    anchored = [e for e in events if "anchor" in e and e.get("done")]
    assert anchored and all(e["distill_anchor"] > 0 for e in anchored)
    assert not any("distill_anchor" in e for e in events if e.get("done") and "anchor" not in e)


def test_held_out_scans_weigh_the_share_of_the_archive_they_stand_for():
    from assft.query.parts import ArchiveParts
    from assft.training.gate import archive_weights

    parts = ArchiveParts(
        of_case={**{f"a{i}": 0 for i in range(25)}, **{f"b{i}": 1 for i in range(5)}},
        by_closeness=[[f"a{i}" for i in range(25)], [f"b{i}" for i in range(5)]],
    )
    # One scan of a part of 25 and one of a part of 5 weigh 5 : 1.
    assert archive_weights(["a0", "b0"], parts) == pytest.approx([25 / 30, 5 / 30])
    # Two scans of the large part share its weight.
    assert archive_weights(["a0", "a1", "b0"], parts) == pytest.approx(
        [12.5 / 30, 12.5 / 30, 5 / 30]
    )
    # A scan the parts do not know weighs an average part; without parts the weights are equal.
    assert archive_weights(["a0", "x"], parts) == pytest.approx([25 / 40, 15 / 40])
    assert archive_weights(["a0", "b0"], None) == [0.5, 0.5] and archive_weights([], parts) == []


def test_the_progress_gives_the_whole_jobs_time_left(labeled_workspace):
    """The estimate covered the current stage only (issue 22): during the supervised stage,
    ``job_eta_s`` also counts the semi-supervised steps to come; in the last stage it is that
    stage's own."""
    import io

    from assft.runtime.progress import Progress

    stream = io.StringIO()  # what `assft finetune --progress json` prints
    config = FinetuneConfig(
        **{**FAST, "iterations": 8, "semi_iterations": 8, "mode": "all", "tau_c": 0.0}
    )
    run_finetune(labeled_workspace, config, device="cpu", progress=Progress("json", stream))
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    steps = [e for e in events if e.get("event") == "progress" and "job_eta_s" in e]
    stage_1 = [e for e in steps if e["phase"] == "supervised"]
    stage_2 = [e for e in steps if e["phase"] == "semi-supervised"]
    assert stage_1 and stage_2, [(e.get("phase"), e.get("job_eta_s")) for e in events][:40]
    assert all(event["job_eta_s"] > 0 for event in stage_1)
    # The end of the first stage: nothing left of it, 8 steps of the second still to come.
    last_of_1 = stage_1[-1]
    assert last_of_1["done"] == 8 and last_of_1["eta_s"] == 0 and last_of_1["job_eta_s"] > 0
    assert stage_2[-1]["done"] == 8 and stage_2[-1]["job_eta_s"] == 0


def test_a_fine_tune_is_estimated_before_it_starts_from_the_last_ones_pace(labeled_workspace):
    """Nothing is estimated before a fine-tune has run in the workspace; then the steps follow
    the recipe's rule for the labeled set, at the pace the last fine-tune measured."""
    from assft.training.estimate import estimate_finetune

    config = FinetuneConfig(**FAST)
    assert estimate_finetune(labeled_workspace, config) is None
    manifest = run_finetune(labeled_workspace, config, device="cpu")
    patches = manifest["schedule"]["patches_per_case"]
    assert patches >= 1.0
    short = estimate_finetune(labeled_workspace, config)
    assert short is not None and short["version"] == manifest["version"] and short["steps"] == 12
    pace = manifest["timings"]["iterations_per_s"]
    ruled = FinetuneConfig(**{**FAST, "iterations": None, "semi_iterations": None})
    labeled = len(labeled_workspace.cases("labeled"))
    first, semi = ruled.steps_for(labeled, patches, (1, 1, 1))
    estimate = estimate_finetune(labeled_workspace, ruled)
    assert estimate is not None and estimate["steps"] == first + semi >= 2 * ruled.min_iterations
    assert estimate["seconds"] - short["seconds"] == pytest.approx((first + semi - 12) / pace)
    supervised_only = estimate_finetune(labeled_workspace, FinetuneConfig(**FAST, mode="none"))
    assert supervised_only is not None and supervised_only["steps"] == 6

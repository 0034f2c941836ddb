"""What the third hostile run (issue 21) found, each refused in one line with exit 2 (or done),
nothing created and nothing lost: a job refused in the background, a SIGTERM after the work, a
file name that is not UTF-8, a window the network cannot take, a path the output's encoding
cannot hold, an output under a file, a bundle config nested too deeply.
(N9, labels written over through a swapped link, is in ``test_labels_never_overwritten.py``.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

from assft_testing import run_cli
from assft_testing.workspaces import tiny_workspace

LABELS = {1: "shell", 2: "core"}
QUICK = {"iterations": 2, "semi_iterations": 2, "views": 1}


@pytest.fixture
def workspace(tmp_path, synthetic_pool, tiny_preset_file):
    """Three synthetic cases with the tiny preset, one labeled."""
    return tiny_workspace(tmp_path, synthetic_pool[1][:3], tiny_preset_file, labeled=1)


def _one_line(result: subprocess.CompletedProcess, code: int = 2) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    line = result.stderr.strip()
    assert line.startswith("assft: error: ") and "\n" not in line, result.stderr
    assert "internal error" not in line
    return line


def _jobs(workspace) -> list[str]:
    """The job folders and the detached launches' files (not the locks)."""
    kept = ("finetune-", "detached-")
    return sorted(p.name for p in workspace.jobs_dir.iterdir() if p.name.startswith(kept))


def test_a_detached_fine_tune_of_a_damaged_model_is_refused_before_anything_is_launched(
    workspace, tmp_path
):
    before = _jobs(workspace)
    (workspace.models_dir / "current").write_bytes(b"\xff\xfe")  # a damaged pointer
    recipe = tmp_path / "quick.json"
    recipe.write_text(json.dumps(QUICK))
    result = run_cli(
        "finetune", str(workspace.root), "--config", str(recipe), "--detach", "--device", "cpu"
    )
    line = _one_line(result)
    assert "models/current" in line and line.count("assft: error:") == 1
    assert _jobs(workspace) == before  # no job, no detached-*.log or .config.json


def test_a_detached_job_that_refuses_its_input_says_why_in_one_line_and_leaves_nothing(
    workspace, synthetic_pool, tmp_path
):
    """The child itself refuses (a label written over outside assft, found at its start): its
    exit code 2 and its reason come back, and its log and settings files go."""
    _, cases = synthetic_pool
    stored = workspace.labels_dir / f"{cases[0].case_id}.nii.gz"
    other = sitk.ReadImage(str(cases[1].label))
    other.CopyInformation(sitk.ReadImage(str(stored)))
    sitk.WriteImage(other, str(stored), True)
    before = _jobs(workspace)
    recipe = tmp_path / "quick.json"
    recipe.write_text(json.dumps(QUICK))
    result = run_cli(
        "finetune", str(workspace.root), "--config", str(recipe), "--detach", "--device", "cpu"
    )
    line = _one_line(result)
    assert "stopped before it started a job" in line and "is not the label submitted" in line
    assert line.count("assft: error:") == 1
    assert _jobs(workspace) == before


def test_a_sigterm_while_python_shuts_down_after_the_work_does_not_kill_it(workspace, tmp_path):
    """Python puts the default SIGTERM action back for every handler it set as it shuts down
    (CPython's signal module finalisation; SIG_IGN is left as it is), and unloading torch then
    takes a second or more: a cancel in that window killed a finished command (exit 143).
    This child does what the shutdown does, then receives the SIGTERM."""
    script = (
        "import os, signal, sys\n"
        "from assft.cli import main\n"
        f"sys.argv = ['assft', 'status', {str(workspace.root)!r}]\n"
        "code = main()\n"
        "if callable(signal.getsignal(signal.SIGTERM)):\n"
        "    signal.signal(signal.SIGTERM, signal.SIG_DFL)\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, (result.returncode, result.stderr)


@pytest.mark.skipif(sys.platform == "win32", reason="a Windows file name is always Unicode")
def test_a_file_name_that_is_not_utf8_is_refused_in_one_line(workspace, synthetic_pool, tmp_path):
    _, cases = synthetic_pool
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/lab\xff.nii.gz"))
    shutil.copy(cases[1].label, odd)
    line = _one_line(run_cli("submit", str(workspace.root), cases[1].case_id, str(odd)))
    assert "not valid UTF-8" in line
    assert workspace.registry.case(cases[1].case_id)["status"] == "unlabeled"
    folder = tmp_path / "odd-images"
    folder.mkdir()
    shutil.copy(cases[2].image, Path(os.fsdecode(bytes(folder) + b"/scan\xff.nii.gz")))
    line = _one_line(run_cli("init", str(tmp_path / "ws2"), "--images", str(folder)))
    assert "not valid UTF-8" in line and not (tmp_path / "ws2").exists()


def test_a_window_the_network_cannot_take_is_refused_before_anything_runs(
    workspace, tiny_preset_file, tmp_path
):
    preset = json.loads(Path(tiny_preset_file).read_text())
    for patch in ([10, 10, 10], [1, 1, 1]):  # the tiny UNet halves twice: multiples of 4
        odd = tmp_path / "odd.json"
        odd.write_text(json.dumps({**preset, "name": "odd", "patch_size": patch}))
        line = _one_line(run_cli("model-info", str(odd)))
        assert "patch_size" in line and "multiple of 4" in line
    before = _jobs(workspace)
    recipe = tmp_path / "patch.json"
    recipe.write_text(json.dumps({**QUICK, "patch_size": [10, 12, 12]}))
    line = _one_line(run_cli("finetune", str(workspace.root), "--config", str(recipe)))
    assert "multiple of 4" in line and _jobs(workspace) == before


def test_a_path_the_outputs_encoding_cannot_hold_is_written_escaped(tmp_path, synthetic_pool):
    from assft.workspace import Workspace

    _, cases = synthetic_pool
    images = tmp_path / "患者"
    images.mkdir()
    shutil.copy(cases[0].image, images / "患者_01.nii.gz")
    workspace = Workspace.create(tmp_path / "ws", [images], label_names=LABELS)
    env = {"PYTHONIOENCODING": "ascii"}
    result = run_cli("rank", str(workspace.root), "--budget", "1", "--views", "1", env=env)
    assert result.returncode == 0, result.stderr
    result = run_cli("next", str(workspace.root), env=env)
    assert result.returncode == 0, result.stderr
    assert "\\u60a3\\u8005" in result.stdout  # 患者, escaped


def test_an_output_under_a_file_is_refused_in_one_line(workspace, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("a file")
    line = _one_line(run_cli("export", str(workspace.root), "--out", str(afile / "x")))
    assert str(afile) in line
    if Path("/proc/self").is_dir():  # a folder of the system's that takes no new folder
        line = _one_line(run_cli("export", str(workspace.root), "--out", "/proc/self/x"))
        assert "cannot be created" in line and line.startswith("assft: error: /proc/")
    images = workspace.registry.cases()[0]["image_path"]
    line = _one_line(run_cli("init", str(afile / "ws"), "--images", images))
    assert "is a file, not a folder" in line
    assert afile.read_text() == "a file"


def test_a_bundle_config_nested_too_deeply_is_refused_in_one_line(tmp_path):
    bundle = tmp_path / "deep"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "metadata.json").write_text("{}")
    (bundle / "configs" / "inference.json").write_text("[" * 100_000 + "]" * 100_000)
    line = _one_line(run_cli("model-info", f"bundle:{bundle}"))
    assert "nested too deeply" in line and "inference.json" in line

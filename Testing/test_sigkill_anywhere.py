"""SIGKILL at random points of a submit, a rollback (a pointer change, as a promotion makes), a
fine-tune that promotes, and a ``predict --all``: after each kill, what the command changes is as
before or as after, never between, and the next command repairs what needs repair.

Each command runs first to the end, timed; then it is launched again and again and killed
(SIGKILL: no handler, no ``finally``) at moments drawn at random between the end of its imports and
its end. The seed is in every assertion's message, so that a failure can be replayed."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from assft_testing import run_cli, run_cli_in_process

SEED = int(os.environ.get("ASSFT_KILL_SEED", "20261207"))
KILLS = 5
SLOW_KILLS = 3
"""A fine-tune and a predict --all take seconds each: 3 kills apiece keep the suite short."""


def _init(tmp_path: Path, synthetic_pool, tiny_preset_file) -> Path:
    data, _ = synthetic_pool
    ws = tmp_path / "ws"
    run_cli_in_process(
        "init",
        str(ws),
        "--images",
        str(data / "images"),
        "--label-names",
        "1:shell,2:core",
        "--model",
        str(tiny_preset_file),
        check=True,
    )
    return ws


def _launch(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "assft", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _timed(*args: str) -> float:
    started = time.monotonic()
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    return time.monotonic() - started


def _kill_at(args: tuple[str, ...], delay: float, codes: list[int]) -> int:
    """Launch ``assft args``, SIGKILL it after ``delay`` s; its exit code (negative: killed),
    also appended to ``codes``."""
    process = _launch(*args)
    time.sleep(delay)
    process.kill()
    process.communicate(timeout=120)
    codes.append(int(process.returncode))
    return codes[-1]


def _most_were_killed(codes: list[int]) -> None:
    """The moments fell inside the command's run, not after it (a test that never kills
    proves nothing)."""
    assert sum(code < 0 for code in codes) >= len(codes) // 2 + 1, codes


def _moments(rng: np.random.Generator, start: float, end: float, kills: int = KILLS) -> list[float]:
    """``kills`` moments, one drawn in each of ``kills`` equal slices of [start, end]."""
    edges = np.linspace(start, max(end, start + 0.05), kills + 1)
    return [float(rng.uniform(a, b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def _imports_time() -> float:
    """What starting the command line costs before it touches a workspace."""
    started = time.monotonic()
    assert run_cli("--help").returncode == 0
    return time.monotonic() - started


def _labels_content(ws: Path, case: str) -> bytes | None:
    path = ws / "labels" / f"{case}.nii.gz"
    if not path.exists():
        return None
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.int64).tobytes()


def _no_temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".tmp-*") if p.is_file()]


def test_a_submit_killed_anywhere_leaves_the_old_label_or_the_new(
    tmp_path, synthetic_pool, tiny_preset_file
):
    from assft.workspace import Workspace

    ws = _init(tmp_path, synthetic_pool, tiny_preset_file)
    _, cases = synthetic_pool
    case = cases[0].case_id
    reference = sitk.ReadImage(str(cases[0].label))
    drawn = []
    for index, values in enumerate(((1,), (2,))):
        array = np.zeros(sitk.GetArrayFromImage(reference).shape, np.uint8)
        array[4:12, 4:12, 4:12] = values[0]
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(reference)
        sitk.WriteImage(image, str(tmp_path / f"drawn{index}.nii.gz"))
        drawn.append(tmp_path / f"drawn{index}.nii.gz")
    contents = [
        sitk.GetArrayFromImage(sitk.ReadImage(str(p))).astype(np.int64).tobytes() for p in drawn
    ]
    start = _imports_time()
    # The faster of two submits (the second stores the same label again): a first run slowed
    # by a cold cache would draw moments after the command's usual end.
    end = min(_timed("submit", str(ws), case, str(drawn[0])) for _ in range(2))
    codes: list[int] = []
    rng = np.random.default_rng(SEED)
    for number, delay in enumerate(_moments(rng, start * 0.8, end * 1.1)):
        before = _labels_content(ws, case)
        after = contents[(number + 1) % 2]
        source = drawn[(number + 1) % 2]
        code = _kill_at(("submit", str(ws), case, str(source)), delay, codes)
        where = f"seed {SEED}, kill {number} at {delay:.2f} s (exit {code})"
        status = run_cli_in_process("status", str(ws))  # the next command repairs
        assert status.returncode == 0, (where, status.stderr)
        now = _labels_content(ws, case)
        assert now in (before, after), where
        workspace = Workspace.open(ws)
        row = workspace.registry.case(case)
        path = ws / "labels" / f"{case}.nii.gz"
        assert row["status"] == "labeled", where
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row["label_sha256"], where
        assert workspace.registry.pending_labels() == [], where
        assert _no_temporaries(ws / "labels") == [], where
    _most_were_killed(codes)


def test_a_pointer_change_killed_anywhere_leaves_one_version_current(
    tmp_path, synthetic_pool, tiny_preset_file
):
    from assft.workspace import Workspace
    from assft.workspace.model_versions import ModelVersions

    ws = _init(tmp_path, synthetic_pool, tiny_preset_file)
    registry = ModelVersions(Workspace.open(ws))
    state = registry.load("v0").network.state_dict()
    tuned = {k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}
    registry.promote(registry.add_version(tuned, {"mode": "none"}), reason="test")
    start = _imports_time()
    end = _timed("rollback", str(ws), "v0")
    codes: list[int] = []
    rng = np.random.default_rng(SEED + 1)
    for number, delay in enumerate(_moments(rng, start * 0.8, end * 1.1)):
        before = ModelVersions(Workspace.open(ws)).current()
        target = "v1" if before == "v0" else "v0"
        code = _kill_at(("rollback", str(ws), target), delay, codes)
        where = f"seed {SEED + 1}, kill {number} at {delay:.2f} s (exit {code})"
        status = run_cli_in_process("status", str(ws))
        assert status.returncode == 0 and "[PROBLEM]" not in status.stdout, (where, status.stdout)
        current = ModelVersions(Workspace.open(ws)).current()
        assert current in (before, target), where
        pointer = (ws / "models" / "current").read_text(encoding="utf-8").strip()
        assert pointer == current, where
        assert _no_temporaries(ws / "models") == [], where
        # The version it names loads.
        assert run_cli_in_process("models", str(ws)).returncode == 0, where
    _most_were_killed(codes)


def test_a_fine_tune_killed_anywhere_leaves_the_model_whole(
    tmp_path, synthetic_pool, tiny_preset_file
):
    from assft.workspace import Workspace
    from assft.workspace.model_versions import ModelVersions

    ws = _init(tmp_path, synthetic_pool, tiny_preset_file)
    _, cases = synthetic_pool
    for case in cases[:3]:
        run_cli_in_process("submit", str(ws), case.case_id, str(case.label), check=True)
    args = (
        "finetune", str(ws), "--mode", "none", "--iterations", "4", "--device", "cpu",
        "--progress", "none",
    )  # fmt: skip
    start = _imports_time()
    end = _timed(*args)
    codes: list[int] = []
    rng = np.random.default_rng(SEED + 2)
    for number, delay in enumerate(_moments(rng, start, end * 1.1, SLOW_KILLS)):
        before = ModelVersions(Workspace.open(ws)).current()
        code = _kill_at(args, delay, codes)
        where = f"seed {SEED + 2}, kill {number} at {delay:.2f} s (exit {code})"
        status = run_cli_in_process("status", str(ws))
        assert status.returncode == 0 and "[PROBLEM]" not in status.stdout, (where, status.stdout)
        registry = ModelVersions(Workspace.open(ws))
        current = registry.current()
        assert current == before or int(current[1:]) > int(before[1:]), where
        registry.load(current)  # whole: its weights load
        assert _no_temporaries(ws / "models") == [], where
    _most_were_killed(codes)
    # The next fine-tune goes on (a killed job is resumed or restarted).
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr


def test_a_predict_all_killed_anywhere_leaves_whole_predictions_and_labels_untouched(
    tmp_path, synthetic_pool, tiny_preset_file
):
    ws = _init(tmp_path, synthetic_pool, tiny_preset_file)
    _, cases = synthetic_pool
    run_cli_in_process("submit", str(ws), cases[0].case_id, str(cases[0].label), check=True)
    label = (ws / "labels" / f"{cases[0].case_id}.nii.gz").read_bytes()
    args = ("predict", str(ws), "--all", "--views", "1", "--device", "cpu", "--progress", "none")
    start = _imports_time()
    end = _timed(*args)
    out = ws / "predictions" / "v0"
    complete = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert len(complete) >= len(cases)
    codes: list[int] = []
    rng = np.random.default_rng(SEED + 3)
    for number, delay in enumerate(_moments(rng, start, end * 1.1, SLOW_KILLS)):
        code = _kill_at(args, delay, codes)
        where = f"seed {SEED + 3}, kill {number} at {delay:.2f} s (exit {code})"
        assert run_cli_in_process("status", str(ws)).returncode == 0, where
        for path in out.iterdir():
            if path.is_file() and not path.name.startswith("."):
                assert path.name in complete, where
                image = sitk.ReadImage(str(path))  # whole: it reads
                assert image.GetSize() == sitk.ReadImage(str(cases[0].image)).GetSize(), where
        assert _no_temporaries(out) == [], where
        assert (ws / "labels" / f"{cases[0].case_id}.nii.gz").read_bytes() == label, where
    _most_were_killed(codes)
    assert run_cli(*args).returncode == 0


@pytest.fixture(autouse=True)
def _quiet_itk():
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    yield
    sitk.ProcessObject.SetGlobalWarningDisplay(True)

"""A disk that fills up during a fine-tune (a real tmpfs, as root; skipped elsewhere): one line
that names the file and says "no space left on device", exit 2, and nothing lost: the current
model, the labels and the registry as they were, no half-written version or temporary file; once
space is freed, the next fine-tune runs to the end."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from assft_testing import run_cli, run_cli_in_process
from assft_testing.mounts import remount_size, tmpfs

FINETUNE = ("--mode", "none", "--iterations", "30", "--device", "cpu", "--progress", "none")


def _files(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(
    ("folder", "size", "file"),
    [
        # The version's weights (56 KB for the tiny model) do not fit: storing it fails.
        ("models", "40k", "models"),
        # The job's folder fits, its resume point at step 25 (weights and optimiser) does not.
        ("jobs", "48k", "resume.pt"),
    ],
)
def test_a_disk_that_fills_during_a_fine_tune_loses_nothing(
    tmp_path, synthetic_pool, tiny_preset_file, folder, size, file
):
    data, cases = synthetic_pool
    ws = tmp_path / "ws"
    run_cli_in_process(
        "init", str(ws), "--images", str(data / "images"), "--label-names", "1:shell,2:core",
        "--model", str(tiny_preset_file), check=True,
    )  # fmt: skip
    for case in cases[:3]:
        run_cli_in_process("submit", str(ws), case.case_id, str(case.label), check=True)
    with tmpfs(ws / folder, size) as disk:
        labels, registry = _files(ws / "labels"), (ws / "registry.sqlite").read_bytes()
        result = run_cli("finetune", str(ws), *FINETUNE)
        assert result.returncode == 2, result.stderr
        errors = [x for x in result.stderr.splitlines() if x.startswith("assft: error:")]
        assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
        assert "no space left on device" in errors[0].lower(), errors[0]
        assert f"{disk}" in errors[0] and file in errors[0], errors[0]
        # Nothing lost: the model the lab uses, the labels, no half-written version.
        status = run_cli_in_process("status", str(ws), check=True).stdout
        assert "model version: v0" in status and "[PROBLEM]" not in status
        assert _files(ws / "labels") == labels
        assert not list((ws / "models").glob("v1*")) and not list((ws / "models").glob(".*"))
        assert not [p for p in ws.rglob(".tmp-*") if p.is_file()]
        remount_size(disk, "4m")  # space freed
        rerun = run_cli("finetune", str(ws), *FINETUNE)
        assert rerun.returncode == 0, rerun.stderr
        status = run_cli_in_process("status", str(ws), check=True).stdout
        assert "model version: v1" in status
        assert (ws / "registry.sqlite").read_bytes() != registry  # the new version recorded

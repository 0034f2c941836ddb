"""benchmarks/forgetting_probe.py (a diagnostic quoted in BENCHMARKS.md) runs end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from assft.apps.sampledata import write_sample_data

PROBE = Path(__file__).resolve().parents[2] / "benchmarks" / "forgetting_probe.py"


def test_the_probe_fine_tunes_and_reports_every_test_scan(tmp_path):
    write_sample_data(tmp_path / "data", 4, n_source=0, sites=["mixed"], seed=5, spacing=6.0)
    result = subprocess.run(
        [
            sys.executable,
            str(PROBE),
            str(tmp_path),
            "--cases",
            "tgt_000,tgt_001",
            "--steps",
            "2",
            "--every",
            "1",
            "--interpolate",
            "0,1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    # After the last step, each weight interpolation announces itself, then reports.
    mixes = [
        (marker["interpolation"], marker["statistics"], report)
        for marker, report in zip(lines[3::2], lines[4::2], strict=True)
    ]
    reports = lines[:3]
    assert [r["step"] for r in reports] == [0, 1, 2]
    assert [(a, s) for a, s, _ in mixes] == [
        (a, s) for a in (0.0, 1.0) for s in ("interpolated", "parent", "fine-tuned")
    ]
    # At 0 the parent's weights, at 1 the fine-tuned ones, come back exactly.
    for alpha, statistics, report in mixes:
        if (alpha, statistics) in {(0.0, "interpolated"), (0.0, "parent")}:
            assert report["test_dice"] == reports[0]["test_dice"]
        if (alpha, statistics) in {(1.0, "interpolated"), (1.0, "fine-tuned")}:
            assert report["test_dice"] == reports[-1]["test_dice"]
    assert reports[0]["loss"] is None and all(r["loss"] > 0 for r in reports[1:])
    # Every fourth case is a test scan: tgt_003 of four.
    assert all(list(r["test_dice"]) == ["tgt_003"] for r in reports)
    assert all(0.0 <= r["mean_test_dice"] <= 1.0 for r in reports)
    assert all(list(r["by_stratum"]) == ["mixed"] for r in reports)


def test_the_probe_anchors_cases_on_an_archive(tmp_path):
    write_sample_data(tmp_path / "data", 8, n_source=0, sites=["hospital"], seed=5, spacing=6.0)
    result = subprocess.run(
        [
            sys.executable,
            str(PROBE),
            str(tmp_path),
            "--site",
            "hospital",
            "--cases",
            "hospital_001",
            "--anchor-cases",
            "hospital_000,hospital_002",
            "--steps",
            "2",
            "--every",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    reports = [json.loads(line) for line in result.stdout.splitlines()]
    # Test scans hospital_003 (3 T T1) and hospital_007 (FLAIR), reported per acquisition.
    assert [r["step"] for r in reports] == [0, 2]
    assert set(reports[-1]["by_stratum"]) == {"t1-3t", "flair"}

"""The speed benchmark runs end to end on a tiny pool and reports its ratios."""

from __future__ import annotations

import json

from assft_testing import run_cli


def test_bench_speed_smoke(tmp_path, tiny_preset_file):
    markdown = tmp_path / "BENCHMARKS.md"
    markdown.write_text("# Benchmarks\n\nkept text\n")
    result = run_cli(
        "bench",
        "speed",
        "--out",
        str(tmp_path / "out"),
        "--size",
        "16",
        "--cases",
        "2",
        "--pools",
        "3",
        "--train-steps",
        "2",
        "--markdown",
        str(markdown),
        "--device",
        "cpu",
        "--json",
        "--progress",
        "none",
        "--model",
        str(tiny_preset_file),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    document = json.loads(result.stdout)
    assert document["ratios"]["attsq_over_bare"] > 0
    assert document["finetune"]["ratio"] > 0
    assert set(document["peak_memory_mb"]) == {"3"}
    assert document["finetune"]["peak_memory_mb"]["3"]["exit"] == 0
    assert json.loads((tmp_path / "out" / "speed.json").read_text())["benchmark"] == "speed"
    text = markdown.read_text()
    assert "kept text" in text and "ATTSQ / bare" in text and "it/s" in text
    # The command recorded with the results keeps what changes them and drops what does not.
    assert "--pools 3 --train-steps 2" in text
    assert "--json" not in text and "--progress" not in text

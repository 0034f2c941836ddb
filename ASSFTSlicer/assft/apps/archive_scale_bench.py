"""``assft bench archive-scale``: ranking a large pool, in one process and sharded over several
with ``torchrun``, side by side.

For each pool size (synthetic scans, the demo model), ``assft rank`` runs once per process count,
interleaved, each with an empty pretrained-statistics cache (a first ranking), each process given
its share of the machine's cores. Reported: seconds, seconds per case, the peak resident memory
of the one-process run (a fresh process, :func:`assft.runtime.portable.peak_memory_mb`), and
whether every process count selected the same cases with the same scores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from assft.apps.speed_bench import make_synthetic_workspace, run_measured

MARK_BEGIN = "<!-- bench:archive-scale:begin -->"
MARK_END = "<!-- bench:archive-scale:end -->"


def _rank(root: Path, processes: int, views: int, device: str) -> dict[str, Any]:
    """One first ranking of ``root`` by ``processes`` processes: seconds, the ranking, and (one
    process) its peak memory."""
    shutil.rmtree(root / "cache" / "pretrained", ignore_errors=True)
    rank = ["rank", str(root), "--budget", "2", "--views", str(views), "--device", device,
            "--progress", "none", "--json"]  # fmt: skip
    threads = str(max(1, (os.cpu_count() or 1) // processes))
    environment = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    started = time.perf_counter()
    if processes == 1:  # in a fresh process that reports its peak memory
        peak, output = run_measured(rank, environment)
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={processes}", "-m", "assft", *rank]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, env=environment)
        if done.returncode != 0:
            raise RuntimeError(f"assft rank ({processes} processes) failed: {done.stderr[-2000:]}")
        peak, output = {}, done.stdout
    seconds = time.perf_counter() - started
    document = json.loads(output[output.index("{") :])  # rank 0's one document
    return {
        "seconds": round(seconds, 2),
        "rss_mb": round(peak["rss_mb"], 1) if peak else None,
        "selected": document["selected"],
        "scores": {row["case"]: row["score"] for row in document["cases"]},
    }


def run_archive_scale(
    out: Path,
    *,
    pools: list[int],
    processes: list[int],
    size: int = 24,
    views: int = 2,
    device: str = "cpu",
) -> dict[str, Any]:
    """The benchmark; the document is also written to ``out/archive-scale.json``."""
    from assft.models import resolve_device

    resolved = str(resolve_device(device))  # recorded; the ranks resolve "auto" themselves
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in pools:
        workspace = make_synthetic_workspace(out / f"pool{n}", n, size, seed=n)
        runs = {p: _rank(workspace.root, p, views, device) for p in processes}
        first = runs[processes[0]]
        for p, run in runs.items():
            rows.append(
                {
                    "pool": n,
                    "processes": p,
                    "seconds": run["seconds"],
                    "seconds_per_case": round(run["seconds"] / n, 4),
                    "rss_mb": run["rss_mb"],
                    "same_ranking": run["selected"] == first["selected"]
                    and run["scores"] == first["scores"],
                }
            )
    document = {
        "benchmark": "archive-scale",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "device": resolved},
        "setup": {"volume": [size] * 3, "views": views, "preset": "demo"},
        "rows": rows,
    }
    (out / "archive-scale.json").write_text(json.dumps(document, indent=2) + "\n")
    return document


def archive_scale_markdown(doc: dict[str, Any], command: str) -> str:
    """The BENCHMARKS.md section of an archive-scale result."""
    setup = doc["setup"]
    lines = [
        MARK_BEGIN,
        f"### Ranking a large pool, one process and several ({doc['machine']['device']}, "
        f"{doc['machine']['cpus']} cores, {doc['when'][:10]})",
        "",
        f"`{command}`: synthetic scans of {setup['volume'][0]}^3 voxels, {setup['preset']} "
        f"model, {setup['views']} test-time views, a first ranking each time (the pretrained "
        "statistics computed); each process count once, interleaved; each process given its "
        "share of the cores.",
        "",
        "| pool | processes | seconds | seconds per case | peak RSS (MB, one process) "
        "| same selection and scores as one process |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for row in doc["rows"]:
        rss = "-" if row["rss_mb"] is None else f"{row['rss_mb']:.0f}"
        same = "yes" if row["same_ranking"] else "**no**"
        lines.append(
            f"| {row['pool']} | {row['processes']} | {row['seconds']:.1f} | "
            f"{row['seconds_per_case']:.3f} | {rss} | {same} |"
        )
    lines.append(MARK_END)
    return "\n".join(lines)

"""``assft bench speed``: what ranking costs next to bare inference, and its memory as the pool
grows.

Every figure is measured side by side in one run and reported as a ratio, written to JSON and
to a section of BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import set_track_meta
from monai.losses import DiceCELoss
from monai.transforms import Compose, RandCropByPosNegLabeld

from assft.datasets.synthetic import write_synthetic_pool
from assft.io.imaging import read_image
from assft.io.preprocessing import to_model_grid
from assft.models import get_preset, resolve_device
from assft.models.inference import VIEW_FLIPS, sliding_window_probabilities
from assft.query.config import QueryConfig, Strategy
from assft.query.ranking import rank_workspace
from assft.training import FinetuneConfig, FinetuneMode
from assft.training.data import PreparedCases, TrainingCase, make_augmentation
from assft.training.ssft import Trainer, run_stage
from assft.workspace import Workspace
from assft.workspace.creation import create_workspace
from assft.workspace.model_versions import ModelVersions
from assft.workspace.version_names import BASE_VERSION

MARK_BEGIN = "<!-- bench:speed:begin -->"
MARK_END = "<!-- bench:speed:end -->"


def make_synthetic_workspace(
    root: Path, n: int, size: int, seed: int = 0, model: str = "demo"
) -> Workspace:
    """A workspace of ``n`` synthetic scans of ``size``^3 voxels (written under ``root/data``)."""
    if root.exists():
        shutil.rmtree(root)
    write_synthetic_pool(root / "data", n, seed=seed, size=size)
    return create_workspace(root / "ws", [root / "data" / "images"], model=model)


def bare_inference_seconds(workspace: Workspace, device: str, views: int) -> float:
    """Read, preprocess and run test-time-augmented sliding-window inference over the pool."""
    if views < 1:
        raise ValueError(f"views must be at least 1, got {views}")
    preset = get_preset(workspace.config.model)
    model = ModelVersions(workspace).load(BASE_VERSION, device=resolve_device(device))
    started = time.perf_counter()
    for case in workspace.registry.cases(status="unlabeled"):
        grid = to_model_grid(
            read_image(workspace.image_path(case["case_id"])),
            spacing=preset.spacing,
            orientation=preset.orientation,
            intensity=preset.intensity,
        )
        total = sliding_window_probabilities(model, grid.tensor, VIEW_FLIPS[0])
        for flips in VIEW_FLIPS[1:views]:
            total = total + sliding_window_probabilities(model, grid.tensor, flips)
        _ = total.argmax(0)  # a prediction is what bare inference gives
    _synchronise(device)
    return time.perf_counter() - started


def ranking_seconds(workspace: Workspace, device: str, strategy: str, views: int) -> float:
    """A full ranking with an empty cache (so f0's statistics are computed, not read)."""
    shutil.rmtree(workspace.cache_folder("pretrained"), ignore_errors=True)
    config = QueryConfig(strategy=Strategy(strategy), budget=2, views=views)
    started = time.perf_counter()
    rank_workspace(workspace, config, device=device, save=False)
    _synchronise(device)
    return time.perf_counter() - started


def _synchronise(device: str) -> None:
    if device != "cpu" and torch.cuda.is_available():
        torch.cuda.synchronize()


def _label_first(workspace: Workspace, root: Path, count: int) -> None:
    """Submit the ground truth of the first ``count`` cases (the simulated clinician)."""
    for case in workspace.registry.cases()[:count]:
        workspace.submit_label(
            case["case_id"], root / "data" / "truth" / f"{case['case_id']}.nii.gz"
        )


def training_iterations_per_second(
    workspace: Workspace, device: str, steps: int, repeats: int = 2
) -> dict[str, float]:
    """Our fine-tuning loop against a bare MONAI training loop: same network, patches, data.

    Both crop 1:1 foreground/background patches of the preset's size from the same cases held
    in memory, apply the same MONAI augmentations, and take AdamW steps on Dice + CE.
    """
    set_track_meta(False)
    device_ = resolve_device(device)
    preset = get_preset(workspace.config.model)
    labels = list(workspace.config.label_values)
    patch = preset.patch_size
    prepared = PreparedCases(workspace.cache_folder("training"), preset, labels, patch)
    cases = [
        prepared.load(
            c["case_id"], workspace.image_path(c["case_id"]), workspace.label_path(c["case_id"])
        )
        for c in workspace.registry.cases(status="labeled")
    ]
    config = FinetuneConfig(mode=FinetuneMode.NONE, iterations=steps, batch_size=2)

    def ours() -> float:
        torch.manual_seed(0)
        model = ModelVersions(workspace).load(BASE_VERSION, device=device_)
        trainer = Trainer(model, config, patch)
        run_stage(
            trainer,
            stage=1,
            start=0,
            total=1,
            labeled=cases,
            pseudo=None,
            config=config,
            on_step=lambda *a: None,
        )
        _synchronise(device)
        started = time.perf_counter()
        run_stage(
            trainer,
            stage=1,
            start=1,
            total=steps + 1,
            labeled=cases,
            pseudo=None,
            config=config,
            on_step=lambda *a: None,
        )
        _synchronise(device)
        return steps / (time.perf_counter() - started)

    def bare() -> float:
        torch.manual_seed(0)
        network = ModelVersions(workspace).load(BASE_VERSION, device=device_).network
        network.train()
        optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
        loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
        crop = RandCropByPosNegLabeld(
            ("image", "label"), "label", patch, pos=1, neg=1, num_samples=2
        )
        transform = Compose([crop, make_augmentation(0)])
        items = [{"image": c.image, "label": _target(c).clamp_min(0)[None].float()} for c in cases]
        rng = np.random.default_rng(0)

        def one_step() -> None:
            samples = transform(items[int(rng.integers(len(items)))])
            images = torch.stack([torch.as_tensor(s["image"]) for s in samples]).to(device_)
            targets = torch.stack([torch.as_tensor(s["label"]) for s in samples]).to(device_)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_function(network(images), targets)
            loss.backward()
            optimizer.step()

        one_step()
        _synchronise(device)
        started = time.perf_counter()
        for _ in range(steps):
            one_step()
        _synchronise(device)
        return steps / (time.perf_counter() - started)

    results: dict[str, list[float]] = {"ours": [], "bare": []}
    for _ in range(repeats):
        results["bare"].append(bare())
        results["ours"].append(ours())
    return {key: max(values) for key, values in results.items()}


def _target(case: TrainingCase) -> torch.Tensor:
    """A labeled case's target (the cases timed are the workspace's labeled ones)."""
    if case.target is None:
        raise ValueError(f"case {case.case_id} has no label to train on")
    return case.target


def peak_memory_of_finetune(workspace_root: Path, device: str, steps: int) -> dict[str, float]:
    """Peak resident memory of a selective fine-tune in a fresh process."""
    config = json.dumps({"iterations": steps, "semi_iterations": steps, "tau_c": 0.0})
    return _peak_memory(
        [
            "finetune",
            str(workspace_root),
            "--config-json",
            config,
            "--device",
            device,
            "--progress",
            "none",
            "--json",
        ]
    )


def run_measured(
    argv: list[str], environment: dict[str, str] | None = None
) -> tuple[dict[str, float], str]:
    """Run ``assft ARGV`` in a fresh process; its peak resident (and GPU) memory, and its
    standard output.

    The peak is the fresh process's own (:func:`assft.runtime.portable.peak_memory_mb`), not
    this benchmark process's.
    """
    code = (
        "import sys, json, torch\n"
        "from assft.cli import main\n"
        "from assft.runtime.portable import peak_memory_mb\n"
        f"code = main({argv!r})\n"
        "gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0\n"
        "sys.stderr.write('PEAK ' + json.dumps({'rss_mb': peak_memory_mb(), 'gpu_mb': gpu,"
        " 'exit': code}) + '\\n')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, env=environment
    )
    for line in result.stderr.splitlines():
        if line.startswith("PEAK "):
            return json.loads(line[5:]), result.stdout
    raise RuntimeError(f"benchmark subprocess failed: {result.stderr[-2000:]}")


def _peak_memory(argv: list[str]) -> dict[str, float]:
    """Peak memory of ``assft ARGV`` in a fresh process (:func:`run_measured`)."""
    return run_measured(argv)[0]


def peak_memory_of_ranking(workspace_root: Path, device: str) -> dict[str, float]:
    """Peak resident memory (and GPU memory) of ``assft rank`` in a fresh process."""
    return _peak_memory(
        [
            "rank",
            str(workspace_root),
            "--budget",
            "2",
            "--device",
            device,
            "--progress",
            "none",
            "--json",
        ]
    )


def run_speed(
    out: Path,
    *,
    device: str,
    size: int,
    cases: int,
    pools: list[int],
    views: int = 4,
    train_steps: int = 8,
    model: str = "demo",
) -> dict[str, Any]:
    """The speed benchmark; returns the result document (also written to ``out/speed.json``)."""
    resolved = str(resolve_device(device))
    out.mkdir(parents=True, exist_ok=True)
    workspace = make_synthetic_workspace(out / "timing", cases, size, model=model)
    # Warm up (allocator, kernels), then alternate the measured runs.
    bare_inference_seconds(workspace, resolved, 1)
    bare, attsq, epistemic = [], [], []
    for _ in range(2):
        bare.append(bare_inference_seconds(workspace, resolved, views))
        attsq.append(ranking_seconds(workspace, resolved, "attsq", views))
        epistemic.append(ranking_seconds(workspace, resolved, "epistemic", views))
    bare_s, attsq_s, epistemic_s = min(bare), min(attsq), min(epistemic)
    _label_first(workspace, out / "timing", 3)
    training = training_iterations_per_second(workspace, resolved, train_steps)
    memory, finetune_memory = {}, {}
    for n in pools:
        pool = make_synthetic_workspace(out / f"pool{n}", n, size, seed=n, model=model)
        memory[str(n)] = peak_memory_of_ranking(pool.root, resolved)
        _label_first(pool, out / f"pool{n}", 3)
        finetune_memory[str(n)] = peak_memory_of_finetune(pool.root, resolved, 2)
    gpu_name = torch.cuda.get_device_name(0) if resolved.startswith("cuda") else None
    document = {
        "benchmark": "speed",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": resolved,
            "gpu": gpu_name,
            "torch": torch.__version__,
        },
        "setup": {"volume": [size] * 3, "cases": cases, "views": views, "preset": model},
        "seconds": {
            "bare_tta_inference": round(bare_s, 3),
            "attsq_ranking": round(attsq_s, 3),
            "epistemic_ranking": round(epistemic_s, 3),
        },
        "ratios": {
            "attsq_over_bare": round(attsq_s / bare_s, 3),
            "attsq_over_epistemic": round(attsq_s / epistemic_s, 3),
        },
        "target": {"attsq_over_bare_at_most": 1.15, "finetune_over_bare_loop_at_least": 0.9},
        "peak_memory_mb": memory,
        "finetune": {
            "iterations_per_s": round(training["ours"], 4),
            "bare_monai_loop_iterations_per_s": round(training["bare"], 4),
            "ratio": round(training["ours"] / training["bare"], 3),
            "steps": train_steps,
            "peak_memory_mb": finetune_memory,
        },
        "repeats": {"bare": bare, "attsq": attsq, "epistemic": epistemic},
    }
    (out / "speed.json").write_text(json.dumps(document, indent=2) + "\n")
    return document


def speed_markdown(doc: dict[str, Any], command: str) -> str:
    """The BENCHMARKS.md section of a speed result."""
    s, r, m = doc["seconds"], doc["ratios"], doc["peak_memory_mb"]
    machine = doc["machine"]
    where = machine["gpu"] or f"CPU, {machine['torch_threads']} threads"
    lines = [
        MARK_BEGIN,
        f"### Ranking speed and memory ({where}, {doc['when'][:10]})",
        "",
        f"`{command}`: {doc['setup']['cases']} synthetic cases of {doc['setup']['volume'][0]}^3 "
        f"voxels, {doc['setup']['preset']} preset, {doc['setup']['views']} test-time views; "
        "best of 2 runs each, interleaved.",
        "",
        "| run | seconds | ratio |",
        "|---|---:|---:|",
        f"| bare TTA sliding-window inference | {s['bare_tta_inference']:.2f} | 1.00 |",
        f"| ATTSQ ranking (cold cache: f0 statistics computed) | {s['attsq_ranking']:.2f} | "
        f"{r['attsq_over_bare']:.2f} |",
        f"| epistemic ranking (MC dropout, 5 samples) | {s['epistemic_ranking']:.2f} | "
        f"{s['epistemic_ranking'] / s['bare_tta_inference']:.2f} |",
        "",
        f"ATTSQ / bare = **{r['attsq_over_bare']:.2f}** (target <= 1.15); "
        f"ATTSQ / epistemic = **{r['attsq_over_epistemic']:.2f}**.",
        "",
        "| pool size | peak RSS (MB) | peak GPU (MB) |",
        "|---:|---:|---:|",
    ]
    for n, values in m.items():
        lines.append(f"| {n} | {values['rss_mb']:.0f} | {values['gpu_mb']:.0f} |")
    f = doc["finetune"]
    lines += [
        "",
        f"Fine-tuning ({f['steps']} steps, batch 2, the preset's patch, augmentation on): "
        f"**{f['iterations_per_s']:.3f} it/s** against "
        f"**{f['bare_monai_loop_iterations_per_s']:.3f} it/s** for a bare MONAI loop "
        "(RandCropByPosNegLabeld + the same augmentations + "
        f"DiceCELoss + AdamW) over the same network, patches and data: ratio **{f['ratio']:.2f}** "
        "(target >= 0.90).",
        "",
        "| pool size | fine-tune peak RSS (MB) | peak GPU (MB) |",
        "|---:|---:|---:|",
    ]
    for n, values in f["peak_memory_mb"].items():
        lines.append(f"| {n} | {values['rss_mb']:.0f} | {values['gpu_mb']:.0f} |")
    lines += [MARK_END]
    return "\n".join(lines)

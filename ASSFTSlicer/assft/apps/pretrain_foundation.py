"""``assft pretrain-foundation``: a demo foundation encoder, pretrained without labels.

The paper's setting is a medical vision foundation model pretrained by self-supervision, with no
head for the lab's task. Nothing can be downloaded here, so this command makes a small one: the
``demo`` preset's UNet (0.6 M parameters, BatchNorm) pretrained with the objective of MONAI's
SwinUNETR pretraining (:mod:`assft.training.self_supervised`: masked-volume inpainting, rotation
prediction, contrastive coding) on unlabeled sample volumes of four contrasts: the T1 source
domain and the ``t2``, ``flair`` and ``lowfield`` acquisitions (sample-data seed 0; the
benchmarks draw their scans with seed 11). No label is read.

What it writes, ``foundation_unet.pt`` and ``foundation_unet.json`` (the ``foundation-demo``
preset ships them): the network without its output layer (the inpainting head; the rotation
and contrastive heads are dropped too), and the manifest: the command that rebuilds the weights,
the recipe, the data, the losses and, on held-out volumes of each contrast, the inpainting error
and the rotation accuracy before and after pretraining. Its BatchNorm running statistics are
those of the pretraining patches of all four contrasts: DKD's ``bn`` knowledge gap compares a lab's
scans with them on the first, cold-start ranking.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from monai.data import set_track_meta

from assft.apps.pretrain import (
    demo_preset,
    file_sha256,
    package_version,
    state_sha256,
    warmup_cosine,
)
from assft.apps.sampledata import write_sample_data
from assft.io.atomic import save_torch_atomic
from assft.models import build_network, resolve_device, resources_dir
from assft.runtime import cancellation
from assft.runtime.progress import Progress
from assft.training.data import (
    PreparedCases,
    TrainingCase,
    make_augmentation,
    make_batch,
    step_seed,
)
from assft.training.self_supervised import SelfSupervisedObjective, make_views, masking
from assft.validation import MAX_SEED, MAX_STEPS, setting, validate
from assft.workspace.files import write_json_atomic

PRESET = "foundation-demo"
WEIGHTS_FILE = "foundation_unet.pt"
MANIFEST_FILE = "foundation_unet.json"
CONTRASTS = ("t2", "flair", "lowfield")
"""The sample sites whose volumes the encoder sees besides the T1 source domain."""


@dataclass
class FoundationConfig:
    """How the demo foundation encoder is pretrained (every field lands in the manifest)."""

    seed: int = setting(0, ge=0, le=MAX_SEED)
    data_seed: int = setting(0, ge=0, le=MAX_SEED)
    n_per_contrast: int = setting(10, ge=2, le=1000)
    """Unlabeled volumes of each contrast; the last one of each is held out for the manifest's
    figures."""
    iterations: int = setting(2000, ge=1, le=MAX_STEPS)
    batch_size: int = setting(4, ge=2, le=256)
    """Patches per step (each seen in two views; the contrastive loss needs two or more)."""
    patch: int = setting(32, ge=8, le=256)
    lr: float = setting(2e-3, gt=0.0)
    min_lr: float = setting(1e-5, ge=0.0)
    warmup: int = setting(20, ge=0)
    weight_decay: float = setting(1e-5, ge=0.0)
    temperature: float = setting(0.5, gt=0.0)

    def __post_init__(self) -> None:
        validate(self)


def volume_mask(case: TrainingCase) -> TrainingCase:
    """The case with the voxels above its minimum as its "foreground" (no label is read): half
    of the patches are then centred inside the head, as the demo's pretraining centres half on
    the brain."""
    return case.with_target((case.image[0] > case.image.min()).long())


def _held_out_figures(
    objective: SelfSupervisedObjective,
    held_out: dict[str, TrainingCase],
    config: FoundationConfig,
) -> dict[str, dict[str, float]]:
    """Inpainting L1 and rotation accuracy on 16 views of each held-out volume (fixed seeds)."""
    figures = {}
    for name, case in held_out.items():
        rng = np.random.default_rng(1_000_003)
        patches, _ = make_batch(
            [case], 8, (config.patch,) * 3, rng, foreground_ratio=0.5, augment=None
        )
        parts = objective.evaluate(make_views(patches, rng, masking(config.patch, seed=7)))
        figures[name] = {
            "inpainting_l1": round(parts["inpainting"], 4),
            "rotation_accuracy": round(parts["rotation_accuracy"], 4),
        }
    return figures


def pretrain_foundation(
    out_dir: str | Path | None = None,
    config: FoundationConfig | None = None,
    *,
    device: str = "cpu",
    progress: Progress | None = None,
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """Generate unlabeled volumes, pretrain the encoder, write weights + manifest.

    Args:
        out_dir: where ``foundation_unet.pt`` and its manifest go (default: the package's
            ``assft/resources/``: the shipped weights are replaced).
        config: the recipe (defaults: the shipped encoder's).
        device: ``cpu`` reproduces the shipped weights; ``auto``/``cuda`` may differ slightly.
        progress: progress reporting.
        argv: the command line, recorded in the manifest.

    Returns:
        The manifest (also written next to the weights).
    """
    config = config or FoundationConfig()
    progress = progress or Progress("none")
    out_dir = Path(out_dir) if out_dir is not None else resources_dir()
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    preset = demo_preset(checkpoint=False)
    resolved = resolve_device(device)
    network = build_network(preset, 1).to(resolved)
    channels = int(preset.arguments["channels"][-1])
    objective = SelfSupervisedObjective(
        network, str(preset.embedding_layer), channels, config.temperature
    )
    objective.heads.to(resolved)
    with tempfile.TemporaryDirectory(prefix="assft-foundation-") as scratch:
        data = Path(scratch) / "data"
        sample = write_sample_data(
            data,
            config.n_per_contrast,
            n_source=config.n_per_contrast,
            sites=list(CONTRASTS),
            seed=config.data_seed,
            progress=progress,
        )
        prepared = PreparedCases(Path(scratch) / "prepared", preset, [1], (config.patch,) * 3)
        by_contrast: dict[str, list[TrainingCase]] = {}
        for entry in sample["cases"]:
            contrast = "t1" if entry["site"] == "source" else entry["site"]
            case = prepared.load(entry["case"], data / entry["image"])
            by_contrast.setdefault(contrast, []).append(volume_mask(case))
        training = [c for members in by_contrast.values() for c in members[:-1]]
        held_out = {name: members[-1] for name, members in by_contrast.items()}
        before = _held_out_figures(objective, held_out, config)
        losses = _train(objective, training, config, resolved, progress)
        after = _held_out_figures(objective, held_out, config)

    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in network.state_dict().items() if not preset.in_head(k)}
    weights = save_torch_atomic(state, out_dir / WEIGHTS_FILE)
    manifest = {
        "model": PRESET,
        "weights": WEIGHTS_FILE,
        "weights_sha256": file_sha256(weights),
        "state_sha256": state_sha256(state),
        "weights_bytes": weights.stat().st_size,
        "parameters": int(sum(v.numel() for k, v in state.items() if v.is_floating_point())),
        "without": f"the output layer ({preset.head_layer}: the inpainting head) and the "
        "rotation and contrastive heads; no segmentation head",
        "objective": "masked-volume inpainting (L1) + rotation prediction (4 quarter turns, "
        "cross-entropy) + contrastive coding of two views (MONAI ContrastiveLoss), weights 1 "
        "each, as MONAI's SwinUNETR pretraining (Tang et al., CVPR 2022)",
        "command": " ".join(["assft", *(argv or ["pretrain-foundation"])]),
        "config": json.loads(json.dumps(asdict(config))),
        "data": {
            "generator": "assft.apps.sampledata",
            "seed": config.data_seed,
            "labels_read": False,
            "contrasts": {name: len(members) - 1 for name, members in by_contrast.items()},
            "held_out": {name: case.case_id for name, case in held_out.items()},
        },
        "held_out": {"before": before, "after": after},
        "final_loss": {k: round(float(np.mean(v[-50:])), 4) for k, v in losses.items()},
        "loss_every_100": [
            round(float(np.mean(losses["loss"][i : i + 100])), 4)
            for i in range(0, len(losses["loss"]), 100)
        ],
        "timings": {"total_s": round(time.perf_counter() - started, 1)},
        "environment": {
            "device": str(resolved),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "monai": package_version("monai"),
            "numpy": np.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_json_atomic(out_dir / MANIFEST_FILE, manifest)
    progress.done(weights=str(weights), loss=manifest["final_loss"]["loss"])
    return manifest


def _train(
    objective: SelfSupervisedObjective,
    cases: list[TrainingCase],
    config: FoundationConfig,
    device: torch.device,
    progress: Progress,
) -> dict[str, list[float]]:
    """The self-supervised steps with a warm-up + cosine schedule; the losses of each step."""
    optimizer = torch.optim.AdamW(
        objective.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    set_track_meta(False)
    augment = make_augmentation(config.seed, (0,), intensity=True)
    corrupt = masking(config.patch, config.seed)
    losses: dict[str, list[float]] = {}
    progress.phase("self-supervised pretraining", config.iterations)
    cancellation.check_inside_layers(objective.network)  # SIGTERM within one layer's time
    for step in range(config.iterations):
        cancellation.check()
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine(
                step, config.iterations, config.warmup, config.lr, config.min_lr
            )
        seed = step_seed(config.seed, 0, step)
        rng = np.random.default_rng(seed)
        augment.set_random_state(seed=seed)
        patches, _ = make_batch(
            cases,
            config.batch_size,
            (config.patch,) * 3,
            rng,
            foreground_ratio=0.5,
            augment=augment,
        )
        views = make_views(patches, rng, corrupt)
        objective.train()
        optimizer.zero_grad(set_to_none=True)
        parts = objective.losses(views.to(device))
        parts["loss"].backward()
        optimizer.step()
        for name, value in parts.items():
            losses.setdefault(name, []).append(float(value.detach()))
        if (step + 1) % 10 == 0 or step + 1 == config.iterations:
            progress.update(step + 1, loss=round(float(np.mean(losses["loss"][-10:])), 4))
    return losses


def print_summary(manifest: dict[str, Any], stream: TextIO | None = None) -> None:
    """The held-out figures before and after pretraining, per contrast."""
    stream = stream or sys.stdout
    stream.write(f"{'held-out volume':<18}{'inpainting L1':>24}{'rotation accuracy':>26}\n")
    before, after = manifest["held_out"]["before"], manifest["held_out"]["after"]
    for name in after:
        l1 = f"{before[name]['inpainting_l1']:.4f} -> {after[name]['inpainting_l1']:.4f}"
        turns = f"{before[name]['rotation_accuracy']:.2f} -> {after[name]['rotation_accuracy']:.2f}"
        stream.write(f"{name:<18}{l1:>24}{turns:>26}\n")
    stream.write(f"Pretraining {manifest['timings']['total_s']} s; weights {manifest['weights']}\n")

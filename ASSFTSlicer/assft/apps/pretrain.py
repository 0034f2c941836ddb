"""``assft pretrain-demo``: pretrain the ``demo`` preset's UNet on the sample source domain.

The shipped ``assft/resources/demo_unet.pt`` is the output of :func:`pretrain_demo` with its
defaults; ``assft/resources/demo_unet.json`` records how it was made (command, seeds, data,
schedule, timings, library versions) and its Dice per structure on held-out source cases and on
the target pool (overall, per shift kind, near-source cases, atrophy, lesions). On a CPU the
same command gives the same weights and figures: the data is deterministic for its seed, every
training step draws its patches and augmentation from ``step_seed(seed, 0, step)`` and the
network's initial weights from seed 0.

The training reuses the fine-tuning machinery (:class:`~assft.training.data.PreparedCases`,
:func:`~assft.training.data.make_batch`, :func:`~assft.training.data.make_augmentation`,
:class:`~assft.training.ssft.Trainer` with its Dice + cross-entropy loss), from a random
initialisation, with a warm-up + cosine learning-rate schedule, on 32^3 patches (half of them
centred on the brain). The BatchNorm running statistics are those of training, i.e. of source
patches: they are the source domain's feature statistics that DKD's ``bn`` estimator compares
target cases with. (Re-estimating them on whole volumes was tried and dropped: it cost about
0.2 of source Dice, because the network is tuned to the patch statistics.)
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
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

from assft.apps.sampledata import LABEL_NAMES, write_sample_data
from assft.apps.sites import ARCHIVE_NAMES, MIXED, SITE_NAMES
from assft.errors import BadInputError
from assft.metrics.overlap import dice_scores
from assft.models import (
    LoadedModel,
    ModelPreset,
    get_preset,
    load_model,
    resolve_device,
    resources_dir,
    save_state_dict,
)
from assft.models.inference import infer_case, sliding_window_probabilities
from assft.runtime.progress import Progress
from assft.training import FinetuneConfig, FinetuneMode
from assft.training.data import (
    PreparedCases,
    TrainingCase,
    make_augmentation,
    make_batch,
    step_seed,
)
from assft.training.losses import IGNORE
from assft.training.ssft import Trainer
from assft.validation import (
    MAX_PATCH,
    MAX_SEED,
    MAX_STEPS,
    ConfigFieldError,
    setting,
    validate,
)
from assft.workspace.files import write_json_atomic

DEMO_PRESET = "demo"
WEIGHTS_FILE = "demo_unet.pt"
MANIFEST_FILE = "demo_unet.json"


@dataclass
class PretrainConfig:
    """How the demo model is pretrained (every field lands in the manifest)."""

    seed: int = setting(0, ge=0, le=MAX_SEED)
    data_seed: int = setting(0, ge=0, le=MAX_SEED)
    n_source: int = setting(24, ge=2, le=1000)
    n_source_validation: int = setting(4, ge=1, le=999)
    n_target: int = setting(40, ge=0, le=1000)
    spacing: float = setting(3.0, ge=0.5, le=24.0)
    iterations: int = setting(2400, ge=1, le=MAX_STEPS)
    batch_size: int = setting(4, ge=1, le=256)
    patch_size: tuple[int, int, int] = setting((32, 32, 32), ge=1, le=MAX_PATCH)
    lr: float = setting(5e-3, gt=0.0)
    min_lr: float = setting(1e-5, ge=0.0)
    warmup: int = setting(20, ge=0)
    weight_decay: float = setting(1e-5, ge=0.0)
    augment: bool = setting(True)
    intensity_augment: bool = setting(True)
    n_site: int = setting(12, ge=0, le=1000)
    channels: tuple[int, int, int, int] | None = setting(None, ge=1, cap=1024)
    """The UNet's channels at its four levels (None: the demo preset's, 16-32-64-128); a wider
    network is for measuring whether capacity changes what fine-tuning forgets (BENCHMARKS.md)."""

    def __post_init__(self) -> None:
        validate(self)  # the types and ranges declared above; a float must also be finite
        if self.n_source_validation >= self.n_source:
            raise ConfigFieldError(
                "n_source_validation",
                f"must be below n_source ({self.n_source}), got {self.n_source_validation}",
            )

    @property
    def n_train(self) -> int:
        return self.n_source - self.n_source_validation


def learning_rate(step: int, config: PretrainConfig) -> float:
    """The pretraining's learning rate at ``step`` (:func:`warmup_cosine`)."""
    return warmup_cosine(step, config.iterations, config.warmup, config.lr, config.min_lr)


def warmup_cosine(step: int, iterations: int, warmup: int, lr: float, min_lr: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from ``lr`` to ``min_lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    span = max(1, iterations - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def demo_preset(channels: tuple[int, ...] | None = None, *, checkpoint: bool = True) -> ModelPreset:
    """The demo preset, with other ``channels`` per level (as many levels as the preset's), and
    without its checkpoint unless ``checkpoint``."""
    data = get_preset(DEMO_PRESET).to_dict()
    if channels is not None:
        levels = len(data["arguments"]["channels"])
        if len(channels) != levels:
            raise ConfigFieldError("channels", f"needs {levels} levels, got {list(channels)}")
        data["arguments"]["channels"] = list(channels)
    if not checkpoint:
        data["checkpoint"] = None
    return ModelPreset.from_dict(data)


def evaluate_cases(
    model: LoadedModel, cases: list[TrainingCase], label_values: list[int]
) -> list[dict[int, float]]:
    """Dice per label value of each case (one view, argmax, on the model grid)."""
    model.network.eval()
    scores = []
    for case in cases:
        if case.target is None:
            raise BadInputError(f"case {case.case_id} has no label to evaluate against")
        prediction = sliding_window_probabilities(model, case.image).argmax(0).cpu()
        valid = case.target != IGNORE
        channels = dice_scores(
            torch.where(valid, prediction, 0),
            torch.where(valid, case.target, 0),
            range(1, 1 + len(label_values)),
        )
        scores.append({label_values[c - 1]: v for c, v in channels.items()})
    return scores


def summarise(scores: list[dict[int, float]], names: dict[int, str]) -> dict[str, Any]:
    """Mean Dice per structure and overall over cases (NaN-skipping), with the case count."""
    per_structure = {}
    for value, name in names.items():
        values = [s[value] for s in scores if not np.isnan(s[value])]
        per_structure[name] = round(float(np.mean(values)), 4) if values else None
    means = [v for v in per_structure.values() if v is not None]
    return {
        "cases": len(scores),
        "per_structure": per_structure,
        "mean": round(float(np.mean(means)), 4) if means else None,
    }


def _target_groups(manifest_cases: list[dict[str, Any]]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {"near_source": [], "atrophy": [], "lesions": []}
    for i, case in enumerate(manifest_cases):
        if case["near_source"]:
            groups["near_source"].append(i)
        if case.get("atrophy"):
            groups["atrophy"].append(i)
        if case.get("lesions"):
            groups["lesions"].append(i)
        for shift in case["shifts"]:
            groups.setdefault(f"{shift['kind']}", []).append(i)
            groups.setdefault(f"{shift['kind']}:{shift['level']}", []).append(i)
    return dict(sorted(groups.items()))


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names, shapes, dtypes and values (not of the file's bytes, whose
    zip archive also records the name of the temporary file it was written to)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def inference_seconds(model: LoadedModel, case: TrainingCase, repeats: int = 3) -> dict[str, float]:
    """Best-of-``repeats`` wall time of one view and of a 4-view ranking pass over a case."""
    model.network.eval()
    sliding_window_probabilities(model, case.image)  # warm-up
    one, four = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sliding_window_probabilities(model, case.image)
        one.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        infer_case(model, case.image, views=4)
        four.append(time.perf_counter() - t0)
    return {"one_view_s": round(min(one), 3), "ranking_4_views_s": round(min(four), 3)}


def pretrain_demo(
    out_dir: str | Path | None = None,
    config: PretrainConfig | None = None,
    *,
    data_dir: str | Path | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
    argv: list[str] | None = None,
    time_inference: bool = True,
) -> dict[str, Any]:
    """Generate the sample data, pretrain the demo UNet, evaluate it, write weights + manifest.

    Args:
        out_dir: where ``demo_unet.pt`` and ``demo_unet.json`` go (default: the package's
            ``assft/resources/``, i.e. the shipped weights are replaced).
        config: the recipe (defaults: the shipped model's).
        data_dir: where the sample data is written (default: a temporary folder, removed).
        device: ``cpu`` reproduces the shipped figures; ``auto``/``cuda`` may differ slightly.
        progress: progress reporting.
        argv: the command line, recorded in the manifest.
        time_inference: measure the per-case inference time (for the manifest).

    Returns:
        The manifest (also written next to the weights).
    """
    config = config or PretrainConfig()
    progress = progress or Progress("none")
    out_dir = Path(out_dir) if out_dir is not None else resources_dir()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="assft-pretrain-") as scratch:
        data = Path(data_dir) if data_dir is not None else Path(scratch) / "data"
        t0 = time.perf_counter()
        sample = write_sample_data(
            data,
            config.n_target,
            n_source=config.n_source,
            sites=[MIXED],
            seed=config.data_seed,
            spacing=config.spacing,
            progress=progress,
        )
        # The coherent sites (an archive mixes their acquisitions): Dice per site as before.
        named_sites = [name for name in SITE_NAMES if name != MIXED and name not in ARCHIVE_NAMES]
        site_sample = write_sample_data(
            data / "sites",
            config.n_site,
            n_source=0,
            sites=named_sites,
            seed=config.data_seed,
            spacing=config.spacing,
            progress=progress,
        )
        timings["data_s"] = time.perf_counter() - t0

        preset = demo_preset(config.channels, checkpoint=False)
        label_values = sorted(LABEL_NAMES)
        if preset.label_values != label_values:
            raise BadInputError(
                f"the demo preset's labels {preset.label_names} differ from the sample data's "
                f"{LABEL_NAMES}: fix assft/resources/Models.json"
            )
        resolved = resolve_device(device)
        model = load_model(preset, label_values=label_values, device=resolved)
        prepared = PreparedCases(
            Path(scratch) / "prepared", preset, label_values, config.patch_size
        )
        cases: dict[str, list[TrainingCase]] = {"source": [], "target": []}
        for entry in sample["cases"]:
            cases[entry["domain"]].append(
                prepared.load(entry["case"], data / entry["image"], data / entry["label"])
            )
        by_site: dict[str, list[TrainingCase]] = {name: [] for name in named_sites}
        for entry in site_sample["cases"]:
            by_site[entry["site"]].append(
                prepared.load(
                    entry["case"], data / "sites" / entry["image"], data / "sites" / entry["label"]
                )
            )
        train, validation = cases["source"][: config.n_train], cases["source"][config.n_train :]
        target_entries = [c for c in sample["cases"] if c["domain"] == "target"]

        t0 = time.perf_counter()
        losses = _train(model, train, config, progress)
        timings["training_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        progress.phase("evaluation", len(validation) + len(cases["target"]))
        names = {v: LABEL_NAMES[v] for v in label_values}
        source_scores = evaluate_cases(model, validation, label_values)
        target_scores = evaluate_cases(model, cases["target"], label_values)
        site_scores = {
            name: evaluate_cases(model, members, label_values)
            for name, members in by_site.items()
            if members
        }
        progress.update(len(validation) + len(cases["target"]))
        timings["evaluation_s"] = time.perf_counter() - t0
        speed = inference_seconds(model, validation[0]) if time_inference else None

    out_dir.mkdir(parents=True, exist_ok=True)
    weights = save_state_dict(model.network, out_dir / WEIGHTS_FILE)
    timings["total_s"] = time.perf_counter() - started
    groups = _target_groups(target_entries)
    manifest = {
        "model": DEMO_PRESET,
        "weights": WEIGHTS_FILE,
        "weights_sha256": file_sha256(weights),
        "state_sha256": state_sha256(model.network.state_dict()),
        "weights_bytes": weights.stat().st_size,
        "parameters": int(sum(p.numel() for p in model.network.parameters())),
        "command": " ".join(["assft", *(argv or ["pretrain-demo"])]),
        "config": json.loads(json.dumps(asdict(config))),
        "data": {
            "generator": "assft.apps.sampledata",
            "seed": config.data_seed,
            "spacing_mm": config.spacing,
            "shape": sample["shape"],
            "source_cases": config.n_source,
            "source_training": [c.case_id for c in train],
            "source_validation": [c.case_id for c in validation],
            "target_cases": config.n_target,
            "site_cases": {name: len(members) for name, members in by_site.items()},
            "template": sample["template"],
        },
        "labels": {str(v): n for v, n in names.items()},
        "dice": {
            "source_validation": summarise(source_scores, names),
            "target": summarise(target_scores, names),
            "sites": {name: summarise(scores, names) for name, scores in site_scores.items()},
            "target_by_group": {
                group: summarise([target_scores[i] for i in members], names)
                for group, members in groups.items()
            },
            "per_case": {
                case.case_id: {names[v]: round(float(s[v]), 4) for v in label_values}
                for case, s in zip(
                    validation + cases["target"], source_scores + target_scores, strict=True
                )
            },
        },
        "final_loss": round(float(np.mean(losses[-20:])), 4) if losses else None,
        "loss_every_50": [
            round(float(np.mean(losses[i : i + 50])), 4) for i in range(0, len(losses), 50)
        ],
        "timings": {k: round(v, 1) for k, v in timings.items()},
        "inference_per_case": speed,
        "environment": {
            "device": str(resolved),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "monai": package_version("monai"),
            "numpy": np.__version__,
            "SimpleITK": package_version("SimpleITK"),
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_json_atomic(out_dir / MANIFEST_FILE, manifest)
    progress.done(
        weights=str(weights),
        source_dice=manifest["dice"]["source_validation"]["mean"],
        target_dice=manifest["dice"]["target"]["mean"],
    )
    return manifest


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _train(
    model: LoadedModel, cases: list[TrainingCase], config: PretrainConfig, progress: Progress
) -> list[float]:
    """The supervised steps, with the warm-up + cosine schedule; returns the losses."""
    trainer_config = FinetuneConfig(
        mode=FinetuneMode.NONE,
        iterations=config.iterations,
        batch_size=config.batch_size,
        patch_size=config.patch_size,
        lr=config.lr,
        encoder_lr_scale=1.0,
        weight_decay=config.weight_decay,
        seed=config.seed,
        augment=config.augment,
    )
    if hasattr(trainer_config, "freeze_batchnorm"):
        # Pretraining learns the source statistics whatever fine-tuning's default is.
        trainer_config.freeze_batchnorm = False
    trainer = Trainer(model, trainer_config, config.patch_size)
    set_track_meta(False)
    augment = (
        make_augmentation(config.seed, model.preset.mirror_axes, intensity=config.intensity_augment)
        if config.augment
        else None
    )
    losses: list[float] = []
    progress.phase("pretraining", config.iterations)
    for step in range(config.iterations):
        for group in trainer.optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        seed = step_seed(config.seed, 0, step)
        rng = np.random.default_rng(seed)
        if augment is not None:
            augment.set_random_state(seed=seed)
        batch = make_batch(
            cases, config.batch_size, config.patch_size, rng, foreground_ratio=0.5, augment=augment
        )
        metrics = trainer.step(batch)
        losses.append(metrics["loss"])
        if (step + 1) % 10 == 0 or step + 1 == config.iterations:
            progress.update(step + 1, loss=round(float(np.mean(losses[-10:])), 4))
    return losses


def print_summary(manifest: dict[str, Any], stream: TextIO | None = None) -> None:
    """A short table of the Dice figures."""
    stream = stream or sys.stdout
    dice = manifest["dice"]
    names = list(manifest["labels"].values())
    stream.write(f"{'Dice':<28}" + "".join(f"{n[:18]:>20}" for n in names) + f"{'mean':>8}\n")
    rows = [("source (held out)", dice["source_validation"]), ("target (all)", dice["target"])]
    rows += [(f"  {k}", v) for k, v in dice["target_by_group"].items() if ":" not in k]
    rows += [(f"site {k}", v) for k, v in dice.get("sites", {}).items()]
    for title, row in rows:
        values = "".join(
            f"{row['per_structure'][n]:>20.4f}"
            if row["per_structure"][n] is not None
            else f"{'-':>20}"
            for n in names
        )
        mean = f"{row['mean']:>8.4f}" if row["mean"] is not None else f"{'-':>8}"
        stream.write(f"{title + ' (' + str(row['cases']) + ')':<28}{values}{mean}\n")
    stream.write(
        f"Training {manifest['timings'].get('training_s')} s, "
        f"total {manifest['timings'].get('total_s')} s; inference "
        f"{(manifest['inference_per_case'] or {}).get('one_view_s')} s per case and view\n"
    )

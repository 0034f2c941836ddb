"""Probe: can supervised fine-tuning of the demo model learn from some labeled target cases, and
what does it forget? A diagnostic behind BENCHMARKS.md's label-efficiency section, not part of
the benchmark.

It fine-tunes the shipped demo model on the chosen pool cases of a label-efficiency folder (their
ground truth, the same Trainer and batches as ``assft finetune``'s supervised stage) and prints the
Dice of every test scan (``validation_dice``: sliding window, one view, as the
validation gate measures it) every ``--every`` steps.

    python benchmarks/forgetting_probe.py bench-le --cases tgt_002,tgt_009,tgt_017,tgt_024,tgt_032 \
        --steps 200 --lr 2e-3 --encoder-lr-scale 1 --no-freeze-batchnorm
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from assft.apps.simulation import SMALL_MODEL_FINETUNE, Dataset
from assft.models import get_preset, load_model
from assft.training import FinetuneConfig
from assft.training.data import PreparedCases
from assft.training.ssft import Trainer, run_stage, validation_dice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "folder", help="an 'assft bench label-efficiency' output folder (its data/)"
    )
    parser.add_argument("--cases", help="pool cases to train on (default: the whole pool)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=50)
    defaults = FinetuneConfig()  # the recipe's own defaults
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--encoder-lr-scale", type=float, default=defaults.encoder_lr_scale)
    parser.add_argument(
        "--freeze-batchnorm",
        dest="freeze_batchnorm",
        action="store_true",
        default=defaults.freeze_batchnorm,
    )
    parser.add_argument("--no-freeze-batchnorm", dest="freeze_batchnorm", action="store_false")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    preset = get_preset("demo")
    values = sorted(int(v) for v in preset.label_names)
    model = load_model(preset, label_values=values, checkpoint=None, device="cpu")
    dataset = Dataset.from_sample_data(Path(args.folder) / "data")
    chosen = set(args.cases.split(",")) if args.cases else {c.case_id for c in dataset.pool}
    patch = tuple(SMALL_MODEL_FINETUNE["patch_size"])
    with tempfile.TemporaryDirectory() as cache:
        prepared = PreparedCases(Path(cache), preset, values, patch)
        train = [
            prepared.load(c.case_id, c.image, c.truth) for c in dataset.pool if c.case_id in chosen
        ]
        test = [prepared.load(c.case_id, c.image, c.truth) for c in dataset.test]
    config = FinetuneConfig.from_dict(
        {
            **SMALL_MODEL_FINETUNE,
            "mode": "none",
            "iterations": args.steps,
            "lr": args.lr,
            "encoder_lr_scale": args.encoder_lr_scale,
            "seed": args.seed,
            "freeze_batchnorm": args.freeze_batchnorm,
        }
    )
    trainer = Trainer(model, config, patch)

    def dice(case) -> float:
        return validation_dice(model, [case], len(values) + 1)["per_case"][0]

    def report(step: int, losses: list[float]) -> None:
        scores = {case.case_id: round(dice(case), 3) for case in test}
        print(
            json.dumps(
                {
                    "step": step,
                    "loss": round(float(np.mean(losses)), 4) if losses else None,
                    "mean_test_dice": round(float(np.mean(list(scores.values()))), 4),
                    "test_dice": scores,
                }
            ),
            flush=True,
        )

    report(0, [])
    for start in range(0, args.steps, args.every):
        losses: list[float] = []
        end = min(args.steps, start + args.every)
        run_stage(
            trainer,
            stage=1,
            start=start,
            total=args.steps,
            end=end,
            labeled=train,
            pseudo=None,
            config=config,
            # losses is bound now (B023): each stage appends to its own list.
            on_step=lambda done, metrics, losses=losses: losses.append(metrics["loss"]),
        )
        report(end, losses)


if __name__ == "__main__":
    main()

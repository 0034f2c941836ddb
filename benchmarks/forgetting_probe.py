"""Probe: can supervised fine-tuning of the demo model learn from some labeled target cases, and
what does it forget? A diagnostic behind BENCHMARKS.md, not part of the benchmark.

It fine-tunes the shipped demo model on the chosen pool cases of a label-efficiency folder (their
ground truth, the same Trainer and batches as ``assft finetune``'s supervised stage) and prints the
Dice of every test scan (``validation_dice``: sliding window, one view, as the validation gate
measures it) every ``--every`` steps, with the mean per acquisition (``stratum`` in the sample
data's manifest) where the scans come from a lab archive.

``--anchor-cases`` adds cases that fill the unlabeled half of every batch, as SSFT's anchor does:
labeled with the parent's own prediction (``tau_v`` applied), or with their ground truth under
``--oracle-anchor`` (the best an anchor could teach).

    python benchmarks/forgetting_probe.py bench-le \\
        --cases tgt_002,tgt_009,tgt_017,tgt_024,tgt_032 --steps 200 --lr 2e-3 \\
        --encoder-lr-scale 1 --no-freeze-batchnorm
    python benchmarks/forgetting_probe.py /work/bench/hospital --site hospital \\
        --cases hospital_024,hospital_004 --anchor-cases hospital_033,hospital_010 --steps 600

``--route`` then tests routing each test scan to the parent or the fine-tuned model by a signal
known without its label: the parent when its own case confidence (SSFT's c_u) reaches ``tau_c``;
the more confident of the two; the parent when the scan's nearest labeled or held-out scan
(``--held-out``), by the acquisition descriptor, bore the parent out (the anchor's own rule,
``training.anchor.parent_evidence``); the same with a scan bearing the parent out only when its
Dice is also within ``anchor_margin`` of the best evidence scan's; beside the oracle (the better
of the two by Dice). BENCHMARKS.md, "What the anchor can and cannot hold", has the figures.

``--interpolate 0.25,0.5`` then tests the weights part of the way from the parent's to the
fine-tuned ones (WiSE-FT), with BatchNorm's running statistics interpolated, or the parent's, or
the fine-tuned model's.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from assft.apps.pretrain import demo_preset
from assft.apps.simulation import SMALL_MODEL_FINETUNE, Dataset
from assft.apps.sites import MIXED
from assft.metrics.acquisition import acquisition_descriptor
from assft.models import load_model
from assft.models.inference import infer_case
from assft.training import FinetuneConfig
from assft.training.anchor import parent_evidence
from assft.training.data import PreparedCases, TrainingCase
from assft.training.losses import IGNORE
from assft.training.reliability import nearest_borne_out
from assft.training.ssft import Trainer, run_stage, validation_dice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "folder", help="an 'assft bench label-efficiency' output folder (its data/)"
    )
    parser.add_argument("--site", default=MIXED, help="the sample-data site or archive")
    parser.add_argument("--cases", help="pool cases to train on (default: the whole pool)")
    parser.add_argument("--anchor-cases", dest="anchor_cases", help="anchor cases (see above)")
    parser.add_argument("--oracle-anchor", dest="oracle_anchor", action="store_true")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=50)
    defaults = FinetuneConfig()  # the recipe's own defaults
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--encoder-lr-scale", type=float, default=defaults.encoder_lr_scale)
    parser.add_argument("--batch-size", dest="batch_size", type=int)
    parser.add_argument("--schedule", default=defaults.schedule.value)
    parser.add_argument(
        "--freeze-batchnorm",
        dest="freeze_batchnorm",
        action="store_true",
        default=defaults.freeze_batchnorm,
    )
    parser.add_argument("--no-freeze-batchnorm", dest="freeze_batchnorm", action="store_false")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--labeled-share", dest="labeled_share", type=float, default=defaults.labeled_share
    )
    parser.add_argument(
        "--anchor-distill", dest="anchor_distill", type=float, default=defaults.anchor_distill
    )
    parser.add_argument(
        "--anchor-soft-only",
        dest="anchor_soft_only",
        action="store_true",
        help="the anchor teaches by distillation only (its hard pseudo-labels all ignored)",
    )
    parser.add_argument(
        "--interpolate",
        help="after the last step, also test the weights (1-a)*parent + a*fine-tuned for each "
        "comma-separated a (WiSE-FT)",
    )
    parser.add_argument(
        "--channels",
        help="a demo UNet of other channels per level (with --weights: its pretrained weights, "
        "from 'assft pretrain-demo --channels ... --out DIR')",
    )
    parser.add_argument("--weights", help="the network's weights (default: the shipped demo's)")
    parser.add_argument(
        "--held-out",
        dest="held_out",
        help="the validation scans, as evidence of where the parent is borne out (--route)",
    )
    parser.add_argument(
        "--route",
        action="store_true",
        help="after the last step, test routing each test scan to the parent or the fine-tuned "
        "model by signals known without its label (see above)",
    )
    args = parser.parse_args()

    channels = tuple(int(c) for c in args.channels.split(",")) if args.channels else None
    preset = demo_preset(channels)
    weights = Path(args.weights) if args.weights else None
    values = sorted(int(v) for v in preset.label_names)
    model = load_model(preset, label_values=values, checkpoint=weights, device="cpu")
    data = Path(args.folder) / "data"
    dataset = Dataset.from_sample_data(data, site=args.site)
    manifest = json.loads((data / "manifest.json").read_text())
    strata = {c["case"]: c.get("stratum") or c.get("site") for c in manifest["cases"]}
    chosen = set(args.cases.split(",")) if args.cases else {c.case_id for c in dataset.pool}
    anchored = set(args.anchor_cases.split(",")) if args.anchor_cases else set()
    patch = tuple(SMALL_MODEL_FINETUNE["patch_size"])
    config = FinetuneConfig.from_dict(
        {
            **SMALL_MODEL_FINETUNE,
            **({"batch_size": args.batch_size} if args.batch_size else {}),
            "mode": "none",
            "iterations": args.steps,
            "lr": args.lr,
            "encoder_lr_scale": args.encoder_lr_scale,
            "schedule": args.schedule,
            "seed": args.seed,
            "freeze_batchnorm": args.freeze_batchnorm,
            "anchor_distill": args.anchor_distill,
            "labeled_share": args.labeled_share,
        }
    )
    with tempfile.TemporaryDirectory() as cache:
        prepared = PreparedCases(Path(cache), preset, values, patch)
        train = [
            prepared.load(c.case_id, c.image, c.truth) for c in dataset.pool if c.case_id in chosen
        ]
        anchor = [
            prepared.load(c.case_id, c.image, c.truth)
            for c in dataset.pool
            if c.case_id in anchored
        ]
        test = [prepared.load(c.case_id, c.image, c.truth) for c in dataset.test]
        held = set(args.held_out.split(",")) if args.held_out else set()
        held_out = [
            prepared.load(c.case_id, c.image, c.truth) for c in dataset.pool if c.case_id in held
        ]
    if not args.oracle_anchor:
        anchor = [_parent_labeled(model, case, defaults.tau_v) for case in anchor]
    if args.anchor_soft_only:
        anchor = [case.with_target(torch.full_like(case.target, IGNORE)) for case in anchor]
    teacher = load_model(preset, label_values=values, checkpoint=weights, device="cpu")
    trainer = Trainer(model, config, patch, teacher=teacher)

    def report(step: int, losses: list[float]) -> dict[str, float]:
        per_case = validation_dice(model, test, list(range(1, len(values) + 1)))["per_case"]
        scores = {case.case_id: round(d, 3) for case, d in zip(test, per_case, strict=True)}
        by_stratum: dict[str, list[float]] = {}
        for case_id, dice in scores.items():
            by_stratum.setdefault(str(strata.get(case_id)), []).append(dice)
        print(
            json.dumps(
                {
                    "step": step,
                    "loss": round(float(np.mean(losses)), 4) if losses else None,
                    "mean_test_dice": round(float(np.mean(list(scores.values()))), 4),
                    "by_stratum": {k: round(float(np.mean(v)), 4) for k, v in by_stratum.items()},
                    "test_dice": scores,
                }
            ),
            flush=True,
        )
        return scores

    parent_dice = report(0, [])
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
            anchor=anchor or None,
            config=config,
            # losses is bound now (B023): each stage appends to its own list.
            on_step=lambda done, metrics, losses=losses: losses.append(metrics["loss"]),
        )
        tuned_dice = report(end, losses)
    if args.route:
        evidence = parent_evidence(
            teacher, train, held_out, list(range(1, len(values) + 1)), defaults
        )
        _route(teacher, model, test, parent_dice, tuned_dice, strata, defaults.tau_c, evidence)
    if args.interpolate:
        tuned = {k: v.clone() for k, v in model.network.state_dict().items()}
        parent = teacher.network.state_dict()
        buffers = {name for name, _ in model.network.named_buffers()}
        for alpha in (float(a) for a in args.interpolate.split(",")):
            for statistics in ("interpolated", "parent", "fine-tuned"):
                model.network.load_state_dict(
                    {
                        k: _mix(parent[k], v, alpha, k in buffers, statistics)
                        for k, v in tuned.items()
                    }
                )
                print(json.dumps({"interpolation": alpha, "statistics": statistics}), flush=True)
                report(args.steps, [])
        model.network.load_state_dict(tuned)


def _route(parent, tuned, test, parent_dice, tuned_dice, strata, tau_c: float, evidence) -> None:
    """Print the test Dice per acquisition when each scan goes to the parent or the fine-tuned
    model by their case confidence (two views, as SSFT's reliable set measures it)."""

    def confidence(model, case: TrainingCase) -> float:
        model.network.eval()
        return float(infer_case(model, case.image, views=2, batchnorm=False).difficulty.confidence)

    descriptors = np.array([e["descriptor"] for e in evidence])
    borne_out = np.array([e["borne_out"] for e in evidence], dtype=bool)
    # The anchor's rule counts a scan as bearing the parent out when its Dice is anchor_margin
    # above the worst labeled scan's; a second rule also asks it to be within that margin of the
    # best evidence scan's (a FLAIR scan at 0.46 is above a T2 one at 0.21, not near a T1 at 0.72).
    margin = FinetuneConfig().anchor_margin
    dices = np.array([e["dice"] for e in evidence])
    near_best = borne_out & (dices >= dices.max() - margin)
    print(
        json.dumps(
            {"evidence": [(e["case"], round(e["dice"], 3), e["borne_out"]) for e in evidence]}
        ),
        flush=True,
    )
    rows = []
    for case in test:
        c_parent, c_tuned = confidence(parent, case), confidence(tuned, case)
        d_parent, d_tuned = parent_dice[case.case_id], tuned_dice[case.case_id]
        result = infer_case(parent, case.image, views=1, batchnorm=True)
        descriptor = acquisition_descriptor(result.batchnorm, result.embedding)
        keep = bool(nearest_borne_out(descriptor[None, :], descriptors, borne_out)[0])
        keep_near_best = bool(nearest_borne_out(descriptor[None, :], descriptors, near_best)[0])
        rows.append((case.case_id, c_parent, c_tuned, d_parent, d_tuned, keep, keep_near_best))
        print(
            json.dumps(
                {
                    "case": case.case_id,
                    "stratum": strata.get(case.case_id),
                    "confidence": [round(c_parent, 4), round(c_tuned, 4)],
                    "dice": [d_parent, d_tuned],
                    "nearest_evidence_bore_the_parent_out": [keep, keep_near_best],
                }
            ),
            flush=True,
        )
    rules = {
        "parent": lambda r: r[3],
        "fine-tuned": lambda r: r[4],
        f"parent where its confidence >= tau_c {tau_c}": lambda r: r[3] if r[1] >= tau_c else r[4],
        "the more confident": lambda r: r[3] if r[1] >= r[2] else r[4],
        "parent where the nearest labeled or held-out scan bore it out": lambda r: (
            r[3] if r[5] else r[4]
        ),
        "the same, borne out also within anchor_margin of the best evidence Dice": lambda r: (
            r[3] if r[6] else r[4]
        ),
        "oracle (the better by Dice)": lambda r: max(r[3], r[4]),
    }
    for name, rule in rules.items():
        by_stratum: dict[str, list[float]] = {}
        for row in rows:
            by_stratum.setdefault(str(strata.get(row[0])), []).append(rule(row))
        print(
            json.dumps(
                {
                    "routing": name,
                    "mean_test_dice": round(float(np.mean([rule(r) for r in rows])), 4),
                    "by_stratum": {k: round(float(np.mean(v)), 4) for k, v in by_stratum.items()},
                }
            ),
            flush=True,
        )


def _mix(
    parent: torch.Tensor, tuned: torch.Tensor, alpha: float, buffer: bool, statistics: str
) -> torch.Tensor:
    """One entry of (1-alpha)*parent + alpha*tuned; a buffer (BatchNorm's running statistics)
    is interpolated too, or taken from one of the two (``statistics``)."""
    if not tuned.is_floating_point():
        return tuned
    if buffer and statistics != "interpolated":
        return parent if statistics == "parent" else tuned
    return (1 - alpha) * parent + alpha * tuned


def _parent_labeled(model, case: TrainingCase, tau_v: float) -> TrainingCase:
    """The case with the parent's prediction as its target (voxels below tau_v ignored)."""
    model.network.eval()
    result = infer_case(model, case.image, views=2, batchnorm=False, keep_probabilities=True)
    assert result.probabilities is not None
    top, label = result.probabilities.max(0)
    target = label.long()
    target[top < tau_v] = IGNORE
    return case.with_target(target.cpu())


if __name__ == "__main__":
    main()

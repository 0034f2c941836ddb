"""Verbs on model versions: ``models``, ``model-info``, ``rollback``, ``export``, ``predict``
and ``evaluate``. Each ``cmd_<verb>`` imports its machinery itself (``assft --help`` starts
without torch)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from assft.cli.common import model_flags, open_workspace
from assft.errors import BadInputError
from assft.runtime.progress import Progress
from assft.runtime.verbs import (
    Subparsers,
    add_verb,
    json_flag,
    print_json,
    progress_flag,
    progress_of,
)

if TYPE_CHECKING:
    from assft.workspace import Workspace


def cmd_models(args: argparse.Namespace) -> int:
    from assft.training.curves import describe_curve
    from assft.workspace.model_versions import ModelVersions

    document = ModelVersions(open_workspace(args.workspace)).to_json()
    if args.json:
        print_json(document)
        return 0
    for problem in document["problems"]:
        print(f"PROBLEM: {problem}")
    for v in document["versions"]:
        mark = "*" if v["current"] else " "
        if "error" in v:  # an unreadable manifest or, for the current one, damaged weights
            print(f"{mark} {v['version']:<5} DAMAGED: {v['error']}")
            continue
        metrics = v.get("metrics") or {}
        dice = metrics.get("validation_dice")
        dice_text = f"held-out Dice {dice:.4f}" if isinstance(dice, float) else "no held-out Dice"
        print(
            f"{mark} {v['version']:<5} parent {v.get('parent') or '-':<5} {v.get('mode') or '':<10}"
            f" {dice_text}  {'promoted' if v.get('promoted') else 'not promoted'}"
        )
        curve = describe_curve(v.get("learning_curve"))
        if curve:
            print(f"        {curve}")
    return 0


def add_models_parser(sub: Subparsers) -> None:
    p = add_verb(sub, "models", cmd_models, "model versions with their metrics")
    p.add_argument("workspace")
    json_flag(p)


def cmd_model_info(args: argparse.Namespace) -> int:
    from assft.models.describe import describe_model

    info = describe_model(args.model)
    if args.json:
        print_json(info)
        return 0
    structures = ", ".join(f"{v} {name}" for v, name in info["structures"].items())
    if not info["has_head"] and not structures:
        structures = "(none: an encoder without a head; name yours with assft init --label-names)"
    print(f"{info['model']}: {info['architecture']}, structures {structures or '(none)'}")
    if "folds" in info:
        print(
            f"nnU-Net configuration {info['configuration']}, folds run: {', '.join(info['used'])}"
            f" (found: {', '.join(info['folds'])})"
        )
    print(f"weights: {info['weights']}")
    print(info["description"])
    return 0


def add_model_info_parser(sub: Subparsers) -> None:
    p = add_verb(
        sub,
        "model-info",
        cmd_model_info,
        "open a model (preset, preset file, bundle:PATH, nnunet:PATH) as init would, and say "
        "what it is: network, structures, folds",
    )
    p.add_argument("model")
    json_flag(p)


def cmd_rollback(args: argparse.Namespace) -> int:
    from assft.workspace.model_versions import ModelVersions

    versions = ModelVersions(open_workspace(args.workspace))
    result = versions.rollback(args.version)
    if args.json:
        print_json(
            {
                "current": versions.current(),
                "rolled_back_from": result["rolled_back_from"],
                "repaired": result["repaired"],
            }
        )
        return 0
    if result["repaired"]:
        print(f"Repaired the damaged pointer ({result['repaired']})")
    print(f"Current model version: {versions.current()}")
    return 0


def add_rollback_parser(sub: Subparsers) -> None:
    p = add_verb(
        sub,
        "rollback",
        cmd_rollback,
        "make another model version current (its weights are checked first); repairs a "
        "damaged models/current",
    )
    p.add_argument("workspace")
    p.add_argument("version")
    json_flag(p)


def cmd_export(args: argparse.Namespace) -> int:
    workspace = open_workspace(args.workspace)
    if args.dicom_seg or args.store:
        return _export_dicom_seg(args, workspace)
    if args.out is None:
        raise BadInputError("export needs --out FOLDER (a model), or --dicom-seg FOLDER (labels)")
    from assft.workspace.export import export_version

    result = export_version(workspace, args.version, args.out, format=args.format)
    if args.json:
        print_json(result)
        return 0
    if result["format"] == "nnunet":
        print(
            f"Exported model version {result['version']} as nnU-Net results folder "
            f"{result['out']} (nnUNetPredictor runs it)"
        )
        return 0
    print(
        f"Exported model version {result['version']} as MONAI bundle {result['out']} "
        f"(bundle version {result['bundle_version']})"
    )
    return 0


def _export_dicom_seg(args: argparse.Namespace, workspace: Workspace) -> int:
    if args.version or args.out:
        raise BadInputError("--dicom-seg and --store export labels: give no version and no --out")
    from assft.dicom.dicom_seg import export_dicom_seg

    progress = progress_of(args)
    result = export_dicom_seg(
        workspace,
        args.dicom_seg,
        cases=args.cases.split(",") if args.cases else None,
        store=args.store,
        auth_file=args.dicomweb_auth,
        progress=progress,
    )
    progress.done(**result)
    if args.json:
        print_json(result, one_line=progress.mode == "json")
    elif progress.mode != "json":
        where = [f"{len(result['files'])} file(s) in {args.dicom_seg}"] if args.dicom_seg else []
        where += [f"{len(result['stored'])} stored on the server"] if args.store else []
        print(
            f"Exported the labels of {len(result['cases'])} case(s) as DICOM Segmentation: "
            + ", ".join(where)
        )
    return 0


def add_export_parser(sub: Subparsers) -> None:
    p = add_verb(
        sub,
        "export",
        cmd_export,
        "write a model version as a MONAI bundle folder (python -m monai.bundle run accepts it; "
        "a workspace made from a bundle gets that bundle's next version) or, for a workspace "
        "made from an nnU-Net folder, as an nnU-Net results folder (--format nnunet); or the "
        "submitted labels as DICOM Segmentations of their series (--dicom-seg, --store)",
    )
    p.add_argument("workspace")
    p.add_argument("version", nargs="?", help="model version (default: the current one)")
    p.add_argument("--format", default="bundle", choices=("bundle", "nnunet"))
    p.add_argument("--out", help="new folder outside the workspace (a model version)")
    p.add_argument(
        "--dicom-seg",
        metavar="FOLDER",
        help="write each labeled case's label as FOLDER/<case>.seg.dcm (DICOM Segmentation)",
    )
    p.add_argument(
        "--store",
        action="store_true",
        help="store the Segmentations on the DICOMweb server the workspace was made from",
    )
    p.add_argument("--cases", help="CASE,CASE,... (default: every labeled case)")
    p.add_argument("--dicomweb-auth", metavar="FILE", help="JSON credentials for --store")
    progress_flag(p)
    json_flag(p)


def _finished(
    args: argparse.Namespace, progress: Progress, result: dict[str, Any], **done: Any
) -> bool:
    """Report a model command's end; True when the result went out as JSON."""
    progress.done(model_version=result["model_version"], **done)
    if args.json:
        print_json(result, one_line=progress.mode == "json")
    return bool(args.json)


def cmd_predict(args: argparse.Namespace) -> int:
    from assft.predict import predict_workspace

    progress = progress_of(args)
    result = predict_workspace(
        open_workspace(args.workspace),
        args.case,
        args.all,
        Path(args.out) if args.out else None,
        args.version,
        args.device,
        args.uncertainty,
        progress,
        views=args.views,
    )
    if not result["has_head"]:  # an encoder, or a preset of other labels, before a fine-tune
        print(
            f"warning: model {result['model_version']} has no segmentation head for this "
            "workspace's labels yet; these labels are noise until the first fine-tune",
            file=sys.stderr,
        )
    if not _finished(
        args, progress, result, predictions=[row["label"] for row in result["predictions"]]
    ):
        for row in result["predictions"]:
            print(f"{row['case']}\t{row['label']}")
    return 0


def add_predict_parser(sub: Subparsers) -> None:
    p = add_verb(
        sub, "predict", cmd_predict, "write predicted labels at each scan's exact geometry"
    )
    p.add_argument("workspace")
    p.add_argument("case", nargs="?")
    p.add_argument("--all", action="store_true")
    p.add_argument(
        "--out",
        help="folder outside the workspace or under WS/predictions "
        "(default: WS/predictions/VERSION); never labels/, models/ or another workspace folder",
    )
    p.add_argument("--uncertainty", action="store_true", help="also write the entropy map")
    model_flags(p)
    json_flag(p)
    progress_flag(p)


def _dice_cells(values: Iterable[float | None]) -> str:
    return " ".join(f"{v:>12.4f}" if v is not None else f"{'-':>12}" for v in values)


def _dice_mean(mean: float | None) -> str:
    return "-" if mean is None else f"{mean:.4f}"


def cmd_evaluate(args: argparse.Namespace) -> int:
    from assft.evaluate import evaluate_workspace

    progress = progress_of(args)
    result = evaluate_workspace(
        open_workspace(args.workspace),
        Path(args.truth),
        version=args.version,
        device=args.device,
        progress=progress,
        views=args.views,
    )
    if _finished(args, progress, result, mean_dice=result["mean_dice"]):
        return 0
    names = list(result["per_structure"])
    print(f"{'case':<24} {'status':<10} " + " ".join(f"{n[:12]:>12}" for n in names) + "   mean")
    for row in result["cases"]:
        values = _dice_cells(row["dice"].get(n) for n in names)
        mean = row.get("mean_dice")
        print(f"{row['case']:<24} {row.get('status', ''):<10} {values}   {_dice_mean(mean)}")
    cells = _dice_cells(result["per_structure"].values())
    print(f"{'mean':<35} {cells}   {_dice_mean(result['mean_dice'])}")
    return 0


def add_evaluate_parser(sub: Subparsers) -> None:
    p = add_verb(sub, "evaluate", cmd_evaluate, "Dice per case and structure against ground truth")
    p.add_argument("workspace")
    p.add_argument("--truth", required=True, help="folder of truth labels named like the cases")
    model_flags(p)
    json_flag(p)
    progress_flag(p)

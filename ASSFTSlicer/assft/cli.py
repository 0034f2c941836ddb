"""The ``assft`` command line: a thin layer over the engine; heavy imports stay inside commands.

Each verb has a ``cmd_<verb>`` function that runs it and, next to it, an ``add_<verb>_parser``
function that registers its flags; :func:`build_parser` calls them in help order. Settings
resolve in :func:`assft.settings.resolve_config`: flags, then ``--config``, then the
workspace's settings, then the config dataclass's defaults (flags default to None).

Exit codes: 0 done, 2 bad input (one line on stderr naming the file and the problem),
3 cancelled, 1 anything else.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

# Only light modules at the top (the errors, the runtime helpers, the config dataclasses and the
# strategy registry: numpy, never torch). Each cmd_* function (and the _open and _*_config helpers
# they call) imports the machinery of its verb itself, so that `assft --help`, a bad flag and the
# light verbs answer at once and the CLI starts without torch (Testing/test_cli.py checks it).
from assft.errors import (
    EXIT_CANCELLED,
    EXIT_FAILURE,
    AssftError,
    BadInputError,
    CancelledError,
    storage_error,
)
from assft.query.config import DKDConfig, GapEstimator, QueryConfig
from assft.query.strategies import STRATEGIES
from assft.runtime import cancellation, distributed
from assft.runtime.progress import Progress, ProgressEvent
from assft.runtime.verbs import (
    Subparsers,
    add_verb,
    device_flag,
    json_flag,
    parse_label_names,
    print_json,
    progress_flag,
    progress_of,
)
from assft.training.config import FinetuneConfig, FinetuneMode

if TYPE_CHECKING:
    from assft.workspace import Workspace


def _open(path: str) -> Workspace:
    from assft.workspace import Workspace

    return Workspace.open(Path(path))


# Parser helpers ---------------------------------------------------------------------------------


def _model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", help="model version (default: the current one)")
    p.add_argument(
        "--views",
        type=int,
        default=4,
        help="test-time views, 1 to 8: the identity, flips of x, y, z, then of two and three axes "
        "(8: every mirroring, as nnU-Net predicts)",
    )
    device_flag(p)


def _default(kind: type, name: str) -> str:
    """A config dataclass's default for a help text (the one place defaults are written).

    A dataclass keeps a field's plain default as a class attribute.
    """
    value = getattr(kind, name)
    return str(value.value if isinstance(value, Enum) else value)


PRECEDENCE = (
    "A flag overrides --config, which overrides the workspace's settings (assft.json), "
    "which override the defaults shown."
)


# Commands ---------------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    from assft.workspace.creation import create_workspace

    workspace = create_workspace(
        args.workspace,
        args.images,
        model=args.model,
        label_names=parse_label_names(args.label_names),
        labels_dir=args.labels,
        labeled_structures=args.labeled_structures,
    )
    summary = workspace.status_summary()
    if args.json:
        print_json({"workspace": str(workspace.root), **summary})
    else:
        print(
            f"Created workspace {workspace.root}: {summary['total']} cases "
            f"({summary['counts'].get('labeled', 0)} labeled), model {args.model}"
        )
    return 0


def add_init_parser(sub: Subparsers) -> None:
    p = add_verb(sub, "init", cmd_init, "create a workspace from images")
    p.add_argument("workspace", help="folder of the new workspace")
    p.add_argument(
        "--images", nargs="+", required=True, help="image files, DICOM folders or folders of images"
    )
    p.add_argument("--labels", help="folder of existing labels named like the images")
    p.add_argument("--label-names", help="VALUE:NAME,... (default: the model preset's labels)")
    p.add_argument(
        "--labeled-structures",
        metavar="NAMES",
        help=(
            "the structures clinicians label, when they label only some of the model's "
            "(names or values, e.g. liver,spleen): fine-tuning learns these from the labels "
            "and keeps the others as the model predicted them (default: all)"
        ),
    )
    p.add_argument(
        "--model",
        default="demo",
        help=(
            "model preset name, preset JSON file, bundle:PATH (a MONAI bundle folder) or "
            "nnunet:PATH (an nnU-Net v2 results folder)"
        ),
    )
    json_flag(p)


def _query_config(args: argparse.Namespace, workspace: Workspace) -> QueryConfig:
    from assft.settings import resolve_config

    keys = ("budget", "strategy", "seed", "views", "weight", "lambda_div")
    flags = {key: getattr(args, key) for key in keys}
    return resolve_config(
        QueryConfig,
        flags={**flags, "dkd": {"gap": args.gap}},
        config_file=args.config,
        settings=workspace.config.settings,
        settings_file=workspace.config_path,
    )


def _print_ranking(document: dict[str, Any]) -> None:
    print(
        f"Ranking {document.get('file', '')} of {document['pool_size']} cases with "
        f"{document['strategy']} (model {document['model_version']}"
        f"{', cold start' if document['cold_start'] else ''}, {document['seconds']:.1f} s)"
    )
    print(f"{'rank':>4}  {'case':<24} {'score':>6} {'DKD':>7} {'ASD':>6}  reason")
    for row in document["cases"]:
        mark = "*" if row["selected"] else " "

        def fmt(value: Any, width: int, digits: int) -> str:
            return f"{value:>{width}.{digits}f}" if isinstance(value, float) else f"{'-':>{width}}"

        print(
            f"{row['rank']:>4}{mark} {row['case']:<24} {fmt(row['score'], 6, 3)} "
            f"{fmt(row['dkd'], 7, 4)} {fmt(row['asd'], 6, 3)}  {row['reason']}"
        )
    print(f"Selected ({len(document['selected'])}): {', '.join(document['selected'])}")


def cmd_rank(args: argparse.Namespace) -> int:
    workspace = _open(args.workspace)
    config = _query_config(args, workspace)  # checked before the ranking machinery loads

    from assft.query.ranking import rank_workspace

    progress = progress_of(args)

    document = rank_workspace(workspace, config, device=args.device, progress=progress)
    if not distributed.is_main():
        return 0
    progress.done(file=document.get("file"), selected=document["selected"])
    if args.json:
        print_json(document, one_line=progress.mode == "json")
    elif progress.mode != "json":
        _print_ranking(document)
    return 0


def add_rank_parser(sub: Subparsers) -> None:
    p = add_verb(
        sub,
        "rank",
        cmd_rank,
        "rank the unlabeled cases and select a batch to label",
        epilog=PRECEDENCE,
    )
    p.add_argument("workspace")
    p.add_argument(
        "--budget", type=int, help=f"cases to select (default {_default(QueryConfig, 'budget')})"
    )
    p.add_argument(
        "--strategy", choices=tuple(STRATEGIES), help=f"default {_default(QueryConfig, 'strategy')}"
    )
    device_flag(p)
    p.add_argument("--seed", type=int, help=f"default {_default(QueryConfig, 'seed')}")
    p.add_argument(
        "--views",
        type=int,
        help=f"test-time views, 1 to 4 (default {_default(QueryConfig, 'views')})",
    )
    p.add_argument(
        "--weight",
        type=float,
        help=f"w in S = w q(KG) + (1-w) q(ASD) (default {_default(QueryConfig, 'weight')})",
    )
    p.add_argument(
        "--lambda-div",
        dest="lambda_div",
        type=float,
        help=f"diversity weight (default {_default(QueryConfig, 'lambda_div')})",
    )
    p.add_argument(
        "--gap",
        choices=tuple(g.value for g in GapEstimator),
        help=f"DKD knowledge-gap estimator (default {_default(DKDConfig, 'gap')})",
    )
    p.add_argument("--config", help="a QueryConfig JSON file (flags override it)")
    json_flag(p)
    progress_flag(p)


def cmd_next(args: argparse.Namespace) -> int:
    info = _open(args.workspace).next_case()
    if args.json:
        print_json(info)
    elif info["case"] is None:
        print("Every ranked case is labeled or skipped: fine-tune or rank again.")
    else:
        print(f"{info['case']}\t{info['image']}\trank {info['rank']}\t{info['reason']}")
    return 0


def add_next_parser(sub: Subparsers) -> None:
    p = add_verb(sub, "next", cmd_next, "the next case to label, from the latest ranking")
    p.add_argument("workspace")
    json_flag(p)


def cmd_submit(args: argparse.Namespace) -> int:
    workspace = _open(args.workspace)
    stored = workspace.submit_label(args.case, Path(args.label), user=args.user)
    if args.json:
        print_json({"case": args.case, "label": str(stored), "status": "labeled"})
    else:
        print(f"Stored the label of {args.case} as {stored}")
    return 0


def add_submit_parser(sub: Subparsers) -> None:
    p = add_verb(sub, "submit", cmd_submit, "store a case's label (validated; never half-written)")
    p.add_argument("workspace")
    p.add_argument("case")
    p.add_argument("label", help="label image at the case's exact geometry")
    p.add_argument("--user", help="who labeled it (default: the login name)")
    json_flag(p)


def cmd_skip(args: argparse.Namespace) -> int:
    workspace = _open(args.workspace)
    workspace.skip(args.case, user=args.user)
    if args.json:
        print_json({"case": args.case, "status": "skipped"})
    else:
        print(f"Skipped {args.case}")
    return 0


def cmd_structures(args: argparse.Namespace) -> int:
    from assft.workspace.config import parse_structures

    workspace = _open(args.workspace)
    names = workspace.config.label_names
    if args.labeled is not None and args.all:
        raise BadInputError("give --labeled NAMES or --all, not both")
    if args.labeled is not None or args.all:
        values = None if args.all else parse_structures(args.labeled, names, "--labeled")
        workspace.set_labeled_structures(
            values, labels_complete=args.labels_complete, user=args.user
        )
    labeled = workspace.config.labeled_values
    structures = [{"value": v, "name": names[v], "labeled": v in labeled} for v in names]
    if args.json:
        print_json(
            {"structures": structures, "partially_labeled": workspace.config.partially_labeled}
        )
        return 0
    for row in structures:
        kept = "labeled" if row["labeled"] else "kept as the model predicts it"
        print(f"  {row['value']:>3}  {row['name']}: {kept}")
    return 0


def add_structures_parser(sub: Subparsers) -> None:
    p = add_verb(
        sub,
        "structures",
        cmd_structures,
        "the structures clinicians label, and changing them (all, or some: the others are kept "
        "as the model predicts them)",
    )
    p.add_argument("workspace")
    p.add_argument("--labeled", metavar="NAMES", help="label these from now on (names or values)")
    p.add_argument("--all", action="store_true", help="label every structure from now on")
    p.add_argument(
        "--labels-complete",
        dest="labels_complete",
        action="store_true",
        help="the labels already drawn hold the structures added too (else adding structures "
        "while labels exist is refused: those labels would teach them as background)",
    )
    p.add_argument("--user")
    json_flag(p)


def add_skip_parser(sub: Subparsers) -> None:
    p = add_verb(sub, "skip", cmd_skip, "mark a case skipped")
    p.add_argument("workspace")
    p.add_argument("case")
    p.add_argument("--user")
    json_flag(p)


def cmd_status(args: argparse.Namespace) -> int:
    from assft.workspace.model_versions import ModelRegistry

    workspace = _open(args.workspace)
    summary = workspace.status_summary()
    # A damaged pointer, or a current version that cannot be used, is flagged, not fatal here.
    summary["model_problems"] = ModelRegistry(workspace).problems()
    if args.json:
        print_json({"workspace": str(workspace.root), **summary})
        return 0
    counts = ", ".join(f"{n} {status}" for status, n in summary["counts"].items())
    print(f"Workspace {workspace.root}")
    version = summary["model_version"] or "unknown (damaged pointer)"
    flag = "  [PROBLEM]" if summary["model_problems"] else ""
    print(f"  model version: {version}{flag}")
    for problem in summary["model_problems"]:
        print(f"  problem: {problem}")
    print(f"  cases: {summary['total']} ({counts})")
    if workspace.config.partially_labeled:
        print(
            f"  labeled structures: {', '.join(summary['labeled_structures'])} (the others are "
            "kept as the model predicts them)"
        )
    print(f"  latest ranking: {summary.get('latest_ranking') or 'none'}")
    job = summary.get("running_job")
    print(
        f"  running job: {job['description'] + ' (pid ' + str(job['pid']) + ')' if job else 'none'}"
    )
    return 0


def add_status_parser(sub: Subparsers) -> None:
    p = add_verb(sub, "status", cmd_status, "cases per status, model version, running job")
    p.add_argument("workspace")
    json_flag(p)


def cmd_hold_out(args: argparse.Namespace) -> int:
    workspace = _open(args.workspace)
    if args.propose is not None:
        if args.cases or args.release:
            raise BadInputError("--propose lists scans to hold out: give no cases and no --release")
        if args.propose < 0:
            raise BadInputError(
                f"--propose N must be 1 or more (0: one per part), got {args.propose}"
            )
        from assft.query.ranking import propose_validation_set

        progress = progress_of(args)
        proposal = propose_validation_set(
            workspace, args.propose or None, device=args.device, progress=progress
        )
        if args.json:
            print_json(proposal)
            return 0
        progress.done(**proposal)  # --progress json: the Slicer module and the page read it
        if args.progress == "json":
            return 0
        print(f"The archive has {proposal['parts']['count']} part(s) by acquisition; hold out:")
        for row in proposal["proposed"]:
            todo = {
                "held-out": "held out already",
                "unlabeled": "label it, then assft hold-out",
            }.get(row["status"], row["status"])
            print(f"  {row['case']}  {row['part']}  ({todo})")
        for note in proposal["notes"]:
            print(f"note: {note}")
        return 0
    if not args.cases:
        raise BadInputError("give the cases to hold out, or --propose to have some proposed")
    status = workspace.hold_out(args.cases, release=args.release, user=args.user)
    message = {"cases": args.cases, "status": status}
    print_json(message) if args.json else print(f"{len(args.cases)} case(s) now {status}")
    return 0


def add_hold_out_parser(sub: Subparsers) -> None:
    p = add_verb(
        sub, "hold-out", cmd_hold_out, "keep labeled cases out of training, for validation"
    )
    p.add_argument("workspace")
    p.add_argument("cases", nargs="*")
    p.add_argument("--release", action="store_true", help="make held-out cases labeled again")
    p.add_argument(
        "--propose",
        nargs="?",
        type=int,
        const=0,
        metavar="N",
        help="list N scans to hold out that cover the archive's parts (by acquisition, from "
        "the pretrained model; default: one per part, at least 2), keeping those held out "
        "already",
    )
    p.add_argument("--user")
    device_flag(p)
    progress_flag(p)
    json_flag(p)


def _finetune_config(args: argparse.Namespace, workspace: Workspace) -> FinetuneConfig:
    from assft.settings import resolve_config

    return resolve_config(
        FinetuneConfig,
        flags={
            key: getattr(args, key)
            for key in ("mode", "iterations", "semi_iterations", "batch_size", "seed", "lr")
        },
        config_file=args.config,
        config_json=args.config_json,
        settings=workspace.config.settings,
        settings_file=workspace.config_path,
    )


def cmd_finetune(args: argparse.Namespace) -> int:
    workspace = _open(args.workspace)
    config = _finetune_config(args, workspace)
    if args.detach:
        from assft.workspace.jobs import launch_detached_job

        launched = launch_detached_job(
            workspace,
            ["finetune", str(workspace.root), "--device", args.device]
            + (["--restart"] if args.restart else []),
            config=config.to_dict(),
        )
        job = launched["job"] or "(starting)"
        print_json({"detached": True, **launched}) if args.json else print(
            f"Fine-tuning in the background: job {job} (pid {launched['pid']}); "
            f"follow it with 'assft jobs {workspace.root}'"
        )
        return 0
    argv = [  # recorded with the job, to run it again
        "finetune",
        str(workspace.root),
        "--config-json",
        json.dumps(config.to_dict()),
        "--device",
        args.device,
        *(["--restart"] if args.restart else []),
    ]
    from assft.training.finetune import describe_settings, run_finetune

    manifest = run_finetune(
        workspace,
        config,
        device=args.device,
        progress=progress_of(args),
        argv=argv,
        restart=args.restart,
    )

    if not distributed.is_main():
        return 0
    if args.json:
        print_json(manifest, one_line=args.progress == "json")
    elif progress_of(args).mode != "json":
        gate = manifest.get("gate", {})
        promoted = "promoted" if manifest.get("promoted") else "not promoted"
        print(f"Version {manifest['version']} ({promoted}): {gate.get('reason', '')}")
        if manifest.get("not_promoted_reason"):
            print(f"  {manifest['not_promoted_reason']}")
        if manifest.get("resumed"):
            settings = describe_settings(manifest.get("config") or {})
            print(f"  resumed job {manifest.get('job')} with its own settings ({settings})")
    return 0


def add_finetune_parser(sub: Subparsers) -> None:
    p = add_verb(
        sub,
        "finetune",
        cmd_finetune,
        "fine-tune the current model on the labels (SSFT)",
        epilog=PRECEDENCE,
    )
    p.add_argument("workspace")
    p.add_argument(
        "--mode",
        choices=tuple(m.value for m in FinetuneMode),
        help=f"default {_default(FinetuneConfig, 'mode')}",
    )
    p.add_argument(
        "--iterations",
        type=int,
        help=f"steps of the supervised stage (default {_default(FinetuneConfig, 'iterations')})",
    )
    p.add_argument(
        "--semi-iterations",
        dest="semi_iterations",
        type=int,
        help="steps of the semi-supervised stage (default: as --iterations)",
    )
    p.add_argument(
        "--batch-size",
        dest="batch_size",
        type=int,
        help=f"patches per step (default {_default(FinetuneConfig, 'batch_size')})",
    )
    p.add_argument(
        "--lr",
        type=float,
        help=f"learning rate of the decoder and head (default {_default(FinetuneConfig, 'lr')})",
    )
    p.add_argument("--seed", type=int, help=f"default {_default(FinetuneConfig, 'seed')}")
    device_flag(p)
    p.add_argument("--config", help="a FinetuneConfig JSON file (flags override it)")
    # The detached job's relaunch passes the resolved config as JSON text instead of a file.
    p.add_argument("--config-json", dest="config_json", help=argparse.SUPPRESS)
    p.add_argument("--detach", action="store_true", help="run as a background process and return")
    p.add_argument(
        "--restart",
        action="store_true",
        help="start a new job even if a killed one with the same labels could resume (a resumed "
        "job keeps the settings it started with)",
    )
    json_flag(p)
    progress_flag(p)


def cmd_jobs(args: argparse.Namespace) -> int:
    from assft.workspace.jobs import JobStore

    jobs = JobStore(_open(args.workspace)).list()
    if args.json:
        print_json({"jobs": jobs})
        return 0
    if not jobs:
        print("No jobs.")
    for job in jobs:
        last = job.get("last_progress") or {}
        where = (
            f" {last['phase']} {last.get('done')}/{last.get('total')}" if "phase" in last else ""
        )
        message = job.get("message") or ""
        print(f"{job['id']}  {job['state']:<9} pid {job.get('pid')}{where}  {message}")
    return 0


def add_jobs_parser(sub: Subparsers) -> None:
    p = add_verb(sub, "jobs", cmd_jobs, "background jobs and their state")
    p.add_argument("workspace")
    json_flag(p)


def cmd_cancel(args: argparse.Namespace) -> int:
    from assft.workspace.jobs import cancel

    info = cancel(_open(args.workspace), args.job, timeout=args.timeout)
    print_json(info) if args.json else print(f"Job {info['id']}: {info['state']}")
    return 0


def add_cancel_parser(sub: Subparsers) -> None:
    p = add_verb(sub, "cancel", cmd_cancel, "stop a running job cleanly (its work is discarded)")
    p.add_argument("workspace")
    p.add_argument("job", nargs="?", help="job id (default: the running one)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds before it is killed")
    json_flag(p)


def cmd_models(args: argparse.Namespace) -> int:
    from assft.training.curves import describe_curve
    from assft.workspace.model_versions import ModelRegistry

    document = ModelRegistry(_open(args.workspace)).to_json()
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
    from assft.workspace.model_versions import ModelRegistry

    registry = ModelRegistry(_open(args.workspace))
    result = registry.rollback(args.version)
    if args.json:
        print_json(
            {
                "current": registry.current(),
                "rolled_back_from": result["rolled_back_from"],
                "repaired": result["repaired"],
            }
        )
        return 0
    if result["repaired"]:
        print(f"Repaired the damaged pointer ({result['repaired']})")
    print(f"Current model version: {registry.current()}")
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
    from assft.workspace.export import export_version

    result = export_version(_open(args.workspace), args.version, args.out, format=args.format)
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


def add_export_parser(sub: Subparsers) -> None:
    p = add_verb(
        sub,
        "export",
        cmd_export,
        "write a model version as a MONAI bundle folder (python -m monai.bundle run accepts it; "
        "a workspace made from a bundle gets that bundle's next version) or, for a workspace "
        "made from an nnU-Net folder, as an nnU-Net results folder (--format nnunet)",
    )
    p.add_argument("workspace")
    p.add_argument("version", nargs="?", help="model version (default: the current one)")
    p.add_argument("--format", default="bundle", choices=("bundle", "nnunet"))
    p.add_argument("--out", required=True, help="new folder outside the workspace")
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
        _open(args.workspace),
        args.case,
        args.all,
        Path(args.out) if args.out else None,
        args.version,
        args.device,
        args.uncertainty,
        progress,
        views=args.views,
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
    _model_flags(p)
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
        _open(args.workspace),
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
    _model_flags(p)
    json_flag(p)
    progress_flag(p)


# Parser ----------------------------------------------------------------------------------------


VERB_PARSERS: tuple[Callable[[Subparsers], None], ...] = (
    add_init_parser,
    add_rank_parser,
    add_next_parser,
    add_submit_parser,
    add_skip_parser,
    add_status_parser,
    add_structures_parser,
    add_hold_out_parser,
    add_finetune_parser,
    add_jobs_parser,
    add_cancel_parser,
    add_models_parser,
    add_model_info_parser,
    add_rollback_parser,
    add_export_parser,
    add_predict_parser,
    add_evaluate_parser,
)
"""Every verb's parser, in the order ``assft --help`` lists them."""


DEMO_EXTRA = "the full engine package: pip install 'assft[demo]'"

VERBS_OF_EXTRAS: dict[str, str] = {
    "demo": DEMO_EXTRA,
    "bench": DEMO_EXTRA,
    "sample-data": DEMO_EXTRA,
    "pretrain-demo": DEMO_EXTRA,
    "web": "the web front end: pip install 'assft[web]'",
}
"""The verbs that packages above the engine register (``assft.commands`` entry points), and
what to install where one is absent (the Slicer extension ships the engine alone)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="assft",
        description="Rank unlabeled 3D scans by what they would teach a pretrained segmentation "
        "model (ATTSQ: DKD + ASD), collect labels, fine-tune (SSFT).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_parser in VERB_PARSERS:
        add_parser(sub)
    for add_parser in _registered_parsers():
        add_parser(sub)
    for verb, needed in VERBS_OF_EXTRAS.items():
        if verb not in sub.choices:
            _add_absent_verb(sub, verb, needed)
    return parser


def _registered_parsers() -> list[Callable[[Any], None]]:
    """The verbs of packages above the engine (the apps' ``demo``, ``bench``...; ``assft web``),
    found through the ``assft.commands`` entry point group: the engine never imports them. Each
    entry point is a function that adds its verb to the subparsers. One whose package is absent
    is left to :data:`VERBS_OF_EXTRAS`; one that fails otherwise is skipped with a warning, so
    the engine's own verbs always work."""

    def listed(entry: importlib.metadata.EntryPoint) -> tuple[int, str]:
        known = list(VERBS_OF_EXTRAS)  # help lists them in this order, others after
        return (known.index(entry.name) if entry.name in known else len(known), entry.name)

    parsers = []
    for entry in sorted(importlib.metadata.entry_points(group="assft.commands"), key=listed):
        try:
            parsers.append(entry.load())
        except Exception as error:  # noqa: BLE001 - a broken front end never breaks the CLI
            missing = getattr(error, "name", None)
            if (
                isinstance(error, ModuleNotFoundError)
                and missing
                and (f"{entry.module}.".startswith(f"{missing}."))
            ):
                continue  # its package is not installed: VERBS_OF_EXTRAS says what it needs
            print(f"assft: warning: command {entry.name!r} unavailable: {error}", file=sys.stderr)
    return parsers


def _add_absent_verb(sub: Subparsers, verb: str, needed: str) -> None:
    """A verb whose package is not installed: any arguments, and one line on what it needs."""

    def absent(args: argparse.Namespace) -> int:
        raise BadInputError(f"assft {verb} needs {needed}")

    p = sub.add_parser(verb, help=f"(needs {needed})", add_help=False)
    p.set_defaults(handler=absent, absent_verb=True)


def _one_line_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    print(f"assft: warning: {' '.join(str(message).split())}", file=sys.stderr)


def _in_workspace(error: OSError, args: argparse.Namespace) -> bool:
    """Whether a failed write was into the workspace the command works on."""
    workspace = getattr(args, "workspace", None)
    if not workspace or error.filename is None:
        return False
    try:
        path = Path(os.fsdecode(error.filename)).resolve()
        return path.is_relative_to(Path(workspace).resolve())
    except (OSError, TypeError, ValueError):
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "absent_verb", False):  # an absent verb's flags are unknown
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    warnings.showwarning = _one_line_warning
    cancellation.install()
    json_lines = getattr(args, "progress", None) == "json"
    finished = False
    try:
        code = int(args.handler(args) or 0)
        finished = True
        return code
    except (CancelledError, KeyboardInterrupt) as error:
        message = str(error) or "cancelled"
        if json_lines:
            print(
                json.dumps({"event": ProgressEvent.ERROR, "message": message, "cancelled": True}),
                flush=True,
            )
        print(f"assft: cancelled: {message}", file=sys.stderr)
        return EXIT_CANCELLED
    except Exception as error:  # noqa: BLE001 - the last line of defence prints and exits 1
        # A full disk or a read-only file system is said as such, in one line (exit 2).
        known: AssftError | None = error if isinstance(error, AssftError) else None
        if isinstance(error, OSError):
            known = storage_error(error, in_workspace=_in_workspace(error, args))
        if known is not None:
            if json_lines:
                print(json.dumps({"event": ProgressEvent.ERROR, "message": str(known)}), flush=True)
            print(f"assft: error: {known}", file=sys.stderr)
            return known.exit_code
        if json_lines:
            print(
                json.dumps(
                    {"event": ProgressEvent.ERROR, "message": f"{type(error).__name__}: {error}"}
                ),
                flush=True,
            )
        print(f"assft: internal error: {type(error).__name__}: {error}", file=sys.stderr)
        if "ASSFT_DEBUG" in os.environ:
            raise
        return EXIT_FAILURE
    finally:
        distributed.shutdown(finished)

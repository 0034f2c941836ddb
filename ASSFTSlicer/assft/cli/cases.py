"""Verbs on a workspace's cases: ``init``, ``rank``, ``next``, ``submit``, ``skip``,
``structures``, ``status`` and ``hold-out``. Each ``cmd_<verb>`` imports its machinery itself
(``assft --help`` starts without torch)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from assft.cli.common import PRECEDENCE, default_of, open_workspace
from assft.errors import BadInputError
from assft.query.config import DKDConfig, GapEstimator, QueryConfig
from assft.query.strategies import STRATEGIES
from assft.runtime import distributed
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

if TYPE_CHECKING:
    from assft.workspace import Workspace


def cmd_init(args: argparse.Namespace) -> int:
    from assft.workspace.creation import create_workspace

    create: dict[str, Any] = {
        "model": args.model,
        "label_names": parse_label_names(args.label_names),
        "labels_dir": args.labels,
        "labeled_structures": args.labeled_structures,
    }
    if args.dicomweb:
        from assft.dicom.dicomweb import parse_query
        from assft.dicom.dicomweb_pool import create_workspace_from_dicomweb

        progress = progress_of(args)
        workspace = create_workspace_from_dicomweb(
            args.workspace,
            args.dicomweb,
            query=parse_query(args.query),
            series_filter=args.series_filter,
            auth_file=args.dicomweb_auth,
            fetch_first=args.fetch_first,
            progress=progress,
            **create,
        )
        progress.done(workspace=str(workspace.root))
    else:
        if args.query or args.series_filter or args.dicomweb_auth or args.fetch_first:
            raise BadInputError(
                "--query, --series-filter, --dicomweb-auth and --fetch-first need --dicomweb URL"
            )
        workspace = create_workspace(args.workspace, args.images, **create)
    summary = workspace.status_summary()
    pending = 0
    if args.dicomweb:
        from assft.dicom.dicomweb_pool import dicomweb_manifest

        manifest = dicomweb_manifest(workspace) or {"cases": []}
        pending = sum(1 for entry in manifest["cases"] if entry.get("status") == "pending")
        summary["dicomweb_pending"] = pending
    if args.json:
        print_json({"workspace": str(workspace.root), **summary})
    else:
        print(
            f"Created workspace {workspace.root}: {summary['total']} cases "
            f"({summary['counts'].get('labeled', 0)} labeled), model {args.model}"
        )
        if pending:
            print(
                f"{pending} series wait on the server: `assft fetch {workspace.root}` fetches "
                "them (ranking ranks what has arrived)"
            )
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from assft.dicom.dicomweb_pool import fetch_pending

    workspace = open_workspace(args.workspace)
    progress = progress_of(args)
    result = fetch_pending(workspace, auth_file=args.dicomweb_auth, progress=progress)
    progress.done(**result)
    if args.json:
        print_json(result, one_line=progress.mode == "json")
    elif progress.mode != "json":
        print(
            f"Fetched {len(result['fetched'])} series into {workspace.root}; "
            f"{len(result['refused'])} refused, {result['pending']} still pending"
        )
        for case, reason in result["refused"].items():
            print(f"  refused {case}: {reason}")
    return 0


def add_fetch_parser(sub: Subparsers) -> None:
    p = add_verb(
        sub,
        "fetch",
        cmd_fetch,
        "fetch the series still pending on the DICOMweb server of a workspace made with "
        "init --dicomweb --fetch-first; each case is registered as it arrives",
    )
    p.add_argument("workspace")
    p.add_argument("--dicomweb-auth", metavar="FILE", help="JSON credentials (see init)")
    progress_flag(p)
    json_flag(p)


def add_init_parser(sub: Subparsers) -> None:
    p = add_verb(sub, "init", cmd_init, "create a workspace from images or a DICOMweb server")
    p.add_argument("workspace", help="folder of the new workspace")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--images", nargs="+", help="image files, DICOM folders or folders of images"
    )
    source.add_argument(
        "--dicomweb",
        metavar="URL",
        help=(
            "a DICOMweb service root (https://pacs.example.org/dicom-web): the pool is the image "
            "series that match --query, fetched once into the workspace (credentials: "
            "ASSFT_DICOMWEB_TOKEN, or ASSFT_DICOMWEB_USER and ASSFT_DICOMWEB_PASSWORD, or "
            "--dicomweb-auth FILE; never in the URL)"
        ),
    )
    p.add_argument(
        "--query",
        metavar="FILTERS",
        help="QIDO-RS series search, e.g. 'Modality=MR&StudyDescription=brain*'",
    )
    p.add_argument(
        "--series-filter",
        metavar="REGEX",
        help="keep only series whose description matches this regular expression",
    )
    p.add_argument(
        "--dicomweb-auth",
        metavar="FILE",
        help='JSON credentials: {"token": ...} or {"user": ..., "password": ...}',
    )
    p.add_argument(
        "--fetch-first",
        type=int,
        metavar="N",
        help="fetch only the first N series now and leave the others pending for "
        "`assft fetch WS` (a large archive: ranking can start at once)",
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
    progress_flag(p)
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
    workspace = open_workspace(args.workspace)
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
        "--budget", type=int, help=f"cases to select (default {default_of(QueryConfig, 'budget')})"
    )
    p.add_argument(
        "--strategy",
        choices=tuple(STRATEGIES),
        help=f"default {default_of(QueryConfig, 'strategy')}",
    )
    device_flag(p)
    p.add_argument("--seed", type=int, help=f"default {default_of(QueryConfig, 'seed')}")
    p.add_argument(
        "--views",
        type=int,
        help=f"test-time views, 1 to 4 (default {default_of(QueryConfig, 'views')})",
    )
    p.add_argument(
        "--weight",
        type=float,
        help=f"w in S = w q(KG) + (1-w) q(ASD) (default {default_of(QueryConfig, 'weight')})",
    )
    p.add_argument(
        "--lambda-div",
        dest="lambda_div",
        type=float,
        help=f"diversity weight (default {default_of(QueryConfig, 'lambda_div')})",
    )
    p.add_argument(
        "--gap",
        choices=tuple(g.value for g in GapEstimator),
        help=f"DKD knowledge-gap estimator (default {default_of(DKDConfig, 'gap')})",
    )
    p.add_argument("--config", help="a QueryConfig JSON file (flags override it)")
    json_flag(p)
    progress_flag(p)


def cmd_next(args: argparse.Namespace) -> int:
    info = open_workspace(args.workspace).next_case()
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
    workspace = open_workspace(args.workspace)
    stored = workspace.submit_label(args.case, Path(args.label), user=args.user)
    # Another submit of the case (this user's earlier one, or another process's that got the
    # case's lock first) is never overwritten in silence.
    backup = workspace.label_store.replaced.get(args.case)
    if args.json:
        print_json(
            {
                "case": args.case,
                "label": str(stored),
                "status": "labeled",
                "replaced": None if backup is None else str(backup),
            }
        )
    else:
        print(f"Stored the label of {args.case} as {stored}")
        if backup is not None:
            print(f"  it replaced the label stored before, kept as {backup}")
    return 0


def add_submit_parser(sub: Subparsers) -> None:
    p = add_verb(sub, "submit", cmd_submit, "store a case's label (validated; never half-written)")
    p.add_argument("workspace")
    p.add_argument("case")
    p.add_argument("label", help="label image at the case's exact geometry")
    p.add_argument("--user", help="who labeled it (default: the login name)")
    json_flag(p)


def cmd_skip(args: argparse.Namespace) -> int:
    workspace = open_workspace(args.workspace)
    workspace.skip(args.case, user=args.user)
    if args.json:
        print_json({"case": args.case, "status": "skipped"})
    else:
        print(f"Skipped {args.case}")
    return 0


def cmd_structures(args: argparse.Namespace) -> int:
    from assft.workspace.config import parse_structures

    workspace = open_workspace(args.workspace)
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
    from assft.workspace.model_versions import ModelVersions

    workspace = open_workspace(args.workspace)
    summary = workspace.status_summary()
    # A damaged pointer, or a current version that cannot be used, is flagged, not fatal here.
    summary["model_problems"] = ModelVersions(workspace).problems()
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
    workspace = open_workspace(args.workspace)
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

"""The ``assft`` command line: a thin layer over the engine; heavy imports stay inside commands.

Exit codes: 0 done, 2 bad input (one line on stderr naming the file and the problem),
3 cancelled, 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from assft.errors import EXIT_CANCELLED, EXIT_FAILURE, AssftError, BadInputError, CancelledError

STRATEGY_CHOICES = ("attsq", "random", "entropy", "epistemic", "coreset", "clasp", "dkd", "asd")


def _print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")


def _progress(args: argparse.Namespace):
    from assft.progress import Progress

    return Progress(getattr(args, "progress", "auto"))


def parse_label_names(text: str | None) -> dict[int, str] | None:
    """``1:grey matter,2:white matter`` -> {1: "grey matter", 2: "white matter"}."""
    if not text:
        return None
    names: dict[int, str] = {}
    for item in text.split(","):
        value, sep, name = item.partition(":")
        if not sep or not value.strip().isdigit() or not name.strip():
            raise BadInputError(
                f"--label-names item {item!r} is not VALUE:NAME (e.g. 1:liver,2:spleen)"
            )
        if int(value) == 0:
            raise BadInputError("--label-names: 0 is the background and cannot be named")
        names[int(value)] = name.strip()
    return names


def _open(path: str):
    from assft.workspace import Workspace

    return Workspace.open(Path(path))


# Commands ---------------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    from assft.projects import create_workspace

    workspace = create_workspace(
        args.workspace,
        args.images,
        model=args.model,
        label_names=parse_label_names(args.label_names),
        labels_dir=args.labels,
    )
    summary = workspace.status_summary()
    if args.json:
        _print_json({"workspace": str(workspace.root), **summary})
    else:
        print(
            f"Created workspace {workspace.root}: {summary['total']} cases "
            f"({summary['counts'].get('labeled', 0)} labeled), model {args.model}"
        )
    return 0


def _query_config(args: argparse.Namespace, workspace) -> Any:
    from assft.config import QueryConfig

    data: dict[str, Any] = {}
    if args.config:
        data = QueryConfig.from_file(args.config).to_dict()
    settings = workspace.config.settings or {}
    data.setdefault("budget", settings.get("budget", 5))
    data.setdefault("strategy", settings.get("strategy", "attsq"))
    for key in ("budget", "strategy", "seed", "views", "weight", "lambda_div"):
        value = getattr(args, key, None)
        if value is not None:
            data[key] = value
    if args.gap is not None:
        data.setdefault("dkd", {})["gap"] = args.gap
    return QueryConfig.from_dict(data)


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
    from assft.ranking import rank_workspace

    workspace = _open(args.workspace)
    config = _query_config(args, workspace)
    progress = _progress(args)
    with workspace.job_lock("workspace", description=f"rank {config.strategy.value}"):
        document = rank_workspace(workspace, config, device=args.device, progress=progress)
    progress.done(file=document.get("file"), selected=document["selected"])
    if args.json:
        _print_json(document)
    elif progress.mode != "json":
        _print_ranking(document)
    return 0


def next_case(workspace) -> dict[str, Any]:
    """The best-ranked case of the latest ranking that is still unlabeled."""
    ranking = workspace.latest_ranking()
    if ranking is None:
        raise BadInputError("no ranking yet: run 'assft rank' first", workspace.root)
    statuses = {c["case_id"]: c["status"] for c in workspace.registry.cases()}
    remaining = [r for r in ranking["cases"] if statuses.get(r["case"]) == "unlabeled"]
    if not remaining:
        return {"case": None, "ranking": ranking.get("file"), "remaining": 0}
    row = remaining[0]
    return {
        "case": row["case"],
        "image": str(workspace.image_path(row["case"])),
        "rank": row["rank"],
        "selected": row["selected"],
        "score": row["score"],
        "reason": row["reason"],
        "hardest_structure": row.get("hardest_structure"),
        "model_version": ranking["model_version"],
        "ranking": ranking.get("file"),
        "remaining": len(remaining),
    }


def cmd_next(args: argparse.Namespace) -> int:
    info = next_case(_open(args.workspace))
    if args.json:
        _print_json(info)
    elif info["case"] is None:
        print("Every ranked case is labeled or skipped: fine-tune or rank again.")
    else:
        print(f"{info['case']}\t{info['image']}\trank {info['rank']}\t{info['reason']}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    workspace = _open(args.workspace)
    stored = workspace.submit_label(args.case, Path(args.label), user=args.user)
    if args.json:
        _print_json({"case": args.case, "label": str(stored), "status": "labeled"})
    else:
        print(f"Stored the label of {args.case} as {stored}")
    return 0


def cmd_skip(args: argparse.Namespace) -> int:
    workspace = _open(args.workspace)
    workspace.skip(args.case, user=args.user)
    if args.json:
        _print_json({"case": args.case, "status": "skipped"})
    else:
        print(f"Skipped {args.case}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    workspace = _open(args.workspace)
    summary = workspace.status_summary()
    if args.json:
        _print_json({"workspace": str(workspace.root), **summary})
        return 0
    counts = ", ".join(f"{n} {status}" for status, n in summary["counts"].items())
    print(f"Workspace {workspace.root}")
    print(f"  model version: {summary['model_version']}")
    print(f"  cases: {summary['total']} ({counts})")
    print(f"  latest ranking: {summary.get('latest_ranking') or 'none'}")
    job = summary.get("running_job")
    print(f"  running job: {job['description'] + ' (pid ' + str(job['pid']) + ')' if job else 'none'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from assft.demo import print_demo, run_demo

    summary = run_demo(Path(args.out), quick=args.quick, device=args.device, progress=_progress(args))
    if args.json:
        _print_json(summary)
    else:
        print_demo(summary)
        print(f"Summary written to {Path(args.out) / 'demo.json'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from assft.bench import run_benchmark

    result = run_benchmark(args)
    if args.json:
        _print_json(result)
    return 0


# Parser ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="assft",
        description="Rank unlabeled 3D scans by what they would teach a pretrained segmentation "
        "model (ATTSQ: DKD + ASD), collect labels, fine-tune (SSFT).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_text: str):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    def json_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="print one JSON document")

    def progress_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--progress",
            choices=("auto", "json", "bar", "none"),
            default="auto",
            help="json: one JSON object per line on stdout; auto: a bar on a terminal",
        )

    p = add("init", cmd_init, "create a workspace from images")
    p.add_argument("workspace", help="folder of the new workspace")
    p.add_argument("--images", nargs="+", required=True, help="image files, DICOM folders or folders of images")
    p.add_argument("--labels", help="folder of existing labels named like the images")
    p.add_argument("--label-names", help="VALUE:NAME,... (default: the model preset's labels)")
    p.add_argument("--model", default="demo", help="model preset name or preset JSON file")
    json_flag(p)

    p = add("rank", cmd_rank, "rank the unlabeled cases and select a batch to label")
    p.add_argument("workspace")
    p.add_argument("--budget", type=int, help="cases to select (default 5)")
    p.add_argument("--strategy", choices=STRATEGY_CHOICES, help="default attsq")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--seed", type=int)
    p.add_argument("--views", type=int, help="test-time views, 1 to 4 (default 4)")
    p.add_argument("--weight", type=float, help="w in S = w q(KG) + (1-w) q(ASD)")
    p.add_argument("--lambda-div", dest="lambda_div", type=float, help="diversity weight")
    p.add_argument("--gap", choices=("auto", "bn", "prototype"), help="DKD knowledge-gap estimator")
    p.add_argument("--config", help="a QueryConfig JSON file (flags override it)")
    json_flag(p)
    progress_flag(p)

    p = add("next", cmd_next, "the next case to label, from the latest ranking")
    p.add_argument("workspace")
    json_flag(p)

    p = add("submit", cmd_submit, "store a case's label (validated; never half-written)")
    p.add_argument("workspace")
    p.add_argument("case")
    p.add_argument("label", help="label image at the case's exact geometry")
    p.add_argument("--user", help="who labeled it (default: the login name)")
    json_flag(p)

    p = add("skip", cmd_skip, "mark a case skipped")
    p.add_argument("workspace")
    p.add_argument("case")
    p.add_argument("--user")
    json_flag(p)

    p = add("status", cmd_status, "cases per status, model version, running job")
    p.add_argument("workspace")
    json_flag(p)

    p = add("demo", cmd_demo, "the annotation loop end to end on built-in sample scans")
    p.add_argument("--out", default="demo-out", help="folder for the sample data and workspace")
    p.add_argument("--quick", action="store_true", help="a smaller pool (about a minute on 2 cores)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    json_flag(p)
    progress_flag(p)

    p = add("bench", cmd_bench, "benchmarks (JSON + BENCHMARKS.md)")
    p.add_argument("name", choices=("speed",))
    p.add_argument("--out", default="bench-out", help="folder for the JSON results")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--pools", default="10,40", help="pool sizes for the memory figures")
    p.add_argument("--size", type=int, default=64, help="edge of the synthetic volumes (voxels)")
    p.add_argument("--cases", type=int, default=6, help="pool size of the timing runs")
    p.add_argument("--markdown", default="BENCHMARKS.md", help="file to update ('' to skip)")
    json_flag(p)
    return parser


def _raise_cancelled(signum: int, frame: Any) -> None:
    raise CancelledError(f"cancelled by signal {signal.Signals(signum).name}")


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"assft: warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    import warnings

    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.showwarning = _one_line_warning
    signal.signal(signal.SIGTERM, _raise_cancelled)
    json_lines = getattr(args, "progress", None) == "json"
    try:
        return int(args.handler(args) or 0)
    except (CancelledError, KeyboardInterrupt) as error:
        message = str(error) or "cancelled"
        if json_lines:
            print(json.dumps({"event": "error", "message": message, "cancelled": True}), flush=True)
        print(f"assft: cancelled: {message}", file=sys.stderr)
        return EXIT_CANCELLED
    except AssftError as error:
        if json_lines:
            print(json.dumps({"event": "error", "message": str(error)}), flush=True)
        print(f"assft: error: {error}", file=sys.stderr)
        return error.exit_code
    except Exception as error:  # noqa: BLE001 - the last line of defence prints and exits 1
        if json_lines:
            print(json.dumps({"event": "error", "message": f"{type(error).__name__}: {error}"}), flush=True)
        print(f"assft: internal error: {type(error).__name__}: {error}", file=sys.stderr)
        if "ASSFT_DEBUG" in __import__("os").environ:
            raise
        return EXIT_FAILURE

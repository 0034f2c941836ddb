"""``assft bench``: runs one benchmark and writes its JSON and its section of BENCHMARKS.md.

The benchmarks themselves live in :mod:`assft.apps.speed_bench` and
:mod:`assft.apps.label_efficiency`; this module only dispatches and records.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any

from assft.apps import label_efficiency_report
from assft.apps import speed_bench as speed
from assft.apps.label_efficiency import run_label_efficiency
from assft.apps.label_efficiency_grid import ABLATIONS, MODES, STRATEGIES
from assft.apps.outputs import markdown_target, output_folder, update_markdown
from assft.apps.sites import MIXED, parse_sites
from assft.errors import BadInputError
from assft.runtime.progress import Progress


def _recorded_command(argv: list[str]) -> str:
    """The command line written next to the results, without the flags that do not change them
    (``--progress``, ``--json``)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--progress":
            skip = True
        elif not (arg.startswith("--progress=") or arg == "--json"):
            kept.append(arg)
    # Quoted as a shell would need it: a JSON argument (--candidate-recipe) pastes back as is.
    return "assft " + shlex.join(kept) if kept else "assft bench"


FOLDER_FLAGS = ("images", "labels", "label_names", "test_every")
"""The flags of ``assft bench label-efficiency`` on a lab's own labeled scans."""


def markdown_file(args: argparse.Namespace) -> Path | None:
    """Where the benchmark's section goes: ``--markdown`` ('' for nowhere); by default the
    project's BENCHMARKS.md, but a lab's own scans (``--images``) never overwrite its section:
    their section goes to ``OUT/label-efficiency.md``. Checked before the benchmark runs
    (:func:`~assft.apps.outputs.markdown_target`)."""
    if args.markdown is not None:
        return markdown_target(args.markdown) if args.markdown else None
    if getattr(args, "images", None):
        return markdown_target(Path(args.out) / "label-efficiency.md", folder_made_later=True)
    return markdown_target("BENCHMARKS.md")


def _outputs(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """The results folder (created) and the Markdown file, both checked before any work: an
    explicit ``--markdown`` before the folder is made."""
    explicit = markdown_file(args) if args.markdown is not None else None
    out = output_folder(args.out)
    return out, explicit if args.markdown is not None else markdown_file(args)


def _run_archive_scale(args: argparse.Namespace, command: str) -> dict[str, Any]:
    from assft.apps import archive_scale_bench as scale

    pools = [int(p) for p in str(args.pools).split(",") if p.strip()]
    processes = [int(p) for p in str(args.processes).split(",") if p.strip()]
    if not pools or not processes or min(pools) < 3 or min(processes) < 1:
        raise BadInputError("--pools needs sizes of at least 3 and --processes counts of 1 or more")
    out, target = _outputs(args)
    document = scale.run_archive_scale(
        out,
        pools=pools,
        processes=processes,
        size=args.size,
        views=args.views or 2,
        device=args.device,
    )
    markdown = scale.archive_scale_markdown(document, command)
    if target:
        update_markdown(target, markdown, scale.MARK_BEGIN, scale.MARK_END)
    if not args.json:
        print(markdown)
    return document


def run_benchmark(
    args: argparse.Namespace, *, label_names: dict[int, str] | None = None
) -> dict[str, Any]:
    """Entry point of ``assft bench``; ``label_names`` is ``--label-names`` parsed."""
    command = _recorded_command(sys.argv[1:])
    if args.name == "label-efficiency":
        return _run_label_efficiency(args, command, label_names)
    if args.name == "partial-labels":
        return _run_partial_labels(args, command)
    if args.name == "archive-scale":
        return _run_archive_scale(args, command)
    given = [f"--{name.replace('_', '-')}" for name in FOLDER_FLAGS if getattr(args, name, None)]
    if given:
        raise BadInputError(f"{', '.join(given)}: only for assft bench label-efficiency")
    pools = [int(p) for p in str(args.pools).split(",") if p.strip()]
    out, target = _outputs(args)
    document = speed.run_speed(
        out,
        device=args.device,
        size=args.size,
        cases=args.cases,
        pools=pools,
        train_steps=args.train_steps,
        model=args.model,
    )
    if target:
        update_markdown(
            target,
            speed.speed_markdown(document, command),
            speed.MARK_BEGIN,
            speed.MARK_END,
        )
    if not args.json:
        print(speed.speed_markdown(document, command))
    return document


def _numbers(flag: str, text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(item) for item in text.split(","))
    except ValueError:
        raise BadInputError(
            f"{flag} {text!r} is not a comma-separated list of whole numbers"
        ) from None
    if not values or min(values) < (0 if flag == "--seeds" else 1):
        raise BadInputError(f"{flag} {text!r}: give positive whole numbers, e.g. 2,4,8")
    return values


def _modes(text: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise BadInputError(f"--modes {text!r}: the modes are {', '.join(MODES)} (comma-separated)")
    return modes


def _ablations(args: argparse.Namespace) -> tuple[str, ...]:
    """``--ablations`` (default all) or none with ``--no-ablations``; unknown names refused."""
    if args.no_ablations:
        return ()
    if args.ablations is None:
        return tuple(ABLATIONS)
    names = tuple(a.strip() for a in args.ablations.split(",") if a.strip())
    unknown = [a for a in names if a not in ABLATIONS]
    if unknown:
        raise BadInputError(
            f"--ablations {args.ablations!r}: unknown {', '.join(unknown)}; the ablations are "
            f"{', '.join(ABLATIONS)}"
        )
    return names


def _candidate(text: str | None) -> dict[str, Any] | None:
    """``--candidate-recipe``: a JSON object of fine-tuning settings (None when not given)."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise BadInputError(f"--candidate-recipe is not JSON: {error.msg} ({text!r})") from None
    except RecursionError:
        raise BadInputError("--candidate-recipe is nested too deeply to be a recipe") from None
    if not isinstance(value, dict) or not value:
        raise BadInputError(
            f"--candidate-recipe must be a JSON object of fine-tuning settings, got {text!r}"
        )
    return value


def _check_run_flags(args: argparse.Namespace) -> None:
    """The run-size flags of label-efficiency, checked before anything is created."""
    from assft.validation import MAX_STEPS

    if args.iterations is not None and not 1 <= args.iterations <= MAX_STEPS:
        raise BadInputError(f"--iterations must be from 1 to {MAX_STEPS}, got {args.iterations}")
    if args.max_minutes is not None and not (
        math.isfinite(args.max_minutes) and args.max_minutes > 0
    ):
        raise BadInputError(f"--max-minutes must be a positive number, got {args.max_minutes}")
    if not 1 <= args.rounds <= 100:
        raise BadInputError(f"--rounds must be from 1 to 100, got {args.rounds}")
    if not 1 <= args.views <= 4:  # ranking and fine-tuning take at most 4 views
        raise BadInputError(f"--views must be from 1 to 4, got {args.views}")


def _run_label_efficiency(
    args: argparse.Namespace, command: str, label_names: dict[int, str] | None
) -> dict[str, Any]:
    own = bool(args.images or args.labels)
    if own and not (args.images and args.labels):
        raise BadInputError(
            "--images and --labels go together: a folder of scans and one of their labels"
        )
    if not own and (label_names or args.test_every is not None):
        given = "--label-names" if label_names else "--test-every"
        raise BadInputError(f"{given} applies to a lab's own scans: give --images and --labels")
    if own and args.n is not None:
        raise BadInputError("--n sets the number of sample scans; with --images every scan counts")
    _check_run_flags(args)
    test_every = 4 if args.test_every is None else args.test_every
    if test_every < 2:
        raise BadInputError(
            f"--test-every must be 2 or more (every K-th case is a test scan), got {test_every}"
        )
    out, target = _outputs(args)
    document = run_label_efficiency(
        out,
        n=40 if args.n is None else args.n,
        budgets=_numbers("--budgets", args.budgets),
        seeds=_numbers("--seeds", args.seeds),
        iterations=args.iterations,
        views=args.views,
        device=args.device,
        ablations=_ablations(args),
        max_minutes=args.max_minutes,
        marginal_gains=args.marginal_gains,
        transductive=not args.no_transductive,
        strategies=tuple(args.strategies.split(",")) if args.strategies else STRATEGIES,
        model=args.model,
        images=Path(args.images) if own else None,
        labels=Path(args.labels) if own else None,
        label_names=label_names,
        test_every=test_every,
        site=parse_sites(args.site)[0] if not own else MIXED,
        modes=_modes(args.modes),
        recipe_ablations=args.recipe_ablations,
        candidate=_candidate(args.candidate_recipe),
        rounds=args.rounds,
        ceiling=not args.no_ceiling,
        progress=Progress(args.progress),
    )
    section = label_efficiency_report.markdown(document, command)
    if target:
        setup = document["setup"]
        update_markdown(
            target,
            section,
            *label_efficiency_report.markers(
                setup.get("site"), setup.get("rounds", 1), setup.get("model", "demo")
            ),
        )
    written = {
        "json": str(out / "label-efficiency.json"),
        "runs": str(out / "runs.jsonl"),
        "plot": str(out / "dice-vs-budget.svg"),
        "markdown": str(target) if target else None,
    }
    if not args.json:
        print(section)
        print()
        print(
            f"Results: {written['json']} (every run: {written['runs']}); plot: {written['plot']}"
            + (f"; this summary: {target}" if target else "")
        )
    return {**document, "written": written}


def _run_partial_labels(args: argparse.Namespace, command: str) -> dict[str, Any]:
    from assft.apps import partial_labels_bench as partial

    budgets = _numbers("--budgets", args.budgets)
    if len(budgets) != 1:
        raise BadInputError(f"--budgets: partial-labels takes one budget, got {args.budgets}")
    out, target = _outputs(args)
    document = partial.run_partial_labels(
        out,
        site=parse_sites(args.site)[0],
        n=args.n or 24,
        seeds=_numbers("--seeds", args.seeds),
        budget=budgets[0],
        structures=args.structures,
        model=args.model,
        device=args.device,
        views=args.views,
        iterations=args.iterations,
        progress=Progress(args.progress),
        candidate=_candidate(args.candidate_recipe),
    )
    text = partial.markdown(document, command)
    if target:
        update_markdown(target, text, partial.MARK_BEGIN, partial.MARK_END)
    if not args.json:
        print(text)
    return document

"""``assft bench``: runs one benchmark and writes its JSON and its section of BENCHMARKS.md.

The benchmarks themselves live in :mod:`assft.apps.speed_bench` and
:mod:`assft.apps.label_efficiency`; this module only dispatches and records.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from assft.apps import label_efficiency as le
from assft.apps import speed_bench as speed
from assft.runtime.progress import Progress


def update_markdown(path: Path, section: str, begin: str, end: str) -> None:
    """Replace (or append) one benchmark's section of BENCHMARKS.md, between its markers."""
    # UTF-8 whatever the locale: the tables hold non-ASCII signs (a C locale would refuse them).
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")


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
    return "assft " + " ".join(kept) if kept else "assft bench"


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Entry point of ``assft bench``."""
    command = _recorded_command(sys.argv[1:])
    if args.name == "label-efficiency":
        return _run_label_efficiency(args, command)
    pools = [int(p) for p in str(args.pools).split(",") if p.strip()]
    document = speed.run_speed(
        Path(args.out),
        device=args.device,
        size=args.size,
        cases=args.cases,
        pools=pools,
        train_steps=args.train_steps,
        model=args.model,
    )
    if args.markdown:
        update_markdown(
            Path(args.markdown),
            speed.speed_markdown(document, command),
            speed.MARK_BEGIN,
            speed.MARK_END,
        )
    if not args.json:
        print(speed.speed_markdown(document, command))
    return document


def _run_label_efficiency(args: argparse.Namespace, command: str) -> dict[str, Any]:
    document = le.run_label_efficiency(
        Path(args.out),
        n=args.n,
        budgets=tuple(int(b) for b in args.budgets.split(",")),
        seeds=tuple(int(b) for b in args.seeds.split(",")),
        iterations=args.iterations,
        views=args.views,
        device=args.device,
        ablations=not args.no_ablations,
        strategies=tuple(args.strategies.split(",")) if args.strategies else le.STRATEGIES,
        model=args.model,
        progress=Progress(args.progress),
    )
    section = le.markdown(document, command)
    if args.markdown:
        update_markdown(Path(args.markdown), section, le.MARK_BEGIN, le.MARK_END)
    if not args.json:
        print(section)
    return document

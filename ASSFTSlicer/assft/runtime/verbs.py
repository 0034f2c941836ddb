"""How a command-line verb is declared: its parser, the flags many verbs share, and how it
prints. Used by the engine's parser (``assft/cli/``) and by the verbs that other packages
register through the ``assft.commands`` entry point group (``assft/apps/commands.py``); the
standard library and the runtime's progress only, so that ``assft --help`` starts at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from assft.errors import BadInputError
from assft.runtime import distributed
from assft.runtime.progress import Progress

Subparsers = argparse._SubParsersAction  # what each add_<verb>_parser registers into


def add_verb(
    sub: Subparsers,
    name: str,
    handler: Callable[[argparse.Namespace], int],
    help_text: str,
    **extra: Any,
) -> argparse.ArgumentParser:
    """A verb's parser, whose ``handler`` runs it (``main`` calls ``args.handler(args)``)."""
    p: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, description=help_text, **extra
    )
    p.set_defaults(handler=handler)
    return p


def json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON document")


def device_flag(p: argparse.ArgumentParser, default: str = "auto", **extra: Any) -> None:
    p.add_argument("--device", default=default, choices=("auto", "cpu", "cuda"), **extra)


def progress_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--progress",
        choices=("auto", "json", "bar", "none"),
        default="auto",
        help="json: one JSON object per line on stdout; auto: a bar on a terminal",
    )


def print_json(document: Any, *, one_line: bool = False) -> None:
    """One JSON document on stdout (on one line after JSON-lines progress, for parsers)."""
    sys.stdout.write(json.dumps(document, indent=None if one_line else 2, default=str) + "\n")


def progress_of(args: argparse.Namespace) -> Progress:
    """The progress a verb reports through (``--progress``); under torchrun only rank 0 reports."""
    return Progress(getattr(args, "progress", "auto") if distributed.is_main() else "none")


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
        if int(value) in names:
            raise BadInputError(
                f"--label-names names {int(value)} twice ({names[int(value)]!r} and "
                f"{name.strip()!r}): one name per label value"
            )
        names[int(value)] = name.strip()
    return names

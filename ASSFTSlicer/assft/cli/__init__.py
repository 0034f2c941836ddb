"""The ``assft`` command line: a thin layer over the engine; heavy imports stay inside commands.

Each verb has a ``cmd_<verb>`` function that runs it and, next to it, an ``add_<verb>_parser``
function that registers its flags, in a module per group of verbs (``cases.py``, ``training.py``,
``models.py``); :func:`build_parser` calls them in help order, then the verbs that packages
above the engine register (``assft.commands`` entry points: the apps, ``assft web``). Settings
resolve in :func:`assft.settings.resolve_config`: flags, then ``--config``, then the
workspace's settings, then the config dataclass's defaults (flags default to None).

Exit codes: 0 done, 2 bad input (one line on stderr naming the file and the problem),
3 cancelled, 1 anything else.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import signal
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

# Only light modules at the top (the errors, the runtime helpers, the config dataclasses and the
# strategy registry: numpy, never torch). Each cmd_* function imports the machinery of its verb
# itself, so that `assft --help`, a bad flag and the light verbs answer at once and the CLI starts
# without torch (Testing/test_cli.py checks it).
from assft.cli import cases, models, training
from assft.errors import (
    EXIT_CANCELLED,
    EXIT_FAILURE,
    AssftError,
    BadInputError,
    CancelledError,
    storage_error,
)
from assft.runtime import cancellation, distributed
from assft.runtime.progress import ProgressEvent
from assft.runtime.verbs import Subparsers

# Parser ----------------------------------------------------------------------------------------


VERB_PARSERS: tuple[Callable[[Subparsers], None], ...] = (
    cases.add_init_parser,
    cases.add_fetch_parser,
    cases.add_rank_parser,
    cases.add_next_parser,
    cases.add_submit_parser,
    cases.add_skip_parser,
    cases.add_status_parser,
    cases.add_structures_parser,
    cases.add_hold_out_parser,
    training.add_finetune_parser,
    training.add_jobs_parser,
    training.add_cancel_parser,
    models.add_models_parser,
    models.add_model_info_parser,
    models.add_rollback_parser,
    models.add_export_parser,
    models.add_predict_parser,
    models.add_evaluate_parser,
)
"""Every verb's parser, in the order ``assft --help`` lists them."""


DEMO_EXTRA = "the full engine package: pip install 'assft[demo]'"

VERBS_OF_EXTRAS: dict[str, tuple[str, str]] = {
    "demo": ("assft.apps.commands:add_demo_parser", DEMO_EXTRA),
    "bench": ("assft.apps.commands:add_bench_parser", DEMO_EXTRA),
    "sample-data": ("assft.apps.commands:add_sample_data_parser", DEMO_EXTRA),
    "pretrain-demo": ("assft.apps.commands:add_pretrain_demo_parser", DEMO_EXTRA),
    "pretrain-foundation": ("assft.apps.commands:add_pretrain_foundation_parser", DEMO_EXTRA),
    "web": ("assft_web.command:register", "the web front end: pip install 'assft[web]'"),
}
"""The verbs that packages above the engine register (``assft.commands`` entry points in
``pyproject.toml``): where each is found when no installed metadata names it (the sources on
``PYTHONPATH``, Slicer's *Additional module paths*), and what to install where it is absent (the
Slicer extension ships the engine alone)."""


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
    for verb, (target, needed) in VERBS_OF_EXTRAS.items():
        if verb not in sub.choices:
            loaded = _load_parser(verb, target)
            if loaded is None:
                _add_absent_verb(sub, verb, needed)
            else:
                loaded(sub)
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
        loaded = _load_parser(entry.name, entry.value)
        if loaded is not None:
            parsers.append(loaded)
    return parsers


def _load_parser(verb: str, target: str) -> Callable[[Any], None] | None:
    """The parser function ``module:attribute``, or None when its package is not installed."""
    module, _, attribute = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attribute)
    except Exception as error:  # noqa: BLE001 - a broken front end never breaks the CLI
        missing = getattr(error, "name", None) if isinstance(error, ModuleNotFoundError) else None
        if not (missing and f"{module}.".startswith(f"{missing}.")):
            print(f"assft: warning: command {verb!r} unavailable: {error}", file=sys.stderr)
        return None


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


EXIT_BROKEN_PIPE = 141
"""Exit code when the output's reader closed the pipe early (128 + SIGPIPE, as shell tools)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "absent_verb", False):  # an absent verb's flags are unknown
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    warnings.showwarning = _one_line_warning
    # A path the output's encoding cannot hold (a Windows code page, an ASCII locale) is written
    # escaped rather than ending the command in an error.
    reconfigure = getattr(sys.stdout, "reconfigure", None)  # absent on a replaced stdout
    if reconfigure is not None:
        with contextlib.suppress(ValueError):
            reconfigure(errors="backslashreplace")
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
    except BrokenPipeError:
        # The reader went away (`assft status WS | head -1`): say nothing more, exit as a tool
        # ended by SIGPIPE does (128 + 13), and keep Python from complaining at shutdown.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
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
        if argv is None:  # the process's own command line (not a call from a test or a tool)
            # The work is done or stopped. Python puts the default SIGTERM action back as it
            # shuts down, and unloading torch takes a second or more: a cancel arriving then
            # would kill a process whose work is saved (exit 143 instead of 0 or 3).
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, signal.SIG_IGN)

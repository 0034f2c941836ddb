"""``assft web WS``: serve the annotation loop of one workspace to a browser.

Registered with the engine's command line through the ``assft.commands`` entry point; trame and
trame-slicer are imported only when the command runs, so the engine's other commands work
without the ``web`` extra.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

WEB_EXTRA = "pip install 'assft[web]'"


def register(commands) -> None:
    """Add ``web`` to the engine's subcommands (an ``argparse`` subparsers object)."""
    p = commands.add_parser(
        "web",
        help="annotate in a browser: the worklist, the segment editor and fine-tuning of one "
        "workspace, served by trame-slicer",
    )
    p.add_argument("workspace", help="the workspace folder")
    p.add_argument("--port", type=int, default=8080, help="port (0: any free one; default 8080)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to listen on (default 127.0.0.1: this machine only)",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("ASSFT_WEB_TOKEN"),
        help="the token the URL must carry (default: $ASSFT_WEB_TOKEN, else a random one)",
    )
    p.add_argument(
        "--no-token",
        dest="no_token",
        action="store_true",
        help="serve without a token (refused unless --host is loopback)",
    )
    p.add_argument(
        "--public-url",
        dest="public_url",
        help="the https:// address a TLS reverse proxy on this machine serves the page at "
        "(README: 'Behind a TLS reverse proxy'); its name and origin are accepted too",
    )
    p.add_argument(
        "--device", default="auto", help="auto, cpu or cuda (ranking, prediction, fine-tuning)"
    )
    p.add_argument("--budget", type=int, default=4, help="cases each ranking selects")
    p.add_argument(
        "--finetune-config",
        dest="finetune_config",
        help="JSON file of fine-tuning settings for every job started from the page (as "
        "'assft finetune --config')",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from assft.errors import BadInputError
    from assft_web.access import AccessPolicy, new_token

    if not 0 <= args.port <= 65535:
        raise BadInputError(f"--port must be from 0 (any free port) to 65535, got {args.port}")
    try:
        policy = AccessPolicy(
            args.host,
            None if args.no_token else (args.token or new_token()),
            public_url=args.public_url,
        )
    except ValueError as error:
        raise BadInputError(str(error)) from None
    warning = policy.plain_http_warning()
    if warning:
        print(warning, file=sys.stderr, flush=True)
    from assft.workspace.config import CONFIG_FILE_NAME

    workspace = Path(args.workspace).expanduser().resolve()
    if not (workspace / CONFIG_FILE_NAME).is_file():
        raise BadInputError(f"{workspace}: not a workspace (no {CONFIG_FILE_NAME})")
    finetune = None
    if args.finetune_config:
        from assft.settings import read_config_file
        from assft.training.config import FinetuneConfig

        finetune = read_config_file(args.finetune_config)
        try:
            FinetuneConfig.from_dict(finetune)  # refused now, not at the first fine-tuning
        except BadInputError as error:
            raise BadInputError(str(error), args.finetune_config) from None
    try:
        import trame_slicer  # noqa: F401
    except ImportError:
        raise BadInputError(f"assft web needs trame-slicer: {WEB_EXTRA}") from None
    from assft.runtime.portable import prefer_offscreen_rendering

    prefer_offscreen_rendering()
    from assft_web.server import serve

    try:
        return serve(
            workspace,
            policy,
            port=args.port,
            device=args.device,
            budget=args.budget,
            finetune_config=finetune,
        )
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise
        raise BadInputError(
            f"--port {args.port}: the port is in use on {args.host} (another server?); choose "
            "another port, or --port 0 for any free one"
        ) from None

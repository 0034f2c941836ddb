"""Verbs on fine-tuning: ``finetune`` (in the foreground or detached), ``jobs`` and ``cancel``.
Each ``cmd_<verb>`` imports its machinery itself (``assft --help`` starts without torch)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from assft.cli.common import PRECEDENCE, default_of, open_workspace
from assft.runtime import distributed
from assft.runtime.verbs import (
    Subparsers,
    add_verb,
    device_flag,
    json_flag,
    print_json,
    progress_flag,
    progress_of,
)
from assft.training.config import FinetuneConfig, FinetuneMode

if TYPE_CHECKING:
    from assft.workspace import Workspace


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
    workspace = open_workspace(args.workspace)
    config = _finetune_config(args, workspace)
    if args.detach:
        from assft.workspace.jobs import launch_detached_job
        from assft.workspace.model_versions import ModelVersions

        # A damaged current model is refused here, before anything is launched or written (the
        # job would refuse it too, from its log).
        versions = ModelVersions(workspace)
        versions.load_state(versions.current())
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
        help=f"default {default_of(FinetuneConfig, 'mode')}",
    )
    p.add_argument(
        "--iterations",
        type=int,
        help=f"steps of the supervised stage (default {default_of(FinetuneConfig, 'iterations')})",
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
        help=f"patches per step (default {default_of(FinetuneConfig, 'batch_size')})",
    )
    p.add_argument(
        "--lr",
        type=float,
        help=f"learning rate of the decoder and head (default {default_of(FinetuneConfig, 'lr')})",
    )
    p.add_argument("--seed", type=int, help=f"default {default_of(FinetuneConfig, 'seed')}")
    device_flag(p)
    p.add_argument("--config", help="a FinetuneConfig JSON file (flags override it)")
    # A job's recorded command (and the speed benchmark) gives the resolved config as JSON text.
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

    jobs = JobStore(open_workspace(args.workspace)).list()
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

    info = cancel(open_workspace(args.workspace), args.job, timeout=args.timeout)
    print_json(info) if args.json else print(f"Job {info['id']}: {info['state']}")
    return 0


def add_cancel_parser(sub: Subparsers) -> None:
    p = add_verb(sub, "cancel", cmd_cancel, "stop a running job cleanly (its work is discarded)")
    p.add_argument("workspace")
    p.add_argument("job", nargs="?", help="job id (default: the running one)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds before it is killed")
    json_flag(p)

"""The apps' verbs: ``assft demo``, ``bench``, ``sample-data``, ``pretrain-demo`` and
``pretrain-foundation``.

Each ``add_<verb>_parser`` is registered with the engine's command line through the
``assft.commands`` entry point group (``pyproject.toml``), as ``assft web`` is, so the engine's
parser never imports the apps: the Slicer extension ships the engine without ``apps/``, and there
``assft/cli/`` answers these verbs with the ``pip install 'assft[demo]'`` hint. A verb's
machinery is imported inside its ``cmd_`` function, so that ``assft --help`` starts without torch.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from assft.apps.sites import SITE_NAMES, parse_sites
from assft.errors import BadInputError
from assft.query.strategies import STRATEGIES
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


def cmd_demo(args: argparse.Namespace) -> int:
    from assft.apps.demo import print_demo, run_demo

    summary = run_demo(
        Path(args.out), quick=args.quick, device=args.device, progress=progress_of(args)
    )
    if args.json:
        print_json(summary)
    else:
        print_demo(summary)
        print(f"Report: {Path(args.out) / 'report.html'}; summary: {Path(args.out) / 'demo.json'}")
    return 0


def add_demo_parser(sub: Subparsers) -> None:
    p = add_verb(sub, "demo", cmd_demo, "the annotation loop end to end on built-in sample scans")
    p.add_argument("--out", default="demo-out", help="folder for the sample data and workspace")
    p.add_argument("--quick", action="store_true", help="a smaller pool (a few minutes on 2 cores)")
    device_flag(p)
    json_flag(p)
    progress_flag(p)


def cmd_bench(args: argparse.Namespace) -> int:
    from assft.apps.bench import run_benchmark

    result = run_benchmark(args, label_names=parse_label_names(args.label_names))
    if args.json:
        print_json(result)
    return 0


def add_bench_parser(sub: Subparsers) -> None:
    p = add_verb(sub, "bench", cmd_bench, "benchmarks (JSON + BENCHMARKS.md)")
    p.add_argument("name", choices=("speed", "label-efficiency", "partial-labels", "archive-scale"))
    p.add_argument("--out", default="bench-out", help="folder for the JSON results")
    device_flag(p)
    p.add_argument(
        "--pools",
        default="10,40",
        help="pool sizes for the memory figures (archive-scale: the pools ranked)",
    )
    p.add_argument(
        "--processes",
        default="1,2",
        help="archive-scale: the process counts compared (torchrun past one)",
    )
    p.add_argument("--size", type=int, default=64, help="edge of the synthetic volumes (voxels)")
    p.add_argument("--cases", type=int, default=6, help="pool size of the timing runs")
    p.add_argument(
        "--train-steps",
        dest="train_steps",
        type=int,
        default=8,
        help="fine-tuning steps timed per loop",
    )
    p.add_argument(
        "--model",
        default="demo",
        help="model preset, preset file, bundle:PATH or nnunet:PATH to measure",
    )
    p.add_argument(
        "--n", type=int, help="label-efficiency: sample target scans, pool + test (default 40)"
    )
    p.add_argument(
        "--images",
        help="label-efficiency on a lab's own scans: folder of images (NIfTI, NRRD, MHA files or "
        "DICOM series folders) instead of sample data",
    )
    p.add_argument(
        "--labels",
        help="with --images: folder of their labels, matched to the images by file name "
        "(sub-01.nrrd labels sub-01.nii.gz)",
    )
    p.add_argument(
        "--label-names",
        dest="label_names",
        help="with --images: VALUE:NAME,... (default: the model preset's labels)",
    )
    p.add_argument(
        "--test-every",
        dest="test_every",
        type=int,
        help="with --images: every K-th case (sorted by name) is a test scan (default 4)",
    )
    p.add_argument("--budgets", default="2,4,8", help="label-efficiency: labeled cases per run")
    p.add_argument("--seeds", default="0,1,2", help="label-efficiency: seeds")
    p.add_argument(
        "--iterations",
        type=int,
        help="label-efficiency: steps per stage (default: from the labeled set, the recipe's rule)",
    )
    p.add_argument(
        "--site",
        default="mixed",
        help="label-efficiency: the sample-data site or lab archive (t2, lowfield, flair, mixed, "
        "hospital, multicentre; default mixed)",
    )
    p.add_argument(
        "--modes",
        default="selective,none,all",
        help="label-efficiency: fine-tuning modes (comma-separated; default selective,none,all)",
    )
    p.add_argument(
        "--recipe-ablations",
        dest="recipe_ablations",
        action="store_true",
        help="label-efficiency: also change one recipe choice at a time (BatchNorm, flips, "
        "intensity augmentation, schedule, best checkpoint)",
    )
    p.add_argument(
        "--candidate-recipe",
        dest="candidate_recipe",
        help="label-efficiency: a JSON object of fine-tuning settings; every run of the grid "
        "(each strategy and mode, the ceiling; not the ablations) runs again with them (e.g. "
        '\'{"schedule": "constant"}\'); partial-labels: a fourth way, the labeled structures '
        "only with these settings",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="label-efficiency: rounds per run (label B, fine-tune, rank again with the current "
        "model); the ceiling stays one round (default 1)",
    )
    p.add_argument(
        "--no-ceiling",
        dest="no_ceiling",
        action="store_true",
        help="label-efficiency: leave out the ceiling (every pool scan labeled)",
    )
    p.add_argument("--views", type=int, default=2, help="label-efficiency: test-time views")
    p.add_argument(
        "--structures",
        default="cerebrospinal fluid",
        help="partial-labels: the structures the clinician labels (names or values; default "
        "the demo model's weakest, cerebrospinal fluid)",
    )
    p.add_argument(
        "--no-ablations",
        dest="no_ablations",
        action="store_true",
        help="label-efficiency: no ablation of ATTSQ (same as --ablations '')",
    )
    p.add_argument(
        "--ablations",
        help="label-efficiency: the ablations of ATTSQ + selective SSFT to run (comma-separated: "
        "gap=bn,gap=prototype,no-diversity,diversity=rank,diversity=embedding,anchor=off;"
        " default all)",
    )
    p.add_argument(
        "--no-transductive",
        dest="no_transductive",
        action="store_true",
        help="label-efficiency: skip each run's Dice on the pool's unlabeled scans",
    )
    p.add_argument(
        "--marginal-gains",
        dest="marginal_gains",
        action="store_true",
        help="label-efficiency: also label each pool scan alone (budget 1, seed 0) and check "
        "each per-case signal against its gain",
    )
    p.add_argument(
        "--max-minutes",
        dest="max_minutes",
        type=float,
        help="label-efficiency: start no run after this many minutes; the same command "
        "continues where it stopped (runs are kept as they finish)",
    )
    p.add_argument(
        "--strategies",
        help=f"label-efficiency: only these strategies (comma-separated: {', '.join(STRATEGIES)})",
    )
    progress_flag(p)
    p.add_argument(
        "--markdown",
        help="file whose section to update ('' to skip; default BENCHMARKS.md, "
        "with --images OUT/label-efficiency.md)",
    )
    json_flag(p)


def cmd_sample_data(args: argparse.Namespace) -> int:
    if not (math.isfinite(args.spacing) and 0.5 <= args.spacing <= 24.0):
        raise BadInputError(f"--spacing must be from 0.5 to 24 mm, got {args.spacing}")
    sites = parse_sites(args.sites)  # refuses an unknown site before torch is imported
    from assft.apps.outputs import output_folder
    from assft.apps.sampledata import write_sample_data

    manifest = write_sample_data(
        output_folder(args.out),
        args.n,
        n_source=args.n_source,
        sites=sites,
        seed=args.seed,
        spacing=args.spacing,
        brain_mask=args.brain_mask,
        progress=progress_of(args),
    )
    if args.json:
        print_json({k: v for k, v in manifest.items() if k != "cases"})
    else:
        shape = "x".join(str(v) for v in manifest["shape"])
        written = ", ".join(
            f"{name} {entry['n']} ({entry['folder']}/)" for name, entry in manifest["sites"].items()
        )
        print(
            f"Wrote {manifest['source']['n']} source cases and target sites: {written or 'none'} "
            f"({shape} at {manifest['spacing_mm']:g} mm) to {args.out}; see manifest.json"
        )
    return 0


def add_sample_data_parser(sub: Subparsers) -> None:
    p = add_verb(
        sub,
        "sample-data",
        cmd_sample_data,
        "write sample brain MRI with ground truth (MNI152 anatomy): a source domain and named "
        "target sites",
    )
    p.add_argument("out", help="output folder (source/, sites/, target/, manifest.json)")
    p.add_argument("--n", type=int, default=40, help="cases per target site (default 40)")
    p.add_argument(
        "--n-source", dest="n_source", type=int, default=24, help="source cases (default 24)"
    )
    p.add_argument(
        "--sites",
        default=",".join(SITE_NAMES),
        help=f"target sites, comma-separated (default all: {','.join(SITE_NAMES)}; "
        "mixed is the heterogeneous pool, written to target/; hospital and multicentre are lab "
        "archives, mixes of acquisitions)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--spacing",
        type=float,
        default=3.0,
        help="voxel size in mm over a 192 mm field of view (default 3: 64^3)",
    )
    p.add_argument(
        "--brain-mask",
        dest="brain_mask",
        action="store_true",
        help="label 1 = brain (for the deepbet preset) instead of GM/WM/CSF",
    )
    json_flag(p)
    progress_flag(p)


def cmd_pretrain_demo(args: argparse.Namespace) -> int:
    from assft.apps.outputs import output_folder
    from assft.apps.pretrain import PretrainConfig, pretrain_demo, print_summary
    from assft.settings import flag_of
    from assft.validation import ConfigFieldError

    flags = ("seed", "data_seed", "iterations", "n_source", "n_target", "n_site")
    given = {name: getattr(args, name) for name in flags if getattr(args, name) is not None}
    if args.channels:
        try:
            given["channels"] = tuple(int(c) for c in args.channels.split(","))
        except ValueError:
            raise BadInputError(
                f"--channels must be whole numbers separated by commas, got {args.channels!r}"
            ) from None
        if args.out is None:
            raise BadInputError(
                "--channels needs --out: the shipped weights are for the demo preset's channels"
            )
    try:
        config = PretrainConfig(**given)
    except ConfigFieldError as error:  # each of these fields is set by its flag
        raise error.named(flag_of(error.field)) from None
    argv = ["pretrain-demo"]
    for name in flags:  # the whole recipe, so the manifest's command rebuilds these weights
        argv += [f"--{name.replace('_', '-')}", str(getattr(config, name))]
    if config.channels:
        argv += ["--channels", ",".join(str(c) for c in config.channels)]
    manifest = pretrain_demo(
        output_folder(args.out) if args.out else None,  # checked before any work
        config,
        data_dir=args.data,
        device=args.device,
        progress=progress_of(args),
        argv=argv,
    )
    print_json(manifest) if args.json else print_summary(manifest)
    return 0


def cmd_pretrain_foundation(args: argparse.Namespace) -> int:
    from assft.apps.outputs import output_folder
    from assft.apps.pretrain_foundation import FoundationConfig, pretrain_foundation, print_summary
    from assft.settings import flag_of
    from assft.validation import ConfigFieldError

    flags = ("seed", "data_seed", "iterations", "n_per_contrast")
    given = {name: getattr(args, name) for name in flags if getattr(args, name) is not None}
    try:
        config = FoundationConfig(**given)
    except ConfigFieldError as error:
        raise error.named(flag_of(error.field)) from None
    argv = ["pretrain-foundation"]
    for name in flags:  # the whole recipe, so the manifest's command rebuilds these weights
        argv += [f"--{name.replace('_', '-')}", str(getattr(config, name))]
    out = output_folder(args.out) if args.out else None  # checked before any work
    manifest = pretrain_foundation(
        out, config, device=args.device, progress=progress_of(args), argv=argv
    )
    print_json(manifest) if args.json else print_summary(manifest)
    return 0


def add_pretrain_foundation_parser(sub: Subparsers) -> None:
    p = add_verb(
        sub,
        "pretrain-foundation",
        cmd_pretrain_foundation,
        "pretrain the demo foundation encoder without labels (self-supervised; writes "
        "foundation_unet.pt + .json, the foundation-demo preset's weights)",
    )
    p.add_argument(
        "--out", help="folder for the weights and manifest (default: the shipped resources)"
    )
    p.add_argument("--iterations", type=int, help="training steps (default: the shipped recipe's)")
    p.add_argument("--seed", type=int)
    p.add_argument("--data-seed", dest="data_seed", type=int)
    p.add_argument(
        "--n-per-contrast",
        dest="n_per_contrast",
        type=int,
        help="unlabeled volumes of each of the four contrasts, one held out (default 10)",
    )
    device_flag(p, "cpu", help="cpu (default) reproduces the shipped weights")
    json_flag(p)
    progress_flag(p)


def add_pretrain_demo_parser(sub: Subparsers) -> None:
    p = add_verb(
        sub,
        "pretrain-demo",
        cmd_pretrain_demo,
        "pretrain the demo model on the sample source domain (writes demo_unet.pt + .json)",
    )
    p.add_argument(
        "--out", help="folder for the weights and manifest (default: the shipped Resources/)"
    )
    p.add_argument("--data", help="folder for the generated sample data (default: a temporary one)")
    p.add_argument("--iterations", type=int, help="training steps (default: the shipped recipe's)")
    p.add_argument("--seed", type=int)
    p.add_argument("--data-seed", dest="data_seed", type=int)
    p.add_argument("--n-source", dest="n_source", type=int, help="source cases (default 24)")
    p.add_argument(
        "--n-target", dest="n_target", type=int, help="mixed-pool cases evaluated (default 40)"
    )
    p.add_argument(
        "--n-site", dest="n_site", type=int, help="cases evaluated per named site (default 12)"
    )
    p.add_argument(
        "--channels",
        help="the UNet's channels per level, e.g. 32,64,128,256 (default: the demo preset's); "
        "use --out elsewhere: the shipped weights are for the preset's channels",
    )
    device_flag(p, "cpu", help="cpu (default) reproduces the shipped figures")
    json_flag(p)
    progress_flag(p)

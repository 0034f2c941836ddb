"""MONAI bundles as models: ``--model bundle:PATH``.

A MONAI bundle (the format of the MONAI Model Zoo and MONAI Label) is a folder::

    configs/metadata.json          name, version, changelog, the output channels' names
    configs/inference.json|yaml    network_def, preprocessing, inferer
    models/model.pt                the network's state dict

It is read with MONAI's own :class:`monai.bundle.ConfigParser`, so that references
(``@num_classes``), expressions and macros resolve as ``python -m monai.bundle run`` resolves
them, and turned into a :class:`~assft.models.model_preset.ModelPreset`: the network from
``network_def``, spacing, orientation and intensity normalisation from the inference
preprocessing, patch size, windows per pass and overlap from the inferer, the label names from
the metadata's ``network_data_format``. Everything downstream (ranking, fine-tuning, versions)
then runs as for a preset. :func:`export_bundle` hands a fine-tuned version back as a new
bundle version.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from assft.errors import BadInputError, storage_error
from assft.models.architectures import (
    ARCHITECTURES,
    NetworkArchitecture,
    bundle_architecture,
    get_architecture,
)
from assft.models.model_preset import ModelPreset, parse_preset

BUNDLE_PREFIX = "bundle:"
"""What ``--model`` starts with to name a MONAI bundle folder."""

METADATA = Path("configs") / "metadata.json"
INFERENCE_CONFIGS = ("inference.json", "inference.yaml", "inference.yml")
WEIGHTS = Path("models") / "model.pt"
DEFAULT_PATCH = (96, 96, 96)

_SPECIAL_KEYS = {"_target_", "_requires_", "_disabled_", "_desc_", "_mode_"}


def is_bundle_reference(text: str) -> bool:
    """Whether a ``--model`` value names a MONAI bundle (``bundle:PATH``)."""
    return text.startswith(BUNDLE_PREFIX)


def bundle_folder(text: str) -> Path:
    """The absolute folder of a ``bundle:PATH`` reference."""
    return Path(text[len(BUNDLE_PREFIX) :]).expanduser().resolve()


def inference_config(folder: Path) -> Path:
    """The bundle's inference config file.

    Raises:
        BadInputError: the folder is not a bundle, or has no inference config.
    """
    if not folder.is_dir():
        raise BadInputError("is not a folder: a MONAI bundle is a folder", folder)
    if not (folder / METADATA).is_file():
        raise BadInputError(f"is not a MONAI bundle: it has no {METADATA.as_posix()}", folder)
    for name in INFERENCE_CONFIGS:
        if (folder / "configs" / name).is_file():
            return folder / "configs" / name
    raise BadInputError(
        "MONAI bundle without an inference config (configs/inference.json or .yaml)",
        folder,
    )


def read_bundle(folder: Path) -> tuple[Any, Path]:
    """MONAI's parser over the bundle's inference config and metadata, and the config's path.

    Raises:
        BadInputError: a missing or unreadable file (named), or no ``network_def``.
    """
    from monai.bundle import ConfigParser

    config = inference_config(folder)
    parser = ConfigParser()
    for path, read in ((config, parser.read_config), (folder / METADATA, parser.read_meta)):
        try:
            read(str(path))
        except RecursionError:
            raise BadInputError("is nested too deeply to be a bundle config", path) from None
        except (OSError, ValueError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise BadInputError(f"cannot be read as a bundle config ({reason})", path) from None
    if "network_def" not in parser:
        raise BadInputError("MONAI bundle config without network_def", config)
    return parser, config


def _resolved(parser: Any, key: str, config: Path) -> Any:
    """A config value with its references (``@name``) resolved and no expression evaluated.

    Opening a bundle never runs its code: a ``$`` expression is Python that ``monai.bundle run``
    would execute, so a value that is one (or holds one) is refused, as a pickle holding code
    is refused among weights.
    """
    from monai.bundle.config_item import ConfigExpression

    try:
        value = parser.get_parsed_content(key, instantiate=False, eval_expr=False)
    except Exception as error:  # MONAI raises many kinds for a reference it cannot resolve
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise BadInputError(
            f"{key.replace('#', '.')} cannot be resolved ({reason})", config
        ) from None
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, (list, tuple)):
            pending.extend(item)
        elif isinstance(item, Mapping):
            pending.extend(item.values())
        elif isinstance(item, ConfigExpression) or (isinstance(item, str) and item[:1] == "$"):
            text = str(item.config if isinstance(item, ConfigExpression) else item)
            raise BadInputError(
                f"{key.replace('#', '.')} is a Python expression ({text[:60]!r}); opening a "
                "bundle never runs its code: write the value, or a reference (@name) to one",
                config,
            )
    return value


def _plain(value: Any) -> Any:
    """A resolved config value as JSON data (tuples become lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def _target_name(raw: Any) -> str:
    target = raw.get("_target_", "") if isinstance(raw, Mapping) else ""
    return str(target).rsplit(".", 1)[-1]


def _network(parser: Any, config: Path) -> tuple[NetworkArchitecture, dict[str, Any], int]:
    """The architecture, its arguments (without ``out_channels``) and its output channels."""
    raw = parser["network_def"]
    architecture = bundle_architecture(_target_name(raw))
    if architecture is None:
        known = ", ".join(a.bundle_class for a in ARCHITECTURES.values() if a.bundle_class)
        raise BadInputError(
            f"network_def is {raw.get('_target_') if isinstance(raw, Mapping) else raw!r}; the "
            f"engine ranks and fine-tunes bundles whose network is one of MONAI's {known}",
            config,
        )
    arguments = {
        key: _plain(_resolved(parser, f"network_def#{key}", config))
        for key in raw
        if key not in _SPECIAL_KEYS
    }
    out_channels = arguments.pop("out_channels", None)
    if not isinstance(out_channels, int) or out_channels < 1:
        raise BadInputError("network_def.out_channels must be a positive integer", config)
    return architecture, arguments, out_channels


def _labels(parser: Any, out_channels: int, metadata: Path) -> tuple[dict[str, str], str]:
    """The label names by value, and the output activation."""
    channels = parser.get("_meta_#network_data_format#outputs#pred#channel_def", None)
    activation = "sigmoid" if out_channels == 1 else "softmax"
    if not isinstance(channels, Mapping) or not channels:
        if out_channels == 1:
            return {"1": "foreground"}, activation
        return {str(c): f"label {c}" for c in range(1, out_channels)}, activation
    names = {str(int(k)): str(v) for k, v in channels.items() if str(k).isdigit()}
    if out_channels == 1:
        foreground = names.get("1") or next(
            (v for k, v in sorted(names.items()) if k != "0"), "foreground"
        )
        return {"1": foreground}, activation
    names.pop("0", None)
    if sorted(int(k) for k in names) != list(range(1, out_channels)):
        raise BadInputError(
            "network_data_format.outputs.pred.channel_def names channels "
            f"{sorted(int(k) for k in names)} but network_def.out_channels is {out_channels} "
            f"(background + {out_channels - 1})",
            metadata,
        )
    return names, activation


_RANGE_TRANSFORMS = {
    "ScaleIntensityRange": ("range", ("a_min", "a_max", "b_min", "b_max")),
    "ScaleIntensityRangePercentiles": ("percentile", ("lower", "upper", "b_min", "b_max")),
}
"""MONAI's intensity mappings by a range: the preset's intensity kind and the fields read."""


def _preprocessing(parser: Any, config: Path) -> tuple[dict[str, Any], list[str]]:
    """Spacing, orientation and intensity from the inference preprocessing, and notes on
    what was not found there."""
    found: dict[str, Any] = {"spacing": None, "orientation": None, "intensity": None}
    transforms = parser.get("preprocessing#transforms", None)
    if isinstance(transforms, list):
        for index, raw in enumerate(transforms):
            name = _target_name(raw).removesuffix("d")
            key = f"preprocessing#transforms#{index}"
            if name == "Spacing" and "pixdim" in raw:
                spacing = _plain(_resolved(parser, f"{key}#pixdim", config))
                spacing = spacing if isinstance(spacing, list) else [spacing] * 3
                found["spacing"] = [float(s) for s in spacing]
            elif name == "Orientation" and "axcodes" in raw:
                found["orientation"] = str(_resolved(parser, f"{key}#axcodes", config))
            elif name in _RANGE_TRANSFORMS:
                kind, keys = _RANGE_TRANSFORMS[name]
                values = {k: float(_resolved(parser, f"{key}#{k}", config)) for k in keys}
                clip = bool(_resolved(parser, f"{key}#clip", config)) if "clip" in raw else False
                found["intensity"] = {"kind": kind, **values, "clip": clip}
            elif name == "NormalizeIntensity":
                nonzero = (
                    bool(_resolved(parser, f"{key}#nonzero", config)) if "nonzero" in raw else False
                )
                found["intensity"] = {"kind": "zscore", "nonzero": nonzero}
    notes = []
    if found["spacing"] is None:
        notes.append("no Spacing transform: the scan's own spacing is kept")
    if found["orientation"] is None:
        notes.append("no Orientation transform: the scan's own orientation is kept")
    if found["intensity"] is None:
        found["intensity"] = {"kind": "zscore", "nonzero": False}
        notes.append("no intensity transform the engine knows: z-score normalisation")
    return found, notes


def _inferer(parser: Any, config: Path) -> tuple[list[int], int, float, list[str]]:
    raw = parser.get("inferer", None)
    if not isinstance(raw, Mapping) or "roi_size" not in raw:
        patch = list(DEFAULT_PATCH)
        return patch, 1, 0.25, [f"no sliding-window inferer: windows of {patch} voxels"]
    roi = _plain(_resolved(parser, "inferer#roi_size", config))
    roi = roi if isinstance(roi, list) else [roi] * 3
    if len(roi) != 3 or not all(isinstance(v, int) and v > 0 for v in roi):
        raise BadInputError(f"inferer.roi_size is {roi!r}; expected three positive sizes", config)
    batch = int(_resolved(parser, "inferer#sw_batch_size", config)) if "sw_batch_size" in raw else 1
    overlap = float(_resolved(parser, "inferer#overlap", config)) if "overlap" in raw else 0.25
    return roi, batch, overlap, []


def preset_from_bundle(reference: str | Path) -> ModelPreset:
    """The preset a MONAI bundle describes.

    Args:
        reference: ``bundle:PATH`` or the bundle's folder.

    Raises:
        BadInputError: not a bundle, no network_def, a network the engine does not rank, missing
            weights, or channel names that do not fit the network (one line naming the file).
    """
    text = str(reference)
    folder = bundle_folder(text) if is_bundle_reference(text) else Path(text).resolve()
    parser, config = read_bundle(folder)
    metadata = folder / METADATA
    if not (folder / WEIGHTS).is_file():
        raise BadInputError(
            f"MONAI bundle without weights: {WEIGHTS.as_posix()} is missing", folder
        )
    architecture, arguments, out_channels = _network(parser, config)
    assert architecture.bundle_layers is not None  # registered with its bundle class
    labels, activation = _labels(parser, out_channels, metadata)
    preprocessing, notes = _preprocessing(parser, config)
    patch, sw_batch, overlap, inferer_notes = _inferer(parser, config)
    meta = parser.get("_meta_", {}) or {}
    title = str(meta.get("name") or folder.name)
    version = str(meta.get("version") or "unversioned")
    description = (
        f"MONAI bundle {title} {version} read from {folder} ({_target_name(parser['network_def'])}"
        f" from network_def, preprocessing and inferer from {config.name}, labels from "
        f"{METADATA.as_posix()})"
    )
    if notes or inferer_notes:
        description += "; " + "; ".join(notes + inferer_notes)
    data = {
        "name": f"{BUNDLE_PREFIX}{folder}",
        "description": description,
        "architecture": architecture.name,
        "arguments": arguments,
        "checkpoint": {"source": "path", "path": str(folder / WEIGHTS)},
        "preprocessing": preprocessing,
        "patch_size": patch,
        "sw_batch_size": sw_batch,
        "overlap": overlap,
        "label_names": labels,
        **architecture.bundle_layers(arguments),
        "has_head": True,
        "output_activation": activation,
    }
    symmetric = parser.get("_meta_#assft#symmetric_axes", None)
    if isinstance(symmetric, list) and symmetric:
        data["symmetric_axes"] = symmetric
    return parse_preset(data, config)


# ---------------------------------------------------------------------------------- export
def _bumped(version: str) -> str:
    parts = version.split(".")
    if parts and parts[-1].isdigit():
        return ".".join([*parts[:-1], str(int(parts[-1]) + 1)])
    return f"{version}.1" if version else "0.0.1"


def export_bundle(
    source: Path, state: Mapping[str, Any], out: Path, *, model_version: str, summary: str
) -> Path:
    """Write a new version of a bundle: the source bundle's files, the fine-tuned weights as
    ``models/model.pt``, and ``configs/metadata.json`` with the version bumped and a changelog
    line.

    Args:
        source: the bundle the workspace was created from.
        state: the fine-tuned version's weights (a state dict).
        out: the new bundle's folder (must not exist).
        model_version: the workspace's version name (``v3``), for the changelog.
        summary: one line saying how the version was made, for the changelog.

    Returns:
        The new bundle's folder.

    Raises:
        BadInputError: ``out`` exists, or the source bundle is gone.
    """
    import torch

    inference_config(source)
    with staged_folder(out) as staging:
        shutil.copytree(source, staging, ignore=shutil.ignore_patterns("*.ts", "*.onnx", "*.pt"))
        (staging / "models").mkdir(exist_ok=True)
        torch.save(dict(state), staging / WEIGHTS)
        metadata_path = staging / METADATA
        metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
        new_version = _bumped(str(metadata.get("version", "")))
        changelog = dict(metadata.get("changelog") or {})
        today = datetime.date.today().isoformat()
        entry = f"ASSFT model version {model_version} ({today}): {summary}"
        metadata["changelog"] = {new_version: entry, **changelog}
        metadata["version"] = new_version
        metadata_path.write_text(json.dumps(metadata, indent=4) + "\n", encoding="utf-8")
    return out


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A hidden folder beside ``out`` that becomes ``out`` when the block ends without error, and
    is removed when it fails: a crash never leaves half an export under the name asked for."""
    if out.exists():
        raise BadInputError("already exists: the export writes a new folder", out)
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()  # a folder that takes no new one (a system folder): said here
        staging.rmdir()  # the export makes it (copytree wants it absent)
    except OSError as error:  # a file where a folder is named, a folder of the system's
        known = storage_error(error, out, in_workspace=False)  # not writable, full
        if known is not None:
            raise known from None
        raise BadInputError(f"cannot be created ({error.strerror or error})", out) from None
    try:
        yield staging
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# ------------------------------------------------------------------ a preset written as a bundle
def _intensity_transform(intensity: Mapping[str, Any]) -> dict[str, Any]:
    kind = intensity.get("kind")
    if intensity.get("standardize"):
        raise BadInputError(
            "a preset whose intensity is standardised after its mapping has no bundle transform"
        )
    if kind == "range":
        keys = ("a_min", "a_max", "b_min", "b_max", "clip")
        return {
            "_target_": "ScaleIntensityRanged",
            "keys": "image",
            **{k: intensity[k] for k in keys},
        }
    if kind == "percentile":
        keys = ("lower", "upper", "b_min", "b_max", "clip")
        return {
            "_target_": "ScaleIntensityRangePercentilesd",
            "keys": "image",
            **{k: intensity[k] for k in keys},
        }
    return {
        "_target_": "NormalizeIntensityd",
        "keys": "image",
        "nonzero": bool(intensity.get("nonzero", False)),
    }


def bundle_configs(preset: ModelPreset, label_names: Mapping[int, str]) -> tuple[dict, dict]:
    """The inference config and metadata of a bundle that runs a preset's network as the engine
    runs it (same orientation, spacing, intensity and sliding window), for ``python -m
    monai.bundle run`` with ``--dataset_dir`` (NIfTI images) and ``--output_dir``.

    Raises:
        BadInputError: a TorchScript preset (a bundle holds a MONAI network_def).
    """
    bundle_class = get_architecture(preset.architecture).bundle_class
    if bundle_class is None:
        known = ", ".join(a.bundle_class for a in ARCHITECTURES.values() if a.bundle_class)
        raise BadInputError(
            f"preset {preset.name!r} is a {preset.architecture} network: only MONAI networks "
            f"({known}) are written as bundles"
        )
    sigmoid = preset.output_activation.value == "sigmoid"
    out_channels = 1 if sigmoid else 1 + len(label_names)
    transforms: list[dict[str, Any]] = [
        {"_target_": "LoadImaged", "keys": "image", "image_only": False},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
    ]
    if preset.orientation:
        transforms.append(
            {"_target_": "Orientationd", "keys": "image", "axcodes": preset.orientation}
        )
    if preset.spacing:
        transforms.append(
            {
                "_target_": "Spacingd",
                "keys": "image",
                "pixdim": list(preset.spacing),
                "mode": "bilinear",
            }
        )
    transforms += [
        _intensity_transform(preset.intensity),
        {"_target_": "EnsureTyped", "keys": "image"},
    ]
    activation = (
        {"_target_": "Activationsd", "keys": "pred", "sigmoid": True}
        if sigmoid
        else {"_target_": "Activationsd", "keys": "pred", "softmax": True}
    )
    discrete = (
        {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5}
        if sigmoid
        else {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}
    )
    inference = {
        "imports": ["$import glob", "$import os", "$import torch"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "$@bundle_root + '/data'",
        "datalist": "$list(sorted(glob.glob(os.path.join(@dataset_dir, '*.nii*'))))",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": {
            "_target_": bundle_class,
            **preset.arguments,
            "out_channels": out_channels,
        },
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": transforms},
        "dataset": {
            "_target_": "Dataset",
            "data": "$[{'image': i} for i in @datalist]",
            "transform": "@preprocessing",
        },
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@dataset",
            "batch_size": 1,
            "shuffle": False,
            "num_workers": 0,
        },
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": list(preset.patch_size),
            "sw_batch_size": preset.sw_batch_size,
            "overlap": preset.overlap,
        },
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                activation,
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "image",
                    "nearest_interp": False,
                    "to_tensor": True,
                },
                discrete,
                {
                    "_target_": "SaveImaged",
                    "keys": "pred",
                    "output_dir": "@output_dir",
                    "output_postfix": "seg",
                    "separate_folder": False,
                    "resample": False,
                },
            ],
        },
        "handlers": [
            {
                "_target_": "CheckpointLoader",
                "load_path": "$@bundle_root + '/models/model.pt'",
                "load_dict": {"model": "@network"},
                "map_location": "@device",
            }
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
        },
        "run": ["$@evaluator.run()"],
    }
    channels = {
        "0": "background",
        **{
            str(c): name
            for c, name in enumerate([label_names[v] for v in sorted(label_names)], start=1)
        },
    }
    metadata = {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/"
        "0.8.1/meta_schema_20220324.json",
        "version": "0.1.0",
        "changelog": {"0.1.0": f"written by ASSFT from model {preset.name}"},
        "monai_version": _version("monai"),
        "pytorch_version": _version("torch"),
        "required_packages_version": {"pytorch-ignite": _version("pytorch-ignite")},
        "name": preset.name,
        "task": "segmentation",
        # The engine's own notes, which MONAI ignores: mirror axes for fine-tuning.
        "assft": {"symmetric_axes": list(preset.symmetric_axes)},
        "description": preset.description,
        "authors": "ASSFT",
        "copyright": "see the model's own licence",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "num_channels": preset.in_channels,
                    "spatial_shape": list(preset.patch_size),
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": out_channels,
                    "spatial_shape": list(preset.patch_size),
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": channels,
                }
            },
        },
    }
    return inference, metadata


def _version(distribution: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def write_bundle(
    preset: ModelPreset,
    label_names: Mapping[int, str],
    state: Mapping[str, Any],
    out: Path,
) -> Path:
    """Write a preset's network with these weights as a new MONAI bundle folder.

    Raises:
        BadInputError: ``out`` exists, or the preset has no bundle form.
    """
    import torch

    inference, metadata = bundle_configs(preset, label_names)
    with staged_folder(out) as staging:
        (staging / "configs").mkdir(parents=True)
        (staging / "models").mkdir()
        (staging / "configs" / "inference.json").write_text(
            json.dumps(inference, indent=4) + "\n", encoding="utf-8"
        )
        (staging / METADATA).write_text(json.dumps(metadata, indent=4) + "\n", encoding="utf-8")
        torch.save(dict(state), staging / WEIGHTS)
    return out

"""nnU-Net v2 trained models as models: ``--model nnunet:PATH``.

PATH is an nnU-Net v2 results folder, ``Dataset123_X/nnUNetTrainer__nnUNetPlans__3d_fullres``::

    plans.json                      nnU-Net's plans: per configuration the network, spacing,
                                    patch size and normalisation
    dataset.json                    the label names and the input channels
    fold_0/checkpoint_final.pth     the trained weights of a fold (or checkpoint_best.pth)

The plans and dataset.json are read as the JSON they are, the network is built with nnU-Net's own
``get_network_from_plans`` (dynamic-network-architectures), and the folder is turned into a
:class:`~assft.models.model_preset.ModelPreset`: nnU-Net's target spacing, patch size and intensity
normalisation, its label names. nnU-Net runs its network on SimpleITK's array order transposed by
the plans' ``transpose_forward``; the engine's arrays are (x, y, z), so the network is wrapped in
:class:`NnunetNetwork`, which hands it its own axis order. Everything downstream (ranking, fine-
tuning, versions) then runs as for a preset; :func:`export_nnunet` hands a fine-tuned version back
as an nnU-Net results folder that ``nnUNetPredictor`` runs.

What differs from nnU-Net's own pipeline, and is said in the preset's description:
- the scan is resampled to the target spacing with SimpleITK's linear interpolation (nnU-Net:
  third-order splines), and is not cropped to its non-zero box first;
- nnU-Net's test-time mirroring is ``assft predict --views 8`` (ranking and fine-tuning take at
  most 4 views); its labels average the views' logits as nnU-Net does (ranking averages
  probabilities);
- several folds run as nnU-Net's predictor runs them by default (every numbered fold, the mean of
  their logits); fine-tuning trains that ensemble as one network.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from assft.errors import BadInputError
from assft.models.checkpoints import read_checkpoint
from assft.models.model_preset import ModelPreset, parse_preset

NNUNET_PREFIX = "nnunet:"
"""What ``--model`` starts with to name an nnU-Net v2 results folder."""

PLANS = "plans.json"
DATASET = "dataset.json"
CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth")
NETWORK_PACKAGE = "dynamic_network_architectures.architectures."
"""Where a plans file's network class must come from (nothing else is imported by name)."""
LAYER_PACKAGE = "torch.nn."
"""Where the layers a plans file names (convolution, norm, dropout, non-linearity) must come
from."""

_FOLD = re.compile(r"^fold_(\d+|all)$")


def is_nnunet_reference(text: str) -> bool:
    """Whether a ``--model`` value names an nnU-Net results folder (``nnunet:PATH``)."""
    return text.startswith(NNUNET_PREFIX)


def nnunet_folder(text: str) -> Path:
    """The absolute folder of an ``nnunet:PATH`` reference."""
    return Path(text[len(NNUNET_PREFIX) :]).expanduser().resolve()


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInputError("is missing", path) from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise BadInputError(f"is not readable JSON ({error})", path) from None
    if not isinstance(data, dict):
        raise BadInputError("must hold a JSON object", path)
    return data


def folds(folder: Path) -> list[tuple[str, Path]]:
    """The folds of a results folder with a checkpoint, as ``(fold, checkpoint)``, fold 0 first
    (``checkpoint_final.pth`` before ``checkpoint_best.pth``)."""
    found = []
    for child in sorted(folder.iterdir()) if folder.is_dir() else []:
        match = _FOLD.match(child.name)
        if not match or not child.is_dir():
            continue
        for name in CHECKPOINTS:
            if (child / name).is_file():
                found.append((match.group(1), child / name))
                break
    return sorted(found, key=lambda f: (not f[0].isdigit(), int(f[0]) if f[0].isdigit() else 0))


def folds_to_run(found: list[tuple[str, Path]]) -> list[tuple[str, Path]]:
    """The folds nnU-Net's predictor runs by default: every numbered fold (an ensemble when
    there are several), or ``fold_all`` when there is no numbered one."""
    numbered = [f for f in found if f[0].isdigit()]
    return numbered or found[:1]


def _configuration_name(folder: Path, plans: dict[str, Any]) -> str:
    """The configuration the folder was trained with: the last part of its name
    (``Trainer__Plans__3d_fullres``)."""
    parts = folder.name.split("__")
    configurations = plans.get("configurations")
    if not isinstance(configurations, dict) or not configurations:
        raise BadInputError(
            "is not an nnU-Net v2 plans file (no 'configurations'); re-plan with nnunetv2",
            folder / PLANS,
        )
    if len(parts) == 3 and parts[2] in configurations:
        return parts[2]
    raise BadInputError(
        f"is not named as an nnU-Net results folder (TRAINER__PLANS__CONFIGURATION with a "
        f"configuration of {PLANS}: {', '.join(sorted(configurations))})",
        folder,
    )


def read_nnunet_folder(folder: Path) -> dict[str, Any]:
    """What an nnU-Net results folder holds: its plans, dataset.json, configuration and folds.

    Raises:
        BadInputError: not a results folder, no fold with a checkpoint, plans from an nnU-Net
            version before 2.4 (no network class in the plans), a network or layer named
            outside dynamic-network-architectures and torch.nn, several input channels or
            region-based labels (one line, naming the file).
    """
    if not folder.is_dir():
        raise BadInputError("is not a folder: an nnU-Net results folder is a folder", folder)
    if not (folder / PLANS).is_file():
        raise BadInputError(f"is not an nnU-Net results folder: it has no {PLANS}", folder)
    plans = _json(folder / PLANS)
    dataset = _json(folder / DATASET)
    name = _configuration_name(folder, plans)
    configuration = plans["configurations"][name]
    architecture = configuration.get("architecture") if isinstance(configuration, dict) else None
    if not isinstance(architecture, dict) or "network_class_name" not in architecture:
        raise BadInputError(
            f"configuration {name!r} has no 'architecture': plans from an nnU-Net version before "
            "2.4 are not supported (re-plan with nnunetv2 >= 2.4)",
            folder / PLANS,
        )
    check_names(
        str(architecture["network_class_name"]),
        dict(architecture.get("arch_kwargs") or {}),
        architecture.get("_kw_requires_import") or (),
        folder / PLANS,
    )
    channels = dataset.get("channel_names") or dataset.get("modality") or {}
    if len(channels) != 1:
        raise BadInputError(
            f"the model takes {len(channels)} input channels "
            f"({', '.join(map(str, channels.values()))}); the engine reads one image per case",
            folder / DATASET,
        )
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or "background" not in labels:
        raise BadInputError("has no 'labels' with a background", folder / DATASET)
    if any(not isinstance(v, int) or isinstance(v, bool) for v in labels.values()):
        raise BadInputError(
            "has region-based labels (lists of label values): not supported yet",
            folder / DATASET,
        )
    found = folds(folder)
    if not found:
        raise BadInputError(
            "has no fold with a checkpoint (fold_N/checkpoint_final.pth or "
            "fold_N/checkpoint_best.pth)",
            folder,
        )
    return {
        "plans": plans,
        "dataset": dataset,
        "configuration_name": name,
        "configuration": configuration,
        "folds": found,
    }


def check_names(
    network_class: str, kwargs: Mapping[str, Any], requires_import: Any, path: Path | None = None
) -> None:
    """Refuse a network class outside dynamic-network-architectures, or a layer (the kwargs
    nnU-Net imports by name) outside ``torch.nn``, before anything is imported.

    Raises:
        BadInputError: naming the class or layer (and ``path``).
    """
    if not network_class.startswith(NETWORK_PACKAGE):
        raise BadInputError(
            f"network class {network_class!r} is not one of dynamic-network-architectures "
            f"({NETWORK_PACKAGE}*): nothing else is imported by name",
            path,
        )
    for key in requires_import:
        value = kwargs.get(key)
        if value is not None and not str(value).startswith(LAYER_PACKAGE):
            raise BadInputError(
                f"arch_kwargs {key} {value!r} is not a torch.nn layer ({LAYER_PACKAGE}*): nothing "
                "else is imported by name",
                path,
            )


def _axes(plans: dict[str, Any]) -> list[int]:
    """nnU-Net's array axis j is the engine's (x, y, z) axis ``axes[j]``: SimpleITK's arrays are
    (z, y, x), then transposed by ``transpose_forward``."""
    transpose = [int(a) for a in plans.get("transpose_forward", [0, 1, 2])]
    if sorted(transpose) != [0, 1, 2]:
        raise BadInputError(f"transpose_forward {transpose} is not a 3-D axis order")
    return [2 - a for a in transpose]


def _ours(values: list[Any], axes: list[int]) -> list[Any]:
    """A per-axis list in nnU-Net's order, in the engine's (x, y, z) order."""
    out: list[Any] = [None] * 3
    for j, axis in enumerate(axes):
        out[axis] = values[j]
    return out


def _intensity(
    scheme: str, use_mask: bool, properties: Mapping[str, Any], path: Path
) -> tuple[dict[str, Any], str]:
    """nnU-Net's normalisation scheme as the engine's intensity spec, and a note."""
    if scheme == "ZScoreNormalization":
        return {"kind": "zscore", "nonzero": bool(use_mask)}, "z-score" + (
            " over the non-zero voxels" if use_mask else ""
        )
    if scheme == "CTNormalization":
        try:
            low, high = float(properties["percentile_00_5"]), float(properties["percentile_99_5"])
            mean, std = float(properties["mean"]), max(float(properties["std"]), 1e-8)
        except (KeyError, TypeError, ValueError):
            raise BadInputError(
                "CTNormalization without foreground_intensity_properties_per_channel", path
            ) from None
        spec = {
            "kind": "range",
            "a_min": low,
            "a_max": high,
            "b_min": (low - mean) / std,
            "b_max": (high - mean) / std,
            "clip": True,
        }
        return spec, "CT normalisation (clipped to the foreground's 0.5-99.5 percentiles)"
    if scheme == "NoNormalization":
        identity = {"kind": "range", "a_min": 0.0, "a_max": 1.0, "b_min": 0.0, "b_max": 1.0}
        return {**identity, "clip": False}, "no normalisation"
    if scheme == "RescaleTo01Normalization":
        spec = {"kind": "percentile", "lower": 0.0, "upper": 100.0, "b_min": 0.0, "b_max": 1.0}
        return {**spec, "clip": False}, "min-max to [0, 1]"
    if scheme == "RGBTo01Normalization":
        spec = {"kind": "range", "a_min": 0.0, "a_max": 255.0, "b_min": 0.0, "b_max": 1.0}
        return {**spec, "clip": False}, "divided by 255"
    raise BadInputError(f"normalisation scheme {scheme!r} is not supported", path)


def preset_from_nnunet(reference: str | Path) -> ModelPreset:
    """The preset an nnU-Net v2 results folder describes.

    Args:
        reference: ``nnunet:PATH`` or the results folder.

    Raises:
        BadInputError: see :func:`read_nnunet_folder`; an unsupported normalisation.
    """
    text = str(reference)
    folder = nnunet_folder(text) if is_nnunet_reference(text) else Path(text).resolve()
    found = read_nnunet_folder(folder)
    plans, dataset, configuration = found["plans"], found["dataset"], found["configuration"]
    axes = _axes(plans)
    architecture = configuration["architecture"]
    kwargs = architecture.get("arch_kwargs") or {}
    n_stages = int(kwargs.get("n_stages", 0))
    if n_stages < 1:
        raise BadInputError("arch_kwargs has no n_stages", folder / PLANS)
    properties = (plans.get("foreground_intensity_properties_per_channel") or {}).get("0", {})
    intensity, normalisation = _intensity(
        str((configuration.get("normalization_schemes") or ["ZScoreNormalization"])[0]),
        bool((configuration.get("use_mask_for_norm") or [False])[0]),
        properties,
        folder / PLANS,
    )
    labels = {int(v): str(k) for k, v in dataset["labels"].items() if int(v) != 0}
    used = folds_to_run(found["folds"])
    checkpoint = used[0][1]
    fold_names = ", ".join(f for f, _ in found["folds"])
    used_names = ", ".join(f for f, _ in used)
    ensemble = len(used) > 1
    inside = "network.folds.0." if ensemble else "network."
    notes = [
        f"{normalisation}; linear resampling to {configuration['spacing']} mm, no crop to the "
        "non-zero box (nnU-Net: spline resampling after cropping)",
    ]
    if ensemble:
        notes.append(
            f"folds {used_names} run as nnU-Net runs them, an ensemble (the mean of their "
            "logits); fine-tuning trains the ensemble; fold 0's encoder gives the embedding"
        )
    notes.append(
        "instance normalisation: the knowledge gap uses the prototype estimator"
        if "InstanceNorm" in str(kwargs.get("norm_op"))
        else "batch normalisation"
    )
    data = {
        "name": f"{NNUNET_PREFIX}{folder}",
        "description": (
            f"nnU-Net v2 {plans.get('dataset_name', '')} {found['configuration_name']} read from "
            f"{folder} ({architecture['network_class_name'].rsplit('.', 1)[-1]}, {n_stages} "
            f"stages, structures {', '.join(labels.values())}, fold{'s' * ensemble} "
            f"{used_names} of the folds found ({fold_names}), {checkpoint.name}); "
            + "; ".join(notes)
        ),
        "architecture": "nnunet",
        "arguments": {
            "network_class_name": architecture["network_class_name"],
            "arch_kwargs": kwargs,
            "arch_kwargs_req_import": list(architecture.get("_kw_requires_import") or ()),
            "in_channels": 1,
            "axes": axes,
            "folds": len(used),
        },
        "checkpoint": {
            "source": "path",
            "path": str(checkpoint),
            "key_renames": [["^", inside]],
            "more": [[f"network.folds.{i}.", str(path)] for i, (_, path) in enumerate(used)][1:],
        },
        "preprocessing": {
            "spacing": [float(s) for s in _ours(list(configuration["spacing"]), axes)],
            "orientation": None,
            "intensity": intensity,
        },
        "patch_size": [int(s) for s in _ours(list(configuration["patch_size"]), axes)],
        "sw_batch_size": 1,
        "overlap": 0.5,
        "label_names": {str(k): v for k, v in sorted(labels.items())},
        "embedding_layer": f"{inside}encoder.stages.{n_stages - 1}",
        "encoder_prefixes": (
            [f"network.folds.{i}.encoder" for i in range(len(used))]
            if ensemble
            else ["network.encoder"]
        ),
        "head_layer": f"{inside}decoder.seg_layers",
        "has_head": True,
        "output_activation": "softmax",
        "x-nnunet": {
            "folder": str(folder),
            "configuration": found["configuration_name"],
            "folds": [f for f, _ in found["folds"]],
            "used": [f for f, _ in used],
            "checkpoints": [path.name for _, path in used],
        },
    }
    return parse_preset(data, folder / PLANS)


class FoldEnsemble(nn.Module):
    """nnU-Net's folds run together as its predictor runs them: the mean of their logits."""

    def __init__(self, folds: list[nn.Module]) -> None:
        super().__init__()
        self.folds = nn.ModuleList(folds)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([fold(x) for fold in self.folds]).mean(0)


class NnunetNetwork(nn.Module):
    """An nnU-Net network on the engine's (x, y, z) arrays: its input is handed over in
    nnU-Net's own axis order (``axes``: nnU-Net's axis j is the engine's ``axes[j]``) and its
    output handed back in the engine's."""

    def __init__(self, network: nn.Module, axes: tuple[int, ...]) -> None:
        super().__init__()
        self.network = network
        self.axes = tuple(int(a) for a in axes)
        self.inverse = tuple(int(i) for i in np.argsort(self.axes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inside = x.permute(0, 1, *(2 + a for a in self.axes))
        return self.network(inside).permute(0, 1, *(2 + a for a in self.inverse))


def nnunet_network(
    *,
    network_class_name: str,
    arch_kwargs: Mapping[str, Any],
    arch_kwargs_req_import: Any,
    in_channels: int,
    axes: Any,
    out_channels: int,
    folds: int = 1,
) -> NnunetNetwork:
    """Build the network as nnU-Net builds it (deep supervision off), wrapped for the
    engine's axis order.

    Raises:
        BadInputError: nnunetv2 is not installed (``pip install assft[nnunet]``).
    """
    try:
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    except ImportError:
        raise BadInputError(
            "nnU-Net models need nnunetv2: pip install 'nnunetv2>=2.4' (or assft[nnunet])"
        ) from None
    # A preset file may name an nnU-Net network too: what is imported by name is checked again.
    check_names(str(network_class_name), arch_kwargs, arch_kwargs_req_import)
    networks = [
        get_network_from_plans(
            network_class_name,
            _lists(dict(arch_kwargs)),
            list(arch_kwargs_req_import),
            int(in_channels),
            int(out_channels),
            allow_init=True,
            deep_supervision=False,
        )
        for _ in range(max(1, int(folds)))
    ]
    inside = networks[0] if len(networks) == 1 else FoldEnsemble(networks)
    return NnunetNetwork(inside, tuple(axes))


def _lists(value: Any) -> Any:
    """The engine passes arguments as tuples; nnU-Net's builders take what its JSON holds."""
    if isinstance(value, tuple | list):
        return [_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------- checkpoints
def load_nnunet_checkpoint(path: Path) -> dict[str, Any]:
    """An nnU-Net checkpoint, read with ``weights_only=True`` (its training log's numpy
    scalars allowed, nothing that runs code).

    Raises:
        BadInputError: missing, truncated, holding Python objects besides weights and plain
            data, or without ``network_weights``.
    """
    loaded = read_checkpoint(path)
    if not isinstance(loaded, dict) or not isinstance(loaded.get("network_weights"), Mapping):
        raise BadInputError("is not an nnU-Net checkpoint (no network_weights)", path)
    return loaded


# --------------------------------------------------------------------------------- export
def export_nnunet(
    preset: ModelPreset, state: Mapping[str, torch.Tensor], out: Path, *, summary: str
) -> Path:
    """Write a fine-tuned version as an nnU-Net results folder: the source folder's plans and
    dataset.json, and for every fold the version runs ``fold_F/checkpoint_final.pth`` in
    nnU-Net's checkpoint layout with that fold's weights (the source checkpoint's training
    arguments kept, its optimiser state dropped). ``nnUNetPredictor`` loads it.

    Raises:
        BadInputError: ``out`` exists, the source folder or a fold's checkpoint is gone, or the
            weights do not fit the source network.
    """
    info = preset.extra.get("x-nnunet") or {}
    source = Path(str(info.get("folder", "")))
    found = dict(read_nnunet_folder(source)["folds"])
    used = [str(f) for f in info.get("used") or []]
    if not used or any(f not in found for f in used):
        raise BadInputError(f"no longer holds the folds {', '.join(used)} the model ran", source)
    checkpoints = []
    for index, fold in enumerate(used):
        prefix = f"network.folds.{index}." if len(used) > 1 else "network."
        original = load_nnunet_checkpoint(found[fold])
        weights = {
            key[len(prefix) :]: value.detach().cpu()
            for key, value in state.items()
            if key.startswith(prefix)
        }
        expected = original["network_weights"]
        if set(weights) != set(expected) or any(
            tuple(weights[k].shape) != tuple(expected[k].shape) for k in weights
        ):
            raise BadInputError(
                "the version's weights do not fit the nnU-Net network it was made from (were "
                "the labels changed?)",
                found[fold],
            )
        checkpoints.append((fold, _checkpoint(original, weights, summary)))
    from assft.io.atomic import save_torch_atomic
    from assft.models.bundles import staged_folder

    with staged_folder(out) as staging:
        staging.mkdir()
        shutil.copy2(source / PLANS, staging / PLANS)
        shutil.copy2(source / DATASET, staging / DATASET)
        for fold, checkpoint in checkpoints:
            (staging / f"fold_{fold}").mkdir()
            save_torch_atomic(checkpoint, staging / f"fold_{fold}" / "checkpoint_final.pth")
    return out


def _checkpoint(
    original: Mapping[str, Any], weights: dict[str, torch.Tensor], summary: str
) -> dict[str, Any]:
    """nnU-Net's checkpoint layout (``nnUNetTrainer.save_checkpoint``) with new weights."""
    return {
        "network_weights": weights,
        "optimizer_state": None,
        "grad_scaler_state": None,
        "logging": original.get("logging"),
        "_best_ema": original.get("_best_ema"),
        "current_epoch": original.get("current_epoch"),
        "init_args": original.get("init_args"),
        "trainer_name": original.get("trainer_name", "nnUNetTrainer"),
        "inference_allowed_mirroring_axes": original.get("inference_allowed_mirroring_axes"),
        "assft": {"summary": summary},
    }

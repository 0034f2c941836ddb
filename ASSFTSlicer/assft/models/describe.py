"""What a model reference opens as (``assft model-info``): the front ends show it before a
workspace is made from it."""

from __future__ import annotations

from typing import Any

from assft.models.loading import load_model
from assft.models.presets import get_preset


def describe_model(reference: str) -> dict[str, Any]:
    """Open a model reference (a preset name, a preset file, ``bundle:PATH`` or
    ``nnunet:PATH``) and load its weights, as ``assft init`` would, and say what it is.

    Returns:
        ``model``, ``architecture``, ``structures`` (label value -> name), ``patch_size``,
        ``spacing``, ``intensity``, ``pretrained``, ``has_head``, ``weights`` (where they
        came from),
        ``description``, and for an nnU-Net folder ``configuration``, ``folds`` (found) and
        ``used`` (run: an ensemble when several).

    Raises:
        BadInputError: a reference that does not open, or weights that do not fit.
    """
    preset = get_preset(reference)
    # An encoder without structures of its own (foundation-demo) is opened with one label, as
    # a workspace would give it its head; its pretrained weights load all the same.
    model = load_model(preset, label_values=None if preset.label_names else [1])
    info: dict[str, Any] = {
        "model": preset.name,
        "architecture": str(preset.architecture),
        "structures": {str(value): name for value, name in sorted(preset.label_names.items())},
        "patch_size": list(preset.patch_size),
        "spacing": None if preset.spacing is None else list(preset.spacing),
        "intensity": dict(preset.intensity),
        "pretrained": model.pretrained,
        # Whether it segments its structures as it is; an encoder gets a head on its first
        # fine-tune (assft init --label-names names the structures).
        "has_head": bool(preset.has_head),
        "weights": model.summary,
        "description": preset.description,
    }
    nnunet = preset.extra.get("x-nnunet")
    if isinstance(nnunet, dict):
        info.update(
            {key: nnunet[key] for key in ("configuration", "folds", "used") if key in nnunet}
        )
    return info

"""Tiny presets and networks shared by the model tests (fast on two CPU cores)."""

from __future__ import annotations

import copy
from typing import Any

from assft.datasets.synthetic import TINY_PRESET
from assft.models import ModelPreset, get_preset

TINY_UNET_ARGUMENTS: dict[str, Any] = TINY_PRESET["arguments"]


def preset_dict(base: str = "demo", /, **overrides: Any) -> dict[str, Any]:
    """The JSON form of a shipped preset, with fields replaced."""
    data = copy.deepcopy(get_preset(base).to_dict())
    data.update(overrides)
    return data


def tiny_unet_dict(**overrides: Any) -> dict[str, Any]:
    """A 3-level BatchNorm UNet preset (grey/white matter labels, no checkpoint)."""
    data = preset_dict(
        "demo",
        name="tiny-unet",
        arguments=copy.deepcopy(TINY_UNET_ARGUMENTS),
        checkpoint=None,
        patch_size=[16, 16, 16],
        embedding_layer="model.1.submodule.1.submodule",
        encoder_prefixes=["model.0", "model.1.submodule.0", "model.1.submodule.1.submodule"],
        head_layer="model.2",
        label_names={"1": "grey matter", "2": "white matter"},
    )
    data.update(overrides)
    return data


def tiny_unet(**overrides: Any) -> ModelPreset:
    """:func:`tiny_unet_dict` parsed."""
    return ModelPreset.from_dict(tiny_unet_dict(**overrides))


def tiny_segresnet(**overrides: Any) -> ModelPreset:
    """A small SegResNet preset with a Dropout3d layer (p 0.2)."""
    data = preset_dict(
        "monai-bundle-segresnet",
        name="tiny-segresnet",
        arguments={
            "spatial_dims": 3,
            "in_channels": 1,
            "init_filters": 8,
            "blocks_down": [1, 1, 1],
            "blocks_up": [1, 1],
            "dropout_prob": 0.2,
        },
        checkpoint=None,
        patch_size=[16, 16, 16],
        embedding_layer="down_layers.2",
    )
    data.update(overrides)
    return ModelPreset.from_dict(data)


def tiny_swinunetr(**overrides: Any) -> ModelPreset:
    """A one-block-per-stage SwinUNETR preset (feature size 12), encoder only."""
    data = preset_dict(
        "swinunetr-ssl",
        name="tiny-swin",
        arguments={"spatial_dims": 3, "in_channels": 1, "feature_size": 12, "depths": [1, 1, 1, 1]},
        patch_size=[64, 64, 64],
    )
    data.update(overrides)
    return ModelPreset.from_dict(data)

"""The registry of network architectures: one list that the preset parser, the network builder,
the bundle reader and writer and the presets' schema agree on; a new network is one registration."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from torch import nn

from assft.datasets.synthetic import TINY_PRESET
from assft.errors import BadInputError
from assft.models import build_network, get_preset, resources_dir
from assft.models.architectures import (
    ARCHITECTURES,
    NetworkArchitecture,
    bundle_architecture,
    get_architecture,
    register_architecture,
)


def test_the_schema_lists_the_registered_architectures():
    schema = json.loads((resources_dir() / "Models.schema.json").read_text(encoding="utf-8"))
    listed = schema["$defs"]["preset"]["properties"]["architecture"]["enum"]
    assert listed == list(ARCHITECTURES)


def test_each_monai_network_is_found_by_its_bundle_class_and_back():
    for entry in ARCHITECTURES.values():
        if entry.bundle_class is not None:
            assert bundle_architecture(entry.bundle_class) is entry
            assert entry.name == f"monai.{entry.bundle_class}"
    assert bundle_architecture("BasicUNet") is None
    assert not get_architecture("torchscript").takes_arguments
    with pytest.raises(BadInputError, match="unknown architecture 'monai.Nope'; known: monai.UNet"):
        get_architecture("monai.Nope")
    with pytest.raises(ValueError, match="registered twice"):
        register_architecture("monai.UNet", None)
    with pytest.raises(ValueError, match="'module:attribute'"):
        register_architecture("example.Unnamed", "monai.networks.nets.UNet")
    assert "example.Unnamed" not in ARCHITECTURES


class _TwoConvs(nn.Module):
    def __init__(self, *, in_channels: int, width: int, out_channels: int) -> None:
        super().__init__()
        self.encoder = nn.Conv3d(in_channels, width, 3, padding=1)
        self.head = nn.Conv3d(width, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.encoder(x)))


def test_a_new_architecture_is_one_registration(tmp_path, monkeypatch):
    """Registered, a network is parsed from a preset file and built with its arguments; the
    same preset before the registration is refused with the known names."""
    preset: dict[str, Any] = {
        **TINY_PRESET,
        "name": "two-convs",
        "architecture": "example.TwoConvs",
        "arguments": {"in_channels": 1, "width": 4},
        "embedding_layer": "encoder",
        "encoder_prefixes": ["encoder"],
        "head_layer": "head",
    }
    path = tmp_path / "two-convs.json"
    path.write_text(json.dumps(preset), encoding="utf-8")
    with pytest.raises(BadInputError, match="'example.TwoConvs'; expected one of monai.UNet"):
        get_preset(path)
    builder = f"{__name__}:_TwoConvs"
    monkeypatch.setitem(
        ARCHITECTURES, "example.TwoConvs", NetworkArchitecture("example.TwoConvs", builder)
    )
    loaded = get_preset(path)
    assert loaded.architecture == "example.TwoConvs" and not loaded.is_torchscript
    network = build_network(loaded, out_channels=3)
    assert isinstance(network, _TwoConvs) and network.head.out_channels == 3
    assert network(torch.zeros(1, 1, 8, 8, 8)).shape == (1, 3, 8, 8, 8)

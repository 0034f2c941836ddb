"""The network architectures a preset can name: one registry, as the strategies have one.

An architecture is registered with :func:`register_architecture`: its name (what a preset's
``architecture`` field says), how to build it from the preset's ``arguments`` and the output
channels, and, for a MONAI network, the class name a bundle's ``network_def`` gives and where its
embedding, encoder and head are. The preset parser, the network builder and the MONAI bundle
reader and writer all read this registry; ``resources/Models.schema.json`` lists the same names
(``Testing/models/test_architectures.py`` checks it). Adding a network touches this file and
that test.

This module imports neither torch nor MONAI: a builder is named as ``module:attribute`` and
imported when a network is built.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from assft.errors import BadInputError

Layers = Callable[[Mapping[str, Any]], dict[str, Any]]
"""The ``embedding_layer``, ``encoder_prefixes`` and ``head_layer`` of a network built from
these arguments (what a preset read from a MONAI bundle needs)."""


@dataclass(frozen=True)
class NetworkArchitecture:
    """One registered architecture.

    Attributes:
        name: What a preset's ``architecture`` says (``monai.UNet``).
        builder: ``module:attribute`` of what builds the network from the preset's arguments
            (``builder(out_channels=..., **arguments) -> torch.nn.Module``, a class or a
            function); None for an architecture whose network comes whole from its checkpoint
            (TorchScript).
        bundle_class: The class name of a MONAI bundle's ``network_def`` (``UNet``); None: not
            read from or written as a bundle.
        bundle_layers: The layers the method needs, from the arguments (with ``bundle_class``).
    """

    name: str
    builder: str | None
    bundle_class: str | None = None
    bundle_layers: Layers | None = None

    @property
    def takes_arguments(self) -> bool:
        """Whether a preset's ``arguments`` build it (False: the checkpoint is the network)."""
        return self.builder is not None

    def build(self, **arguments: Any) -> Any:
        """The network built from ``arguments`` (``out_channels`` included)."""
        if self.builder is None:
            raise BadInputError(f"a {self.name} network is its checkpoint, not built")
        module, _, attribute = self.builder.partition(":")
        return getattr(importlib.import_module(module), attribute)(**arguments)


ARCHITECTURES: dict[str, NetworkArchitecture] = {}
"""Every registered architecture by name, in registration order."""


def register_architecture(
    name: str,
    builder: str | None,
    *,
    bundle_class: str | None = None,
    bundle_layers: Layers | None = None,
) -> NetworkArchitecture:
    """Register a network architecture under ``name`` (see the module's docstring)."""
    if name in ARCHITECTURES:
        raise ValueError(f"architecture {name!r} is registered twice")
    if builder is not None and ":" not in builder:
        raise ValueError(f"architecture {name!r}: the builder is named as 'module:attribute'")
    if (bundle_class is None) != (bundle_layers is None):
        raise ValueError(f"architecture {name!r}: a bundle class needs its layers, and back")
    entry = NetworkArchitecture(name, builder, bundle_class, bundle_layers)
    ARCHITECTURES[name] = entry
    return entry


def get_architecture(name: str) -> NetworkArchitecture:
    """The registered architecture ``name``.

    Raises:
        BadInputError: an unknown name; the message lists the known ones.
    """
    try:
        return ARCHITECTURES[name]
    except (KeyError, TypeError):
        raise BadInputError(
            f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}"
        ) from None


def bundle_architecture(class_name: str) -> NetworkArchitecture | None:
    """The architecture whose MONAI bundles name ``class_name`` in ``network_def``, or None."""
    return next((a for a in ARCHITECTURES.values() if a.bundle_class == class_name), None)


# The built-in architectures --------------------------------------------------------------------


def _unet_layers(arguments: Mapping[str, Any]) -> dict[str, Any]:
    # MONAI's UNet nests Sequential(down, SkipConnection(...), up) blocks: the encoder is the
    # down path of every level, the embedding the bottom block, the head the last up block.
    levels = len(arguments.get("channels", ()))
    encoder = ["model.0"]
    prefix = "model.1"
    for _ in range(max(levels - 2, 0)):
        encoder.append(f"{prefix}.submodule.0")
        prefix = f"{prefix}.submodule.1"
    bottom = f"{prefix}.submodule"
    encoder.append(bottom)
    return {"embedding_layer": bottom, "encoder_prefixes": encoder, "head_layer": "model.2"}


def _segresnet_layers(arguments: Mapping[str, Any]) -> dict[str, Any]:
    depth = len(arguments.get("blocks_down", (1, 2, 2, 4)))
    return {
        "embedding_layer": f"down_layers.{depth - 1}",
        "encoder_prefixes": ["convInit", "down_layers"],
        "head_layer": "conv_final",
    }


def _swinunetr_layers(arguments: Mapping[str, Any]) -> dict[str, Any]:
    return {"embedding_layer": "swinViT", "encoder_prefixes": ["swinViT"], "head_layer": "out"}


register_architecture(
    "monai.UNet", "monai.networks.nets:UNet", bundle_class="UNet", bundle_layers=_unet_layers
)
register_architecture(
    "monai.SegResNet",
    "monai.networks.nets:SegResNet",
    bundle_class="SegResNet",
    bundle_layers=_segresnet_layers,
)
register_architecture(
    "monai.SwinUNETR",
    "monai.networks.nets:SwinUNETR",
    bundle_class="SwinUNETR",
    bundle_layers=_swinunetr_layers,
)
register_architecture("torchscript", None)
register_architecture("nnunet", "assft.models.nnunet:nnunet_network")

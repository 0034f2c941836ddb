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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from assft.errors import BadInputError

Layers = Callable[[Mapping[str, Any]], dict[str, Any]]
"""The ``embedding_layer``, ``encoder_prefixes`` and ``head_layer`` of a network built from
these arguments (what a preset read from a MONAI bundle needs)."""
PatchDivisor = Callable[[Mapping[str, Any]], int]
"""What every edge of a sliding window must be a multiple of, for a network built from these
arguments (its total downsampling: a window it does not divide fails inside the network)."""


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
        patch_divisor: What each window edge must be a multiple of, from the arguments; None:
            not known here (the network's own files set its window: nnU-Net's plans).
    """

    name: str
    builder: str | None
    bundle_class: str | None = None
    bundle_layers: Layers | None = None
    patch_divisor: PatchDivisor | None = None

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
    patch_divisor: PatchDivisor | None = None,
) -> NetworkArchitecture:
    """Register a network architecture under ``name`` (see the module's docstring)."""
    if name in ARCHITECTURES:
        raise ValueError(f"architecture {name!r} is registered twice")
    if builder is not None and ":" not in builder:
        raise ValueError(f"architecture {name!r}: the builder is named as 'module:attribute'")
    if (bundle_class is None) != (bundle_layers is None):
        raise ValueError(f"architecture {name!r}: a bundle class needs its layers, and back")
    entry = NetworkArchitecture(name, builder, bundle_class, bundle_layers, patch_divisor)
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


def window_problem(name: str, arguments: Mapping[str, Any], window: Sequence[int]) -> str:
    """Why a network of architecture ``name`` built from ``arguments`` cannot take a window (a
    patch) of this size, or "" when it can (as far as the registry knows)."""
    divisor_of = get_architecture(name).patch_divisor
    divisor = divisor_of(arguments) if divisor_of is not None else 1
    if any(int(edge) % divisor for edge in window):
        return (
            f"is {list(window)}: each edge must be a multiple of {divisor}, the network's "
            f"downsampling ({name} with these arguments)"
        )
    return ""


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


def _unet_divisor(arguments: Mapping[str, Any]) -> int:
    # Each level's stride halves (or more) the grid; a window edge the product does not divide
    # leaves the up path a voxel short of its skip connection.
    divisor = 1
    try:
        for stride in arguments.get("strides", ()):
            divisor *= max(stride) if isinstance(stride, (list, tuple)) else int(stride)
    except (TypeError, ValueError):
        return 1  # arguments MONAI will refuse when it builds the network, in its own words
    return max(divisor, 1)


def _segresnet_divisor(arguments: Mapping[str, Any]) -> int:
    return 2 ** (len(arguments.get("blocks_down", (1, 2, 2, 4))) - 1)


def _swinunetr_layers(arguments: Mapping[str, Any]) -> dict[str, Any]:
    return {"embedding_layer": "swinViT", "encoder_prefixes": ["swinViT"], "head_layer": "out"}


register_architecture(
    "monai.UNet",
    "monai.networks.nets:UNet",
    bundle_class="UNet",
    bundle_layers=_unet_layers,
    patch_divisor=_unet_divisor,
)
register_architecture(
    "monai.SegResNet",
    "monai.networks.nets:SegResNet",
    bundle_class="SegResNet",
    bundle_layers=_segresnet_layers,
    patch_divisor=_segresnet_divisor,
)
register_architecture(
    "monai.SwinUNETR",
    "monai.networks.nets:SwinUNETR",
    bundle_class="SwinUNETR",
    bundle_layers=_swinunetr_layers,
    patch_divisor=lambda _arguments: 32,  # its patch embedding and four merges: 2 x 2^4
)
register_architecture("torchscript", None)
register_architecture("nnunet", "assft.models.nnunet:nnunet_network")

"""Building the networks a preset names, and feature access for TorchScript networks.

MONAI networks are plain ``nn.Module`` objects: the engine reads their features with forward
hooks. A TorchScript module takes no Python hooks (``register_forward_hook is not supported on
ScriptModules``), so a TorchScript network gives features only through an *adapter* that knows
its graph and runs its submodules one by one, exactly as the archive's own ``forward`` does.
The adapter is checked against the archive's ``forward`` when the model is loaded and, since it
replaces that forward, costs nothing extra. A TorchScript network without an adapter still
segments, but has no embedding (ranking strategies that need one refuse it).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from assft.errors import BadInputError
from assft.models.architectures import get_architecture
from assft.models.checkpoints import locate_checkpoint
from assft.models.model_preset import ModelPreset, OutputActivation

FeatureTap = Callable[[torch.Tensor], torch.Tensor]
"""Called with the embedding layer's output; returns the tensor the network goes on with."""


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    if isinstance(value, dict):
        return {key: _tuples(item) for key, item in value.items()}
    return value


MAX_PARAMETERS = 2_000_000_000
"""Largest network a preset may describe (8 GB of float32 weights: far above any 3D model)."""


def build_network(preset: ModelPreset, out_channels: int) -> nn.Module:
    """The preset's network with freshly initialised weights (seed 0: deterministic).

    The global random state is left untouched.

    Args:
        preset: the model preset.
        out_channels: output channels (``1 + number of labels``; 1 for a sigmoid network).

    Returns:
        The network on the CPU, in eval mode. A TorchScript preset returns its archive
        (weights included; ``out_channels`` is checked when the model is loaded).

    Raises:
        BadInputError: arguments the architecture does not take, or a missing module named
            by the preset.
    """
    if preset.is_torchscript:
        assert preset.checkpoint is not None  # the preset parser requires it
        path = locate_checkpoint(preset.checkpoint, preset.name)
        if path is None:
            raise BadInputError(f"the TorchScript archive of preset {preset.name!r} is missing")
        return load_torchscript(path)
    build = get_architecture(preset.architecture).build
    arguments = _tuples(dict(preset.arguments))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                network = build(**arguments, out_channels=out_channels)
    except (TypeError, ValueError, AssertionError) as error:
        raise BadInputError(
            f"preset {preset.name!r}: arguments do not suit {preset.architecture} ({error})"
        ) from None
    except (RuntimeError, MemoryError) as error:  # e.g. channels in the hundreds of thousands
        if isinstance(error, RuntimeError) and "allocate" not in str(error):
            raise
        raise BadInputError(
            f"preset {preset.name!r}: the {preset.architecture} its arguments describe does not "
            "fit in memory; check its arguments (channels, features)"
        ) from None
    parameters = sum(p.numel() for p in network.parameters())
    if parameters > MAX_PARAMETERS:
        raise BadInputError(
            f"preset {preset.name!r}: its {preset.architecture} has {parameters:,} parameters, "
            f"over {MAX_PARAMETERS:,} (a safety limit); check its arguments"
        )
    check_module_names(network, preset)
    return network.eval()


def check_module_names(network: nn.Module, preset: ModelPreset) -> None:
    """Check that the layers the preset names exist in the network.

    Raises:
        BadInputError: naming the preset, the field and the missing module.
    """
    names = {name for name, _ in network.named_modules()}
    problems: list[str] = []
    if preset.embedding_layer not in names:
        problems.append(f"embedding_layer {preset.embedding_layer!r}")
    if preset.head_layer not in names:
        problems.append(f"head_layer {preset.head_layer!r}")
    for prefix in preset.encoder_prefixes:
        if not any(name == prefix or name.startswith(prefix + ".") for name in names):
            problems.append(f"encoder prefix {prefix!r}")
    if problems:
        top = sorted({name.split(".")[0] for name in names if name})
        raise BadInputError(
            f"preset {preset.name!r}: {problems[0]} is not a module of {preset.architecture} "
            f"(its top-level modules: {', '.join(top)})"
        )


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    """Open a TorchScript archive on the CPU.

    Raises:
        BadInputError: the file is not a TorchScript archive.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore", DeprecationWarning
            )  # torch >= 2.10 deprecates TorchScript
            module = torch.jit.load(str(path), map_location="cpu")
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception:
        raise BadInputError("is truncated or not a TorchScript archive", path) from None
    return module.eval()


class TorchScriptAdapter:
    """Runs a known TorchScript network submodule by submodule, exposing its features.

    Attributes:
        embedding_layer: the submodule whose output is the embedding (and where dropout is
            injected for MC sampling).
        returns_logits: whether :meth:`forward` returns pre-activation logits even though
            the archive's own forward ends in an activation.
    """

    embedding_layer: str = ""
    returns_logits: bool = True

    def __init__(self, module: torch.jit.ScriptModule) -> None:
        self.module = module

    @staticmethod
    def matches(module: torch.jit.ScriptModule) -> bool:
        """Whether this adapter knows the module's graph."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, tap: FeatureTap | None = None) -> torch.Tensor:
        """The network's output for ``x``, passing the embedding layer's output through ``tap``."""
        raise NotImplementedError


class LinkNet3dAdapter(TorchScriptAdapter):
    """deepbet's traced 3D LinkNet (``LinkNet3d``, 2.1 M parameters, InstanceNorm, no BatchNorm).

    The traced graph is ``init -> down0..down3 -> up0..up3`` with additive skips, then
    ``tp_conv1 -> conv -> tp_conv2 -> softmax``. Every traced submodule takes the shared ReLU
    module (``conv.2``) as its first argument. The deepest feature map is ``down3``'s output
    (128 channels at 1/32 of the input size; the input must be a multiple of 32). This forward
    stops before the final softmax and so returns logits.
    """

    embedding_layer = "down3"
    returns_logits = True
    _SUBMODULES = (
        "init",
        "down0",
        "down1",
        "down2",
        "down3",
        "up0",
        "up1",
        "up2",
        "up3",
        "tp_conv1",
        "conv",
        "tp_conv2",
    )

    @staticmethod
    def matches(module: torch.jit.ScriptModule) -> bool:
        names = {name for name, _ in module.named_children()}
        return (
            getattr(module, "original_name", "") == "LinkNet3d"
            and set(LinkNet3dAdapter._SUBMODULES) <= names
        )

    def forward(self, x: torch.Tensor, tap: FeatureTap | None = None) -> torch.Tensor:
        net = self.module
        relu = getattr(net.conv, "2")
        skip0 = net.init(relu, x)
        skip1 = net.down0(relu, skip0)
        skip2 = net.down1(relu, skip1)
        skip3 = net.down2(relu, skip2)
        deepest = net.down3(relu, skip3)
        if tap is not None:
            deepest = tap(deepest)
        h = net.up0(relu, deepest) + skip3
        h = net.up1(relu, h) + skip2
        h = net.up2(relu, h) + skip1
        h = net.up3(relu, h) + skip0
        return net.tp_conv2(net.conv(net.tp_conv1(relu, h)))


ADAPTERS: tuple[type[TorchScriptAdapter], ...] = (LinkNet3dAdapter,)


def find_adapter(
    module: torch.jit.ScriptModule, preset: ModelPreset, probe_size: int = 32
) -> tuple[TorchScriptAdapter | None, int | None]:
    """The adapter for a TorchScript network, checked against the archive's own forward.

    Args:
        module: the TorchScript network (on its device, eval mode).
        preset: its preset (the adapter's embedding layer must be the preset's).
        probe_size: edge of the random cube used for the check.

    Returns:
        (the adapter or None when none knows the network, the network's output channels
        when the probe ran).
    """
    for adapter_class in ADAPTERS:
        if not adapter_class.matches(module):
            continue
        adapter = adapter_class(module)
        if adapter.embedding_layer != preset.embedding_layer:
            raise BadInputError(
                f"preset {preset.name!r}: embedding_layer must be {adapter.embedding_layer!r} "
                f"for a TorchScript {module.original_name}"
            )
        device = next(module.parameters()).device
        generator = torch.Generator().manual_seed(0)
        probe = torch.rand((1, preset.in_channels) + (probe_size,) * 3, generator=generator).to(
            device
        )
        with torch.no_grad():
            reference = module(probe)
            mine = adapter.forward(probe)
            if adapter.returns_logits:
                mine = _as_network_output(mine, preset)
        if reference.shape == mine.shape and torch.allclose(reference, mine, atol=1e-4):
            return adapter, int(reference.shape[1])
        warnings.warn(
            f"preset {preset.name!r}: the {adapter_class.__name__} does not reproduce this "
            "TorchScript network; running it without embeddings",
            stacklevel=2,
        )
    return None, None


def _as_network_output(logits: torch.Tensor, preset: ModelPreset) -> torch.Tensor:
    """What the archive's own forward returns, given the adapter's logits."""
    if preset.output_activation == OutputActivation.PROBABILITIES:
        return torch.softmax(logits, dim=1)
    return logits

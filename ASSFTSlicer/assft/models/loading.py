"""Loading a preset's network with its weights, and running it for the method.

:class:`LoadedModel` is what inference, ranking and fine-tuning use: ``predict_logits`` is
the predictor handed to MONAI's ``sliding_window_inference`` (and the forward of
fine-tuning: it leaves the grad mode to the caller), ``capture_features`` collects the
embedding and BatchNorm statistics of the same pass, and ``mc_dropout`` turns on dropout for
the ``epistemic`` baseline.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.hooks import RemovableHandle

from assft.errors import BadInputError
from assft.models.checkpoints import (
    load_checkpoint_state,
    load_exact,
    load_fitting,
    locate_checkpoint,
    rename_keys,
)
from assft.models.devices import resolve_device
from assft.models.features import FeatureCapture
from assft.models.model_preset import ModelPreset, OutputActivation
from assft.models.networks import (
    FeatureTap,
    TorchScriptAdapter,
    build_network,
    find_adapter,
    load_torchscript,
)

_PROBABILITY_FLOOR = 1e-7


@dataclass(eq=False)
class LoadedModel:
    """A preset's network on its device, in eval mode, with its label mapping.

    Attributes:
        network: the network (a MONAI module, or a TorchScript archive).
        preset: the preset it was built from.
        label_values: output channel c > 0 ↦ workspace label ``label_values[c - 1]``;
            channel 0 is background.
        has_head: whether the segmentation head is trained for these labels. False for
            encoder-only weights and for a head newly initialised because the workspace's
            labels differ from the preset's: the first ranking then takes the cold-start path.
        head_reinitialised: the head was newly initialised (labels differ from the preset's).
        pretrained: pretrained or fine-tuned weights were loaded (False: random init).
        device: where the network runs.
        is_torchscript: the network is a TorchScript archive.
        summary: one line saying what was loaded from where (for logs and rankings).
    """

    network: nn.Module
    preset: ModelPreset
    label_values: list[int]
    has_head: bool
    head_reinitialised: bool
    pretrained: bool
    device: torch.device
    is_torchscript: bool
    summary: str = ""
    output_activation: OutputActivation = OutputActivation.SOFTMAX
    adapter: TorchScriptAdapter | None = field(default=None, repr=False)
    _captures: list[FeatureCapture] = field(default_factory=list, init=False, repr=False)
    _taps: list[FeatureTap] = field(default_factory=list, init=False, repr=False)
    _hooks: list[RemovableHandle] = field(default_factory=list, init=False, repr=False)
    _batchnorm: list[tuple[str, _BatchNorm]] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.is_torchscript:
            self._batchnorm = [
                (name, module)
                for name, module in self.network.named_modules()
                if isinstance(module, _BatchNorm)
                and module.running_mean is not None
                and self.preset.in_encoder(name)
            ]

    # ------------------------------------------------------------------ running
    @property
    def out_channels(self) -> int:
        """Channels of :meth:`predict_logits`: background plus one per label."""
        return 1 + len(self.label_values)

    def predict_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C, X, Y, Z]`` for windows ``[B, Cin, X, Y, Z]`` (C = 1 + labels).

        A sigmoid network's single logit l becomes ``[0, l]`` and a network that ends in a
        softmax gives log-probabilities, so that a softmax over channels always yields the
        probabilities. The grad mode is the caller's.
        """
        x = x.to(self.device, non_blocking=True)
        tapping = bool(self._captures or self._taps)
        if self.adapter is not None:
            output = self.adapter.forward(x, self._tap if tapping else None)
            activation = self.output_activation
            if self.adapter.returns_logits and activation is OutputActivation.PROBABILITIES:
                activation = OutputActivation.SOFTMAX  # the adapter stops before the softmax
        else:
            output = self.network(x)
            if isinstance(output, (list, tuple)):  # deep supervision: the full-resolution map
                output = output[0]
            activation = self.output_activation
        return self._as_logits(output, activation)

    def logits_from_network_output(
        self, output: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        """What :meth:`predict_logits` makes of a plain network's raw output.

        For callers that run the network through a wrapper (DistributedDataParallel).
        """
        if isinstance(output, (list, tuple)):
            output = output[0]
        return self._as_logits(output, self.output_activation)

    def _as_logits(self, output: torch.Tensor, activation: OutputActivation) -> torch.Tensor:
        raw_channels = 1 if activation is OutputActivation.SIGMOID else self.out_channels
        if output.shape[1] != raw_channels:
            raise BadInputError(
                f"preset {self.preset.name!r}: the network gives {output.shape[1]} channels but "
                f"{self.out_channels - 1} label(s) need {raw_channels}"
            )
        if activation is OutputActivation.SIGMOID:
            return torch.cat([torch.zeros_like(output), output], dim=1)
        if activation is OutputActivation.PROBABILITIES:
            return output.clamp_min(_PROBABILITY_FLOOR).log()
        return output

    @staticmethod
    def probabilities(logits: torch.Tensor) -> torch.Tensor:
        """Softmax over the channel dimension."""
        return torch.softmax(logits, dim=1)

    # ------------------------------------------------------------------ features
    @property
    def has_embedding(self) -> bool:
        """Whether the embedding layer's output can be read (False: unknown TorchScript graph)."""
        return not self.is_torchscript or self.adapter is not None

    @property
    def has_batchnorm(self) -> bool:
        """Whether the encoder has BatchNorm layers with running statistics."""
        return bool(self._batchnorm)

    @property
    def batchnorm_layers(self) -> list[str]:
        """Names of the encoder's BatchNorm layers, in statistics order."""
        return [name for name, _ in self._batchnorm]

    def running_statistics(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The encoder BatchNorm layers' running mean and variance (the source domain's)."""
        statistics = []
        for _, module in self._batchnorm:
            assert module.running_mean is not None and module.running_var is not None
            statistics.append(
                (
                    module.running_mean.detach().double().cpu().numpy(),
                    module.running_var.detach().double().cpu().numpy(),
                )
            )
        return statistics

    def capture_features(self, *, embedding: bool = True, batchnorm: bool = True) -> FeatureCapture:
        """A context manager collecting the embedding and BatchNorm input statistics.

        Every :meth:`predict_logits` call while it is active adds its windows. BatchNorm
        statistics are collected only where :attr:`has_batchnorm`.

        Raises:
            BadInputError: an embedding is requested from a network that gives none.
        """
        if embedding and not self.has_embedding:
            raise BadInputError(
                f"preset {self.preset.name!r}: the TorchScript network "
                f"{getattr(self.network, 'original_name', '')} gives no access to its features, "
                "so it has no embedding"
            )
        return FeatureCapture(
            embedding=embedding,
            batchnorm=batchnorm,
            batchnorm_layers=len(self._batchnorm),
            attach=self._attach_capture,
            detach=self._detach_capture,
        )

    def _attach_capture(self, capture: FeatureCapture) -> None:
        self._captures.append(capture)
        self._refresh_hooks()

    def _detach_capture(self, capture: FeatureCapture) -> None:
        self._captures = [c for c in self._captures if c is not capture]
        self._refresh_hooks()

    def _tap(self, features: torch.Tensor) -> torch.Tensor:
        for capture in self._captures:
            if capture.wants_embedding:
                capture.add_embedding(features)
        for transform in self._taps:
            features = transform(features)
        return features

    def _refresh_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        if self.is_torchscript:
            return
        modules = dict(self.network.named_modules())
        if self._taps or any(c.wants_embedding for c in self._captures):
            layer = modules[self.preset.embedding_layer]
            self._hooks.append(layer.register_forward_hook(self._embedding_hook))
        if any(c.wants_batchnorm for c in self._captures):
            for index, (_, module) in enumerate(self._batchnorm):
                self._hooks.append(module.register_forward_pre_hook(self._batchnorm_hook(index)))

    def _embedding_hook(self, module: nn.Module, inputs: Any, output: Any) -> Any:
        # SwinUNETR's swinViT returns its stages as a list: the last one is the deepest.
        features = output[-1] if isinstance(output, (list, tuple)) else output
        changed = self._tap(features)
        if changed is features:
            return None
        if isinstance(output, list):
            return [*output[:-1], changed]
        if isinstance(output, tuple):
            return (*output[:-1], changed)
        return changed

    def _batchnorm_hook(self, index: int) -> Any:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            for capture in self._captures:
                if capture.wants_batchnorm:
                    capture.add_batchnorm_input(index, inputs[0])

        return hook

    # ------------------------------------------------------------------ MC dropout
    @contextlib.contextmanager
    def mc_dropout(self, p: float = 0.2) -> Iterator[bool]:
        """Dropout at inference, for Monte-Carlo sampling (the ``epistemic`` baseline).

        A network with dropout layers (p > 0) gets just those layers in train mode (their
        own p applies). Otherwise dropout with probability ``p`` is injected on the output
        of the embedding layer, the decoder's input features. Samples are deterministic for
        a given torch seed; everything is restored on exit.

        Yields:
            True when dropout was injected, False when the network's own layers are used.

        Raises:
            BadInputError: a TorchScript network without feature access (nothing to hook).
        """
        if not 0.0 < p < 1.0:
            raise BadInputError(f"MC dropout probability must lie in (0, 1), not {p}")
        dropouts = (
            []
            if self.is_torchscript
            else [
                module
                for module in self.network.modules()
                if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0
            ]
        )
        if dropouts:
            modes = [module.training for module in dropouts]
            for module in dropouts:
                module.train()
            try:
                yield False
            finally:
                for module, mode in zip(dropouts, modes, strict=True):
                    module.train(mode)
            return
        if not self.has_embedding:
            raise BadInputError(
                f"preset {self.preset.name!r}: this TorchScript network has no dropout layer "
                "and no feature access for injecting one"
            )

        def inject(features: torch.Tensor) -> torch.Tensor:
            return F.dropout(features, p=p, training=True)

        self._taps.append(inject)
        self._refresh_hooks()
        try:
            yield True
        finally:
            self._taps = [t for t in self._taps if t is not inject]
            self._refresh_hooks()


def _check_labels(preset: ModelPreset, label_values: list[int] | None) -> list[int]:
    if label_values is None:
        if not preset.label_names:
            raise BadInputError(
                f"preset {preset.name!r} has no segmentation head and no labels: the "
                "workspace's label values are needed to build one"
            )
        return preset.label_values
    values = [int(v) for v in label_values]
    if not values:
        raise BadInputError("a model needs at least one label value")
    if any(v <= 0 for v in values) or len(set(values)) != len(values):
        raise BadInputError(f"label values must be distinct and positive, not {values}")
    return values


def load_model(
    preset: ModelPreset,
    *,
    label_values: list[int] | None = None,
    checkpoint: Path | None = None,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Build a preset's network, load its weights and move it to the device.

    When the workspace's labels (count or values) differ from the preset's, or the preset
    has no head, the network gets ``1 + len(label_values)`` outputs, every pretrained weight
    whose shape fits is loaded, and the head (``head_layer``) keeps its deterministic fresh
    initialisation: ``has_head=False``, ``head_reinitialised=True``.

    Args:
        preset: the model preset.
        label_values: the workspace's label values in channel order; None: the preset's.
        checkpoint: a fine-tuned state dict for exactly this network and these labels
            (written by :func:`save_state_dict`); it replaces the preset's weights.
        device: ``auto``, ``cpu``, ``cuda``, ... or a torch device.

    Raises:
        BadInputError: weights that are missing or do not fit (naming the file and the first
            mismatching key), labels a TorchScript head cannot serve, a bad device.
    """
    device = resolve_device(device)
    values = _check_labels(preset, label_values)
    same_labels = preset.has_head and values == preset.label_values
    if preset.is_torchscript:
        return _load_torchscript_model(preset, values, checkpoint, device)

    activation = preset.output_activation if same_labels else OutputActivation.SOFTMAX
    out_channels = 1 if activation is OutputActivation.SIGMOID else 1 + len(values)
    network = build_network(preset, out_channels)
    architecture = str(preset.architecture)
    pretrained = True
    has_head = same_labels
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        load_exact(network, load_checkpoint_state(checkpoint), checkpoint, architecture)
        has_head = True
        summary = f"fine-tuned weights from {checkpoint}"
    elif preset.checkpoint is None:
        pretrained = False
        summary = "random initialisation (the preset has no checkpoint)"
    else:
        path = locate_checkpoint(preset.checkpoint, preset.name)
        if path is None:
            pretrained = False
            summary = f"random initialisation ({preset.checkpoint.describe()} is missing)"
            warnings.warn(
                f"preset {preset.name!r}: {preset.checkpoint.describe()} is missing; running the "
                "untrained network (deterministic random initialisation)",
                stacklevel=2,
            )
        else:
            state = rename_keys(load_checkpoint_state(path), preset.checkpoint.key_renames)
            for prefix, more in preset.checkpoint.more:
                state.update({prefix + k: v for k, v in load_checkpoint_state(more).items()})
            if same_labels:
                load_exact(network, state, path, architecture)
                summary = f"pretrained weights from {path}"
            else:
                loaded, total = load_fitting(
                    network, state, path, architecture, skip=preset.in_head
                )
                summary = f"{loaded} of {total} weights from {path}; new head for labels {values}"
    return LoadedModel(
        network=network.to(device).eval(),
        preset=preset,
        label_values=values,
        has_head=has_head,
        head_reinitialised=not same_labels and checkpoint is None,
        pretrained=pretrained,
        device=device,
        is_torchscript=False,
        summary=summary,
        output_activation=activation,
    )


def _load_torchscript_model(
    preset: ModelPreset, values: list[int], checkpoint: Path | None, device: torch.device
) -> LoadedModel:
    assert preset.checkpoint is not None  # the preset parser requires it
    path = locate_checkpoint(preset.checkpoint, preset.name)
    if path is None:
        raise BadInputError(
            f"preset {preset.name!r}: the TorchScript archive "
            f"({preset.checkpoint.describe()}) is missing"
        )
    network = load_torchscript(path)
    summary = f"TorchScript archive {path}"
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        load_exact(
            network, load_checkpoint_state(checkpoint), checkpoint, "this TorchScript network"
        )
        summary += f" with fine-tuned weights from {checkpoint}"
    network = network.to(device).eval()
    adapter, channels = find_adapter(network, preset)
    sigmoid = preset.output_activation is OutputActivation.SIGMOID
    needed = 1 if sigmoid else 1 + len(values)
    if (sigmoid and len(values) != 1) or (channels is not None and channels != needed):
        raise BadInputError(
            f"preset {preset.name!r}: its TorchScript head segments {len(preset.label_names)} "
            f"label(s) and cannot be replaced; the workspace has {len(values)}"
        )
    if values != preset.label_values:
        warnings.warn(
            f"preset {preset.name!r}: workspace label values {values} are mapped in order onto "
            f"the network's labels {preset.label_names}",
            stacklevel=3,
        )
    return LoadedModel(
        network=network,
        preset=preset,
        label_values=values,
        has_head=preset.has_head,
        head_reinitialised=False,
        pretrained=True,
        device=device,
        is_torchscript=True,
        summary=summary,
        output_activation=preset.output_activation,
        adapter=adapter,
    )

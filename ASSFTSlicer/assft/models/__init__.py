"""Model presets, network loading and feature access for the ASSFT engine.

``load_model(get_preset("demo"))`` gives a :class:`LoadedModel` whose ``predict_logits`` is
the predictor for MONAI's sliding-window inference, with ``capture_features`` (embedding and
BatchNorm statistics of the same pass) and ``mc_dropout`` (the ``epistemic`` baseline).
"""

from __future__ import annotations

from assft.models.checkpoints import (
    downloads_dir,
    load_checkpoint_state,
    locate_checkpoint,
    save_state_dict,
)
from assft.models.devices import resolve_device
from assft.models.features import FeatureCapture
from assft.models.loading import LoadedModel, load_model
from assft.models.model_preset import (
    CheckpointKind,
    CheckpointSource,
    ModelPreset,
    OutputActivation,
)
from assft.models.networks import LinkNet3dAdapter, TorchScriptAdapter, build_network
from assft.models.presets import get_preset, load_presets
from assft.models.resources import resources_dir

__all__ = [
    "CheckpointKind",
    "CheckpointSource",
    "FeatureCapture",
    "LinkNet3dAdapter",
    "LoadedModel",
    "ModelPreset",
    "OutputActivation",
    "TorchScriptAdapter",
    "build_network",
    "downloads_dir",
    "get_preset",
    "load_checkpoint_state",
    "load_model",
    "load_presets",
    "locate_checkpoint",
    "resolve_device",
    "resources_dir",
    "save_state_dict",
]

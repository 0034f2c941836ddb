"""Choosing the torch device the networks run on."""

from __future__ import annotations

import torch

from assft.errors import BadInputError


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """The torch device a ``--device`` value names.

    Args:
        spec: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or
            ``mps``; a :class:`torch.device` is checked the same way.

    Raises:
        BadInputError: an unknown name, or a device this machine does not have.
    """
    if isinstance(spec, torch.device):
        device = spec
    else:
        text = spec.strip().lower()
        if text == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(text)
        except RuntimeError:
            raise BadInputError(
                f"unknown device {spec!r}: use auto, cpu, cuda, cuda:N or mps"
            ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BadInputError(f"device {spec!r}: CUDA is not available on this machine; use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise BadInputError(
                f"device {spec!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise BadInputError(f"device {spec!r}: MPS is not available on this machine; use cpu")
    elif device.type != "cpu":
        raise BadInputError(f"unsupported device {spec!r}: use auto, cpu, cuda, cuda:N or mps")
    return device

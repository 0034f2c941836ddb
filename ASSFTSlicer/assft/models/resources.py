"""The package's data folder, ``assft/resources/``: the presets and their schema, the shipped
weights and their manifests. Its own module, below the presets and the checkpoints, which both
read from it."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from assft.errors import BadInputError

__all__ = ["resources_dir"]


def resources_dir() -> Path:
    """The package's data folder ``assft/resources/`` (presets, schema, shipped weights).

    Found through :mod:`importlib.resources`, so it is the same in a checkout, a wheel and the
    Slicer extension (which installs the folder next to the engine's modules).

    Raises:
        BadInputError: the package is not on the file system (e.g. imported from a zip file).
    """
    folder = importlib.resources.files("assft") / "resources"
    if not isinstance(folder, Path):
        raise BadInputError(
            f"the assft package's resources are not a folder on disk ({folder}): "
            "install the package unzipped"
        )
    return folder

"""The engine's Python packages: found without importing them, installed only on request.

The module always loads: nothing here imports torch or MONAI, and nothing is installed at
import time. The Widget asks the user first and then calls :func:`installDependencies` with
``confirmed=True``. PyTorch comes from the PyTorch extension's utilities when that extension
is installed (it picks the CUDA build that fits the GPU); everything else, and torch when the
extension is absent, from pip.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable

__all__ = ["REQUIREMENTS", "installDependencies", "missingPackages", "describeMissing"]

REQUIREMENTS: dict[str, str] = {
    "torch": "torch>=2.2",
    "monai": "monai>=1.4",
    "SimpleITK": "SimpleITK>=2.3",
    "numpy": "numpy>=1.24",
    "nibabel": "nibabel>=5",
    "einops": "einops>=0.7",
    "psutil": "psutil>=5.9",
    "portalocker": "portalocker>=2.8",
}
"""Import name -> pip requirement of what the engine needs (also in ``requirements.txt``)."""


def missingPackages() -> list[str]:
    """Import names of :data:`REQUIREMENTS` that are not installed (none is imported)."""
    missing = []
    for name in REQUIREMENTS:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def describeMissing(missing: list[str] | None = None) -> str:
    """A one-line status for the GUI ("" when nothing is missing)."""
    missing = missingPackages() if missing is None else missing
    if not missing:
        return ""
    return (
        "Missing Python packages: "
        + ", ".join(missing)
        + ". Click 'Install dependencies' to install them."
    )


def _pyTorchUtilsLogic():
    """The PyTorch extension's logic, or None when that extension is not installed."""
    try:
        import PyTorchUtils
    except ImportError:
        return None
    return PyTorchUtils.PyTorchUtilsLogic()


def installDependencies(
    confirmed: bool,
    pipInstall: Callable[[str], None] | None = None,
    torchLogic=None,
) -> list[str]:
    """Install the missing packages (the user has agreed).

    Args:
        confirmed: The user agreed to install; False refuses (nothing is ever installed
            without asking).
        pipInstall: Installs one requirement string (default ``slicer.util.pip_install``).
        torchLogic: The PyTorch extension's ``PyTorchUtilsLogic`` (default: found if present).

    Returns:
        The import names that were installed.

    Raises:
        ValueError: ``confirmed`` is False.
        RuntimeError: something is still missing afterwards.
    """
    if not confirmed:
        raise ValueError("installing Python packages needs the user's confirmation")
    if pipInstall is None:
        import slicer.util

        pipInstall = slicer.util.pip_install
    missing = missingPackages()
    if not missing:
        return []
    if "torch" in missing:
        torchLogic = torchLogic if torchLogic is not None else _pyTorchUtilsLogic()
        if torchLogic is not None:
            logging.info("Installing PyTorch with the PyTorch extension's utilities")
            if (
                torchLogic.installTorch(
                    askConfirmation=False,
                    torchVersionRequirement=REQUIREMENTS["torch"][len("torch") :],
                )
                is None
            ):
                raise RuntimeError("PyTorch was not installed")
        else:
            logging.info("Installing PyTorch with pip")
            pipInstall(REQUIREMENTS["torch"])
    for name in missing:
        if name != "torch":
            pipInstall(REQUIREMENTS[name])
    importlib.invalidate_caches()
    still = missingPackages()
    if still:
        raise RuntimeError("still missing after installation: " + ", ".join(still))
    return missing

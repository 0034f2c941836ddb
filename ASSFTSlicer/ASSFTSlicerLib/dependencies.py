"""The engine's Python packages: checked by version without importing them, installed only on
request.

The module always loads: nothing here imports torch or MONAI, and nothing is installed at
import time. Versions come from the installed packages' metadata (``importlib.metadata``) and
are compared with ``packaging``. The Widget asks the user first and then calls
:func:`installDependencies` with ``confirmed=True``.

PyTorch comes from the PyTorch extension's utilities when that extension is installed (it picks
the CUDA build that fits the GPU), asked for the torch that MONAI needs: MONAI 1.6 needs torch
2.8 or newer, more than the engine itself. Everything else is installed with pip constrained to
the torch that is then installed and to every package already there, so that MONAI's own
requirements can never make pip replace that torch build (on Windows the index's torch is a
CPU-only one) nor the numpy that Slicer's own modules were built against. On Slicer 5.12 and
later ``slicer.packaging.pip_ensure`` installs them.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

try:
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version
except ImportError:  # an interpreter without packaging: pip always carries a copy
    from pip._vendor.packaging.requirements import InvalidRequirement, Requirement
    from pip._vendor.packaging.utils import canonicalize_name
    from pip._vendor.packaging.version import InvalidVersion, Version

__all__ = [
    "NEWEST_MONAI_TORCH_FLOOR",
    "REQUIREMENTS",
    "DependencyProblem",
    "dependencyProblems",
    "describeMissing",
    "installDependencies",
    "installedVersion",
    "missingPackages",
    "torchFloor",
]

REQUIREMENTS: dict[str, str] = {
    "torch": "torch>=2.4.1",
    "monai": "monai>=1.5",
    "SimpleITK": "SimpleITK>=2.3",
    "numpy": "numpy>=1.24",
    "nibabel": "nibabel>=5",
    "einops": "einops>=0.7",
    "psutil": "psutil>=5.9",
    "portalocker": "portalocker>=2.8",
}
"""Import name -> pip requirement of what the engine needs (also in ``requirements.txt``).

MONAI 1.5 is the first that accepts numpy 2 (Slicer 5.10 ships numpy 2.0.2; MONAI 1.4 needs
numpy < 2), and it needs torch 2.4.1 or newer: those are the floors."""

NEWEST_MONAI_TORCH_FLOOR = "2.8"
"""The torch that the newest MONAI needs (MONAI 1.6: torch>=2.8), asked for when MONAI is not
installed yet: pip then installs the newest MONAI, and its floor is only known from its
metadata once it is there. If a later MONAI needs more, pip's constraint keeps the installed
torch and picks the newest MONAI that works with it."""

VersionLookup = Callable[[str], "str | None"]


def installedVersion(name: str) -> str | None:
    """The installed version of a distribution (its metadata; nothing is imported).

    Returns:
        The version; "" for a package that can be imported but has no metadata (its version
        is unknown and accepted); None when it is not installed.
    """
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        return "" if importlib.util.find_spec(name) is not None else None
    except (ImportError, ValueError):
        return None


def _requirement(name: str) -> Requirement:
    return Requirement(REQUIREMENTS.get(name, name))


def _floor(requirement: Requirement) -> Version | None:
    """The highest lower bound (``>=``, ``>``, ``==``, ``~=``) of a requirement."""
    floors = []
    for specifier in requirement.specifier:
        if specifier.operator in (">=", ">", "==", "~=", "==="):
            try:
                floors.append(Version(specifier.version.rstrip(".*")))
            except InvalidVersion:
                continue
    return max(floors, default=None)


def _satisfies(version: str, requirement: Requirement) -> bool:
    if version == "":  # importable without metadata: nothing to compare
        return True
    try:
        return requirement.specifier.contains(Version(version), prereleases=True)
    except InvalidVersion:
        return True


def monaiTorchRequirement(versions: VersionLookup = installedVersion) -> Requirement | None:
    """The torch requirement in the installed MONAI's metadata (None: MONAI is not installed,
    or says nothing about torch)."""
    if not versions("monai"):
        return None
    try:
        requires = importlib.metadata.requires("monai") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for line in requires:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if requirement.name.lower() == "torch" and (
            requirement.marker is None or requirement.marker.evaluate({"extra": ""})
        ):
            return requirement
    return None


def torchFloor(versions: VersionLookup = installedVersion) -> Version:
    """The oldest torch that both the engine and MONAI accept.

    MONAI's own requirement when MONAI is installed (and is a version the engine accepts), else
    :data:`NEWEST_MONAI_TORCH_FLOOR`: the MONAI that pip will install is the newest.
    """
    floors = [_floor(_requirement("torch")) or Version("0")]
    monai = versions("monai")
    monaiOk = monai is not None and _satisfies(monai, _requirement("monai"))
    needed = monaiTorchRequirement(versions) if monaiOk else None
    if monaiOk:
        if needed is not None and _floor(needed) is not None:
            floors.append(_floor(needed))
    else:
        floors.append(Version(NEWEST_MONAI_TORCH_FLOOR))
    return max(floors)


@dataclass(frozen=True)
class DependencyProblem:
    """A package that is missing, or installed at a version that does not fit.

    Attributes:
        name: The import name (a key of :data:`REQUIREMENTS`).
        requirement: What is needed, e.g. ``"torch>=2.8.0"``.
        installed: The installed version, or None when it is missing.
        neededBy: Who needs that version ("" for the engine, else e.g. ``"monai 1.6.1"``).
    """

    name: str
    requirement: str
    installed: str | None
    neededBy: str = ""

    def describe(self) -> str:
        if self.installed is None:
            return f"{self.name} is missing"
        who = f" ({self.neededBy} needs it)" if self.neededBy else ""
        return f"{self.name} {self.installed} is installed, {self.requirement} is needed{who}"


def dependencyProblems(versions: VersionLookup = installedVersion) -> list[DependencyProblem]:
    """Every requirement that the installed packages do not meet, in :data:`REQUIREMENTS` order.

    Besides the engine's own requirements, torch must be one that the installed MONAI accepts.

    Args:
        versions: Looks up an installed version (default: the packages' metadata).
    """
    problems = []
    for name, text in REQUIREMENTS.items():
        requirement = Requirement(text)
        installed = versions(requirement.name)
        if installed is None or not _satisfies(installed, requirement):
            problems.append(DependencyProblem(name, text, installed))
            continue
        if name == "torch":
            needed = monaiTorchRequirement(versions)
            if needed is not None and not _satisfies(installed, needed):
                problems.append(
                    DependencyProblem(
                        name,
                        f"torch{needed.specifier}",
                        installed,
                        f"monai {versions('monai')}",
                    )
                )
    return problems


def missingPackages(versions: VersionLookup = installedVersion) -> list[str]:
    """Import names of :data:`REQUIREMENTS` to install or update (none is imported)."""
    return [problem.name for problem in dependencyProblems(versions)]


def describeMissing(problems: list[DependencyProblem] | None = None) -> str:
    """A one-line status for the GUI ("" when nothing is missing)."""
    problems = dependencyProblems() if problems is None else problems
    if not problems:
        return ""
    return (
        "Python packages to install or update: "
        + "; ".join(problem.describe() for problem in problems)
        + ". Click 'Install dependencies'."
    )


def _pyTorchUtilsLogic():
    """The PyTorch extension's logic, or None when that extension is not installed."""
    try:
        import PyTorchUtils
    except ImportError:
        return None
    return PyTorchUtils.PyTorchUtilsLogic()


def installedConstraints(changed: list[str]) -> list[str]:
    """``name==version`` for every distribution installed now but those in ``changed`` (pip
    requirement names): what Slicer ships (numpy, SimpleITK, pydicom, requests...) and torch
    stay as they are while the rest is installed. Where a package needs another version of
    one of them, pip refuses, naming the conflict, instead of replacing it."""
    skip = {canonicalize_name(name) for name in changed}
    pinned: dict[str, str] = {}
    for distribution in importlib.metadata.distributions():
        name = distribution.metadata["Name"]
        version = distribution.version
        if not name or not version or canonicalize_name(name) in skip:
            continue
        pinned.setdefault(canonicalize_name(name), f"{name}=={version}")
    return sorted(pinned.values(), key=str.casefold)


PipEnsure = Callable[[Path, Path], None]
"""Installs what a requirements file lists, under a constraints file."""


def _slicerPipEnsure() -> PipEnsure | None:
    """``slicer.packaging.pip_ensure`` (Slicer 5.12 and later), or None."""
    try:
        packaging = importlib.import_module("slicer.packaging")
    except ImportError:
        return None
    pipEnsure = getattr(packaging, "pip_ensure", None)
    loadRequirements = getattr(packaging, "load_requirements", None)
    if pipEnsure is None or loadRequirements is None:
        return None

    def ensure(requirementsFile: Path, constraintsFile: Path) -> None:
        pipEnsure(
            loadRequirements(str(requirementsFile)),
            constraints=str(constraintsFile),
            prompt_install=False,  # the Widget has asked already
            requester="ASSFT Slicer",
        )

    return ensure


def installDependencies(
    confirmed: bool,
    pipInstall: Callable[[list[str]], None] | None = None,
    torchLogic=None,
    pipEnsure: PipEnsure | None = None,
) -> list[str]:
    """Install or update what :func:`dependencyProblems` lists (the user has agreed).

    1. torch, when missing or too old for the engine or MONAI: through the PyTorch extension
       (``installTorch(torchVersionRequirement=">=<floor>")``, the floor of :func:`torchFloor`),
       else with pip;
    2. the rest, from a requirements file and under a constraints file that pins the torch now
       installed and every other installed package (:func:`installedConstraints`: Slicer's
       numpy stays): with ``slicer.packaging.pip_ensure`` where Slicer has it, else with pip.

    Args:
        confirmed: The user agreed to install; False refuses (nothing is ever installed
            without asking).
        pipInstall: Runs ``pip install`` with a list of arguments (default
            ``slicer.util.pip_install``).
        torchLogic: The PyTorch extension's ``PyTorchUtilsLogic`` (default: found if present).
        pipEnsure: Installs a requirements file under a constraints file (default:
            ``slicer.packaging.pip_ensure`` when available).

    Returns:
        The import names that were installed or updated.

    Raises:
        ValueError: ``confirmed`` is False.
        RuntimeError: something is still missing or too old afterwards.
    """
    if not confirmed:
        raise ValueError("installing Python packages needs the user's confirmation")
    problems = dependencyProblems()
    if not problems:
        return []
    if pipInstall is None:
        import slicer.util

        pipInstall = slicer.util.pip_install
    names = list(dict.fromkeys(problem.name for problem in problems))
    if "torch" in names:
        floor = torchFloor()
        torchLogic = torchLogic if torchLogic is not None else _pyTorchUtilsLogic()
        if torchLogic is not None:
            logging.info("Installing PyTorch >= %s with the PyTorch extension's utilities", floor)
            installed = torchLogic.installTorch(
                askConfirmation=False, torchVersionRequirement=f">={floor}"
            )
            if installed is None:
                raise RuntimeError("PyTorch was not installed")
        else:
            logging.info("Installing PyTorch >= %s with pip", floor)
            pipInstall([f"torch>={floor}"])
        importlib.invalidate_caches()
    rest = [REQUIREMENTS[name] for name in names if name != "torch"]
    if rest:
        with tempfile.TemporaryDirectory(prefix="assft-pip-") as folder:
            requirementsFile = Path(folder) / "requirements.txt"
            requirementsFile.write_text("\n".join(rest) + "\n", encoding="utf-8")
            constraintsFile = Path(folder) / "constraints.txt"
            # The torch that is installed and every package Slicer ships stay: MONAI may not
            # pull another torch build, nor another numpy under Slicer's own modules.
            pinned = installedConstraints([Requirement(line).name for line in rest])
            constraintsFile.write_text("".join(f"{line}\n" for line in pinned), encoding="utf-8")
            pipEnsure = pipEnsure if pipEnsure is not None else _slicerPipEnsure()
            if pipEnsure is not None:
                pipEnsure(requirementsFile, constraintsFile)
            else:
                pipInstall(["-r", str(requirementsFile), "-c", str(constraintsFile)])
    importlib.invalidate_caches()
    still = dependencyProblems()
    if still:
        raise RuntimeError(
            "still to install after installation: "
            + "; ".join(problem.describe() for problem in still)
        )
    return names

"""The Logic on a scene outside the Slicer application: slicer-core's MRML in the tests, the
trame-slicer scene of the web front end (``assft web``).

In Slicer, ``slicer.mrmlScene`` and ``slicer.modules.<name>.logic()`` are set up by the
application. Elsewhere the Logic finds its scene and module logics through the same names once
:func:`bindScene` has set them; :func:`unbindScene` puts back what was there.
"""

from __future__ import annotations

import types
from typing import Any

import slicer

__all__ = ["bindScene", "unbindScene"]


def bindScene(scene, segmentationsLogic, volumesLogic) -> tuple[Any, Any]:
    """Make ``scene`` the Logic's scene, with the Segmentations and Volumes module logics.

    Returns:
        What was bound before, for :func:`unbindScene`.
    """
    previous = (getattr(slicer, "mrmlScene", None), getattr(slicer, "modules", None))
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(
        segmentations=types.SimpleNamespace(logic=lambda: segmentationsLogic),
        volumes=types.SimpleNamespace(logic=lambda: volumesLogic),
    )
    return previous


def unbindScene(previous: tuple[Any, Any]) -> None:
    slicer.mrmlScene, slicer.modules = previous

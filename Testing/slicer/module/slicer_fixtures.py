"""The ``mrml`` fixture: a headless MRML scene from the ``slicer-core`` wheel.

Test files load it with ``pytest_plugins = ("slicer_fixtures",)``; it is not a ``conftest.py``
because a second module named ``conftest`` would shadow ``Testing/conftest.py`` for
``from conftest import run_cli``.
"""

from __future__ import annotations

import types

import pytest
from slicer_helpers import require_slicer


@pytest.fixture
def mrml():
    """A fresh ``vtkMRMLScene`` with the volumes, segmentations and colors logics.

    ``slicer.mrmlScene`` and ``slicer.modules`` point at it, as in the application.
    """
    slicer = require_slicer()
    scene = slicer.vtkMRMLScene()
    app = slicer.vtkMRMLApplicationLogic()
    app.SetMRMLScene(scene)
    colors = slicer.vtkSlicerColorLogic()
    colors.SetMRMLApplicationLogic(app)
    colors.SetMRMLScene(scene)
    app.SetColorLogic(colors)
    app.SetModuleLogic("Colors", colors)
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations.SetMRMLApplicationLogic(app)
    segmentations.SetMRMLScene(scene)
    app.SetModuleLogic("Segmentations", segmentations)
    volumes = slicer.vtkSlicerVolumesLogic()
    volumes.SetMRMLApplicationLogic(app)
    volumes.SetMRMLScene(scene)
    app.SetModuleLogic("Volumes", volumes)
    previous = (getattr(slicer, "mrmlScene", None), getattr(slicer, "modules", None))
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(
        segmentations=types.SimpleNamespace(logic=lambda: segmentations),
        volumes=types.SimpleNamespace(logic=lambda: volumes),
    )
    yield types.SimpleNamespace(scene=scene, app=app, segmentations=segmentations, volumes=volumes)
    scene.Clear(1)
    slicer.mrmlScene, slicer.modules = previous

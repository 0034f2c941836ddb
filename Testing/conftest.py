"""Shared fixtures: a tiny model preset, tiny synthetic pools written to temporary folders, a real
DICOMweb server holding some of them (``pacs``), and a headless MRML scene from the
``slicer-core`` wheel (``mrml``)."""

from __future__ import annotations

import os
import types
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on two cores: one thread each, in the workers and in every process they start
    # (torch's intra-op threads spin; two processes of two threads on two cores slow each other
    # tens of times).
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = "1"
    import torch

    torch.set_num_threads(1)

from assft_testing.dicom_server import (
    BROKEN,
    PASSWORD,
    SERIES,
    UID,
    USER,
    orthanc_server,
    write_dicom_series,
)
from assft_testing.slicer_side import require_slicer


@pytest.fixture(scope="session")
def tiny_preset_file(tmp_path_factory) -> Path:
    from assft.datasets.synthetic import write_tiny_preset

    return write_tiny_preset(tmp_path_factory.mktemp("preset") / "tiny-unet.json")


@pytest.fixture(scope="session")
def synthetic_pool(tmp_path_factory):
    """Eight 24^3 synthetic cases with ground truth (read-only: copy before changing)."""
    from assft.datasets.synthetic import write_synthetic_pool

    out = tmp_path_factory.mktemp("pool")
    cases = write_synthetic_pool(out, 8, seed=3, size=24)
    return out, cases


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
    from ASSFTSlicerLib.standalone import bindScene, unbindScene

    previous = bindScene(scene, segmentations, volumes)
    yield types.SimpleNamespace(scene=scene, app=app, segmentations=segmentations, volumes=volumes)
    scene.Clear(1)
    unbindScene(previous)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, synthetic_pool):
    """A real Orthanc with its DICOMweb plugin (skipped where it is not installed) holding
    three series made from the synthetic pool (two of patient P1, one of P2) and a fourth with
    a missing slice; ``(server, cases)``."""
    from assft.io.imaging import read_image

    _, cases = synthetic_pool
    folder = tmp_path_factory.mktemp("pacs")
    with orthanc_server(folder / "orthanc") as server:
        for series_uid, (patient, number, description, index) in SERIES.items():
            image = read_image(cases[index].image)
            server.upload(
                write_dicom_series(
                    image,
                    folder / series_uid,
                    series_uid=series_uid,
                    study_uid=f"{UID}.9{patient[1:]}",
                    patient_id=patient,
                    series_number=number,
                    description=description,
                    scale=100,
                )
            )
        image = read_image(cases[3].image)
        server.upload(
            write_dicom_series(
                image,
                folder / BROKEN,
                series_uid=BROKEN,
                patient_id="P3",
                description="BROKEN",
                scale=100,
                skip_slices=(5,),
            )
        )
        yield server, cases


@pytest.fixture
def credentials(monkeypatch):
    """The test server's user and password, in the environment as a lab would set them."""
    monkeypatch.setenv("ASSFT_DICOMWEB_USER", USER)
    monkeypatch.setenv("ASSFT_DICOMWEB_PASSWORD", PASSWORD)

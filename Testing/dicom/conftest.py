"""The DICOM tests' server: a real Orthanc with its DICOMweb plugin, holding three series made
from the synthetic pool (two of patient P1, one of P2) and a fourth with a missing slice."""

from __future__ import annotations

import pytest

from assft.io.imaging import read_image
from assft_testing.dicom_server import (
    BROKEN,
    PASSWORD,
    SERIES,
    UID,
    USER,
    orthanc_server,
    write_dicom_series,
)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, synthetic_pool):
    """Orthanc holding three series made from the synthetic pool, and a broken fourth."""
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
    monkeypatch.setenv("ASSFT_DICOMWEB_USER", USER)
    monkeypatch.setenv("ASSFT_DICOMWEB_PASSWORD", PASSWORD)

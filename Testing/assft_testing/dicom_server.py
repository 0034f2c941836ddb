"""DICOM series written from volumes, and a real Orthanc server with its DICOMweb plugin
(Debian's ``orthanc`` and ``orthanc-dicomweb``) on a free localhost port."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from assft_testing import stop_process

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
USER, PASSWORD = "lab", "s3cret-pass"

# The tests' archive: the pacs fixture (Testing/conftest.py).
UID = "1.2.826.0.1.3680043.10.511"
SERIES = {  # series UID -> (patient, series number, description, synthetic case index)
    f"{UID}.1": ("P1", 1, "T1 MPRAGE", 0),
    f"{UID}.2": ("P1", 2, "FLAIR axial", 1),
    f"{UID}.3": ("P2", 1, "T1 MPRAGE", 2),
}
BROKEN = f"{UID}.4"  # a series with a missing slice


def write_dicom_series(
    image: sitk.Image,
    folder: Path,
    *,
    series_uid: str,
    study_uid: str | None = None,
    patient_id: str = "P1",
    series_number: int = 1,
    description: str = "T1 MPRAGE",
    scale: float = 1.0,
    skip_slices: tuple[int, ...] = (),
) -> Path:
    """Write ``image`` (intensities times ``scale``, as int16) as one MR Image Storage file per
    slice, with the tags a PACS and highdicom need; ``skip_slices`` leaves slices out."""
    folder.mkdir(parents=True, exist_ok=True)
    array = np.rint(sitk.GetArrayFromImage(image) * scale).astype(np.int16)
    volume = sitk.GetImageFromArray(array)
    volume.CopyInformation(image)
    direction = volume.GetDirection()
    orientation = "\\".join(str(v) for v in (*direction[0:7:3], *direction[1:8:3]))
    study_uid = study_uid or f"{series_uid}.0"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetImageIO("GDCMImageIO")  # file names without suffix, as scanners write them
    for index in range(volume.GetDepth()):
        if index in skip_slices:
            continue
        slice_ = volume[:, :, index]
        position = volume.TransformIndexToPhysicalPoint((0, 0, index))
        for tag, value in (
            ("0008|0016", MR_IMAGE_STORAGE),
            ("0008|0018", f"{series_uid}.{index + 1}"),
            ("0008|0060", "MR"),
            ("0008|103e", description),
            ("0010|0010", f"Test^{patient_id}"),
            ("0010|0020", patient_id),
            ("0018|0050", str(volume.GetSpacing()[2])),
            ("0020|000d", study_uid),
            ("0020|000e", series_uid),
            ("0020|0011", str(series_number)),
            ("0020|0013", str(index + 1)),
            ("0020|0032", "\\".join(str(v) for v in position)),
            ("0020|0037", orientation),
            ("0020|0052", f"{study_uid}.9"),
        ):
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"IM{index:04d}"))
        writer.Execute(slice_)
    return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Orthanc:
    """A running Orthanc: its DICOMweb root and REST root on localhost."""

    url: str
    rest: str
    log: Path

    def upload(self, folder: Path) -> None:
        """Store every file of a folder (Orthanc's REST API, as a scanner's export would)."""
        import requests

        for path in sorted(folder.iterdir()):
            answer = requests.post(
                f"{self.rest}/instances", data=path.read_bytes(), auth=(USER, PASSWORD), timeout=30
            )
            answer.raise_for_status()

    def series_count(self) -> int:
        import requests

        answer = requests.get(f"{self.rest}/series", auth=(USER, PASSWORD), timeout=30)
        answer.raise_for_status()
        return len(answer.json())


@contextmanager
def orthanc_server(folder: Path) -> Iterator[Orthanc]:
    """Start Orthanc with the DICOMweb plugin on a free localhost port, with basic
    authentication (:data:`USER`, :data:`PASSWORD`); stopped on exit. Skips the test when
    Orthanc is not installed (``apt-get install orthanc orthanc-dicomweb``; CI installs it)."""
    import requests

    if not Path(ORTHANC).is_file() or not DICOMWEB_PLUGIN.is_file():
        pytest.skip(
            "Orthanc with its DICOMweb plugin is not installed (apt: orthanc orthanc-dicomweb)"
        )
    port = free_port()
    config = {
        "Name": "assft-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": port,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "orthanc.json").write_text(json.dumps(config), encoding="utf-8")
    log = folder / "orthanc.log"
    with open(log, "w") as stream:
        process = subprocess.Popen(
            [ORTHANC, str(folder / "orthanc.json")], stdout=stream, stderr=subprocess.STDOUT
        )
    rest = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{rest}/system", auth=(USER, PASSWORD), timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield Orthanc(url=f"{rest}/dicom-web", rest=rest, log=log)
    finally:
        stop_process(process, timeout=10)

"""A stored label as a DICOM Segmentation of its source series (highdicom), written to files or
stored on the workspace's DICOMweb server: ``assft export WS --dicom-seg OUT [--store]``.

The Segmentation references each source instance, frame by frame: frame ``k`` is slice ``k`` of
the label, which is slice ``k`` of the scan as :func:`assft.io.imaging.read_image` reads it from
the series' files in :func:`assft.io.imaging.dicom_series_files` order. Each structure is a
segment named as in the workspace, coded by :func:`assft.dicom.segment_codes.segment_codes`;
the annotator (the user who submitted the label) is the content creator, and the model that
pre-filled it is the segment algorithm (a semi-automatic segmentation: a clinician corrected a
model's prediction). Its UIDs derive from the source series and the label's sha256, so the same
label exported twice is the same instance, and a server keeps one copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

from assft import __version__
from assft.dicom import require
from assft.dicom.segment_codes import segment_codes
from assft.errors import BadInputError
from assft.io.atomic import atomic_path
from assft.io.imaging import dicom_series_files, read_image, read_label
from assft.io.voxel_grids import geometry_mismatch
from assft.runtime.progress import Progress

if TYPE_CHECKING:
    import pydicom

    from assft.dicom.dicomweb import DicomwebServer
    from assft.workspace import Workspace

__all__ = ["SEG_SUFFIX", "export_dicom_seg", "label_as_segmentation"]

SEG_SUFFIX = ".seg.dcm"


def _coded(code: tuple[str, str, str]) -> Any:
    import highdicom as hd

    return hd.sr.CodedConcept(value=code[0], scheme_designator=code[1], meaning=code[2])


def _source_datasets(files: list[str], spacing: tuple[float, ...]) -> list[pydicom.Dataset]:
    """The source instances, headers only; a missing Slice Thickness (GDCM-written and some
    scanners' series) is set to the slice spacing on the copy highdicom reads."""
    import pydicom

    datasets: list[pydicom.Dataset] = []
    for name in files:
        dataset = pydicom.dcmread(name, stop_before_pixels=True)
        if "SliceThickness" not in dataset or dataset.SliceThickness in (None, ""):
            dataset.SliceThickness = float(spacing[2])
        datasets.append(dataset)
    return datasets


def label_as_segmentation(workspace: Workspace, case_id: str) -> pydicom.Dataset:
    """The stored label of a case as a DICOM Segmentation (BINARY) of its source series.

    Raises:
        BadInputError: the case has no stored label, its scan is not a DICOM series, or the
            label does not lie on the series' voxel grid.
    """
    require("highdicom", "highdicom")
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    case = workspace.registry.case(workspace.check_case_id(case_id)) or {}
    label_file = workspace.label_path(case_id)
    if label_file is None or case.get("status") != "labeled":
        raise BadInputError(f"case {case_id} has no submitted label to export")
    source = workspace.image_path(case_id)
    if not source.is_dir():
        raise BadInputError(
            "is not a DICOM series: a DICOM Segmentation references the series it segments",
            source,
        )
    files = dicom_series_files(source)
    image = read_image(source)
    label = read_label(label_file)
    mismatch = geometry_mismatch(label, image)
    if mismatch is not None:
        raise BadInputError(f"does not lie on its scan's voxel grid ({mismatch})", label_file)
    values = sitk.GetArrayFromImage(label).astype(np.int64)
    names = workspace.config.label_names  # {value: name}, the foreground structures
    model = workspace.config.model
    version = workspace.current_model_version()
    algorithm = hd.AlgorithmIdentificationSequence(
        name=Path(model).name[:64] if model.lower().endswith(".json") else model[:64],
        version=version,
        family=codes.cid7162.ArtificialIntelligence,
    )
    segments = np.zeros(values.shape, np.uint8)
    descriptions = []
    for number, (value, name) in enumerate(sorted(names.items()), start=1):
        segments[values == value] = number
        coded = segment_codes(name)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name[:64],
                segmented_property_category=_coded(coded.category),
                segmented_property_type=_coded(coded.type),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
                algorithm_identification=algorithm,
            )
        )
    datasets = _source_datasets(files, image.GetSpacing())
    sha256 = str(case.get("label_sha256") or "")
    series_uid = str(datasets[0].SeriesInstanceUID)
    annotator = str(case.get("updated_by") or "unknown")
    return hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=segments,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(entropy_srcs=["assft-seg-series", series_uid, sha256]),
        series_number=9000,
        sop_instance_uid=generate_uid(entropy_srcs=["assft-seg", series_uid, sha256]),
        instance_number=1,
        manufacturer="ASSFT Slicer",
        manufacturer_model_name="assft",
        software_versions=__version__,
        device_serial_number="none",
        content_label="ASSFT_LABEL",
        content_description=f"label of {case_id} by {annotator}, model {version}"[:64],
        content_creator_name=annotator[:63] + ("" if "^" in annotator else "^"),  # family name
        series_description=f"ASSFT label {case_id}"[:64],
        omit_empty_frames=False,
    )


def _check_stored(server: DicomwebServer, segmentation: pydicom.Dataset) -> None:
    """Fetch a stored Segmentation back and compare it with what was sent."""
    stored = server.retrieve_instance(
        str(segmentation.StudyInstanceUID),
        str(segmentation.SeriesInstanceUID),
        str(segmentation.SOPInstanceUID),
    )
    if not np.array_equal(stored.pixel_array, segmentation.pixel_array):
        raise BadInputError(
            f"DICOMweb server {server.url} stored Segmentation {segmentation.SOPInstanceUID} "
            "with frames that differ from those sent"
        )


def export_dicom_seg(
    workspace: Workspace,
    out: str | Path | None,
    *,
    cases: list[str] | None = None,
    store: bool = False,
    auth_file: str | Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write each labeled case's label as ``OUT/<case>.seg.dcm`` and, with ``store``, store it
    on the server the workspace was made from and check the stored copy.

    Args:
        out: folder for the files (created; outside the workspace); None: store only.
        cases: the cases (default: every labeled case).

    Returns:
        ``{"cases": [...], "files": [...], "stored": [...]}``.

    Raises:
        BadInputError: nothing to export, a case that cannot be exported, ``out`` inside the
            workspace, ``store`` for a workspace not made from a DICOMweb server, a server that
            fails. Every file is written whole or not at all.
    """
    from assft.dicom.dicomweb import DicomwebServer
    from assft.dicom.dicomweb_auth import read_auth
    from assft.dicom.dicomweb_pool import dicomweb_manifest

    progress = progress or Progress("none")
    chosen = cases or [case["case_id"] for case in workspace.cases("labeled")]
    if not chosen:
        raise BadInputError("has no labeled case to export as DICOM Segmentation", workspace.root)
    folder = None
    if out is not None:
        folder = Path(out).expanduser().resolve()
        if folder == workspace.root or workspace.root in folder.parents:
            raise BadInputError("lies inside the workspace; choose a folder outside it", folder)
        if folder.exists() and not folder.is_dir():
            raise BadInputError("is a file, not a folder", folder)
    server = None
    if store:
        manifest = dicomweb_manifest(workspace)
        if manifest is None:
            raise BadInputError(
                "was not made from a DICOMweb server (assft init --dicomweb): there is no "
                "server to store the Segmentations on; write them to files with --dicom-seg OUT",
                workspace.root,
            )
        server = DicomwebServer(str(manifest["server"]), read_auth(auth_file))
    segmentations = [(case, label_as_segmentation(workspace, case)) for case in chosen]
    result: dict[str, Any] = {"cases": chosen, "files": [], "stored": []}
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    progress.phase("dicom-seg", len(segmentations))
    for index, (case, segmentation) in enumerate(segmentations):
        if folder is not None:
            path = folder / f"{case}{SEG_SUFFIX}"
            with atomic_path(path) as temporary:
                segmentation.save_as(temporary, enforce_file_format=True)
            result["files"].append(str(path))
        if server is not None:
            server.store([segmentation], f"the Segmentation of case {case}")
            _check_stored(server, segmentation)
            result["stored"].append(str(segmentation.SOPInstanceUID))
            workspace.registry.audit(
                "store-dicom-seg",
                case_id=case,
                detail={"server": server.url, "sop_instance_uid": str(segmentation.SOPInstanceUID)},
            )
        progress.update(index + 1, case=case)
    return result

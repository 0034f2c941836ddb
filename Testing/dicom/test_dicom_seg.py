"""A submitted label handed back as a DICOM Segmentation of its source series: written to a
file and stored on the real server it came from, read back with highdicom and pydicom, and
checked voxel for voxel and plane for plane against the label."""

from __future__ import annotations

import json

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from assft.dicom.dicom_seg import label_as_segmentation
from assft.dicom.dicomweb import DicomwebServer
from assft.dicom.dicomweb_auth import DicomwebAuth
from assft.dicom.dicomweb_pool import create_workspace_from_dicomweb
from assft.errors import BadInputError
from assft.io.imaging import dicom_series_files, read_label
from assft.workspace import Workspace
from assft_testing import run_cli
from assft_testing.dicom_server import PASSWORD, SERIES, UID, USER


def _check_against_label(
    segmentation: pydicom.Dataset, label: sitk.Image, files: list[str]
) -> None:
    """Frame k of each segment is slice k of the label: same voxels, same plane, same grid."""
    sources = [pydicom.dcmread(name, stop_before_pixels=True) for name in files]
    seg = hd.seg.Segmentation.from_dataset(segmentation)
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[str(source.SOPInstanceUID) for source in sources],
        combine_segments=True,
        relabel=True,
    )
    expected = sitk.GetArrayFromImage(label)
    assert pixels.shape == expected.shape
    np.testing.assert_array_equal(pixels, expected)  # segment k is label value k here
    slice_of = {str(source.SOPInstanceUID): k for k, source in enumerate(sources)}
    planes = {}
    for frame in segmentation.PerFrameFunctionalGroupsSequence:
        source = frame.DerivationImageSequence[0].SourceImageSequence[0]
        k = slice_of[str(source.ReferencedSOPInstanceUID)]
        planes[k] = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
    assert sorted(planes) == list(range(label.GetDepth()))  # each slice, for each segment
    for k, position in planes.items():
        np.testing.assert_allclose(
            position, label.TransformIndexToPhysicalPoint((0, 0, k)), atol=1e-3
        )
    shared = segmentation.SharedFunctionalGroupsSequence[0]
    spacing = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    np.testing.assert_allclose(spacing, label.GetSpacing()[1::-1], atol=1e-4)  # row, column
    orientation = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
    direction = label.GetDirection()
    np.testing.assert_allclose(orientation, [*direction[0:7:3], *direction[1:8:3]], atol=1e-4)


@pytest.fixture(scope="module")
def labeled(pacs, tmp_path_factory, tiny_preset_file):
    """A workspace from the server, with P1-s1's truth submitted by "dr_grey"."""
    server, cases = pacs
    root = tmp_path_factory.mktemp("seg") / "ws"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ASSFT_DICOMWEB_USER", USER)
        patch.setenv("ASSFT_DICOMWEB_PASSWORD", PASSWORD)
        workspace = create_workspace_from_dicomweb(
            root,
            server.url,
            series_filter="MPRAGE",
            model=str(tiny_preset_file),
            label_names={1: "grey matter", 2: "white matter"},
        )
    index = SERIES[f"{UID}.1"][3]
    workspace.submit_label("P1-s1", cases[index].label, user="dr_grey")
    return server, workspace


def test_export_writes_and_stores_a_segmentation_that_matches_the_label(labeled, tmp_path) -> None:
    server, workspace = labeled
    out = tmp_path / "seg"
    credentials = {"ASSFT_DICOMWEB_USER": USER, "ASSFT_DICOMWEB_PASSWORD": PASSWORD}
    done = run_cli(
        "export", str(workspace.root), "--dicom-seg", str(out), "--store", "--json", env=credentials
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["cases"] == ["P1-s1"] and len(result["stored"]) == 1
    label = read_label(workspace.label_path("P1-s1"))
    files = dicom_series_files(workspace.image_path("P1-s1"))

    written = pydicom.dcmread(out / "P1-s1.seg.dcm")
    _check_against_label(written, label, files)
    assert written.Modality == "SEG"
    assert written.ReferencedSeriesSequence[0].SeriesInstanceUID == f"{UID}.1"
    assert written.StudyInstanceUID == pydicom.dcmread(files[0]).StudyInstanceUID
    assert written.ContentCreatorName.family_name == "dr_grey"
    segments = {int(item.SegmentNumber): item for item in written.SegmentSequence}
    assert [segments[k].SegmentLabel for k in (1, 2)] == ["grey matter", "white matter"]
    assert segments[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "389081007"  # SNOMED
    assert segments[2].SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    algorithm = segments[1].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmVersion == workspace.current_model_version()

    dicomweb = DicomwebServer(server.url, DicomwebAuth(user=USER, password=PASSWORD))
    stored = dicomweb.retrieve_instance(
        written.StudyInstanceUID, written.SeriesInstanceUID, written.SOPInstanceUID
    )
    _check_against_label(stored, label, files)
    # the Segmentation on the server is not a scan: a new pool from the server leaves it out
    assert all(ref.modality != "SEG" for ref in dicomweb.search_series())
    assert any(row["action"] == "store-dicom-seg" for row in workspace.registry.audit_trail())


def test_the_same_label_exported_twice_is_the_same_instance(labeled) -> None:
    _, workspace = labeled
    first = label_as_segmentation(workspace, "P1-s1")
    again = label_as_segmentation(Workspace.open(workspace.root), "P1-s1")
    assert first.SOPInstanceUID == again.SOPInstanceUID
    assert first.SeriesInstanceUID == again.SeriesInstanceUID


def test_what_cannot_be_a_segmentation_is_refused_in_one_line(
    labeled, synthetic_pool, tmp_path
) -> None:
    _, workspace = labeled
    with pytest.raises(BadInputError, match="case P2-s1 has no submitted label"):
        label_as_segmentation(workspace, "P2-s1")
    _, cases = synthetic_pool
    files = Workspace.create(tmp_path / "files", [cases[0].image], label_names={1: "a", 2: "b"})
    files.submit_label(cases[0].case_id, cases[0].label, user="x")
    with pytest.raises(BadInputError, match="is not a DICOM series"):
        label_as_segmentation(files, cases[0].case_id)
    from assft.dicom.dicom_seg import export_dicom_seg

    with pytest.raises(BadInputError, match="was not made from a DICOMweb server"):
        export_dicom_seg(files, None, store=True)

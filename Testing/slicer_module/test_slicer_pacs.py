"""The panel's side of a lab's PACS: a workspace created from a real DICOMweb server (Orthanc)
and its labels sent back as DICOM SEG, each as an engine process run as a foreground task."""

from __future__ import annotations

import sys

import pytest

from assft_testing.slicer_side import require_slicer

slicer = require_slicer()

import ASSFTSlicer  # noqa: E402
from ASSFTSlicerLib import pacs as panel  # noqa: E402
from ASSFTSlicerLib.tasks import TaskKind  # noqa: E402


def test_a_workspace_from_a_dicomweb_server_and_its_labels_sent_back(
    pacs, credentials, tmp_path, tiny_preset_file
) -> None:
    from dicomweb_client.api import DICOMwebClient
    from dicomweb_client.session_utils import create_session_from_user_pass

    from assft.workspace import Workspace
    from assft_testing.dicom_server import PASSWORD, USER

    server, cases = pacs
    logic = ASSFTSlicer.ASSFTSlicerLogic(python=sys.executable, launcher="thread")
    root = tmp_path / "ws"
    with pytest.raises(ValueError, match="address of the DICOMweb server"):
        panel.runCreateWorkspaceFromDicomweb(logic, root, " ", str(tiny_preset_file))
    process = panel.runCreateWorkspaceFromDicomweb(
        logic, root, server.url, str(tiny_preset_file), query="PatientID=P1"
    )
    assert logic.tasks.isRunning(TaskKind.CREATE_FROM_DICOMWEB)
    result = process.wait(timeout=180)
    assert result.ok, result.output
    fetched = [e for e in result.events if e.get("phase") == "dicomweb-fetch" and e["done"]]
    assert [e["case"] for e in fetched] == ["P1-s1", "P1-s2"]
    summary = logic.workspaceSummary(root)
    assert summary["total"] == 2 and summary["dicomweb"] is True

    workspace = Workspace.open(root)
    workspace.submit_label("P1-s2", cases[1].label, user="dr_grey")
    sent = panel.runSendDicomSeg(logic, root).wait(timeout=180)
    assert sent.ok, sent.output
    client = DICOMwebClient(server.url, session=create_session_from_user_pass(USER, PASSWORD))
    segs = client.search_for_series(search_filters={"Modality": "SEG", "PatientID": "P1"})
    assert len(segs) == 1  # the label of P1-s2, checked voxel for voxel by Testing/dicom/
    assert any(row["action"] == "store-dicom-seg" for row in workspace.registry.audit_trail())
    assert not logic.tasks.busy


def test_sending_needs_a_workspace(tmp_path) -> None:
    logic = ASSFTSlicer.ASSFTSlicerLogic(python=sys.executable, launcher="thread")
    with pytest.raises(ValueError, match="Open a workspace first"):
        panel.runSendDicomSeg(logic, tmp_path / "nothing")

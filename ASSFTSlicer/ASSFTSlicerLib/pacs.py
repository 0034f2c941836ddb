"""Where a lab's scans live, from the panel: a workspace created from a DICOMweb server, and the
submitted labels sent back to it as DICOM Segmentations. Each is an engine process
(``assft init --dicomweb``, ``assft export --dicom-seg --store``) run as a foreground task.

Credentials are never typed into the panel: the engine reads them from the environment Slicer
was started in (``ASSFT_DICOMWEB_TOKEN``, or ``ASSFT_DICOMWEB_USER`` and
``ASSFT_DICOMWEB_PASSWORD``) or from a JSON file named in the panel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ASSFTSlicerLib.i18n import tr as _
from ASSFTSlicerLib.tasks import TaskKind

if TYPE_CHECKING:
    from ASSFTSlicerLib.logic import WorkspaceLogic
    from ASSFTSlicerLib.process import BackgroundProcess

__all__ = ["runCreateWorkspaceFromDicomweb", "runSendDicomSeg"]


def _authArguments(authFile) -> list:
    path = (str(authFile or "")).strip()
    return ["--dicomweb-auth", path] if path else []


def runCreateWorkspaceFromDicomweb(
    logic: WorkspaceLogic,
    workspacePath,
    url: str,
    modelPreset: str,
    query: str = "",
    authFile=None,
    labeledStructures: str | None = None,
    onProgress=None,
    onFinished=None,
) -> BackgroundProcess:
    """Create a workspace from the image series of a DICOMweb server that match ``query``
    (``Modality=MR&StudyDescription=brain*``; empty: every image series), fetched into it.

    Raises:
        ValueError: another task runs, no folder or no server given, or the folder already
            holds a workspace.
    """
    path = logic.folderPath(workspacePath)
    if path is None:
        raise ValueError(_("Choose a folder for the new workspace."))
    if logic.hasWorkspace(path):
        raise ValueError(_("{path} already holds a workspace: open it instead.").format(path=path))
    url = (url or "").strip()
    if not url:
        raise ValueError(_("Enter the address of the DICOMweb server."))
    labelNames, labeledStructures = logic.labelsForModel(modelPreset, labeledStructures)
    arguments = [path, "--dicomweb", url, "--model", modelPreset, "--progress", "json"]
    arguments += ["--query", query.strip()] if (query or "").strip() else []
    arguments += _authArguments(authFile)
    if labelNames:
        arguments += ["--label-names", labelNames]
    if labeledStructures and labeledStructures.strip():
        arguments += ["--labeled-structures", labeledStructures.strip()]
    return logic.tasks.run(
        TaskKind.CREATE_FROM_DICOMWEB,
        lambda done: logic.startEngineProcess(
            "init",
            arguments,
            _("fetching the scans from the DICOMweb server"),
            onProgress=onProgress,
            onFinished=done,
        ),
        onFinished,
        _("Fetching the scans from the DICOMweb server..."),
    )


def runSendDicomSeg(
    logic: WorkspaceLogic,
    workspacePath,
    caseIds: list[str] | None = None,
    authFile=None,
    onProgress=None,
    onFinished=None,
) -> BackgroundProcess:
    """Send the submitted labels of ``caseIds`` (default: every labeled case) to the server
    the workspace was made from, as DICOM Segmentations; each stored copy is read back and
    compared.

    Raises:
        ValueError: another task runs, or no workspace.
    """
    path = logic.folderPath(workspacePath)
    if path is None or not logic.hasWorkspace(path):
        raise ValueError(_("Open a workspace first."))
    arguments = [path, "--store", "--progress", "json", *_authArguments(authFile)]
    if caseIds:
        arguments += ["--cases", ",".join(caseIds)]
    return logic.tasks.run(
        TaskKind.SEND_DICOM_SEG,
        lambda done: logic.startEngineProcess(
            "export",
            arguments,
            _("sending labels as DICOM SEG"),
            onProgress=onProgress,
            onFinished=done,
        ),
        onFinished,
        _("Sending the labels to the DICOMweb server..."),
    )

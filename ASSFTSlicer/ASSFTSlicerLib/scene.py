"""Scene I/O between the MRML scene and the engine, at each scan's exact geometry.

- A case's scan is read by the engine (SimpleITK, the same reader that validates labels) and
  becomes a scalar volume node with exactly that voxel grid: origin, spacing and direction
  converted from ITK's LPS to Slicer's RAS, nothing resampled.
- Its segmentation has one segment per workspace label, with the label's name and color,
  pre-filled from a predicted label map.
- Submitting exports every segment at the scan's reference geometry, checks that each segment
  is a workspace label and that no voxel belongs to two segments (or resolves overlaps the way
  the user chose), writes one label map to a temporary NIfTI file and hands it to the engine's
  validated, atomic ``submit_label``.

Needs the MRML classes (``slicer``: the Slicer application, or the ``slicer-core`` wheel) and
the engine; never Qt.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import vtk

__all__ = [
    "CaseNodes",
    "LabelDefinition",
    "OverlapPolicy",
    "SegmentOverlapError",
    "UnknownSegmentError",
    "createCaseSegmentation",
    "exportLabelArray",
    "fillSegmentationFromLabelArray",
    "ijkToRasFromImageGeometry",
    "imageFromVolumeNode",
    "imageGeometryFromVolumeNode",
    "loadCaseVolume",
    "loadLabelArray",
    "loadUncertaintyVolume",
    "removeCaseNodes",
    "segmentLabelValues",
    "segmentMask",
    "setForegroundVolume",
    "submitSegmentation",
    "volumeNodeFromImage",
    "writeLabelFile",
]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
SEGMENT_ID_PREFIX = "assft_label_"
_ATTRIBUTE_CASE = "ASSFT.Case"
_ATTRIBUTE_WORKSPACE = "ASSFT.Workspace"
_ATTRIBUTE_ROLE = "ASSFT.Role"


@dataclass(frozen=True)
class LabelDefinition:
    """One workspace label as the scene shows it: voxel value, segment name, RGB in 0..1."""

    value: int
    name: str
    color: tuple[float, float, float]

    @classmethod
    def fromWorkspace(cls, labels: Iterable[Any]) -> list[LabelDefinition]:
        """From the engine's ``LabelInfo`` list (``workspace.config.labels``)."""
        return [
            cls(int(label.value), str(label.name), tuple(float(c) for c in label.color))
            for label in labels
        ]


class OverlapPolicy(StrEnum):
    """What to do with voxels that belong to more than one segment."""

    REFUSE = "refuse"
    """Raise :class:`SegmentOverlapError` (the default: the user is asked)."""
    LAST_WINS = "lastWins"
    """A voxel gets the label of the segment lowest in the segment list."""
    FIRST_WINS = "firstWins"
    """A voxel gets the label of the segment highest in the segment list."""


class SegmentOverlapError(ValueError):
    """Some voxels belong to more than one segment.

    Attributes:
        overlaps: ``[(segment name, other segment name, voxels), ...]``.
    """

    def __init__(self, overlaps: list[tuple[str, str, int]]) -> None:
        self.overlaps = overlaps
        details = "; ".join(
            f"'{a}' and '{b}' share {n} voxel{'s' if n != 1 else ''}" for a, b, n in overlaps
        )
        super().__init__(
            f"Segments overlap: {details}. A voxel can have only one label: remove the overlap in "
            "the Segment Editor (e.g. with the 'Logical operators' effect), or choose which "
            "segment wins."
        )


class UnknownSegmentError(ValueError):
    """A segment's name is not one of the workspace's labels (e.g. a new "Segment_1").

    Attributes:
        segmentNames: The segments that could not be matched.
        labelNames: The workspace's label names.
    """

    def __init__(self, segmentNames: list[str], labelNames: list[str]) -> None:
        self.segmentNames = segmentNames
        self.labelNames = labelNames
        which = ", ".join(f"'{n}'" for n in segmentNames)
        allowed = ", ".join(f"'{n}'" for n in labelNames)
        if len(segmentNames) == 1:
            start, pronoun = f"Segment {which} is", "it"
        else:
            start, pronoun = f"Segments {which} are", "them"
        super().__init__(
            f"{start} not a label of this workspace ({allowed}): rename {pronoun} to one of these "
            f"labels, or delete {pronoun}, before submitting."
        )


class UnsubmittedEditsError(ValueError):
    """Loading a case would drop the loaded case's edits that were not submitted."""

    def __init__(self, caseId: str) -> None:
        self.caseId = caseId
        super().__init__(
            f"case {caseId} has edits that are not submitted: submit them, or confirm that "
            "they may be discarded"
        )


@dataclass
class CaseNodes:
    """The nodes showing one case: its scan, its segmentation and the optional uncertainty map."""

    caseId: str
    volume: Any
    segmentation: Any
    uncertainty: Any = None

    def nodes(self) -> list[Any]:
        """The nodes that exist, scan last (the segmentation refers to it)."""
        return [n for n in (self.uncertainty, self.segmentation, self.volume) if n is not None]


# Geometry ----------------------------------------------------------------------------------------


def ijkToRasFromImageGeometry(
    origin: Sequence[float], spacing: Sequence[float], direction: Sequence[float]
) -> np.ndarray:
    """The 4x4 IJK-to-RAS matrix of an ITK image grid (origin and direction in LPS)."""
    directionMatrix = np.asarray(direction, dtype=float).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = LPS_TO_RAS @ directionMatrix @ np.diag(np.asarray(spacing, dtype=float))
    matrix[:3, 3] = LPS_TO_RAS @ np.asarray(origin, dtype=float)
    return matrix


def imageGeometryFromVolumeNode(volumeNode) -> dict[str, list[float]]:
    """Origin, spacing and direction (ITK's LPS convention) of a volume node's voxel grid."""
    ijkToRas = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRas)
    matrix = np.array([[ijkToRas.GetElement(r, c) for c in range(4)] for r in range(4)])
    spacing = np.array(volumeNode.GetSpacing(), dtype=float)
    direction = LPS_TO_RAS @ matrix[:3, :3] @ np.diag(1.0 / spacing)
    origin = LPS_TO_RAS @ matrix[:3, 3]
    return {
        "origin": [float(v) for v in origin],
        "spacing": [float(v) for v in spacing],
        "direction": [float(v) for v in direction.reshape(-1)],
    }


def _vtkMatrix(matrix: np.ndarray) -> vtk.vtkMatrix4x4:
    result = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            result.SetElement(r, c, float(matrix[r, c]))
    return result


def volumeNodeFromImage(image, name: str, className: str = "vtkMRMLScalarVolumeNode"):
    """Add a volume node holding a SimpleITK image's voxels on exactly its grid.

    Args:
        image: A 3D scalar ``SimpleITK.Image``.
        name: The node name.
        className: ``vtkMRMLScalarVolumeNode`` or ``vtkMRMLLabelMapVolumeNode``.
    """
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image)  # (k, j, i), as Slicer's arrayFromVolume
    ijkToRas = ijkToRasFromImageGeometry(
        image.GetOrigin(), image.GetSpacing(), image.GetDirection()
    )
    node = slicer.mrmlScene.AddNewNodeByClass(className, slicer.mrmlScene.GenerateUniqueName(name))
    node.SetIJKToRASMatrix(_vtkMatrix(ijkToRas))
    slicer.util.updateVolumeFromArray(node, array)
    node.CreateDefaultDisplayNodes()
    return node


def imageFromVolumeNode(volumeNode, array: np.ndarray | None = None):
    """A SimpleITK image with a volume node's grid and its voxels (or ``array`` instead).

    Raises:
        ValueError: the volume is under a transform that is not the identity (its voxels are not
            where its grid says), or ``array`` does not have the volume's shape.
    """
    import SimpleITK as sitk

    _refuseTransformed(volumeNode)
    voxels = slicer.util.arrayFromVolume(volumeNode) if array is None else np.asarray(array)
    shape = _volumeShape(volumeNode)
    if voxels.shape != shape:
        raise ValueError(
            f"an array of shape {voxels.shape} does not fit volume '{volumeNode.GetName()}' {shape}"
        )
    geometry = imageGeometryFromVolumeNode(volumeNode)
    image = sitk.GetImageFromArray(np.ascontiguousarray(voxels))
    image.SetOrigin(geometry["origin"])
    image.SetSpacing(geometry["spacing"])
    image.SetDirection(geometry["direction"])
    return image


def _volumeShape(volumeNode) -> tuple[int, int, int]:
    """The (k, j, i) shape of a volume node's voxel array."""
    return tuple(reversed(volumeNode.GetImageData().GetDimensions()))


def _gridImage(volumeNode):
    """An empty SimpleITK image on a volume node's grid (to compare grids)."""
    return imageFromVolumeNode(volumeNode, np.zeros(_volumeShape(volumeNode), np.uint8))


def _refuseTransformed(node) -> None:
    transform = node.GetParentTransformNode()
    if transform is None:
        return
    matrix = vtk.vtkMatrix4x4()
    if transform.IsTransformToWorldLinear():
        transform.GetMatrixTransformToWorld(matrix)
        if all(abs(matrix.GetElement(r, c) - (r == c)) < 1e-9 for r in range(4) for c in range(4)):
            return
    raise ValueError(
        f"'{node.GetName()}' is under the transform '{transform.GetName()}': remove the transform "
        "(or harden it and create a new workspace) so the label keeps the scan's geometry"
    )


# Loading ---------------------------------------------------------------------------------------


def loadCaseVolume(imagePath: str | Path, caseId: str, workspaceRoot: str | Path | None = None):
    """Load a case's scan (file or DICOM folder) through the engine's reader.

    Raises:
        ValueError: the engine cannot read it (the message names the file).
    """
    from assft.errors import AssftError
    from assft.io.imaging import read_image

    try:
        image = read_image(imagePath)
    except AssftError as error:
        raise ValueError(str(error)) from None
    node = volumeNodeFromImage(image, caseId)
    node.SetAttribute(_ATTRIBUTE_CASE, caseId)
    node.SetAttribute(_ATTRIBUTE_ROLE, "scan")
    if workspaceRoot is not None:
        node.SetAttribute(_ATTRIBUTE_WORKSPACE, str(workspaceRoot))
    return node


def loadLabelArray(
    labelPath: str | Path, referenceVolumeNode, labels: Sequence[LabelDefinition]
) -> np.ndarray:
    """Read a label map (e.g. a prediction) that must lie on the reference volume's grid.

    Returns:
        The (k, j, i) uint16 array.

    Raises:
        ValueError: unreadable, another grid than the scan's, or values that are not workspace
            labels.
    """
    import SimpleITK as sitk

    from assft.errors import AssftError
    from assft.io.imaging import read_label
    from assft.io.voxel_grids import geometry_mismatch

    try:
        label = read_label(labelPath)
    except AssftError as error:
        raise ValueError(str(error)) from None
    mismatch = geometry_mismatch(label, _gridImage(referenceVolumeNode))
    if mismatch is not None:
        raise ValueError(f"{labelPath}: {mismatch}")
    array = sitk.GetArrayFromImage(label).astype(np.uint16)
    allowed = {0} | {label_.value for label_ in labels}
    unknown = sorted(set(np.unique(array).tolist()) - allowed)
    if unknown:
        raise ValueError(
            f"{labelPath}: values {unknown} are not labels of the workspace "
            f"({sorted(allowed - {0})})"
        )
    return array


def createCaseSegmentation(
    referenceVolumeNode,
    labels: Sequence[LabelDefinition],
    labelArray: np.ndarray | None = None,
    name: str | None = None,
):
    """A segmentation on the scan's grid with one segment per workspace label.

    Every label gets a segment (empty ones too, so the clinician can paint it), named and
    colored as in the workspace, in label order.

    Args:
        referenceVolumeNode: The case's scan.
        labels: The workspace's labels.
        labelArray: Optional (k, j, i) label map on the scan's grid to pre-fill from.
        name: Node name (default: "<scan> segmentation").
    """
    segmentationNode = slicer.mrmlScene.AddNewNodeByClass(
        "vtkMRMLSegmentationNode",
        slicer.mrmlScene.GenerateUniqueName(
            name or f"{referenceVolumeNode.GetName()} segmentation"
        ),
    )
    segmentationNode.CreateDefaultDisplayNodes()
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
    segmentation = segmentationNode.GetSegmentation()
    for label in labels:
        segmentation.AddEmptySegment(
            f"{SEGMENT_ID_PREFIX}{label.value}", label.name, list(label.color)
        )
    for attribute in (_ATTRIBUTE_CASE, _ATTRIBUTE_WORKSPACE):
        value = referenceVolumeNode.GetAttribute(attribute)
        if value:
            segmentationNode.SetAttribute(attribute, value)
    segmentationNode.SetAttribute(_ATTRIBUTE_ROLE, "segmentation")
    if labelArray is not None:
        fillSegmentationFromLabelArray(segmentationNode, referenceVolumeNode, labels, labelArray)
    return segmentationNode


def fillSegmentationFromLabelArray(
    segmentationNode, referenceVolumeNode, labels: Sequence[LabelDefinition], labelArray: np.ndarray
) -> None:
    """Set each workspace label's segment from a label map on the scan's grid."""
    segmentation = segmentationNode.GetSegmentation()
    for label in labels:
        segmentId = (
            segmentation.GetSegmentIdBySegmentName(label.name)
            or f"{SEGMENT_ID_PREFIX}{label.value}"
        )
        if segmentation.GetSegment(segmentId) is None:
            segmentation.AddEmptySegment(segmentId, label.name, list(label.color))
        mask = (labelArray == label.value).astype(np.uint8)
        slicer.util.updateSegmentBinaryLabelmapFromArray(
            mask, segmentationNode, segmentId, referenceVolumeNode
        )


HEAT_COLORMAPS = ("Inferno", "ColdToHotRainbow")
"""Slicer's heat colour maps, from its colour files, in the order the uncertainty map takes them."""
OWN_HEAT_COLORMAP = "ASSFT heat"


def heatColorNode():
    """The uncertainty map's colour map: Slicer's Inferno (or ColdToHotRainbow); where the scene
    has neither (slicer-core and the web page load no colour files), a black-red-yellow-white
    table of our own, so that 0 stays black and the map never shows in grey."""
    for name in HEAT_COLORMAPS + (OWN_HEAT_COLORMAP,):
        node = slicer.mrmlScene.GetFirstNodeByName(name)
        if node is not None:
            return node
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLColorTableNode", OWN_HEAT_COLORMAP)
    node.SetTypeToUser()
    node.SetNumberOfColors(256)
    for i in range(256):
        t = 3.0 * i / 255.0
        node.SetColor(i, min(1.0, t), min(1.0, max(0.0, t - 1.0)), max(0.0, t - 2.0), 1.0)
    return node


def loadUncertaintyVolume(path: str | Path, referenceVolumeNode, caseId: str):
    """Load a voxel uncertainty map (entropy in 0..1) as a scalar volume with a heat colormap."""
    from assft.errors import AssftError
    from assft.io.imaging import read_image
    from assft.io.voxel_grids import geometry_mismatch

    try:
        image = read_image(path)
    except AssftError as error:
        raise ValueError(str(error)) from None
    mismatch = geometry_mismatch(image, _gridImage(referenceVolumeNode))
    if mismatch is not None:
        raise ValueError(f"{path}: {mismatch}")
    node = volumeNodeFromImage(image, f"{caseId} uncertainty")
    node.SetAttribute(_ATTRIBUTE_CASE, caseId)
    node.SetAttribute(_ATTRIBUTE_ROLE, "uncertainty")
    display = node.GetDisplayNode()
    if display is not None:
        display.SetAndObserveColorNodeID(heatColorNode().GetID())
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(0.0, 1.0)
    return node


def setForegroundVolume(backgroundNode, foregroundNode=None, opacity: float = 0.4) -> int:
    """Show a scan in every slice view, with an optional foreground overlay (None hides it).

    Works on the scene's slice composite nodes, so it needs no GUI; returns how many views
    were set.
    """
    composites = slicer.mrmlScene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    composites.UnRegister(None)
    count = 0
    for index in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(index)
        if backgroundNode is not None:
            composite.SetBackgroundVolumeID(backgroundNode.GetID())
        composite.SetForegroundVolumeID(None if foregroundNode is None else foregroundNode.GetID())
        composite.SetForegroundOpacity(opacity if foregroundNode is not None else 0.0)
        count += 1
    return count


def removeCaseNodes(caseNodes: CaseNodes | None) -> None:
    """Remove a case's nodes (and their display and storage nodes) from the scene."""
    if caseNodes is None:
        return
    for node in caseNodes.nodes():
        if node is not None and node.GetScene() is not None:
            slicer.mrmlScene.RemoveNode(node)


# Export and submit -----------------------------------------------------------------------------


def _normalizedName(name: str) -> str:
    return " ".join(name.split()).casefold()


def segmentLabelValues(
    segmentationNode, labels: Sequence[LabelDefinition]
) -> list[tuple[str, str, int]]:
    """Match every segment to a workspace label by its name (case and spacing ignored).

    Returns:
        ``[(segment id, segment name, label value), ...]`` in segment order.

    Raises:
        UnknownSegmentError: a segment's name is not a workspace label (e.g. "Segment_1").
        ValueError: two segments carry the same label's name, or there are no segments.
    """
    byName = {_normalizedName(label.name): label.value for label in labels}
    segmentation = segmentationNode.GetSegmentation()
    matched: list[tuple[str, str, int]] = []
    unknown: list[str] = []
    for index in range(segmentation.GetNumberOfSegments()):
        segmentId = segmentation.GetNthSegmentID(index)
        name = segmentation.GetSegment(segmentId).GetName() or ""
        value = byName.get(_normalizedName(name))
        if value is None:
            unknown.append(name or segmentId)
        else:
            matched.append((segmentId, name, value))
    if unknown:
        raise UnknownSegmentError(unknown, [label.name for label in labels])
    if not matched:
        raise ValueError("the segmentation has no segments: there is nothing to submit")
    seen: dict[int, str] = {}
    for _, name, value in matched:
        if value in seen:
            raise ValueError(
                f"segments '{seen[value]}' and '{name}' both stand for label {value}: merge them "
                "(Logical operators, Add) or rename one"
            )
        seen[value] = name
    return matched


def _nodeIds() -> set[str]:
    scene = slicer.mrmlScene
    return {scene.GetNthNode(index).GetID() for index in range(scene.GetNumberOfNodes())}


def _removeTemporaryLabelmap(labelmapNode, existingNodeIds: set[str]) -> None:
    """Remove a temporary labelmap node with the display and colour nodes an export gave it.

    Exporting segments into a labelmap node adds a display node and a colour table named after
    the segmentation (``<segmentation>_ColorTable``); removing the labelmap node leaves both in
    the scene, where they pile up and are saved with it. A colour node that existed before the
    export (a shared table) stays.
    """
    scene = slicer.mrmlScene
    for index in range(labelmapNode.GetNumberOfDisplayNodes()):
        display = labelmapNode.GetNthDisplayNode(index)
        if display is None:
            continue
        colorId = display.GetColorNodeID() if hasattr(display, "GetColorNodeID") else None
        if colorId and colorId not in existingNodeIds:
            colorNode = scene.GetNodeByID(colorId)
            if colorNode is not None:
                scene.RemoveNode(colorNode)
    displays = [
        labelmapNode.GetNthDisplayNode(index)
        for index in range(labelmapNode.GetNumberOfDisplayNodes())
    ]
    storage = labelmapNode.GetStorageNode()
    scene.RemoveNode(labelmapNode)
    for node in [*displays, storage]:
        if node is not None and node.GetScene() is not None:
            scene.RemoveNode(node)


def segmentMask(segmentationNode, segmentId: str, referenceVolumeNode) -> np.ndarray:
    """A segment as a boolean (k, j, i) array on the reference volume's grid.

    What ``slicer.util.arrayFromSegmentBinaryLabelmap`` gives, without leaving a display node
    (and a colour table) in the scene at each call.

    Raises:
        RuntimeError: the export failed.
    """
    segmentIds = vtk.vtkStringArray()
    segmentIds.InsertNextValue(segmentId)
    existing = _nodeIds()
    labelmapNode = slicer.mrmlScene.AddNewNodeByClass(
        "vtkMRMLLabelMapVolumeNode", "__assft_export__"
    )
    try:
        ok = slicer.modules.segmentations.logic().ExportSegmentsToLabelmapNode(
            segmentationNode,
            segmentIds,
            labelmapNode,
            referenceVolumeNode,
            slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY,
        )
        if not ok:
            raise RuntimeError(f"exporting segment {segmentId!r} to the scan's geometry failed")
        return slicer.util.arrayFromVolume(labelmapNode) != 0
    finally:
        _removeTemporaryLabelmap(labelmapNode, existing)


def segmentationDigest(segmentationNode) -> str:
    """A digest of what a segmentation draws: each segment's name, layer and label value, and
    each layer's binary labelmap (its extent and voxels). Two states of a segmentation draw the
    same thing exactly when their digests agree (an edit undone gives the digest back).

    It reads the labelmap layers as they are held, without exporting a segment (a model with a
    hundred structures shares a few layers): cheap enough for every case load.
    """
    from vtk.util.numpy_support import vtk_to_numpy

    digest = hashlib.sha256()
    segmentation = segmentationNode.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segmentId = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segmentId)
        layer = segmentation.GetLayerIndex(segmentId)
        digest.update(f"{segment.GetName() or ''}\0{layer}\0{segment.GetLabelValue()}\0".encode())
    for layer in range(segmentation.GetNumberOfLayers()):
        image = segmentation.GetLayerDataObject(layer)
        if image is None:
            digest.update(b"no layer\0")
            continue
        digest.update(str(tuple(image.GetExtent())).encode("ascii"))
        scalars = image.GetPointData().GetScalars()
        if scalars is not None:
            digest.update(np.ascontiguousarray(vtk_to_numpy(scalars)).tobytes())
    return digest.hexdigest()


def exportLabelArray(
    segmentationNode,
    referenceVolumeNode,
    labels: Sequence[LabelDefinition],
    overlap: OverlapPolicy | str = OverlapPolicy.REFUSE,
) -> np.ndarray:
    """The segmentation as one label map on the scan's grid.

    Each segment is exported alone at the scan's reference geometry (resampled if the
    segmentation's own geometry differs), so that overlaps can be seen instead of being
    silently decided by the export order.

    Args:
        segmentationNode: The case's segmentation.
        referenceVolumeNode: The case's scan: its grid is the label's.
        labels: The workspace's labels; segments are matched to them by name.
        overlap: What to do with voxels in more than one segment (see :class:`OverlapPolicy`).

    Returns:
        A (k, j, i) uint16 array holding 0 and workspace label values.

    Raises:
        UnknownSegmentError: a segment is not a workspace label.
        SegmentOverlapError: segments overlap and ``overlap`` is ``refuse``.
        ValueError: no segments, two segments for one label, or a transformed scan.
    """
    overlap = OverlapPolicy(overlap)
    _refuseTransformed(referenceVolumeNode)
    _refuseTransformed(segmentationNode)
    matched = segmentLabelValues(segmentationNode, labels)
    masks = [
        (name, value, segmentMask(segmentationNode, segmentId, referenceVolumeNode))
        for segmentId, name, value in matched
    ]
    if overlap is OverlapPolicy.REFUSE:
        overlaps = []
        for i, (nameA, _, maskA) in enumerate(masks):
            for nameB, _, maskB in masks[i + 1 :]:
                shared = int(np.count_nonzero(maskA & maskB))
                if shared:
                    overlaps.append((nameA, nameB, shared))
        if overlaps:
            raise SegmentOverlapError(overlaps)
    order = masks if overlap is not OverlapPolicy.FIRST_WINS else list(reversed(masks))
    labelArray = np.zeros(_volumeShape(referenceVolumeNode), dtype=np.uint16)
    for _, value, mask in order:  # later segments overwrite earlier ones
        labelArray[mask] = value
    return labelArray


def writeLabelFile(labelArray: np.ndarray, referenceVolumeNode, path: str | Path) -> Path:
    """Write a label map with the reference volume's grid (NIfTI, uint16, written atomically)."""
    from assft.io.imaging import write_image_atomic

    image = imageFromVolumeNode(referenceVolumeNode, labelArray.astype(np.uint16))
    return Path(write_image_atomic(image, Path(path)))


def submitSegmentation(
    workspace,
    caseId: str,
    segmentationNode,
    referenceVolumeNode,
    *,
    overlap: OverlapPolicy | str = OverlapPolicy.REFUSE,
    user: str | None = None,
) -> Path:
    """Export a case's segmentation and store it through the engine's validated ``submit_label``.

    The label goes through a temporary NIfTI file that is removed afterwards; the engine checks
    it against the scan's grid and the declared labels and stores it atomically.

    Returns:
        The stored label's path in the workspace.

    Raises:
        UnknownSegmentError, SegmentOverlapError, ValueError: see :func:`exportLabelArray`; the
            engine's refusal is re-raised as ``ValueError`` with its message.
    """
    from assft.errors import AssftError

    labels = LabelDefinition.fromWorkspace(workspace.config.labels)
    labelArray = exportLabelArray(segmentationNode, referenceVolumeNode, labels, overlap)
    handle, temporary = tempfile.mkstemp(prefix=f"assft-{caseId}-", suffix=".nii.gz")
    os.close(handle)
    try:
        writeLabelFile(labelArray, referenceVolumeNode, temporary)
        try:
            return Path(workspace.submit_label(caseId, temporary, user=user))
        except AssftError as error:
            raise ValueError(str(error)) from None
    finally:
        Path(temporary).unlink(missing_ok=True)

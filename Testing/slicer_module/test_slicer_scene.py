"""Scene I/O against real MRML (slicer-core): load, pre-fill, edit, submit, compare voxel for
voxel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from assft_testing.slicer_side import (
    blob_labels,
    require_slicer,
    rotation,
    write_label_like,
    write_scan,
)

slicer = require_slicer()
import SimpleITK as sitk  # noqa: E402

from ASSFTSlicerLib.scene import (  # noqa: E402
    OverlapPolicy,
    SegmentOverlapError,
    UnknownSegmentError,
    imageGeometryFromVolumeNode,
    setForegroundVolume,
)

LABEL_NAMES = {1: "shell", 2: "core"}

GEOMETRIES = {
    "identity": dict(
        shape=(8, 10, 12), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None
    ),
    "rotated-anisotropic": dict(
        shape=(7, 11, 13),
        spacing=(0.7, 1.3, 3.1),
        origin=(12.5, -40.0, 7.25),
        direction=rotation((0.3, -0.5, 0.9)),
    ),
    "mirrored-oblique": dict(
        shape=(9, 8, 10),
        spacing=(2.5, 0.9, 1.1),
        origin=(-3.0, 5.0, 100.0),
        direction=rotation((0.2, 0.1, -0.4)) @ np.diag([1.0, -1.0, 1.0]),
    ),
}


def _workspace(tmp_path: Path, geometry: dict):
    from assft.workspace import Workspace

    scan = write_scan(tmp_path / "scans" / "case_a.nii.gz", **geometry)
    write_scan(tmp_path / "scans" / "case_b.nii.gz", **{**geometry, "shape": (6, 6, 6)}, seed=1)
    workspace = Workspace.create(
        tmp_path / "ws", [tmp_path / "scans"], label_names=LABEL_NAMES, user="tester"
    )
    return workspace, scan


def _logic():
    import sys

    import ASSFTSlicer

    return ASSFTSlicer.ASSFTSlicerLogic(python=sys.executable, launcher="thread")


def _write_prediction(workspace, case_id: str, scan: Path, array: np.ndarray) -> Path:
    folder = workspace.root / "predictions" / workspace.current_model_version()
    label = write_label_like(folder / f"{case_id}.nii.gz", scan, array)
    reference = sitk.ReadImage(str(scan))
    uncertainty = sitk.GetImageFromArray(
        np.random.default_rng(0).random(array.shape).astype(np.float32)
    )
    uncertainty.CopyInformation(reference)
    sitk.WriteImage(uncertainty, str(folder / f"{case_id}_uncertainty.nii.gz"))
    return label


def _segment(nodes, name: str) -> np.ndarray:
    segmentation = nodes.segmentation.GetSegmentation()
    return (
        slicer.util.arrayFromSegmentBinaryLabelmap(
            nodes.segmentation, segmentation.GetSegmentIdBySegmentName(name), nodes.volume
        )
        != 0
    )


def _stored(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _ijk_to_ras(node) -> np.ndarray:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _assert_same_voxels_in_ras(ours, theirs) -> None:
    """Each voxel of ``ours`` has the same value as the voxel of ``theirs`` at its RAS position."""
    ours_array, theirs_array = (
        slicer.util.arrayFromVolume(ours),
        slicer.util.arrayFromVolume(theirs),
    )
    assert ours_array.shape == theirs_array.shape or sorted(ours_array.shape) == sorted(
        theirs_array.shape
    )
    k, j, i = np.indices(ours_array.shape).reshape(3, -1)
    ras = _ijk_to_ras(ours) @ np.vstack([i, j, k, np.ones_like(i)])
    ijk = np.linalg.inv(_ijk_to_ras(theirs)) @ ras
    np.testing.assert_allclose(ijk, np.round(ijk), atol=1e-3)
    ti, tj, tk = np.round(ijk[:3]).astype(int)
    np.testing.assert_array_equal(ours_array[k, j, i], theirs_array[tk, tj, ti])


def _editor(mrml, nodes, editorNode=None):
    """A vtkSlicerSegmentEditorLogic on the case, as the Segment Editor would set it up."""
    editor = slicer.vtkSlicerSegmentEditorLogic()
    editor.SetMRMLApplicationLogic(mrml.app)
    editor.SetMRMLScene(mrml.scene)
    editor.SetSegmentEditorNode(
        editorNode or mrml.scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    )
    editor.SetSegmentationNode(nodes.segmentation)
    editor.SetSourceVolumeNode(nodes.volume)
    return editor


def _paint(
    editor, nodes, name: str, mask: np.ndarray, mode=None, bypassMasking: bool = False
) -> None:
    """Add ``mask`` to a segment through the Segment Editor logic (undo-able, masking as set)."""
    from vtk.util import numpy_support

    editor.ResetModifierLabelmapToDefault()
    modifier = editor.GetModifierLabelmap()
    extent = modifier.GetExtent()
    voxels = numpy_support.vtk_to_numpy(modifier.GetPointData().GetScalars()).reshape(
        extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1
    )
    assert voxels.shape == mask.shape
    voxels[:] = mask.astype(voxels.dtype)
    modifier.Modified()
    segment_id = nodes.segmentation.GetSegmentation().GetSegmentIdBySegmentName(name)
    editor.SaveStateForUndo()
    editor.ModifySegmentByLabelmap(
        nodes.segmentation,
        segment_id,
        modifier,
        editor.ModificationModeAdd if mode is None else mode,
        False,
        bypassMasking,
    )


@pytest.mark.parametrize("geometry", list(GEOMETRIES), ids=list(GEOMETRIES))
def test_load_prefill_edit_submit_round_trips_exactly(mrml, tmp_path, geometry):
    workspace, scan = _workspace(tmp_path, GEOMETRIES[geometry])
    shape = GEOMETRIES[geometry]["shape"]
    prediction = blob_labels(shape, seed=4)
    _write_prediction(workspace, "case_a", scan, prediction)
    logic = _logic()

    nodes = logic.loadCase(workspace.root, "case_a")

    # The scan is on exactly the file's grid.
    reference = sitk.ReadImage(str(scan))
    geometry_of_node = imageGeometryFromVolumeNode(nodes.volume)
    np.testing.assert_allclose(geometry_of_node["origin"], reference.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(geometry_of_node["spacing"], reference.GetSpacing(), atol=1e-12)
    np.testing.assert_allclose(geometry_of_node["direction"], reference.GetDirection(), atol=1e-9)
    np.testing.assert_array_equal(
        slicer.util.arrayFromVolume(nodes.volume), sitk.GetArrayFromImage(reference)
    )
    # ... and every voxel lies where Slicer's own reader puts it in RAS (that reader may store
    # a mirrored grid with its slices reversed: positions are compared, not matrices).
    by_slicer = mrml.volumes.AddArchetypeVolume(str(scan), "read by Slicer")
    _assert_same_voxels_in_ras(nodes.volume, by_slicer)
    mrml.scene.RemoveNode(by_slicer)
    # One segment per label, named and colored as in the workspace, pre-filled with the prediction.
    segmentation = nodes.segmentation.GetSegmentation()
    assert [
        segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())
    ] == ["shell", "core"]
    for label in workspace.config.labels:
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(label.name))
        np.testing.assert_allclose(segment.GetColor(), label.color, atol=1e-6)
        np.testing.assert_array_equal(_segment(nodes, label.name), prediction == label.value)
    assert nodes.uncertainty is not None

    # The clinician paints: grow the core (it overwrites the shell there, the editor's default),
    # and erase a corner of the shell.
    editor = _editor(mrml, nodes)
    grow = np.zeros(shape, bool)
    grow[1:4, 1:4, 1:5] = True
    _paint(editor, nodes, "core", grow)
    erase = np.zeros(shape, bool)
    erase[-2:, -3:, -3:] = True
    _paint(editor, nodes, "shell", erase, mode=editor.ModificationModeRemove)
    expected = prediction.copy()
    expected[grow] = 2
    expected[erase & (expected == 1)] = 0

    stored = logic.submitCase(workspace.root, user="tester")

    assert stored == workspace.root / "labels" / "case_a.nii.gz"
    np.testing.assert_array_equal(_stored(stored), expected)
    for label in workspace.config.labels:
        np.testing.assert_array_equal(_segment(nodes, label.name), expected == label.value)
    stored_image = sitk.ReadImage(str(stored))
    assert stored_image.GetSize() == reference.GetSize()
    np.testing.assert_allclose(stored_image.GetDirection(), reference.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(stored_image.GetSpacing(), reference.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(stored_image.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    case = logic.openWorkspace(workspace.root).registry.case("case_a")
    assert case["status"] == "labeled"

    # Loading it again starts from the stored label, not the prediction.
    again = logic.loadCase(workspace.root, "case_a")
    for label in workspace.config.labels:
        np.testing.assert_array_equal(_segment(again, label.name), expected == label.value)
    assert nodes.volume.GetScene() is None, "the previous case's nodes stay in the scene"


def test_overlapping_segments_are_refused_then_resolved_as_asked(mrml, tmp_path):
    workspace, scan = _workspace(tmp_path, GEOMETRIES["rotated-anisotropic"])
    shape = GEOMETRIES["rotated-anisotropic"]["shape"]
    prediction = blob_labels(shape, seed=2)
    _write_prediction(workspace, "case_a", scan, prediction)
    logic = _logic()
    nodes = logic.loadCase(workspace.root, "case_a")
    editor = _editor(mrml, nodes)
    overlap = (prediction == 1) & (np.indices(shape)[2] < 6)
    _paint(
        editor, nodes, "core", overlap, bypassMasking=True
    )  # no overwrite: both segments hold the voxels
    assert (_segment(nodes, "shell") & _segment(nodes, "core")).sum() == overlap.sum() > 0

    with pytest.raises(SegmentOverlapError) as refused:
        logic.submitCase(workspace.root)
    assert refused.value.overlaps == [("shell", "core", int(overlap.sum()))]
    assert "'shell' and 'core' share" in str(refused.value)
    assert workspace.label_path("case_a") is None, "a refused label was stored"

    last = logic.submitCase(workspace.root, overlap=OverlapPolicy.LAST_WINS)
    expected = prediction.copy()
    expected[overlap] = 2  # core is lower in the segment list
    np.testing.assert_array_equal(_stored(last), expected)

    first = logic.submitCase(workspace.root, overlap="firstWins")
    np.testing.assert_array_equal(_stored(first), prediction)  # shell wins back its voxels
    assert len(list((workspace.root / "labels" / "backup").iterdir())) == 1


@pytest.mark.parametrize("empty", [True, False], ids=["empty", "painted"])
def test_a_segment_that_is_not_a_workspace_label_is_refused(mrml, tmp_path, empty):
    workspace, scan = _workspace(tmp_path, GEOMETRIES["identity"])
    shape = GEOMETRIES["identity"]["shape"]
    _write_prediction(workspace, "case_a", scan, blob_labels(shape))
    logic = _logic()
    nodes = logic.loadCase(workspace.root, "case_a")
    new_id = nodes.segmentation.GetSegmentation().AddEmptySegment("", "", [0.5, 0.5, 0.5])
    if not empty:
        mask = np.zeros(shape, np.uint8)
        mask[0, 0, :4] = 1
        slicer.util.updateSegmentBinaryLabelmapFromArray(
            mask, nodes.segmentation, new_id, nodes.volume
        )

    with pytest.raises(UnknownSegmentError) as refused:
        logic.submitCase(workspace.root)
    assert refused.value.segmentNames == ["Segment_1"]
    assert "'shell', 'core'" in str(refused.value) and "rename it" in str(refused.value)
    assert workspace.label_path("case_a") is None

    # Renamed to a label (case and spacing ignored) it counts as that label... but two segments
    # for one label are refused too.
    nodes.segmentation.GetSegmentation().GetSegment(new_id).SetName("  CORE ")
    with pytest.raises(ValueError, match="both stand for label 2"):
        logic.submitCase(workspace.root)
    nodes.segmentation.GetSegmentation().RemoveSegment(new_id)
    assert logic.submitCase(workspace.root).is_file()


def test_a_prediction_that_does_not_fit_is_refused(mrml, tmp_path):
    workspace, scan = _workspace(tmp_path, GEOMETRIES["rotated-anisotropic"])
    shape = GEOMETRIES["rotated-anisotropic"]["shape"]
    logic = _logic()
    bad_values = blob_labels(shape)
    bad_values[0, 0, 0] = 7
    path = _write_prediction(workspace, "case_a", scan, bad_values)
    with pytest.raises(ValueError, match=r"values \[7\] are not labels"):
        logic.loadCase(workspace.root, "case_a")
    other_grid = write_scan(
        tmp_path / "other.nii.gz",
        **{**GEOMETRIES["rotated-anisotropic"], "spacing": (1.0, 1.0, 1.0)},
    )
    write_label_like(path, other_grid, blob_labels(shape))
    with pytest.raises(ValueError, match="spacing"):
        logic.loadCase(workspace.root, "case_a")
    assert mrml.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0, (
        "a refused case left nodes behind"
    )


def test_a_case_without_prediction_gets_empty_segments_and_a_transformed_scan_is_refused(
    mrml, tmp_path
):
    workspace, _ = _workspace(tmp_path, GEOMETRIES["identity"])
    logic = _logic()
    nodes = logic.loadCase(workspace.root, "case_b")
    assert nodes.uncertainty is None
    assert not _segment(nodes, "shell").any() and not _segment(nodes, "core").any()
    transform = mrml.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    import vtk

    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 5.0)
    transform.SetMatrixTransformToParent(matrix)
    nodes.volume.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(ValueError, match="under the transform"):
        logic.submitCase(workspace.root)
    nodes.volume.SetAndObserveTransformNodeID(None)
    stored = logic.submitCase(workspace.root)
    assert not _stored(stored).any()


def test_the_engine_refusal_is_reported_and_nothing_is_submitted_without_a_case(mrml, tmp_path):
    workspace, _ = _workspace(tmp_path, GEOMETRIES["identity"])
    logic = _logic()
    with pytest.raises(ValueError, match="No case is loaded"):
        logic.submitCase(workspace.root)
    with pytest.raises(ValueError, match="unknown case id"):
        logic.loadCase(workspace.root, "nope")
    with pytest.raises(ValueError, match="not an ASSFT workspace|does not exist"):
        logic.openWorkspace(tmp_path / "scans")


def test_the_uncertainty_overlay_toggles_in_the_slice_views(mrml, tmp_path):
    workspace, scan = _workspace(tmp_path, GEOMETRIES["identity"])
    _write_prediction(workspace, "case_a", scan, blob_labels(GEOMETRIES["identity"]["shape"]))
    composites = [mrml.scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(3)]
    logic = _logic()
    nodes = logic.loadCase(workspace.root, "case_a", showUncertainty=True)
    assert all(c.GetBackgroundVolumeID() == nodes.volume.GetID() for c in composites)
    assert all(
        c.GetForegroundVolumeID() == nodes.uncertainty.GetID() and c.GetForegroundOpacity() > 0
        for c in composites
    )
    logic.setUncertaintyVisible(False)
    assert all(c.GetForegroundVolumeID() is None for c in composites)
    assert setForegroundVolume(nodes.volume, nodes.uncertainty, 0.7) == 3
    assert composites[0].GetForegroundOpacity() == pytest.approx(0.7)
    display = nodes.uncertainty.GetDisplayNode()
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == (0.0, 1.0)
    # A heat map, black at 0, even without Slicer's colour files (this scene has none of them).
    assert mrml.scene.GetFirstNodeByName("Inferno") is None
    table = display.GetColorNode().GetLookupTable()
    assert table.GetNumberOfTableValues() == 256
    assert table.GetTableValue(0)[:3] == (0.0, 0.0, 0.0)
    assert table.GetTableValue(128)[:3] == pytest.approx((1.0, 0.5059, 0.0), abs=1e-3)
    assert table.GetTableValue(255)[:3] == (1.0, 1.0, 1.0)
    logic.loadCase(workspace.root, "case_a", showUncertainty=True)  # again: the same table
    assert len(slicer.util.getNodes("ASSFT heat*")) == 1


def test_loaded_volumes_are_written_on_their_own_grid_for_a_new_workspace(mrml, tmp_path):
    from ASSFTSlicerLib.scene import volumeNodeFromImage

    scan = write_scan(tmp_path / "in" / "x.nii.gz", **GEOMETRIES["mirrored-oblique"])
    node = volumeNodeFromImage(sitk.ReadImage(str(scan)), "my scan (T1)")
    written = _logic().writeVolumesForWorkspace([node], tmp_path / "out")
    assert [p.name for p in written] == ["my_scan__T1_.nii.gz"]
    back = sitk.ReadImage(str(written[0]))
    reference = sitk.ReadImage(str(scan))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(reference))
    np.testing.assert_allclose(back.GetDirection(), reference.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(back.GetOrigin(), reference.GetOrigin(), atol=1e-4)


def _scene_nodes(scene) -> dict[str, str]:
    return {
        scene.GetNthNode(i).GetID(): scene.GetNthNode(i).GetName()
        for i in range(scene.GetNumberOfNodes())
    }


def test_submitting_and_exporting_leave_no_nodes_behind(mrml, tmp_path):
    """Each export used to leave a display node and a '<segmentation>_ColorTable' per segment."""
    from ASSFTSlicerLib.scene import LabelDefinition, exportLabelArray, segmentMask

    workspace, scan = _workspace(tmp_path, GEOMETRIES["rotated-anisotropic"])
    prediction = blob_labels(GEOMETRIES["rotated-anisotropic"]["shape"], seed=5)
    _write_prediction(workspace, "case_a", scan, prediction)
    logic = _logic()
    nodes = logic.loadCase(workspace.root, "case_a")
    labels = LabelDefinition.fromWorkspace(workspace.config.labels)
    before = _scene_nodes(mrml.scene)

    stored = logic.submitCase(workspace.root, user="tester")
    np.testing.assert_array_equal(_stored(stored), prediction)
    assert _scene_nodes(mrml.scene) == before
    for _ in range(5):
        np.testing.assert_array_equal(
            exportLabelArray(nodes.segmentation, nodes.volume, labels), prediction
        )
    segment_id = nodes.segmentation.GetSegmentation().GetSegmentIdBySegmentName("core")
    for _ in range(3):
        np.testing.assert_array_equal(
            segmentMask(nodes.segmentation, segment_id, nodes.volume), prediction == 2
        )
    logic.submitCase(workspace.root, user="tester")
    assert _scene_nodes(mrml.scene) == before


def test_a_colour_table_that_existed_before_the_export_stays(mrml):
    from ASSFTSlicerLib.scene import _nodeIds, _removeTemporaryLabelmap

    shared = mrml.scene.AddNewNodeByClass("vtkMRMLColorTableNode", "shared labels")
    existing = _nodeIds()
    labelmap = mrml.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "temporary")
    labelmap.CreateDefaultDisplayNodes()
    labelmap.GetDisplayNode().SetAndObserveColorNodeID(shared.GetID())
    _removeTemporaryLabelmap(labelmap, existing)
    assert _nodeIds() == existing and shared.GetScene() is mrml.scene


def test_the_panel_edits_with_its_own_segment_editor_node(mrml, tmp_path):
    """The embedded editor's parameter node: one per scene, not the Segment Editor module's."""
    workspace, scan = _workspace(tmp_path, GEOMETRIES["identity"])
    shape = GEOMETRIES["identity"]["shape"]
    prediction = blob_labels(shape, seed=3)
    _write_prediction(workspace, "case_a", scan, prediction)
    logic = _logic()
    moduleNode = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    moduleNode.SetSingletonTag("SegmentEditor")
    own = logic.segmentEditorNode()
    assert own is logic.segmentEditorNode() and own is not moduleNode
    assert own.GetSingletonTag() == "ASSFTSlicer"
    nodes = logic.loadCase(workspace.root, "case_a")
    editor = _editor(mrml, nodes, own)
    own.SetOverwriteMode(own.OverwriteNone)  # a setting of the panel's editor only
    assert moduleNode.GetOverwriteMode() != own.OverwriteNone
    grow = np.zeros(shape, bool)
    grow[1:3, 1:4, 1:4] = True
    _paint(editor, nodes, "shell", grow)
    expected = prediction.copy()
    expected[grow & (expected == 0)] = 1  # "overwrite none": the core keeps its voxels
    np.testing.assert_array_equal(_stored(logic.submitCase(workspace.root)), expected)
    mrml.scene.Clear(0)  # a closed scene keeps its singletons, reset: the same node serves on
    assert logic.segmentEditorNode().GetScene() is mrml.scene

"""What the panel keeps across a session, through the Logic on real MRML: the folder fields, the
workspace the buttons act on, the model list, a case in a reloaded scene, and a module that
fails loudly inside Slicer."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import sys

import numpy as np
import pytest

from assft_testing.slicer_side import MODULE_DIR, blob_labels, require_slicer, write_label_like

slicer = require_slicer()

import ASSFTSlicer  # noqa: E402


def _logic():
    return ASSFTSlicer.ASSFTSlicerLogic(python=sys.executable, launcher="thread")


def _two_scans(tmp_path, synthetic_pool) -> pathlib.Path:
    """A folder holding two scans of the synthetic pool."""
    _, cases = synthetic_pool
    images = tmp_path / "images"
    images.mkdir()
    for case in cases[:2]:
        shutil.copy(case.image, images / case.image.name)
    return images


@pytest.fixture
def workspace(tmp_path, synthetic_pool):
    from assft.workspace import Workspace

    images = _two_scans(tmp_path, synthetic_pool)
    return Workspace.create(
        tmp_path / "ws", [images], label_names={1: "shell", 2: "core"}, user="tester"
    )


def test_a_typed_folder_is_kept_and_the_last_workspace_fills_an_empty_field_once(
    workspace, tmp_path
):
    """initializeParameterNode() runs at every enter(): it used to replace a folder typed for
    "Create from loaded volumes" (the user leaves the module to load the volumes)."""
    typed = tmp_path / "new-workspace"
    logic = _logic()
    assert logic.workspaceToRestore(typed, workspace.root) is None
    assert logic.workspaceToRestore(pathlib.Path(), workspace.root) is None  # only once
    fresh = _logic()
    assert fresh.workspaceToRestore(pathlib.Path(), str(workspace.root)) == workspace.root
    assert fresh.workspaceToRestore(pathlib.Path(), str(workspace.root)) is None
    assert _logic().workspaceToRestore("", str(tmp_path / "gone")) is None
    assert _logic().workspaceToRestore("", None) is None


def test_folder_fields_show_no_dot_and_keep_what_is_typed(tmp_path):
    logic = _logic()
    assert logic.pathFieldText(pathlib.Path(), "") is None  # unset and empty: left alone
    assert logic.pathFieldText(pathlib.Path(), "/somewhere") == ""  # cleared, never "."
    typed = f"{tmp_path}{os.sep}"  # a trailing separator, as the user types on
    assert logic.pathFromFieldText(typed) == tmp_path
    assert logic.pathFieldText(tmp_path, typed) is None  # not rewritten to "<tmp_path>"
    assert logic.pathFieldText(tmp_path / "x", typed) == str(tmp_path / "x")
    assert logic.pathFromFieldText("  ") == pathlib.Path()


def test_the_buttons_follow_the_workspace_the_field_names(workspace, tmp_path):
    logic = _logic()
    summary = logic.workspaceSummary(workspace.root)
    assert logic.summaryIsFor(summary, workspace.root)
    assert logic.summaryIsFor(summary, f"{workspace.root}{os.sep}")
    assert not logic.summaryIsFor(summary, tmp_path / "other")
    assert not logic.summaryIsFor(summary, pathlib.Path())
    assert not logic.summaryIsFor(None, workspace.root)


def test_presets_that_need_weights_or_a_package_say_so(monkeypatch, tmp_path):
    from assft.models.checkpoints import downloads_dir

    logic = _logic()
    presets = {p["name"]: p for p in logic.modelPresets()}
    assert list(presets) == ASSFTSlicer.MODEL_PRESETS
    monkeypatch.setenv("ASSFT_MODELS_DIR", str(tmp_path / "weights"))
    assert logic.downloadedWeightsFolder() == downloads_dir()
    assert logic.presetLabel(presets["demo"]) == "demo"
    assert logic.presetLabel(presets["swinunetr-ssl"]) == "swinunetr-ssl (needs download)"
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model_swinvit.pt").write_bytes(b"downloaded")
    assert logic.presetLabel(presets["swinunetr-ssl"]) == "swinunetr-ssl"
    template = presets["monai-bundle-segresnet"]
    assert logic.presetLabel(template) == "monai-bundle-segresnet (needs a weights file)"
    missing = {"name": "x", "checkpoint": {"source": "package", "package": "assft-no-such-pkg"}}
    assert logic.presetLabel(missing) == "x (needs the assft-no-such-pkg package)"
    installed = importlib.util.find_spec("deepbet") is not None
    assert (logic.presetLabel(presets["deepbet"]) == "deepbet") == installed
    monkeypatch.delenv("ASSFT_MODELS_DIR")
    assert logic.downloadedWeightsFolder() == downloads_dir()


def _scene_nodes(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def _save_scene(mrml, folder: pathlib.Path, nodes) -> None:
    """Save the scene with its data, as File > Save does."""
    for node in nodes:
        node.AddDefaultStorageNode()
        storage = node.GetStorageNode()
        extension = ".seg.nrrd" if node.IsA("vtkMRMLSegmentationNode") else ".nrrd"
        storage.SetFileName(str(folder / f"{node.GetID()}{extension}"))
        assert storage.WriteData(node)
    mrml.scene.SetRootDirectory(str(folder))
    mrml.scene.SetURL(str(folder / "scene.mrml"))
    assert mrml.scene.Commit()


def test_a_case_in_a_reloaded_scene_is_taken_over_and_submitted(mrml, workspace, tmp_path):
    """After a scene reload "Submit and next" was enabled but failed: the Logic had no case."""
    case = "case_000"
    scan = workspace.image_path(case)
    import SimpleITK as sitk

    shape = sitk.GetArrayFromImage(sitk.ReadImage(str(scan))).shape
    prediction = blob_labels(shape, seed=1)
    folder = workspace.root / "predictions" / workspace.current_model_version()
    write_label_like(folder / f"{case}.nii.gz", scan, prediction)
    logic = _logic()
    nodes = logic.loadCase(workspace.root, case)
    edited = prediction.copy()
    edited[:2] = 0
    _paint(nodes, edited)
    # The parameter node names the case and its nodes (by reference), as the wrapper stores it.
    parameters = mrml.scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "ASSFTSlicer")
    parameters.SetParameter("currentCase", case)
    parameters.SetNodeReferenceID("caseVolume", nodes.volume.GetID())
    parameters.SetNodeReferenceID("caseSegmentation", nodes.segmentation.GetID())
    saved = tmp_path / "saved-scene"
    saved.mkdir()
    _save_scene(mrml, saved, [nodes.volume, nodes.segmentation])

    mrml.scene.Clear(1)
    assert logic.loadedCase() is None  # the nodes went with the scene
    with pytest.raises(ValueError, match="No case is loaded"):
        logic.submitCase(workspace.root)

    mrml.scene.SetURL(str(saved / "scene.mrml"))
    assert mrml.scene.Connect()
    parameters = mrml.scene.GetFirstNodeByName("ASSFTSlicer")
    volume = parameters.GetNodeReference("caseVolume")
    segmentationNode = parameters.GetNodeReference("caseSegmentation")
    restored = logic.restoreCase(
        workspace.root, parameters.GetParameter("currentCase"), volume, segmentationNode
    )
    assert restored.caseId == case and logic.loadedCase() is restored
    before = _scene_nodes(mrml.scene)
    stored = logic.submitCase(workspace.root, user="tester")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(stored))), edited)
    assert _scene_nodes(mrml.scene) == before

    # Nodes that are missing or of another case are refused with what to do.
    logic.caseNodes = None
    with pytest.raises(ValueError, match="no segmentation of case case_000.*Load case"):
        logic.restoreCase(workspace.root, case, volume, None)
    with pytest.raises(ValueError, match="is not a node of case case_001"):
        logic.restoreCase(workspace.root, "case_001", volume, segmentationNode)
    assert logic.loadedCase() is None


def test_a_slicer_import_error_inside_the_application_fails_loudly(monkeypatch):
    """Inside Slicer a failing Qt import used to register stub classes silently."""
    monkeypatch.setattr(slicer, "app", object(), raising=False)
    monkeypatch.setitem(sys.modules, "qt", None)  # Qt that cannot be imported
    spec = importlib.util.spec_from_file_location("ASSFTSlicerInApp", MODULE_DIR / "ASSFTSlicer.py")
    with pytest.raises(ImportError):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


def test_the_own_model_field_names_what_the_engine_opens_and_check_says_what_it_is(
    tmp_path, tiny_preset_file
):
    from assft.models import get_preset, load_model
    from assft.models.bundles import write_bundle

    logic = _logic()
    assert logic.modelForNewWorkspace("demo", "") == "demo"
    assert logic.modelForNewWorkspace("demo", "  ") == "demo"
    nnunet = tmp_path / "Dataset001_X" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    nnunet.mkdir(parents=True)
    (nnunet / "plans.json").write_text("{}")
    # A folder is recognised by its files; a prefix is kept; paths become absolute.
    assert logic.modelForNewWorkspace("demo", str(nnunet)) == f"nnunet:{nnunet.resolve()}"
    assert logic.modelForNewWorkspace("demo", f"nnunet:{nnunet}") == f"nnunet:{nnunet.resolve()}"
    preset = get_preset(tiny_preset_file)
    bundle = write_bundle(
        preset, preset.label_names, load_model(preset).network.state_dict(), tmp_path / "b"
    )
    assert logic.modelForNewWorkspace("demo", str(bundle)) == f"bundle:{bundle.resolve()}"
    assert logic.modelForNewWorkspace("demo", str(tiny_preset_file)) == str(
        tiny_preset_file.resolve()
    )
    with pytest.raises(ValueError, match="neither an nnU-Net results folder"):
        logic.modelForNewWorkspace("demo", str(tmp_path))
    with pytest.raises(ValueError, match="is not a folder"):
        logic.modelForNewWorkspace("demo", f"bundle:{tmp_path / 'missing'}")
    with pytest.raises(ValueError, match="is not a model"):
        logic.modelForNewWorkspace("demo", "my model")

    # Check model: the engine opens it as a new workspace would, in its own process.
    result = logic.startDescribeModel(f"bundle:{bundle.resolve()}").wait(timeout=120)
    assert result.ok, result.output
    info = result.jsonDocument()
    assert info["structures"] == {str(k): v for k, v in preset.label_names.items()}
    text = logic.modelInfoText(info)
    assert text.startswith("monai.UNet network; structures: ")
    assert all(name in text for name in preset.label_names.values())
    refused = logic.startDescribeModel(f"nnunet:{nnunet.resolve()}").wait(timeout=120)
    assert not refused.ok
    assert refused.errorMessage.endswith(f"{nnunet.resolve() / 'dataset.json'}: is missing")
    nnunet_info = {"architecture": "nnunet", "structures": {"1": "liver"}, "folds": ["0", "1"]}
    shown = logic.modelInfoText({**nnunet_info, "used": ["0", "1"]})
    assert shown == "nnunet network; structures: liver; an ensemble of folds 0, 1."
    assert logic.modelInfoText({**nnunet_info, "used": ["all"]}).endswith("; fold all.")


def test_a_new_workspace_records_the_structures_the_lab_will_label(
    tmp_path, synthetic_pool, tiny_preset_file
):
    """The panel's "structures you will label" field reaches assft init; a name the model does
    not have is refused in the engine's one line, and nothing is created."""
    from assft.workspace import Workspace

    images = _two_scans(tmp_path, synthetic_pool)
    logic = _logic()
    refused = logic.startCreateWorkspace(
        tmp_path / "bad",
        [images],
        str(tiny_preset_file),
        labelNames="1:shell,2:core",
        labeledStructures="liver",
    ).wait(timeout=120)
    assert not refused.ok
    assert "'liver' is not a structure of the model" in refused.errorMessage
    assert not (tmp_path / "bad").exists()
    created = logic.startCreateWorkspace(
        tmp_path / "ws",
        [images],
        str(tiny_preset_file),
        labelNames="1:shell,2:core",
        labeledStructures=" core ",
    ).wait(timeout=120)
    assert created.ok, created.output
    config = Workspace.open(tmp_path / "ws").config
    assert config.labeled_values == [2] and config.partially_labeled


def _paint(nodes, array: np.ndarray) -> None:
    """What the Segment Editor's effects do to the case's segmentation: new voxels per segment."""
    segmentation = nodes.segmentation.GetSegmentation()
    for value, name in ((1, "shell"), (2, "core")):
        slicer.util.updateSegmentBinaryLabelmapFromArray(
            (array == value).astype(np.uint8),
            nodes.segmentation,
            segmentation.GetSegmentIdBySegmentName(name),
            nodes.volume,
        )


def test_an_edit_not_submitted_is_never_dropped_without_consent(mrml, workspace, tmp_path):
    """Label next, a worklist double-click or a prediction that finished replaced the loaded
    case and its edits without a word (issue 22): loading now refuses while edits are not
    submitted, until the user says they may go."""
    import SimpleITK as sitk

    from ASSFTSlicerLib.scene import UnsubmittedEditsError

    scan = workspace.image_path("case_000")
    shape = sitk.GetArrayFromImage(sitk.ReadImage(str(scan))).shape
    prediction = blob_labels(shape, seed=1)
    folder = workspace.root / "predictions" / workspace.current_model_version()
    write_label_like(folder / "case_000.nii.gz", scan, prediction)
    logic = _logic()
    nodes = logic.loadCase(workspace.root, "case_000")
    assert logic.unsubmittedEdits() is None  # the prediction as loaded is no edit

    edited = prediction.copy()
    edited[: shape[0] // 2] = 0
    _paint(nodes, edited)
    assert logic.unsubmittedEdits() == "case_000"
    with pytest.raises(UnsubmittedEditsError, match="case case_000 has edits that are not sub"):
        logic.loadCase(workspace.root, "case_001")
    assert logic.loadedCase() is nodes  # nothing changed: the edited case is still there
    np.testing.assert_array_equal(
        slicer.util.arrayFromSegmentBinaryLabelmap(
            nodes.segmentation,
            nodes.segmentation.GetSegmentation().GetSegmentIdBySegmentName("core"),
            nodes.volume,
        )
        != 0,
        edited == 2,
    )

    _paint(nodes, prediction)  # the edit undone: nothing to lose
    assert logic.unsubmittedEdits() is None
    _paint(nodes, edited)
    stored = logic.submitCase(workspace.root, user="tester")  # submitted: nothing to lose
    assert logic.unsubmittedEdits() is None
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(stored))), edited)

    # The stored label comes back as it was submitted; an edit of it is asked about again, and
    # the user's consent (discardEdits, or loadCase(discardEdits=True)) lets the case go.
    nodes = logic.loadCase(workspace.root, "case_000")
    assert logic.unsubmittedEdits() is None
    _paint(nodes, prediction)
    assert logic.unsubmittedEdits() == "case_000"
    logic.discardEdits()
    assert logic.unsubmittedEdits() is None
    _paint(nodes, np.zeros_like(prediction))  # an edit after the consent counts again
    assert logic.unsubmittedEdits() == "case_000"
    other = logic.loadCase(workspace.root, "case_001", discardEdits=True)
    assert other.caseId == "case_001" and logic.unsubmittedEdits() is None
    assert nodes.segmentation.GetScene() is None  # the discarded case's nodes are gone
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(stored))), edited)

    # A case taken over from a saved scene may hold edits never submitted: it is asked about.
    logic.caseNodes = None
    restored = logic.restoreCase(workspace.root, "case_001", other.volume, other.segmentation)
    assert logic.loadedCase() is restored and logic.unsubmittedEdits() == "case_001"
    with pytest.raises(UnsubmittedEditsError):
        logic.loadCase(workspace.root, "case_000")


def test_submit_stores_the_case_the_parameter_node_names_after_an_import(mrml, workspace):
    """A scene imported while a case was loaded put its case in the editor, and Submit stored
    the case loaded before, an unreviewed prediction (issue 22): the Logic now follows the case
    the parameter node names."""
    import SimpleITK as sitk

    folder = workspace.root / "predictions" / workspace.current_model_version()
    arrays = {}
    for seed, case in enumerate(("case_000", "case_001")):
        scan = workspace.image_path(case)
        shape = sitk.GetArrayFromImage(sitk.ReadImage(str(scan))).shape
        arrays[case] = blob_labels(shape, seed=seed + 1)
        write_label_like(folder / f"{case}.nii.gz", scan, arrays[case])
    logic = _logic()
    before = logic.loadCase(workspace.root, "case_000")
    # What an imported scene brings: another case's nodes, named by the parameter node.
    imported = _logic().loadCase(workspace.root, "case_001")
    edited = arrays["case_001"].copy()
    edited[:3] = 0
    _paint(imported, edited)

    followed = logic.followCase(workspace.root, "case_001", imported.volume, imported.segmentation)
    assert followed is not None and logic.loadedCase() is followed
    assert (
        logic.followCase(workspace.root, "case_001", imported.volume, imported.segmentation) is None
    )
    assert before.segmentation.GetScene() is not None  # the case loaded before is not removed
    assert logic.unsubmittedEdits() == "case_001"  # from a scene: may hold edits
    stored = logic.submitCase(workspace.root, user="tester")
    assert stored == workspace.label_path("case_001")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(stored))), edited)
    assert workspace.label_path("case_000") is None  # the unreviewed prediction is not stored

    # Nodes that cannot be taken over leave the reason, and no case is followed in their stead.
    with pytest.raises(ValueError, match="is not a node of case case_000"):
        logic.followCase(workspace.root, "case_000", imported.volume, imported.segmentation)
    assert logic.followCase(workspace.root, "", None, None) is None


def test_create_from_loaded_volumes_after_a_failed_try_makes_each_scan_once(
    mrml, tmp_path, synthetic_pool, tiny_preset_file
):
    """A second "Create from loaded volumes" after a failed try wrote the scans again beside
    the first ones (3 volumes became 6 cases); an RGB volume made it fail; another workspace's
    case scan was taken as a new scan (issue 22)."""
    import SimpleITK as sitk

    from assft.workspace import Workspace
    from ASSFTSlicerLib.scene import volumeNodeFromImage

    _, cases = synthetic_pool
    volumes = [
        volumeNodeFromImage(sitk.ReadImage(str(case.image)), case.case_id) for case in cases[:2]
    ]
    rgb = sitk.Compose(*[sitk.Cast(sitk.ReadImage(str(cases[0].image)), sitk.sitkUInt8)] * 3)
    photo = volumeNodeFromImage(rgb, "photo", className="vtkMRMLVectorVolumeNode")
    logic = _logic()
    otherCase = _logic().loadCase(_other_workspace(tmp_path, cases), "case_000").volume
    loaded = [*volumes, photo, otherCase]
    assert [logic.isScanForNewWorkspace(node) for node in loaded] == [True, True, False, False]

    failed = logic.startCreateWorkspaceFromVolumes(tmp_path / "ws", loaded, "no-such-preset").wait(
        timeout=120
    )
    assert not failed.ok and not (tmp_path / "ws").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "other-images"]  # all gone

    created = logic.startCreateWorkspaceFromVolumes(
        tmp_path / "ws", loaded, str(tiny_preset_file), labelNames="1:shell,2:core"
    ).wait(timeout=120)
    assert created.ok, created.output
    workspace = Workspace.open(tmp_path / "ws")
    assert sorted(row["case_id"] for row in workspace.registry.cases()) == sorted(
        case.case_id for case in cases[:2]
    )
    assert sorted(p.name for p in (tmp_path / "ws-scans").iterdir()) == sorted(
        f"{case.case_id}.nii.gz" for case in cases[:2]
    )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ws-scans")]


def _other_workspace(tmp_path, cases):
    from assft.workspace import Workspace

    images = tmp_path / "other-images"
    images.mkdir()
    shutil.copy(cases[0].image, images / cases[0].image.name)
    return Workspace.create(
        tmp_path / "other", [images], label_names={1: "shell", 2: "core"}, user="tester"
    ).root


def test_a_model_without_a_head_opens_cases_empty_and_says_why(mrml, workspace, tmp_path):
    """An encoder without a segmentation head (``foundation-demo``) would pre-fill every case
    with noise before its first fine-tune: the case opens empty, and the panel says why."""
    from assft.workspace import Workspace

    encoder = Workspace.create(
        tmp_path / "encoder-ws",
        [workspace.image_path("case_000").parent],
        label_names={1: "shell", 2: "core"},
        model="foundation-demo",
        user="tester",
    )
    from assft.workspace.creation import create_workspace

    demo = create_workspace(  # the demo preset's labels
        tmp_path / "demo-ws", [workspace.image_path("case_000").parent], user="tester"
    )
    logic = _logic()
    assert logic.modelHasHead(encoder.root) is False
    # The demo model has a head for its own labels, not for others (it gets a new one).
    assert logic.modelHasHead(demo.root) is True
    assert logic.modelHasHead(workspace.root) is False  # labels shell and core
    assert not logic.needsPrediction(encoder.root, "case_000")
    assert logic.needsPrediction(demo.root, "case_000")
    described = logic.describeWorkspace(logic.workspaceSummary(encoder.root))
    assert "no segmentation head for these labels yet" in described
    assert "no segmentation head" not in logic.describeWorkspace(logic.workspaceSummary(demo.root))

    ready = []
    assert logic.prepareCase(encoder.root, "case_000", ready.append) is None  # no prediction
    assert ready == ["case_000"]
    nodes = logic.loadCase(encoder.root, "case_000")
    for name in ("shell", "core"):
        segment = nodes.segmentation.GetSegmentation().GetSegmentIdBySegmentName(name)
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(nodes.segmentation, segment, nodes.volume)
        assert not np.any(mask)
    assert not (encoder.root / "predictions").exists() or not any(
        (encoder.root / "predictions").rglob("*.nii.gz")
    )


def test_an_encoder_without_structures_takes_those_the_field_names(tmp_path, synthetic_pool):
    """A model with no structures of its own (foundation-demo) segments the ones the lab names
    in the structures field; without any named, creating is refused before anything runs."""
    from assft.workspace import Workspace

    images = _two_scans(tmp_path, synthetic_pool)
    logic = _logic()
    with pytest.raises(ValueError, match="foundation-demo has no structures of its own"):
        logic.startCreateWorkspace(tmp_path / "none", [images], "foundation-demo")
    assert not (tmp_path / "none").exists()
    assert logic.labelsForModel("demo", "white matter") == (None, "white matter")
    created = logic.startCreateWorkspace(
        tmp_path / "ws", [images], "foundation-demo", labeledStructures=" shell, core "
    ).wait(timeout=120)
    assert created.ok, created.output
    config = Workspace.open(tmp_path / "ws").config
    assert config.label_names == {1: "shell", 2: "core"} and not config.partially_labeled

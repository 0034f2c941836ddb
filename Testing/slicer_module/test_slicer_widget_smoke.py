"""The Widget's slots with stand-ins for Qt, the parameter node wrapper and the GUI parts of
slicer.util, against real MRML, a real workspace and real engine processes.

Real Qt and the real parameterNodeWrapper only exist in the Slicer application (see
ASSFTSlicer/Testing/Python/ASSFTSlicerWidgetTest.py); these stand-ins are deliberately dumb
(attributes and a queue of timer callbacks), so what this catches is the Widget's own logic:
a slot calling a missing method, a button left in the wrong state, Rank not turning into
Cancel and back, a cancelled task not reported as such. Processes are read through slicer-core's
real ``slicer.util.launchConsoleProcess(blocking=False)`` where it has one (5.12 and later), else
by the module's own reader thread, driven by the stand-in event loop.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import shutil
import sys
import time
import types
import xml.etree.ElementTree as ET

import pytest

from assft_testing.slicer_side import MODULE_DIR, require_slicer
from assft_testing.workspaces import tiny_workspace

slicer = require_slicer()


class FakeSignalTarget:
    """A widget: the properties the Widget sets, and ``connect`` for its slots."""

    def __init__(self, name: str) -> None:
        self.objectName = name
        self.text = ""
        self.enabled = True
        self.toolTip = ""
        self.checked = False
        self.range = (0, 1)
        self.value = 0
        self.connections: dict[str, object] = {}
        self.tableNode = None
        self.row = -1
        self.currentPath = ""

    def connect(self, signal, slot):
        self.connections[signal] = slot

    def click(self):
        if self.enabled:
            self.connections["clicked(bool)"]()

    def setRange(self, low, high):
        self.range = (low, high)

    def setValue(self, value):
        self.value = value

    def setMRMLTableNode(self, node):
        self.tableNode = node

    def setItemText(self, index, text):
        self.items = {**getattr(self, "items", {}), index: text}

    def currentIndex(self):
        return types.SimpleNamespace(row=lambda: self.row)


class FakeSegmentEditorWidget(FakeSignalTarget):
    """The embedded qMRMLSegmentEditorWidget: what it was given, and its shortcut state."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.segmentation = self.source = self.editorNode = self.activeEffect = None
        self.shortcuts = False

    def setSegmentationNode(self, node):
        self.segmentation = node

    def setSourceVolumeNode(self, node):
        self.source = node

    def setMRMLSegmentEditorNode(self, node):
        self.editorNode = node

    def setActiveEffect(self, effect):
        self.activeEffect = effect

    def installKeyboardShortcuts(self):
        self.shortcuts = True

    def uninstallKeyboardShortcuts(self):
        self.shortcuts = False

    def removeViewObservations(self):
        pass

    def updateWidgetFromMRML(self):
        pass


class FakeEventLoop:
    callbacks: list = []

    @classmethod
    def singleShot(cls, msec, callback):
        cls.callbacks.append(callback)

    @classmethod
    def processEvents(cls):
        pending, cls.callbacks = cls.callbacks, []
        for callback in pending:
            callback()


class FakeTimer:
    def __init__(self):
        self.active = False
        self.slot = None

    def setInterval(self, msec):
        pass

    def connect(self, signal, slot):
        self.slot = slot

    def start(self):
        self.active = True

    def stop(self):
        self.active = False

    singleShot = staticmethod(FakeEventLoop.singleShot)


def _fake_parameter_node_wrapper(cls):
    defaults = {name: getattr(cls, name, None) for name in cls.__annotations__}

    class Wrapped:
        def __init__(self, node=None):
            for name, value in defaults.items():
                if value is None and "Path" in str(cls.__annotations__[name]):
                    value = __import__("pathlib").Path()
                object.__setattr__(self, name, value)

        def connectGui(self, ui):
            return "tag"

        def connectParametersToGui(self, mapping):
            for name, connector in mapping.items():
                connector.write(getattr(self, name))
            return "paths"

        def disconnectGui(self, tag):
            pass

    Wrapped.__name__ = cls.__name__
    return Wrapped


@pytest.fixture
def module(monkeypatch, mrml):
    """ASSFTSlicer imported with the stand-ins (a fresh copy; the plain import is untouched)."""
    qt = types.ModuleType("qt")
    qt.QTimer = FakeTimer
    qt.QApplication = types.SimpleNamespace(processEvents=FakeEventLoop.processEvents)
    settings: dict = {}
    qt.QSettings = lambda: types.SimpleNamespace(value=settings.get, setValue=settings.__setitem__)
    qt.Qt = types.SimpleNamespace(WaitCursor=0)
    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.setitem(sys.modules, "ctk", types.ModuleType("ctk"))
    slm = types.ModuleType("slicer.ScriptedLoadableModule")

    class Base:
        def __init__(self, parent=None):
            self.parent = parent

        def getParameterNode(self):
            return None

    slm.ScriptedLoadableModule = slm.ScriptedLoadableModuleWidget = (
        slm.ScriptedLoadableModuleLogic
    ) = Base
    slm.ScriptedLoadableModuleTest = Base
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", slm)
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper = _fake_parameter_node_wrapper
    pnw.Choice = lambda choices: ("Choice", choices)
    pnw.WithinRange = lambda low, high: ("WithinRange", low, high)
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", pnw)
    connectors = types.ModuleType("slicer.parameterNodeWrapper.guiConnectors")
    connectors.GuiConnector = type("GuiConnector", (), {"__init__": lambda self: None})
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper.guiConnectors", connectors)

    class Observation:
        def __init__(self):
            pass

        def addObserver(self, *args):
            pass

        def removeObserver(self, *args):
            pass

        def removeObservers(self):
            pass

    monkeypatch.setattr(slicer.util, "VTKObservationMixin", Observation, raising=False)
    messages = []

    @contextlib.contextmanager
    def tryWithErrorDisplay(message=None, show=True, waitCursor=False):
        try:
            yield
        except Exception as error:
            messages.append(("error", f"{message} {error}"))
            raise

    for name, kind in (
        ("errorDisplay", "error"),
        ("infoDisplay", "info"),
        ("warningDisplay", "warning"),
    ):
        monkeypatch.setattr(
            slicer.util, name, lambda text, kind=kind, **kw: messages.append((kind, text))
        )
    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", tryWithErrorDisplay)
    monkeypatch.setattr(
        slicer.util,
        "confirmYesNoDisplay",
        lambda text, **kw: messages.append(("ask", text)) or True,
    )
    answers: list[bool] = []  # what the user answers to OK / Cancel questions (else OK)
    monkeypatch.setattr(
        slicer.util,
        "confirmOkCancelDisplay",
        lambda text, **kw: messages.append(("ask", text)) or (answers.pop(0) if answers else True),
    )
    monkeypatch.setattr(slicer.util, "selectModule", lambda name: messages.append(("module", name)))
    monkeypatch.setattr(
        slicer.util,
        "setSliceViewerLayers",
        lambda **kw: messages.append(("views", kw.get("background"))),
    )
    monkeypatch.setattr(
        slicer.util, "startupEnvironment", lambda: dict(__import__("os").environ), raising=False
    )
    editor = types.SimpleNamespace(segmentation=None, source=None)
    editor.setSegmentationNode = lambda node: setattr(editor, "segmentation", node)
    editor.setSourceVolumeNode = lambda node: setattr(editor, "source", node)
    slicer.modules.segmenteditor = types.SimpleNamespace(
        widgetRepresentation=lambda: types.SimpleNamespace(
            self=lambda: types.SimpleNamespace(editor=editor)
        )
    )
    monkeypatch.delitem(sys.modules, "ASSFTSlicerLib.process", raising=False)
    spec = importlib.util.spec_from_file_location(
        "ASSFTSlicerWithStandIns", MODULE_DIR / "ASSFTSlicer.py"
    )
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    assert loaded.HAVE_QT
    yield types.SimpleNamespace(
        module=loaded, messages=messages, editor=editor, settings=settings, answers=answers
    )
    FakeEventLoop.callbacks = []
    sys.modules.pop("ASSFTSlicerLib.process", None)


def _widget(module, tmp_path):
    ASSFTSlicer = module.module
    widget = ASSFTSlicer.ASSFTSlicerWidget()
    widget.logic = ASSFTSlicer.ASSFTSlicerLogic(python=sys.executable)
    widget.session = ASSFTSlicer.LoopSession(widget.logic)  # as setup() makes them
    widget._observeTasks()
    names = [
        w.get("name")
        for w in ET.parse(MODULE_DIR / "Resources" / "UI" / "ASSFTSlicer.ui").iter("widget")
    ]
    widget.ui = types.SimpleNamespace(**{name: FakeSignalTarget(name) for name in names})
    widget.ui.segmentEditorWidget = FakeSegmentEditorWidget("segmentEditorWidget")
    widget.parent = types.SimpleNamespace(isEntered=True)
    widget.ui.finetuneButton.text = "Fine-tune"
    widget._jobTimer = FakeTimer()
    widget._workspaceTimer = FakeTimer()
    parameterNode = ASSFTSlicer.ASSFTSlicerParameterNode()
    widget._parameterNode = parameterNode
    widget.logic.getParameterNode = lambda: parameterNode  # the scene's singleton, as in Slicer
    return widget


def _connect_slots(widget):
    for name in (
        "rankButton",
        "labelNextButton",
        "submitNextButton",
        "skipButton",
        "finetuneButton",
        "openWorkspaceButton",
    ):
        slot = {
            "rankButton": widget.onRank,
            "labelNextButton": widget.onLabelNext,
            "submitNextButton": widget.onSubmitAndNext,
            "skipButton": widget.onSkip,
            "finetuneButton": widget.onFinetune,
            "openWorkspaceButton": widget.onOpenWorkspace,
        }[name]
        getattr(widget.ui, name).connect("clicked(bool)", slot)


def _run_until(condition, timeout=240.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        FakeEventLoop.processEvents()
        time.sleep(0.02)


def test_the_panel_ranks_cancels_labels_and_submits(
    module, tmp_path, synthetic_pool, tiny_preset_file
):
    _, cases = synthetic_pool
    workspace = tiny_workspace(tmp_path, cases[:3], tiny_preset_file)
    widget = _widget(module, tmp_path)
    _connect_slots(widget)
    p = widget._parameterNode
    p.device = module.module.Device.CPU
    p.budget = 1

    widget.setParameterNode(p)
    assert widget.ui.workspacePathLineEdit.currentPath == ""  # an unset folder, not "."
    presets = widget.ui.modelPresetComboBox.items
    assert [text.split(" (")[0] for text in presets.values()] == module.module.MODEL_PRESETS
    assert presets[0] == "demo"
    widget.refresh()
    assert not widget.ui.rankButton.enabled and widget.ui.rankButton.toolTip  # says why
    p.workspacePath = workspace.root
    widget._updateButtons()  # what the parameter node's ModifiedEvent observer does in Slicer
    widget.ui.openWorkspaceButton.click()
    assert "3 cases" in widget.ui.workspaceStatusLabel.text
    assert module.settings["ASSFTSlicer/LastWorkspace"] == str(workspace.root)
    assert widget.ui.rankButton.enabled and not widget.ui.labelNextButton.enabled
    assert widget.ui.labelNextButton.toolTip == "Rank the scans first."

    # Rank turns into Cancel; cancelling leaves the workspace free.
    widget.ui.rankButton.click()
    assert widget.ui.rankButton.text == "Cancel" and widget.ui.rankButton.enabled
    # slicer-core 5.12 and later read it with launchConsoleProcess(blocking=False); 5.11 (the
    # version trame-slicer needs, see pyproject.toml's web extra) has no such parameter, and the
    # module reads the process with its own thread.
    launcher = slicer.util.launchConsoleProcess
    nonBlocking = "blocking" in inspect.signature(launcher).parameters
    assert widget.logic.tasks.current.mode == ("slicer" if nonBlocking else "thread")
    assert (
        not widget.ui.openWorkspaceButton.enabled
        and widget.ui.openWorkspaceButton.toolTip == "Another task is running."
    )
    widget.ui.rankButton.click()
    _run_until(lambda: not widget.logic.tasks.busy)
    assert widget.ui.rankButton.text == "Rank" and widget.ui.taskStatusLabel.text == "Cancelled."
    assert not [m for m in module.messages if m[0] == "error"]
    assert workspace.status_summary()["running_job"] is None and workspace.latest_ranking() is None

    progress = []
    widget._onTaskProgress = lambda event: progress.append(event)  # what the progress bar gets
    widget.ui.rankButton.click()
    _run_until(lambda: not widget.logic.tasks.busy)
    assert widget.ui.taskStatusLabel.text.startswith("Done"), module.messages
    assert [e["done"] for e in progress if e["event"] == "progress"] == [0, 1, 2, 3]
    assert progress[-1]["event"] == "done" and len(progress[-1]["selected"]) == 1
    assert widget.ui.worklistTableView.tableNode.GetNumberOfRows() == 3
    assert widget.ui.labelNextButton.enabled

    # Label next predicts in the background, then opens the case in the Segment Editor.
    first = widget.logic.nextCase(workspace.root)
    widget.ui.labelNextButton.click()
    assert widget.ui.labelNextButton.text == "Cancel"
    # Fine-tuning promotes a version meanwhile: the ranking it asks for waits for the prediction
    # (it used to press the Rank/Cancel toggle, which cancelled the prediction).
    rankings = len(widget.logic.openWorkspace(workspace.root).registry.rankings())
    widget._rankAfterPromotion()
    tasks = widget.logic.tasks
    assert tasks.isRunning(module.module.TaskKind.PREDICT)
    assert tasks.isPending(module.module.TaskKind.RANK)
    assert widget.ui.labelNextButton.text == "Cancel" and widget.ui.rankButton.text == "Rank"
    # The user goes to another module while it predicts: the panel no longer follows it there.
    widget.exit()
    widget.parent.isEntered = False
    assert not widget.ui.segmentEditorWidget.shortcuts
    _run_until(lambda: p.currentCase == first)  # predicted, not cancelled, and shown
    assert tasks.isRunning(module.module.TaskKind.RANK) and widget.ui.rankButton.text == "Cancel"
    _run_until(lambda: not tasks.busy)
    assert len(widget.logic.openWorkspace(workspace.root).registry.rankings()) == rankings + 1
    assert not [m for m in module.messages if m[0] == "module"], (
        "a background task switched modules"
    )
    assert ("views", p.caseVolume) not in module.messages, "the views changed under the user"
    embedded = widget.ui.segmentEditorWidget
    assert embedded.segmentation is p.caseSegmentation and embedded.source is p.caseVolume
    widget.parent.isEntered = True
    widget.enter()  # back in the panel: the embedded editor's shortcuts and its own node
    assert ("views", p.caseVolume) in module.messages  # and now the case in the views
    assert embedded.shortcuts and embedded.editorNode is widget.logic.segmentEditorNode()
    assert embedded.editorNode.GetSingletonTag() == "ASSFTSlicer"
    # "Open in Segment Editor" is still there, when asked for.
    widget.onOpenSegmentEditor()
    assert ("module", "SegmentEditor") in module.messages
    assert module.editor.segmentation is p.caseSegmentation and module.editor.source is p.caseVolume
    assert p.caseUncertainty is not None and widget.ui.submitNextButton.enabled
    import numpy as np
    import SimpleITK as sitk

    predicted = sitk.GetArrayFromImage(
        sitk.ReadImage(str(widget.logic.predictionFiles(workspace.root, first)[0]))
    )
    segmentation = p.caseSegmentation.GetSegmentation()
    for value, name in ((1, "shell"), (2, "core")):
        array = slicer.util.arrayFromSegmentBinaryLabelmap(
            p.caseSegmentation, segmentation.GetSegmentIdBySegmentName(name), p.caseVolume
        )
        np.testing.assert_array_equal(array != 0, predicted == value)

    # Overlapping segments: the user is asked, and the answer (yes) is passed to the Logic.
    shape = slicer.util.arrayFromVolume(p.caseVolume).shape
    box = np.zeros(shape, np.uint8)
    box[2:6, 2:6, 2:6] = 1
    for name in ("shell", "core"):
        slicer.util.updateSegmentBinaryLabelmapFromArray(
            box, p.caseSegmentation, segmentation.GetSegmentIdBySegmentName(name), p.caseVolume
        )
    widget.ui.submitNextButton.click()
    assert any(kind == "ask" and "share 64 voxels" in text for kind, text in module.messages)
    stored = workspace.label_path(first)
    assert (
        sitk.GetArrayFromImage(sitk.ReadImage(str(stored))) == 2
    ).sum() == 64  # core, lower in the list, won
    assert workspace.registry.case(first)["status"] == "labeled"
    _run_until(
        lambda: not widget.logic.tasks.busy
    )  # the next case (none left in a budget of 1 is fine)
    assert not [m for m in module.messages if m[0] == "error"], module.messages

    # While the panel shows, it follows changes made elsewhere (here: a case skipped by another
    # program), and only re-reads the workspace when something changed.
    assert widget._workspaceTimer.active  # started by enter()
    widget.refresh()
    refreshed = []
    real_refresh = widget.refresh
    widget.refresh = lambda: (refreshed.append(1), real_refresh())
    widget.onWorkspaceTimer()
    assert refreshed == []
    other = next(c for c in ("case_000", "case_001", "case_002") if c != first)
    workspace.skip(other)
    widget.onWorkspaceTimer()
    assert refreshed == [1] and "1 skipped" in widget.ui.workspaceStatusLabel.text
    widget.exit()
    assert not widget._workspaceTimer.active

    # An edit not submitted is never dropped without asking (issue 22): Cancel keeps the case
    # and its edit; OK opens the other case.
    third = next(c for c in ("case_000", "case_001", "case_002") if c not in (first, other))
    widget._labelCase(third)  # predicted in the background first
    _run_until(lambda: p.currentCase == third and not widget.logic.tasks.busy)
    box = np.zeros(slicer.util.arrayFromVolume(p.caseVolume).shape, np.uint8)
    box[1:4, 1:4, 1:4] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(
        box,
        p.caseSegmentation,
        p.caseSegmentation.GetSegmentation().GetSegmentIdBySegmentName("core"),
        p.caseVolume,
    )
    module.answers.append(False)
    widget._labelCase(first)
    assert module.messages[-1] == (
        "ask",
        f"Case {third} has edits that are not submitted. Discard them and open case {first}?",
    )
    assert p.currentCase == third and widget.logic.unsubmittedEdits() == third
    widget._labelCase(first)  # OK
    assert p.currentCase == first and widget.logic.unsubmittedEdits() is None
    assert not [m for m in module.messages if m[0] == "error"], module.messages


def test_cleanup_after_a_setup_that_did_not_finish(module):
    """cleanup() assumed setup() had made the Logic (issue 22): a setup that raised (a missing
    .ui, a broken install) then made Slicer's exit raise too."""
    widget = module.module.ASSFTSlicerWidget()
    assert widget.logic is None
    widget.cleanup()  # nothing to stop, nothing raised
    widget = _widget(module, None)
    widget.cleanup()
    assert not widget._jobTimer.active and not widget.logic.tasks.busy


def test_create_from_loaded_volumes_follows_volumes_loaded_elsewhere(module, tmp_path):
    """The button stayed disabled after volumes were loaded (issue 22): a volume added to the
    scene updates it once loaded; an RGB volume does not count."""
    import numpy as np
    import SimpleITK as sitk

    from ASSFTSlicerLib.scene import volumeNodeFromImage

    widget = _widget(module, tmp_path)
    p = widget._parameterNode
    p.workspacePath = tmp_path / "new-ws"
    widget._updateButtons()
    button = widget.ui.createFromVolumesButton
    assert not button.enabled and "Load scans" in button.toolTip
    rgb = sitk.Compose(*[sitk.GetImageFromArray(np.zeros((4, 5, 6), np.uint8))] * 3)
    photo = volumeNodeFromImage(rgb, "photo", className="vtkMRMLVectorVolumeNode")
    widget.onNodeAddedOrRemoved(slicer.mrmlScene, None, photo)
    FakeEventLoop.processEvents()
    assert not button.enabled  # a photo is no scan
    scan = sitk.GetImageFromArray(np.random.default_rng(0).random((4, 5, 6)).astype(np.float32))
    node = volumeNodeFromImage(scan, "scan")
    widget.onNodeAddedOrRemoved(slicer.mrmlScene, None, node)
    FakeEventLoop.processEvents()
    assert button.enabled
    slicer.mrmlScene.RemoveNode(node)
    widget.onNodeAddedOrRemoved(slicer.mrmlScene, None, node)
    FakeEventLoop.processEvents()
    assert not button.enabled
    slicer.mrmlScene.RemoveNode(photo)


def test_a_case_that_fails_to_load_is_said_once(module, tmp_path, synthetic_pool):
    """A load failure was shown twice (issue 22): by the case's loading and again by Label
    next around it."""
    import numpy as np
    import SimpleITK as sitk

    from assft.workspace import Workspace
    from assft_testing.slicer_side import write_label_like

    _, cases = synthetic_pool
    images = tmp_path / "images"
    images.mkdir()
    for case in cases[:2]:
        shutil.copy(case.image, images / case.image.name)
    workspace = Workspace.create(
        tmp_path / "ws", [images], label_names={1: "shell", 2: "core"}, user="tester"
    )
    scan = workspace.image_path("case_000")
    shape = sitk.GetArrayFromImage(sitk.ReadImage(str(scan))).shape
    folder = workspace.root / "predictions" / workspace.current_model_version()
    write_label_like(folder / "case_000.nii.gz", scan, np.ones(shape, np.uint16))
    scan.write_bytes(b"not an image any more")  # the load fails
    widget = _widget(module, tmp_path)
    widget._parameterNode.workspacePath = workspace.root
    before = len([m for m in module.messages if m[0] == "error"])
    widget._labelCase("case_000")  # predicted already: loads at once, inside Label next
    errors = [m for m in module.messages if m[0] == "error"][before:]
    assert len(errors) == 1 and "Failed to load case case_000" in errors[0][1], errors
    assert widget.logic.loadedCase() is None

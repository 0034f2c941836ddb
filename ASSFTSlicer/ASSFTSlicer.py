"""ASSFT Slicer: rank unlabeled scans, label the most informative in the Segment Editor, fine-tune.

The module owns the GUI and the MRML scene; the engine (``assft``) owns the workspace, the
models and the method. This file holds the module, its parameter node and the thin Widget; the
Logic is ASSFTSlicerLib/logic.py: it runs without Qt (heavy work in ``PythonSlicer -m assft ...``
processes read without blocking the GUI), so it is tested with the MRML of the ``slicer-core``
wheel.
"""

import contextlib
import enum
import logging
import pathlib
import sys
import tempfile
import unittest

# The engine's floor is Python 3.11 (Slicer bundles 3.12 from 5.10 on). An older Slicer still
# parses and runs this file, so the check names the problem there; UP036 calls it dead code only
# because ruff's target version is the floor itself.
if sys.version_info < (3, 11):  # noqa: UP036
    raise ImportError(
        "ASSFT Slicer needs 3D Slicer 5.10 or later (Python 3.11+); this Slicer runs "
        "Python {}.{}".format(*sys.version_info[:2])
    )
from typing import Annotated

import slicer
import vtk
from slicer import (
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)

try:  # the Slicer application
    import ctk
    import qt
    from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
    from slicer.parameterNodeWrapper.guiConnectors import GuiConnector
    from slicer.ScriptedLoadableModule import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
        ScriptedLoadableModuleWidget,
    )
    from slicer.util import VTKObservationMixin

    HAVE_QT = True
except ImportError:
    if hasattr(slicer, "app"):  # inside Slicer this is a broken installation: say so, loudly
        raise
    # Plain Python with the MRML of slicer-core (the tests): the Logic works, the GUI does not.
    HAVE_QT = False
    ctk = qt = None

    class GuiConnector:
        pass

    def parameterNodeWrapper(classtype):
        return classtype

    class Choice:
        def __init__(self, choices):
            self.choices = choices

    class WithinRange:
        def __init__(self, minimum, maximum):
            self.minimum, self.maximum = minimum, maximum

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            pass

        def getParameterNode(self):
            raise RuntimeError("parameter nodes need the Slicer application")

    class ScriptedLoadableModuleTest:  # not a unittest.TestCase: never collected outside Slicer
        pass

    class VTKObservationMixin:
        def __init__(self):
            pass


# The engine's light modules: the strategy registry and config defaults (the one source of
# both) and the progress event names. They need only numpy (bundled with Slicer), never torch,
# so the module loads before the engine's dependencies are installed.
from assft.query.config import QueryConfig
from assft.query.strategies import STRATEGIES
from assft.query.strategies import Strategy as EngineStrategy
from assft.runtime.job_state import JobState
from assft.runtime.progress import ProgressEvent
from assft.training.config import FinetuneConfig
from ASSFTSlicerLib import dependencies, pacs
from ASSFTSlicerLib.i18n import tr as _
from ASSFTSlicerLib.i18n import translate
from ASSFTSlicerLib.logic import WorkspaceLogic
from ASSFTSlicerLib.scene import (
    OverlapPolicy,
    SegmentOverlapError,
)
from ASSFTSlicerLib.session import LoopSession
from ASSFTSlicerLib.tasks import TaskKind, TaskStart

MODULE_DIR = pathlib.Path(__file__).resolve().parent

# Preset names of the engine's assft/resources/Models.json (read as data, not imported).
MODEL_PRESETS = [str(preset["name"]) for preset in WorkspaceLogic().modelPresets()]


#
# ASSFTSlicer
#


class ASSFTSlicer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("ASSFT Slicer")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations", "SegmentEditor"]
        self.parent.contributors = ["ASSFT Slicer developers"]
        self.parent.helpText = _(
            "Rank unlabeled scans by what they would teach a pretrained segmentation model "
            "(ATTSQ: knowledge gap and anatomical difficulty), label the top-ranked ones in the "
            "Segment Editor pre-filled with the model's prediction, and fine-tune the model in the "
            'background. See the <a href="https://github.com/assft/ASSFTSlicer#using-it-in-3d-slicer">'
            "documentation</a>."
        )
        self.parent.acknowledgementText = _(
            "Method: Active Selective Semi-supervised Fine-Tuning (Yang, Marcus, Sotiras, "
            "arXiv 2509.10784)."
        )


#
# Parameters
#


class Device(enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"

    def label(self):
        return {
            "auto": _("Automatic (GPU when available)"),
            "cpu": _("CPU"),
            "cuda": _("GPU (CUDA)"),
        }[self.value]


class _StrategyEnum(enum.Enum):
    """Base of Strategy: the combo box shows each strategy's title from the engine's registry."""

    def label(self):
        return _(STRATEGIES[self.value].title)


# One member per registered strategy, in the registry's order and with the engine's member names
# (ATTSQ = "attsq"): the parameter node stores the member name, so saved scenes keep loading.
Strategy = _StrategyEnum("Strategy", [(member.name, member.value) for member in EngineStrategy])


class FinetuneMode(enum.Enum):
    SELECTIVE = "selective"
    ALL = "all"
    NONE = "none"

    def label(self):
        return {
            "selective": _("Selective semi-supervised (SSFT)"),
            "all": _("All unlabeled cases"),
            "none": _("Labeled cases only"),
        }[self.value]


# The engine's defaults (the config dataclasses hold them all) seed the parameter node's.
_QUERY_DEFAULTS = QueryConfig()
_FINETUNE_DEFAULTS = FinetuneConfig()


@parameterNodeWrapper
class ASSFTSlicerParameterNode:
    """The module's state, saved with the scene.

    workspacePath: the workspace folder (created or opened).
    imagesPath: a folder of scans to create a workspace from.
    dicomwebUrl, dicomwebQuery, dicomwebAuth: or a DICOMweb server, the search of its series
        and a credentials file (empty: the environment's credentials).
    modelPreset, device, budget, strategy: how ranking runs.
    ownModel: the lab's own model for a new workspace (nnunet:FOLDER, bundle:FOLDER, a preset
        file); empty: the preset.
    labeledStructures: the structures clinicians will label in a new workspace, when they label
        only some of the model's (names or values); empty: all.
    currentCase: the case being labeled.
    showUncertainty: overlay the model's voxel uncertainty on the case.
    finetuneMode, finetuneIterations, rerankAfterPromotion: how fine-tuning runs.
    caseVolume, caseSegmentation, caseUncertainty: the nodes of the current case.
    worklistTable, modelsTable: the tables shown in the panel.
    """

    workspacePath: pathlib.Path
    imagesPath: pathlib.Path
    dicomwebUrl: str = ""
    dicomwebQuery: str = ""
    dicomwebAuth: str = ""
    modelPreset: Annotated[str, Choice(MODEL_PRESETS)] = MODEL_PRESETS[0]
    ownModel: str = ""
    labeledStructures: str = ""
    device: Device = Device.AUTO
    budget: Annotated[int, WithinRange(1, 10000)] = _QUERY_DEFAULTS.budget
    strategy: Strategy = Strategy(_QUERY_DEFAULTS.strategy.value)
    currentCase: str = ""
    showUncertainty: bool = True
    finetuneMode: FinetuneMode = FinetuneMode(_FINETUNE_DEFAULTS.mode.value)
    # 0: the engine derives the steps from the labeled set (FinetuneConfig.steps_for).
    finetuneIterations: Annotated[int, WithinRange(0, 100000)] = _FINETUNE_DEFAULTS.iterations or 0
    rerankAfterPromotion: bool = True
    caseVolume: vtkMRMLScalarVolumeNode
    caseSegmentation: vtkMRMLSegmentationNode
    caseUncertainty: vtkMRMLScalarVolumeNode
    worklistTable: vtkMRMLTableNode
    modelsTable: vtkMRMLTableNode


class FolderPathConnector(GuiConnector):
    """Binds a ``pathlib.Path`` parameter to a ctkPathLineEdit (Slicer's own connector shows an
    unset path as "." and rewrites the text at every keystroke: a trailing separator vanishes
    as it is typed). An unset path shows as an empty field, and the text is left as typed while
    it names the parameter's folder. Used explicitly (``connectParametersToGui``), never
    registered for other modules."""

    @staticmethod
    def canRepresent(widget, datatype) -> bool:
        return False

    @staticmethod
    def create(widget, datatype):
        return None

    def __init__(self, widget) -> None:
        super().__init__()
        self._widget = widget

    def _connect(self) -> None:
        self._widget.currentPathChanged.connect(self.changed)

    def _disconnect(self) -> None:
        self._widget.currentPathChanged.disconnect(self.changed)

    def widget(self):
        return self._widget

    def read(self) -> pathlib.Path:
        return WorkspaceLogic.pathFromFieldText(self._widget.currentPath)

    def write(self, value) -> None:
        text = WorkspaceLogic.pathFieldText(value, self._widget.currentPath)
        if text is not None:
            self._widget.currentPath = text


#
# ASSFTSlicerWidget
#


class ASSFTSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel. Each slot calls one Logic method; the Logic does the work."""

    JOB_POLL_MS = 2000
    WORKSPACE_POLL_MS = 3000
    """While the panel shows, it reads its tables again when the workspace changed elsewhere (a
    job or rollback from the command line, labels from another Slicer or the web page)."""
    PATH_FIELDS = {"workspacePath": "workspacePathLineEdit", "imagesPath": "imagesPathLineEdit"}
    """Folder parameters and their fields, bound with :class:`FolderPathConnector` (the other
    parameters are bound by the .ui's SlicerParameterName)."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTags = []
        self._caseProblem = ""
        self._caseToShow = False
        """A case was loaded while the panel was hidden: the slice views show it on enter()."""
        self._shownTask = None
        self.session = None
        """The loop's control flow (ASSFTSlicerLib.session): the job followed, the mark."""
        self._jobTimer = None
        self._workspaceTimer = None
        self._summary = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ASSFTSlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = ASSFTSlicerLogic()
        self.session = LoopSession(self.logic)
        self._observeTasks()
        # The embedded editor: its own parameter node, set before the scene (so that its
        # default selections are stored there); the case decides segmentation and source.
        editor = self.ui.segmentEditorWidget
        editor.setMRMLSegmentEditorNode(self.logic.segmentEditorNode())
        editor.setMRMLScene(slicer.mrmlScene)
        editor.setSegmentationNodeSelectorVisible(False)
        editor.setSourceVolumeNodeSelectorVisible(False)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndImport)
        # Volumes loaded or removed elsewhere change what "Create from loaded volumes" can do.
        for event in (slicer.mrmlScene.NodeAddedEvent, slicer.mrmlScene.NodeRemovedEvent):
            self.addObserver(slicer.mrmlScene, event, self.onNodeAddedOrRemoved)

        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.openWorkspaceButton.connect("clicked(bool)", self.onOpenWorkspace)
        self.ui.createWorkspaceButton.connect("clicked(bool)", self.onCreateWorkspace)
        self.ui.checkModelButton.connect("clicked(bool)", self.onCheckModel)
        self.ui.createFromVolumesButton.connect("clicked(bool)", self.onCreateFromVolumes)
        self.ui.createFromDicomwebButton.connect("clicked(bool)", self.onCreateFromDicomweb)
        self.ui.sendDicomSegButton.connect("clicked(bool)", self.onSendDicomSeg)
        self.ui.rankButton.connect("clicked(bool)", self.onRank)
        self.ui.showChartButton.connect("clicked(bool)", self.onShowChart)
        self.ui.worklistTableView.connect(
            "doubleClicked(QModelIndex)", self.onWorklistDoubleClicked
        )
        self.ui.labelNextButton.connect("clicked(bool)", self.onLabelNext)
        self.ui.submitNextButton.connect("clicked(bool)", self.onSubmitAndNext)
        self.ui.skipButton.connect("clicked(bool)", self.onSkip)
        self.ui.submitValidationButton.connect("clicked(bool)", self.onSubmitValidation)
        self.ui.proposeValidationButton.connect("clicked(bool)", self.onProposeValidation)
        self.ui.openSegmentEditorButton.connect("clicked(bool)", self.onOpenSegmentEditor)
        self.ui.showUncertaintyCheckBox.connect("toggled(bool)", self.onShowUncertainty)
        self.ui.finetuneButton.connect("clicked(bool)", self.onFinetune)
        self.ui.useVersionButton.connect("clicked(bool)", self.onUseVersion)
        self.ui.learningCurveButton.connect("clicked(bool)", self.onShowLearningCurve)

        self._jobTimer = qt.QTimer()
        self._jobTimer.setInterval(self.JOB_POLL_MS)
        self._jobTimer.connect("timeout()", self.onPollJob)
        self._workspaceTimer = qt.QTimer()
        self._workspaceTimer.setInterval(self.WORKSPACE_POLL_MS)
        self._workspaceTimer.connect("timeout()", self.onWorkspaceTimer)
        self.initializeParameterNode()
        self.refresh()

    def cleanup(self) -> None:
        """Slicer closes (or the module reloads); setup() may not have finished (it raised)."""
        self.removeObservers()
        for timer in (self._jobTimer, self._workspaceTimer):
            if timer:
                timer.stop()
        # Before Slicer goes: a ranking or prediction left running would hold the workspace lock.
        # A detached fine-tuning job goes on.
        if self.logic is not None:
            self.logic.shutdown()

    def enter(self) -> None:
        self.initializeParameterNode()
        # As Slicer's Segment Editor module does: its keyboard shortcuts while the panel shows.
        self.ui.segmentEditorWidget.installKeyboardShortcuts()
        self._selectSegmentEditorNode()
        if self._caseToShow and self.logic.loadedCase() is not None:
            self._editCase()  # loaded while the user was in another module
        self.refresh()
        if self._workspaceTimer:
            self._workspaceTimer.start()

    def exit(self) -> None:
        if self._workspaceTimer:
            self._workspaceTimer.stop()
        self.ui.segmentEditorWidget.setActiveEffect(None)
        self.ui.segmentEditorWidget.uninstallKeyboardShortcuts()
        self.ui.segmentEditorWidget.removeViewObservations()
        self._disconnectParameterNode()

    def _selectSegmentEditorNode(self) -> None:
        self.ui.segmentEditorWidget.setMRMLSegmentEditorNode(self.logic.segmentEditorNode())
        self.ui.segmentEditorWidget.updateWidgetFromMRML()

    def onSceneStartClose(self, caller, event) -> None:
        self.ui.segmentEditorWidget.setSegmentationNode(None)
        self.ui.segmentEditorWidget.removeViewObservations()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self._selectSegmentEditorNode()
            self.initializeParameterNode()

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeAddedOrRemoved(self, caller, event, node) -> None:
        """A volume loaded or removed: the buttons again, once the load has filled it (a volume
        node is added before its voxels are read)."""
        if node is not None and node.IsA("vtkMRMLVolumeNode") and self._parameterNode:
            qt.QTimer.singleShot(0, self._updateButtons)

    def onSceneEndImport(self, caller, event) -> None:
        """A loaded scene may bring a parameter node naming a case: take its nodes over."""
        if self.parent.isEntered:
            self._selectSegmentEditorNode()
            self.initializeParameterNode()
            self._editCase()
            self.refresh()

    LAST_WORKSPACE_SETTING = "ASSFTSlicer/LastWorkspace"

    def initializeParameterNode(self) -> None:
        parameterNode = self.logic.getParameterNode()
        # The last workspace fills an empty field once, so a job still running after a restart
        # shows up; a folder the user typed is kept.
        last = self.logic.workspaceToRestore(
            parameterNode.workspacePath, qt.QSettings().value(self.LAST_WORKSPACE_SETTING)
        )
        if last is not None:
            parameterNode.workspacePath = last
        self.setParameterNode(parameterNode)

    def _disconnectParameterNode(self) -> None:
        if self._parameterNode:
            for tag in self._parameterNodeGuiTags:
                self._parameterNode.disconnectGui(tag)
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons
            )
        self._parameterNodeGuiTags = []

    def setParameterNode(self, inputParameterNode) -> None:
        self._disconnectParameterNode()
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTags = [
                self._parameterNode.connectGui(self.ui),
                self._parameterNode.connectParametersToGui(
                    {
                        name: FolderPathConnector(getattr(self.ui, widget))
                        for name, widget in self.PATH_FIELDS.items()
                    }
                ),
            ]
            for index, preset in enumerate(self.logic.modelPresets()):
                self.ui.modelPresetComboBox.setItemText(index, self.logic.presetLabel(preset))
            self._restoreCase()
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._updateButtons()

    def _restoreCase(self) -> None:
        """The case named by the parameter node (a reloaded or imported scene) becomes the
        loaded case, so that Submit stores the case the editor shows; or the reason why not is
        shown on the disabled Submit button."""
        p = self._parameterNode
        self._caseProblem = ""
        try:
            followed = self.logic.followCase(
                p.workspacePath, p.currentCase, p.caseVolume, p.caseSegmentation, p.caseUncertainty
            )
        except ValueError as error:
            self._caseProblem = str(error)
            return
        if followed is not None:
            self._editCase()

    # state shown ---------------------------------------------------------------------------

    def refresh(self) -> None:
        """Re-read the workspace (summary, worklist, versions, running job) into the panel."""
        p = self._parameterNode
        problems = dependencies.dependencyProblems()
        self.ui.dependencyStatusLabel.text = dependencies.describeMissing(problems) or _(
            "All dependencies are installed."
        )
        self.ui.installDependenciesButton.enabled = bool(problems)
        self._summary = None
        if p is None or not self.logic.hasWorkspace(p.workspacePath):
            self.ui.workspaceStatusLabel.text = _(
                "No workspace: choose a folder and open or create it."
            )
            self._updateButtons()
            return
        try:
            self.session.markRead(p.workspacePath)
            self._summary = self.logic.workspaceSummary(p.workspacePath)
            qt.QSettings().setValue(self.LAST_WORKSPACE_SETTING, self._summary["workspace"])
            self.ui.workspaceStatusLabel.text = self.logic.describeWorkspace(self._summary)
            p.worklistTable, _series, _chart = self.logic.updateWorklist(
                p.workspacePath, p.worklistTable
            )
            self.ui.worklistTableView.setMRMLTableNode(p.worklistTable)
            p.modelsTable = self.logic.updateModelsTable(p.workspacePath, p.modelsTable)
            self.ui.modelsTableView.setMRMLTableNode(p.modelsTable)
            if self.session.followRunningJob(p.workspacePath):
                self._beginJobMonitoring()  # a job started before Slicer was (re)opened
        except Exception as error:  # a damaged or vanished workspace must not break the panel
            logging.warning("cannot read the workspace: %s", error)
            self.session.markUnreadable()  # read again at the next look
            self._summary = None
            self.ui.workspaceStatusLabel.text = _("Cannot read the workspace: {error}").format(
                error=error
            )
        self._updateButtons()

    def onWorkspaceTimer(self) -> None:
        """Refresh when the workspace changed elsewhere; not while this panel's own task runs
        (it refreshes when the task ends)."""
        p = self._parameterNode
        if p is not None and self.session.changedElsewhere(p.workspacePath):
            self.refresh()  # which says once what is wrong with a workspace it cannot read

    def _updateButtons(self, caller=None, event=None) -> None:
        p = self._parameterNode
        tasks = self.logic.tasks
        busy = tasks.busy
        taskButtons = self._taskButtons()
        taskButton = taskButtons[tasks.kind][0] if busy else None
        for button, idleText in taskButtons.values():
            button.text = _("Cancel") if button is taskButton else idleText
        # The buttons act on the folder the field names: the shown summary counts only when it
        # is that workspace's.
        summary = self._summary or {}
        opened = p is not None and self.logic.summaryIsFor(summary, p.workspacePath)
        hasWorkspace = bool(summary) and opened
        if not opened:
            summary = {}
        depsMissing = bool(dependencies.missingPackages()) if not hasWorkspace else False
        counts = summary.get("counts", {})
        jobRunning = self.session is not None and self.session.followsJob

        def setState(button, enabled, whyNot):
            if button is taskButton:
                button.enabled, button.toolTip = True, _("Cancel the running task.")
                return
            button.enabled = bool(enabled) and not busy
            button.toolTip = (
                "" if button.enabled else (_("Another task is running.") if busy else whyNot)
            )

        noWorkspace = (
            _("Open the workspace the folder field names first.")
            if self._summary
            else _("Open or create a workspace first.")
        )
        setState(
            self.ui.openWorkspaceButton,
            p is not None and self.logic.hasWorkspace(p.workspacePath),
            _("Choose an existing workspace folder."),
        )
        setState(
            self.ui.createWorkspaceButton,
            p is not None
            and self.logic.isFolder(p.imagesPath)
            and not self.logic.hasWorkspace(p.workspacePath),
            _("Choose a new workspace folder and a folder of scans."),
        )
        setState(
            self.ui.createFromVolumesButton,
            p is not None
            and not self.logic.hasWorkspace(p.workspacePath)
            and any(
                self.logic.isScanForNewWorkspace(node)
                for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            ),
            _("Load scans into Slicer and choose a new workspace folder."),
        )
        setState(
            self.ui.createFromDicomwebButton,
            p is not None
            and bool(p.dicomwebUrl.strip())
            and not self.logic.hasWorkspace(p.workspacePath),
            _("Enter a DICOMweb server's address and choose a new workspace folder."),
        )
        setState(
            self.ui.sendDicomSegButton,
            hasWorkspace and counts.get("labeled", 0) > 0 and bool(summary.get("dicomweb")),
            _(
                "Labels go back as DICOM SEG to the server a workspace was made from: submit a "
                "label in a workspace created from a DICOMweb server."
            ),
        )
        setState(
            self.ui.rankButton,
            hasWorkspace and not depsMissing and not jobRunning,
            _("Fine-tuning is running.") if jobRunning else noWorkspace,
        )
        setState(
            self.ui.labelNextButton,
            hasWorkspace and summary.get("latest_ranking"),
            _("Rank the scans first."),
        )
        hasCase = (
            p is not None
            and bool(p.currentCase)
            and self.logic.loadedCase() is not None
            and not self._caseProblem  # the editor may show nodes the Logic could not take over
        )
        noCase = self._caseProblem or _("Load a case first (Label next).")
        setState(self.ui.submitNextButton, hasCase and hasWorkspace, noCase)
        setState(self.ui.skipButton, hasCase and hasWorkspace, noCase)
        setState(self.ui.submitValidationButton, hasCase and hasWorkspace, noCase)
        setState(self.ui.proposeValidationButton, hasWorkspace and not depsMissing, noWorkspace)
        setState(self.ui.openSegmentEditorButton, hasCase, noCase)
        setState(
            self.ui.showChartButton,
            hasWorkspace and summary.get("latest_ranking"),
            _("Rank the scans first."),
        )
        if tasks.jobCommandRunning:  # launching or cancelling: wait for that command
            self.ui.finetuneButton.enabled = False
            self.ui.finetuneButton.toolTip = _("Wait for the fine-tuning command to end.")
        elif jobRunning:
            self.ui.finetuneButton.text = _("Cancel fine-tuning")
            self.ui.finetuneButton.enabled = True
            self.ui.finetuneButton.toolTip = _("Stop the fine-tuning job (its work is discarded).")
        else:
            self.ui.finetuneButton.text = _("Fine-tune")
            labeled = counts.get("labeled", 0)
            setState(
                self.ui.finetuneButton,
                hasWorkspace and labeled > 0,
                _("Submit at least one label first.") if hasWorkspace else noWorkspace,
            )
        setState(self.ui.useVersionButton, hasWorkspace and not jobRunning, noWorkspace)
        setState(self.ui.learningCurveButton, hasWorkspace, noWorkspace)

    # background tasks --------------------------------------------------------------------

    def _taskButtons(self) -> dict:
        """Each foreground task's button (it turns into Cancel while the task runs) and its
        text otherwise."""
        return {
            TaskKind.CREATE: (self.ui.createWorkspaceButton, _("Create from folder")),
            TaskKind.CREATE_FROM_VOLUMES: (
                self.ui.createFromVolumesButton,
                _("Create from loaded volumes"),
            ),
            TaskKind.RANK: (self.ui.rankButton, _("Rank")),
            TaskKind.PREDICT: (self.ui.labelNextButton, _("Label next")),
            TaskKind.PROPOSE: (self.ui.proposeValidationButton, _("Propose validation scans")),
            TaskKind.CREATE_FROM_DICOMWEB: (
                self.ui.createFromDicomwebButton,
                _("Create from DICOMweb server"),
            ),
            TaskKind.SEND_DICOM_SEG: (self.ui.sendDicomSegButton, _("Send labels as DICOM SEG")),
        }

    def _observeTasks(self) -> None:
        self.logic.tasks.onChanged = self._onTasksChanged
        self.logic.tasks.onDeferredError = self._onDeferredTaskError

    def _onTasksChanged(self) -> None:
        tasks = self.logic.tasks
        if tasks.busy and tasks.current is not self._shownTask:  # a task has just started
            self.ui.taskProgressBar.setRange(0, 0)
        if tasks.busy:
            self.ui.taskStatusLabel.text = tasks.describe()
        self._shownTask = tasks.current
        self._updateButtons()

    def _onDeferredTaskError(self, kind, error) -> None:
        self.ui.taskStatusLabel.text = _("{task} did not start: {error}").format(
            task=kind.describe().capitalize(), error=error
        )

    def _cancelIfRunning(self, kind) -> bool:
        """The task's button while it runs is Cancel: cancel it (True), or do nothing (False)."""
        if not self.logic.tasks.isRunning(kind):
            return False
        self.ui.taskStatusLabel.text = _("Cancelling...")
        self.logic.cancelTask()
        return True

    def _onTaskProgress(self, event) -> None:
        self.ui.taskStatusLabel.text = self.logic.describeProgress(event)
        if event.get("event") == ProgressEvent.PROGRESS and event.get("total"):
            self.ui.taskProgressBar.setRange(0, int(event["total"]))
            self.ui.taskProgressBar.setValue(int(event.get("done") or 0))

    def _endTask(self, result) -> bool:
        """Show how a task ended; returns whether it succeeded (errors are shown)."""
        self.ui.taskProgressBar.setRange(0, 1)
        self.ui.taskProgressBar.setValue(1 if result.ok else 0)
        self.ui.taskStatusLabel.text = self.logic.describeResult(result)
        if not result.ok and not result.cancelled:
            slicer.util.errorDisplay(
                self.logic.describeResult(result), detailedText="\n".join(result.output[-40:])
            )
        self._updateButtons()
        return result.ok

    # slots: setup ------------------------------------------------------------------------

    def onInstallDependencies(self) -> None:
        if not slicer.util.confirmOkCancelDisplay(
            _(
                "ASSFT needs these Python packages: {packages}. Install them now? This can take "
                "several minutes and downloads PyTorch (about 1-3 GB)."
            ).format(packages="; ".join(p.describe() for p in dependencies.dependencyProblems()))
        ):
            return
        with slicer.util.tryWithErrorDisplay(
            _("Failed to install the dependencies."), waitCursor=True
        ):
            dependencies.installDependencies(confirmed=True)
        self.refresh()

    def onOpenWorkspace(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to open the workspace."), waitCursor=True):
            self.logic.workspaceSummary(self._parameterNode.workspacePath)
        self.refresh()

    def onCreateWorkspace(self) -> None:
        if self._cancelIfRunning(TaskKind.CREATE):
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to create the workspace."), waitCursor=True):
            self.logic.runCreateWorkspace(
                p.workspacePath,
                [p.imagesPath],
                self.logic.modelForNewWorkspace(p.modelPreset, p.ownModel),
                labeledStructures=p.labeledStructures,
                onProgress=self._onTaskProgress,
                onFinished=self._endTaskAndRefresh,
            )

    def onCheckModel(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to check the model."), waitCursor=True):
            model = self.logic.modelForNewWorkspace(p.modelPreset, p.ownModel)
            self.ui.modelInfoLabel.text = _("Opening {model}...").format(model=model)
            self.logic.startDescribeModel(model, onFinished=self._onModelChecked)

    def _onModelChecked(self, result) -> None:
        self.ui.modelInfoLabel.text = (
            self.logic.modelInfoText(result.jsonDocument()) if result.ok else result.errorMessage
        )

    def onCreateFromVolumes(self) -> None:
        if self._cancelIfRunning(TaskKind.CREATE_FROM_VOLUMES):
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to create the workspace."), waitCursor=True):
            self.logic.runCreateWorkspaceFromVolumes(
                p.workspacePath,
                slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"),
                self.logic.modelForNewWorkspace(p.modelPreset, p.ownModel),
                labeledStructures=p.labeledStructures,
                onProgress=self._onTaskProgress,
                onFinished=self._endTaskAndRefresh,
            )

    def onCreateFromDicomweb(self) -> None:
        if self._cancelIfRunning(TaskKind.CREATE_FROM_DICOMWEB):
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to create the workspace."), waitCursor=True):
            pacs.runCreateWorkspaceFromDicomweb(
                self.logic,
                p.workspacePath,
                p.dicomwebUrl,
                self.logic.modelForNewWorkspace(p.modelPreset, p.ownModel),
                query=p.dicomwebQuery,
                authFile=p.dicomwebAuth,
                labeledStructures=p.labeledStructures,
                onProgress=self._onTaskProgress,
                onFinished=self._endTaskAndRefresh,
            )

    def onSendDicomSeg(self) -> None:
        if self._cancelIfRunning(TaskKind.SEND_DICOM_SEG):
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to send the labels."), waitCursor=True):
            pacs.runSendDicomSeg(
                self.logic,
                p.workspacePath,
                authFile=p.dicomwebAuth,
                onProgress=self._onTaskProgress,
                onFinished=self._endTaskAndRefresh,
            )

    def _endTaskAndRefresh(self, result) -> None:
        self._endTask(result)
        self.refresh()

    # slots: rank -------------------------------------------------------------------------

    def onRank(self) -> None:
        """The Rank button: Cancel while a ranking runs, else rank now."""
        if self._cancelIfRunning(TaskKind.RANK):
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to start ranking."), waitCursor=True):
            self.logic.runRank(
                p.workspacePath,
                p.budget,
                p.strategy.value,
                p.device.value,
                onProgress=self._onTaskProgress,
                onFinished=self._onRanked,
            )

    def _rankAfterPromotion(self) -> None:
        """Rank with the newly promoted version now, or once the running task has ended."""
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to rank with the new model version.")):
            started = self.logic.rankWhenFree(
                p.workspacePath,
                p.budget,
                p.strategy.value,
                p.device.value,
                onProgress=self._onTaskProgress,
                onFinished=self._onRanked,
            )
            if started is TaskStart.DEFERRED:
                self.ui.finetuneStatusLabel.text += " " + _(
                    "Ranking again once the running task ends."
                )

    def _onRanked(self, result) -> None:
        self._endTask(result)
        self.refresh()

    def onShowChart(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to show the chart.")):
            _table, _series, chart = self.logic.updateWorklist(
                self._parameterNode.workspacePath, self._parameterNode.worklistTable
            )
            slicer.modules.plots.logic().ShowChartInLayout(chart)

    @staticmethod
    def _tableRow(view, index) -> int:
        """The table node row of a view index (the view may sort through a proxy model)."""
        proxy = view.sortFilterProxyModel() if hasattr(view, "sortFilterProxyModel") else None
        return (proxy.mapToSource(index) if proxy is not None else index).row()

    def onWorklistDoubleClicked(self, index) -> None:
        caseId = self.logic.caseAtWorklistRow(
            self._parameterNode.worklistTable, self._tableRow(self.ui.worklistTableView, index)
        )
        if caseId:
            self._labelCase(caseId)

    # slots: annotate ---------------------------------------------------------------------

    def onLabelNext(self) -> None:
        if self._cancelIfRunning(TaskKind.PREDICT):
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to find the next case."), waitCursor=True):
            caseId = self.logic.nextCase(self._parameterNode.workspacePath)
        if caseId is None:
            slicer.util.infoDisplay(
                _("Every ranked case is labeled or skipped: fine-tune or rank again.")
            )
            return
        self._labelCase(caseId)

    def _mayDropEdits(self, caseId) -> bool:
        """Whether the loaded case may give way to ``caseId``: it has no unsubmitted edits, or
        the user, asked, says they may be discarded."""
        edited = self.logic.unsubmittedEdits()
        if edited is None:
            return True
        question = _(
            "Case {edited} has edits that are not submitted. Discard them and open case {case}?"
        ).format(edited=edited, case=caseId)
        if not slicer.util.confirmOkCancelDisplay(question):
            return False
        self.logic.discardEdits()
        return True

    def _labelCase(self, caseId) -> None:
        """Load a case with its prediction, predicting it first in the background if needed."""
        p = self._parameterNode
        if not self._mayDropEdits(caseId):
            return
        with slicer.util.tryWithErrorDisplay(
            _("Failed to load case {case}.").format(case=caseId), waitCursor=True
        ):
            self.logic.prepareCase(
                p.workspacePath,
                caseId,
                self._showCase,
                p.device.value,
                onProgress=self._onTaskProgress,
                onPredicted=self._endTask,
            )

    def _showCase(self, caseId) -> None:
        p = self._parameterNode
        # Asked again: edits may have been made while the case was being predicted.
        if not self._mayDropEdits(caseId):
            return
        # Shown once: tryWithErrorDisplay shows the failure and raises it again, and a caller
        # that is itself inside one (Label next, when nothing needs predicting) would show it
        # a second time.
        with (
            contextlib.suppress(Exception),
            slicer.util.tryWithErrorDisplay(
                _("Failed to load case {case}.").format(case=caseId), waitCursor=True
            ),
        ):
            nodes = self.logic.loadCase(
                p.workspacePath, caseId, showUncertainty=p.showUncertainty, discardEdits=True
            )
            self._caseProblem = ""
            p.currentCase, p.caseVolume, p.caseSegmentation, p.caseUncertainty = (
                caseId,
                nodes.volume,
                nodes.segmentation,
                nodes.uncertainty,
            )
            # In the panel's own editor: a prediction that ends while the user is elsewhere
            # never switches modules ("Open in Segment Editor" does, when clicked).
            self._editCase()
            self.ui.showUncertaintyCheckBox.enabled = nodes.uncertainty is not None
            self.ui.showUncertaintyCheckBox.toolTip = (
                "" if nodes.uncertainty is not None else _("No uncertainty map for this case.")
            )
        self.refresh()

    def _editCase(self) -> None:
        """Put the case in the embedded editor, with the scan shown in the slice views."""
        p = self._parameterNode
        editor = self.ui.segmentEditorWidget
        if p is None or p.caseSegmentation is None:
            editor.setSegmentationNode(None)
            return
        editor.setSegmentationNode(p.caseSegmentation)
        editor.setSourceVolumeNode(p.caseVolume)
        if not self.parent.isEntered:
            # The user works in another module: no effect may catch clicks in the views, and
            # the views stay as the user left them; the case shows when the panel does.
            editor.removeViewObservations()
            self._caseToShow = True
            return
        self._caseToShow = False
        slicer.util.setSliceViewerLayers(background=p.caseVolume, fit=True)
        self.logic.setUncertaintyVisible(p.showUncertainty)

    def onOpenSegmentEditor(self) -> None:
        """Edit the case in Slicer's Segment Editor module instead (the user asked)."""
        p = self._parameterNode
        if p.caseSegmentation is None:
            return
        self.ui.segmentEditorWidget.setActiveEffect(None)
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(p.caseSegmentation)
        editor.setSourceVolumeNode(p.caseVolume)
        slicer.util.setSliceViewerLayers(background=p.caseVolume, fit=True)
        self.logic.setUncertaintyVisible(p.showUncertainty)

    def onShowUncertainty(self, visible) -> None:
        self.logic.setUncertaintyVisible(visible)

    def onSubmitAndNext(self) -> None:
        if self._submit():
            self._parameterNode.currentCase = ""
            self.refresh()
            self.onLabelNext()

    def _submit(self) -> bool:
        """Store the case's segmentation, asking who wins voxels that segments share; whether
        it was stored."""
        p = self._parameterNode
        self.ui.segmentEditorWidget.setActiveEffect(None)  # an effect's unapplied preview ends
        overlap = None
        with slicer.util.tryWithErrorDisplay(_("Failed to submit the label."), waitCursor=True):
            try:
                self.logic.submitCase(p.workspacePath)
                return True
            except SegmentOverlapError as error:
                overlap = error  # asked below, without the wait cursor
        if overlap is None:
            return False  # the error was shown
        question = f"{overlap}\n\n" + _(
            "Give each shared voxel the label of the segment lowest in the list, and submit?"
        )
        if not slicer.util.confirmYesNoDisplay(question):
            return False
        with slicer.util.tryWithErrorDisplay(_("Failed to submit the label."), waitCursor=True):
            self.logic.submitCase(p.workspacePath, overlap=OverlapPolicy.LAST_WINS)
            return True
        return False

    def onSubmitValidation(self) -> None:
        """Submit the case's label and hold the case out: a validation scan for the gate."""
        p = self._parameterNode
        case = p.currentCase
        if not self._submit():
            return
        with slicer.util.tryWithErrorDisplay(
            _("The label is stored, but the case could not be held out."), waitCursor=True
        ):
            self.logic.holdOutCase(p.workspacePath, case)
        p.currentCase = ""
        self.refresh()
        self.onLabelNext()

    def onProposeValidation(self) -> None:
        """Propose validation scans that cover the archive (Cancel while it runs)."""
        if self._cancelIfRunning(TaskKind.PROPOSE):
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to propose validation scans.")):
            self.logic.runProposeValidation(
                p.workspacePath,
                p.device.value,
                onProgress=self._onTaskProgress,
                onFinished=self._onProposed,
            )

    def _onProposed(self, result) -> None:
        if self._endTask(result):
            self.ui.taskStatusLabel.text = self.logic.describeProposal(result)

    def onSkip(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to skip the case."), waitCursor=True):
            self.logic.skipCase(p.workspacePath, p.currentCase)
        p.currentCase = ""
        self.refresh()
        self.onLabelNext()

    # slots: fine-tune --------------------------------------------------------------------

    def onFinetune(self) -> None:
        """Fine-tune, or cancel the running job (its own command: the task running in the
        foreground, e.g. a prediction, is left alone)."""
        p = self._parameterNode
        if self.session.followsJob:
            with slicer.util.tryWithErrorDisplay(
                _("Failed to cancel fine-tuning."), waitCursor=True
            ):
                # The job followed, in its own workspace (the field may name another now).
                if self.session.cancelJob(onFinished=self._onCancelled):
                    self.ui.finetuneStatusLabel.text = _("Cancelling...")
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start fine-tuning."), waitCursor=True):
            question = self.logic.longFinetuneQuestion(
                p.workspacePath, p.finetuneMode.value, p.finetuneIterations
            )
            if question and not slicer.util.confirmOkCancelDisplay(question):
                return
            self.session.launchFinetune(
                p.workspacePath,
                onLaunched=self._onFinetuneLaunched,
                mode=p.finetuneMode.value,
                iterations=p.finetuneIterations,
                device=p.device.value,
            )
            self.ui.finetuneStatusLabel.text = _("Starting fine-tuning...")
            self._updateButtons()

    def _onFinetuneLaunched(self, result, problem: str) -> None:
        if problem:
            self.ui.finetuneStatusLabel.text = problem
            slicer.util.errorDisplay(problem, detailedText="\n".join(result.output[-40:]))
            self._updateButtons()
            return
        self._beginJobMonitoring()

    def _onCancelled(self, result) -> None:
        self._updateButtons()
        if not result.ok:
            slicer.util.errorDisplay(self.logic.describeResult(result))

    def _beginJobMonitoring(self) -> None:
        self.ui.finetuneProgressBar.setRange(0, 0)
        self._jobTimer.start()
        self._updateButtons()

    def onPollJob(self) -> None:
        p = self._parameterNode
        if p is None:
            return
        # A promotion ranks again only in the job's own workspace, not one opened since.
        update = self.session.pollJob(p.workspacePath, p.rerankAfterPromotion)
        self.ui.finetuneStatusLabel.text = update.text
        if update.total:
            self.ui.finetuneProgressBar.setRange(0, int(update.total))
            self.ui.finetuneProgressBar.setValue(int(update.done or 0))
        if update.active:
            return

        self._jobTimer.stop()
        self.ui.finetuneProgressBar.setRange(0, 1)
        self.ui.finetuneProgressBar.setValue(1 if update.state == JobState.DONE else 0)
        self.refresh()
        if update.error:
            slicer.util.errorDisplay(update.error)
        elif update.rankAgain:
            self._rankAfterPromotion()

    def _selectedVersion(self) -> str:
        row = self._tableRow(self.ui.modelsTableView, self.ui.modelsTableView.currentIndex())
        version = self.logic.versionAtModelsRow(self._parameterNode.modelsTable, row)
        if not version:
            raise ValueError(_("Select a model version in the table first."))
        return version

    def onUseVersion(self) -> None:
        with slicer.util.tryWithErrorDisplay(
            _("Failed to change the model version."), waitCursor=True
        ):
            self.logic.useModelVersion(self._parameterNode.workspacePath, self._selectedVersion())
        self.refresh()

    def onShowLearningCurve(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to show the learning curve.")):
            chart = self.logic.showLearningCurve(
                self._parameterNode.workspacePath, self._selectedVersion()
            )
            slicer.modules.plots.logic().ShowChartInLayout(chart)


#
# ASSFTSlicerLogic
#


class ASSFTSlicerLogic(WorkspaceLogic, ScriptedLoadableModuleLogic):
    """The work behind the panel (ASSFTSlicerLib/logic.py), with the module's parameter node."""

    def __init__(self, python: str | None = None, launcher: str = "auto") -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        WorkspaceLogic.__init__(self, python, launcher)

    def getParameterNode(self):
        return ASSFTSlicerParameterNode(super().getParameterNode())


#
# ASSFTSlicerTest
#


class ASSFTSlicerTest(ScriptedLoadableModuleTest):
    """The whole annotation loop on a tiny synthetic workspace with a tiny model, on the CPU."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        try:
            self.test_ASSFTSlicer_loop()
        except unittest.SkipTest as skipped:  # "Reload and Test" says why, and does not fail
            self.delayDisplay(f"Skipped: {skipped}")

    def test_ASSFTSlicer_loop(self):
        from ASSFTSlicerLib.selftest import requireDependencies, runAnnotationLoop

        requireDependencies()  # skipped where PyTorch is missing (the Extensions Index builds)
        self.delayDisplay("Starting the ASSFT loop on a tiny synthetic workspace")
        with tempfile.TemporaryDirectory(prefix="assft-selftest-") as folder:
            report = runAnnotationLoop(
                ASSFTSlicerLogic(),
                pathlib.Path(folder),
                log=lambda message: self.delayDisplay(message, 300),
            )
        self.assertEqual(report["labeled"], 2)
        self.assertTrue(report["promoted_version"])
        self.delayDisplay("Test passed")

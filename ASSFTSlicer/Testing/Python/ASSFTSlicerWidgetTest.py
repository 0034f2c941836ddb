"""The ASSFT panel driven as a user would, in a real Slicer (ctest, or paste into the Python
console).

Complements ``ASSFTSlicerTest`` (the whole loop through the Logic): here the buttons are
clicked, Rank turns into Cancel and back, a cancelled ranking leaves the workspace free, "Label
next" predicts the case in the background and puts it in the panel's own segment editor with
the right source volume and segments (without switching modules, even when the user has gone
elsewhere), "Open in Segment Editor" still opens the module on request, "Submit and next"
stores the label, and fine-tuning can be cancelled from the panel.
"""

import pathlib
import tempfile
import time
import unittest

import numpy as np
import qt
import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

from assft.runtime.job_state import JobState


class ASSFTSlicerWidgetTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        try:
            self.test_panel()
        except unittest.SkipTest as skipped:
            self.delayDisplay(f"Skipped: {skipped}")

    def _waitFor(self, condition, timeout=300.0, what="the task"):
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not finish in {timeout:g} s")
            qt.QApplication.processEvents()
            time.sleep(0.05)

    def _taskDone(self, widget):
        return not widget.logic.tasks.busy

    def test_panel(self):
        import ASSFTSlicer
        from ASSFTSlicerLib.scene import LabelDefinition, loadLabelArray
        from ASSFTSlicerLib.selftest import requireDependencies, writeTinyProject

        requireDependencies()  # skipped where PyTorch is missing (the Extensions Index builds)

        slicer.util.selectModule("ASSFTSlicer")
        widget = slicer.modules.assftslicer.widgetRepresentation().self()
        p = widget._parameterNode

        # Parameters and widgets are bound both ways.
        p.budget = 3
        self.assertEqual(widget.ui.budgetSpinBox.value, 3)
        widget.ui.budgetSpinBox.value = 2
        self.assertEqual(p.budget, 2)
        p.strategy = ASSFTSlicer.Strategy.DKD
        self.assertEqual(widget.ui.strategyComboBox.currentText, ASSFTSlicer.Strategy.DKD.label())
        p.strategy = ASSFTSlicer.Strategy.ATTSQ
        p.device = ASSFTSlicer.Device.CPU
        self.assertFalse(widget.ui.rankButton.enabled)
        self.assertTrue(widget.ui.rankButton.toolTip, "a disabled button must say why")

        folder = pathlib.Path(tempfile.mkdtemp(prefix="assft-widgettest-"))
        images, preset, truth = writeTinyProject(folder)
        workspacePath = folder / "workspace"
        self.delayDisplay("Creating the workspace")
        result = widget.logic.startCreateWorkspace(workspacePath, [images], str(preset)).wait(
            timeout=300
        )
        self.assertTrue(result.ok, result.errorMessage)
        p.workspacePath = workspacePath
        widget.onOpenWorkspace()
        self.assertIn("4 cases", widget.ui.workspaceStatusLabel.text)

        self.delayDisplay("Rank, cancelled")
        widget.ui.rankButton.click()
        self.assertEqual(widget.ui.rankButton.text, "Cancel")
        self.assertTrue(widget.ui.rankButton.enabled)
        self.assertFalse(widget.ui.labelNextButton.enabled)
        self._waitFor(
            lambda: not widget.logic.tasks.busy or widget.logic.tasks.current.lastProgress,
            what="the first progress",
        )
        widget.ui.rankButton.click()  # Cancel
        self._waitFor(lambda: self._taskDone(widget), what="cancelling")
        self.assertEqual(widget.ui.rankButton.text, "Rank")
        summary = widget.logic.workspaceSummary(workspacePath)
        self.assertIsNone(summary["running_job"])
        self.assertIsNone(summary["latest_ranking"])

        self.delayDisplay("Rank")
        widget.ui.rankButton.click()
        self._waitFor(lambda: self._taskDone(widget), what="ranking")
        table = widget.ui.worklistTableView.mrmlTableNode()
        self.assertEqual(table.GetNumberOfRows(), 4)
        self.assertTrue(widget.ui.labelNextButton.enabled)

        self.delayDisplay("Label next: predicted in the background, edited in the panel")
        first = widget.logic.nextCase(workspacePath)
        widget.ui.labelNextButton.click()
        slicer.util.selectModule("Data")  # the user looks elsewhere while it predicts
        self._waitFor(
            lambda: self._taskDone(widget) and p.currentCase == first, what="predicting and loading"
        )
        self.assertEqual(slicer.util.selectedModule(), "Data", "a background task switched modules")
        slicer.util.selectModule("ASSFTSlicer")
        embedded = widget.ui.segmentEditorWidget
        self.assertIs(embedded.segmentationNode(), p.caseSegmentation)
        self.assertIs(embedded.sourceVolumeNode(), p.caseVolume)
        self.assertIs(embedded.mrmlSegmentEditorNode(), widget.logic.segmentEditorNode())
        self.assertEqual(embedded.mrmlSegmentEditorNode().GetSingletonTag(), "ASSFTSlicer")
        segmentation = p.caseSegmentation.GetSegmentation()
        self.assertEqual(
            [
                segmentation.GetNthSegment(i).GetName()
                for i in range(segmentation.GetNumberOfSegments())
            ],
            ["shell", "core"],
        )
        self.assertIsNotNone(p.caseUncertainty)

        self.delayDisplay("Open in Segment Editor, on request")
        widget.ui.openSegmentEditorButton.click()
        self.assertEqual(slicer.util.selectedModule(), "SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        self.assertIs(editor.segmentationNode(), p.caseSegmentation)
        self.assertIs(editor.sourceVolumeNode(), p.caseVolume)
        slicer.util.selectModule("ASSFTSlicer")

        self.delayDisplay("Submit and next")
        labels = LabelDefinition.fromWorkspace(
            widget.logic.openWorkspace(workspacePath).config.labels
        )
        truthArray = loadLabelArray(truth[first], p.caseVolume, labels)
        for value, name in ((1, "shell"), (2, "core")):
            slicer.util.updateSegmentBinaryLabelmapFromArray(
                (truthArray == value).astype(np.uint8),
                p.caseSegmentation,
                segmentation.GetSegmentIdBySegmentName(name),
                p.caseVolume,
            )
        slicer.util.selectModule("ASSFTSlicer")
        widget.ui.submitNextButton.click()
        self._waitFor(
            lambda: self._taskDone(widget) and p.currentCase not in ("", first),
            what="loading the next case",
        )
        stored = widget.logic.openWorkspace(workspacePath).label_path(first)
        self.assertIsNotNone(stored)

        self.delayDisplay("Fine-tune, then cancel from the panel")
        p.finetuneIterations = 500
        widget.ui.finetuneButton.click()
        self._waitFor(
            lambda: widget.logic.runningFinetuneJob(workspacePath) is not None,
            what="starting fine-tuning",
        )
        self._waitFor(
            lambda: widget.ui.finetuneButton.text == "Cancel fine-tuning",
            timeout=30,
            what="the Cancel button",
        )
        widget.ui.finetuneButton.click()
        self._waitFor(
            lambda: not widget.session.followsJob, timeout=120, what="cancelling fine-tuning"
        )

        self.assertEqual(widget.logic.finetuneJob(workspacePath)["state"], JobState.CANCELLED)
        self.assertEqual(widget.ui.finetuneButton.text, "Fine-tune")
        self.delayDisplay("Test passed")

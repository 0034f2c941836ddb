"""The whole annotation loop on a tiny synthetic workspace: the module's self-test.

``ASSFTSlicerTest`` runs it in Slicer ("Reload and Test"); the pytest suite runs the same code
with the MRML of the ``slicer-core`` wheel. Every step goes through the module's Logic: engine
processes for creating, ranking, predicting and fine-tuning; the scene for loading, editing and
submitting. Outcomes are asserted, not just printed.
"""

from __future__ import annotations

import time
import unittest
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import slicer

from assft.runtime.job_state import JobState
from assft.runtime.progress import ProgressEvent

__all__ = ["requireDependencies", "runAnnotationLoop", "writeTinyProject"]


def requireDependencies() -> None:
    """Skip the calling test when the engine's Python packages are missing or too old.

    The Extensions Index build machines have no PyTorch: there both registered tests are
    skipped with this message instead of failing. Where the packages are installed they run in
    full.

    Raises:
        unittest.SkipTest: what is missing, and how to install it.
    """
    from ASSFTSlicerLib import dependencies

    problems = dependencies.dependencyProblems()
    if problems:
        raise unittest.SkipTest(
            "ASSFT's Python dependencies are not installed ("
            + "; ".join(problem.describe() for problem in problems)
            + "): install them (ASSFT Slicer > Setup > Install dependencies) to run this test"
        )


class LoopFailure(AssertionError):
    """A step of the loop did not give the expected outcome."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise LoopFailure(message)


def writeTinyProject(
    folder: Path, cases: int = 4, size: int = 24
) -> tuple[Path, Path, dict[str, Path]]:
    """A synthetic pool with ground truth and the tiny preset file.

    Returns:
        ``(images folder, preset file, {case id: truth label file})``.
    """
    from assft.datasets.synthetic import write_synthetic_pool, write_tiny_preset

    pool = write_synthetic_pool(folder / "pool", cases, seed=3, size=size)
    preset = write_tiny_preset(folder / "tiny-unet.json")
    return folder / "pool" / "images", preset, {case.case_id: case.label for case in pool}


def _finish(process, what: str, timeout: float = 600.0):
    result = process.wait(timeout=timeout)
    _check(result.ok, f"{what} failed: {result.errorMessage}")
    return result


def _segmentArray(segmentationNode, name: str, volumeNode) -> np.ndarray:
    from ASSFTSlicerLib.scene import segmentMask

    segmentation = segmentationNode.GetSegmentation()
    segmentId = segmentation.GetSegmentIdBySegmentName(name)
    _check(bool(segmentId), f"no segment named {name!r}")
    return segmentMask(segmentationNode, segmentId, volumeNode)


def _paintTruth(logic, truthFile: Path, labels) -> None:
    """The simulated clinician: replace every segment with the ground truth."""
    from ASSFTSlicerLib.scene import loadLabelArray

    nodes = logic.caseNodes
    truth = loadLabelArray(truthFile, nodes.volume, labels)
    segmentation = nodes.segmentation.GetSegmentation()
    for label in labels:
        segmentId = segmentation.GetSegmentIdBySegmentName(label.name)
        slicer.util.updateSegmentBinaryLabelmapFromArray(
            (truth == label.value).astype(np.uint8), nodes.segmentation, segmentId, nodes.volume
        )


def runAnnotationLoop(
    logic, folder: Path, log: Callable[[str], Any] = print, device: str = "cpu"
) -> dict[str, Any]:
    """Create, rank, label two cases (one pre-filled by prediction), fine-tune, roll back.

    Args:
        logic: An ``ASSFTSlicerLogic``.
        folder: An empty scratch folder.
        log: Shows progress (``delayDisplay`` in Slicer).
        device: Where the engine runs.

    Returns:
        A summary: ``labeled`` (count), ``promoted_version``, ``selected``, ``seconds``.

    Raises:
        LoopFailure (an AssertionError): a step went wrong; the message says which.
    """
    from assft.io.imaging import read_label
    from ASSFTSlicerLib.logic import JOB_STARTING
    from ASSFTSlicerLib.scene import LabelDefinition, SegmentOverlapError

    started = time.monotonic()
    folder = Path(folder)
    images, preset, truth = writeTinyProject(folder)
    workspacePath = folder / "workspace"

    log("Creating a workspace from 4 synthetic scans")
    _finish(
        logic.startCreateWorkspace(workspacePath, [images], str(preset)), "creating the workspace"
    )
    summary = logic.workspaceSummary(workspacePath)
    _check(
        summary["total"] == 4 and summary["counts"].get("unlabeled") == 4,
        f"unexpected workspace {summary}",
    )

    log("Ranking (ATTSQ, budget 2)")
    events = []
    _finish(
        logic.startRank(workspacePath, 2, "attsq", device, views=1, onProgress=events.append),
        "ranking",
    )
    _check(
        any(e.get("event") == ProgressEvent.PROGRESS for e in events),
        "ranking reported no progress",
    )
    done = [e for e in events if e.get("event") == ProgressEvent.DONE]
    _check(
        len(done) == 1 and len(done[0].get("selected", [])) == 2, f"ranking's done event: {done}"
    )
    selected = done[0]["selected"]
    table, series, chart = logic.updateWorklist(workspacePath)
    _check(table.GetNumberOfRows() == 4, "the worklist does not list the 4 cases")
    _check(
        logic.caseAtWorklistRow(table, 0) == selected[0],
        "the worklist's first row is not the best-ranked case",
    )
    _check(
        chart.GetNumberOfPlotSeriesNodes() == 1 and series.GetXColumnName() == "DKD",
        "the DKD-vs-ASD chart is missing",
    )

    workspace = logic.openWorkspace(workspacePath)
    labels = LabelDefinition.fromWorkspace(workspace.config.labels)
    for index, caseId in enumerate(selected):
        _check(logic.nextCase(workspacePath) == caseId, f"'next' is not the selected case {caseId}")
        if index == 0:
            log(f"Predicting {caseId}")
            _finish(logic.startPredict(workspacePath, caseId, device, views=1), "predicting")
            prediction, uncertainty = logic.predictionFiles(workspacePath, caseId)
            _check(
                prediction is not None and uncertainty is not None, "prediction files are missing"
            )
        log(f"Labeling {caseId}")
        nodes = logic.loadCase(workspacePath, caseId)
        names = [
            nodes.segmentation.GetSegmentation().GetNthSegment(i).GetName()
            for i in range(nodes.segmentation.GetSegmentation().GetNumberOfSegments())
        ]
        _check(
            names == [label.name for label in labels],
            f"segments {names} are not the workspace's labels",
        )
        if index == 0:
            predicted = read_label(prediction)
            import SimpleITK as sitk

            predictedArray = sitk.GetArrayFromImage(predicted)
            for label in labels:
                _check(
                    np.array_equal(
                        _segmentArray(nodes.segmentation, label.name, nodes.volume),
                        predictedArray == label.value,
                    ),
                    f"segment {label.name!r} is not pre-filled with the prediction",
                )
            _check(nodes.uncertainty is not None, "the uncertainty overlay was not loaded")
        _paintTruth(logic, truth[caseId], labels)
        if index == 0:  # overlapping segments are refused, not silently resolved
            segmentation = nodes.segmentation.GetSegmentation()
            coreId = segmentation.GetSegmentIdBySegmentName(labels[-1].name)
            shell = _segmentArray(nodes.segmentation, labels[0].name, nodes.volume)
            core = _segmentArray(nodes.segmentation, labels[-1].name, nodes.volume)
            slicer.util.updateSegmentBinaryLabelmapFromArray(
                (core | shell).astype(np.uint8), nodes.segmentation, coreId, nodes.volume
            )
            try:
                logic.submitCase(workspacePath)
                raise LoopFailure("overlapping segments were submitted")
            except SegmentOverlapError:
                pass
            _check(
                logic.openWorkspace(workspacePath).label_path(caseId) is None,
                "a refused label was stored",
            )
            _paintTruth(logic, truth[caseId], labels)
        stored = logic.submitCase(workspacePath, user="selftest")
        import SimpleITK as sitk

        storedArray = sitk.GetArrayFromImage(read_label(stored))
        truthArray = sitk.GetArrayFromImage(read_label(truth[caseId]))
        _check(
            np.array_equal(storedArray, truthArray),
            f"the stored label of {caseId} differs from the segmentation",
        )
    logic.closeCase()
    _check(
        logic.workspaceSummary(workspacePath)["counts"].get("labeled") == 2,
        "two cases should be labeled",
    )

    log("Fine-tuning in the background")
    launch = _finish(
        logic.startFinetune(
            workspacePath, "selective", 2, device, config={"views": 1, "semi_iterations": 1}
        ),
        "launching fine-tuning",
    )
    launched = logic.launchedJob(launch)
    _check(bool(launched.get("pid")), f"the detached launch printed no pid: {launch.output[-5:]}")
    deadline = time.monotonic() + 600
    status = {"state": JOB_STARTING}
    while logic.jobIsActive(status):
        _check(time.monotonic() < deadline, "fine-tuning did not finish in 10 minutes")
        _wait(0.5)
        status = logic.detachedJobStatus(workspacePath, launched)
    _check(
        status["state"] == JobState.DONE,
        f"fine-tuning ended {status.get('state')}: {status.get('message')}",
    )
    promoted = logic.jobPromotedVersion(status)
    _check(promoted == "v1", f"fine-tuning did not promote v1: {status.get('last_progress')}")

    log("Model versions and rollback")
    models = logic.updateModelsTable(workspacePath)
    _check(
        models.GetNumberOfRows() == 2 and logic.versionAtModelsRow(models, 0) == "v1",
        "the versions table is wrong",
    )
    chart = logic.showLearningCurve(workspacePath, "v1")
    # The held-out Dice has points only where a case is held out; the training loss always.
    _check(
        chart.GetNumberOfPlotSeriesNodes() == 2
        and chart.GetNthPlotSeriesNode(0).GetTableNode().GetNumberOfRows() >= 2,
        "the learning curve of v1 should show the training loss",
    )
    logic.useModelVersion(workspacePath, "v0")
    _check(logic.workspaceSummary(workspacePath)["model_version"] == "v0", "rollback to v0 failed")
    logic.useModelVersion(workspacePath, "v1")
    return {
        "labeled": 2,
        "promoted_version": promoted,
        "selected": selected,
        "seconds": time.monotonic() - started,
    }


def _wait(seconds: float) -> None:
    """Sleep, keeping Slicer's GUI alive when there is one."""
    try:
        import qt

        end = time.monotonic() + seconds
        while time.monotonic() < end:
            qt.QApplication.processEvents()
            time.sleep(0.02)
    except ImportError:
        time.sleep(seconds)

"""The module's Logic without Qt: worklist, jobs, versions, dependencies, and real engine
processes."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest

from assft_testing.slicer_side import require_slicer

slicer = require_slicer()

import ASSFTSlicer  # noqa: E402
from assft_testing import workspaces  # noqa: E402
from ASSFTSlicerLib import dependencies  # noqa: E402
from ASSFTSlicerLib.worklist import modelRows, worklistRows  # noqa: E402


def _logic():
    return ASSFTSlicer.ASSFTSlicerLogic(python=sys.executable, launcher="thread")


@pytest.fixture
def tiny_workspace(tmp_path, synthetic_pool, tiny_preset_file):
    """Four synthetic cases with the tiny preset (created in-process: no model is loaded)."""
    _, cases = synthetic_pool
    workspace = workspaces.tiny_workspace(tmp_path, cases[:4], tiny_preset_file)
    return workspace, {c.case_id: c.label for c in cases[:4]}


def _ranking(cases):
    return {
        "model_version": "v0",
        "strategy": "attsq",
        "cases": [
            {
                "case": case,
                "rank": rank,
                "score": 1.0 / rank,
                "dkd": 0.1 * rank,
                "asd": 0.5 - 0.05 * rank,
                "asd_per_class": {"shell": 0.2, "core": 0.4 + rank},
                "selected": rank <= 2,
                "reason": f"r{rank}",
            }
            for rank, case in enumerate(cases, start=1)
        ],
    }


def test_the_module_imports_without_qt_and_says_so():
    assert ASSFTSlicer.HAVE_QT is False
    with pytest.raises(RuntimeError, match="Slicer application"):
        ASSFTSlicer.ASSFTSlicerLogic().getParameterNode()
    from assft.models import load_presets, resources_dir

    # Read from the engine's package data, not the ["demo"] fallback of an unreadable file.
    assert ASSFTSlicer.MODEL_PRESETS == list(load_presets(resources_dir() / "Models.json"))
    assert len(ASSFTSlicer.MODEL_PRESETS) > 1 and "demo" in ASSFTSlicer.MODEL_PRESETS
    assert [e.value for e in ASSFTSlicer.Strategy][0] == "attsq"


def test_worklist_table_and_chart_follow_the_latest_ranking(mrml, tiny_workspace):
    workspace, _ = tiny_workspace
    logic = _logic()
    table, series, chart = logic.updateWorklist(workspace.root)
    assert table.GetNumberOfRows() == 0  # no ranking yet
    order = ["case_002", "case_000", "case_003", "case_001"]
    workspace.save_ranking(_ranking(order))
    workspace.skip("case_003", user="tester")

    table2, series2, chart2 = logic.updateWorklist(workspace.root, table)
    assert (table2, series2, chart2) == (table, series, chart)  # refilled, not duplicated
    assert table.GetNumberOfRows() == 4
    assert [logic.caseAtWorklistRow(table, r) for r in range(4)] == order
    status = table.GetColumnIndex("Status")
    assert [table.GetCellText(r, status) for r in range(4)] == [
        "unlabeled",
        "unlabeled",
        "skipped",
        "unlabeled",
    ]
    assert table.GetCellText(0, table.GetColumnIndex("Hardest structure")) == "core"
    assert table.GetCellText(0, table.GetColumnIndex("Selected")) == "yes"
    assert float(table.GetCellText(1, table.GetColumnIndex("DKD"))) == pytest.approx(0.2)
    # A ranking without priorities (before they were recorded) shows its scores there.
    assert float(table.GetCellText(1, table.GetColumnIndex("Priority"))) == pytest.approx(0.5)
    assert logic.caseAtWorklistRow(table, 9) == ""
    assert series.GetTableNodeID() == table.GetID() and (
        series.GetXColumnName(),
        series.GetYColumnName(),
    ) == ("DKD", "ASD")
    assert chart.GetNumberOfPlotSeriesNodes() == 1 and "DKD" in chart.GetXAxisTitle()
    assert logic.nextCase(workspace.root) == "case_002"


def test_rows_keep_missing_scores_as_nan():
    rows = worklistRows(
        {
            "cases": [
                {
                    "case": "a",
                    "rank": 1,
                    "score": None,
                    "dkd": None,
                    "asd": 0.3,
                    "hardest_structure": "liver",
                }
            ]
        },
        {},
    )
    assert (
        math.isnan(rows[0]["priority"])
        and rows[0]["hardest"] == "liver"
        and rows[0]["status"] == "unknown"
    )
    assert worklistRows(None, {}) == []
    models = modelRows(
        {
            "current": "v1",
            "versions": [
                {"version": "v0", "current": False, "promoted": True, "metrics": {}},
                {
                    "version": "v1",
                    "current": True,
                    "parent": "v0",
                    "mode": "selective",
                    "promoted": True,
                    "metrics": {"validation_dice": 0.81},
                    "gate": {"passed": True, "reason": "better"},
                },
            ],
        }
    )
    assert [r["version"] for r in models] == ["v1", "v0"]
    assert (
        models[0]["dice"] == pytest.approx(0.81)
        and models[0]["current"] == "yes"
        and models[0]["gate"] == "better"
    )
    assert models[1]["mode"] == "pretrained"
    # A damaged version shows its problem where the gate's verdict would be.
    damaged = modelRows(
        {
            "versions": [
                {
                    "version": "v2",
                    "current": True,
                    "gate": {"reason": "better"},
                    "error": "model.pt: is damaged",
                },
            ]
        }
    )
    assert damaged[0]["gate"] == "DAMAGED: model.pt: is damaged"
    # The gate's change per part of the archive follows its verdict.
    parts = [
        {"part": 0, "name": "part 1 (18 scans, like a)", "change": 0.021},
        {"part": 1, "name": "part 2 (6 scans, like b)", "change": -0.0134},
    ]
    refused = modelRows(
        {"versions": [{"version": "v4", "gate": {"reason": "worse on part 2", "parts": parts}}]}
    )
    assert refused[0]["gate"] == "worse on part 2; by part: 1 +0.021, 2 -0.013"
    one = modelRows({"versions": [{"version": "v5", "gate": {"reason": "ok", "parts": parts[:1]}}]})
    assert one[0]["gate"] == "ok"
    # A malformed learning curve shows as such in its cell; the rest of the table stays.
    odd = modelRows({"versions": [{"version": "v3", "learning_curve": {"best": {"step": 1}}}]})
    assert odd[0]["version"] == "v3" and odd[0]["curve"].startswith("unreadable learning curve")


def test_model_versions_table_and_rollback(mrml, tiny_workspace):
    workspace, _ = tiny_workspace
    logic = _logic()
    table = logic.updateModelsTable(workspace.root)
    assert table.GetNumberOfRows() == 1 and logic.versionAtModelsRow(table, 0) == "v0"
    with pytest.raises(ValueError, match="v7"):
        logic.useModelVersion(workspace.root, "v7")
    # A damaged pointer is listed (no current row), and choosing a version repairs it.
    (workspace.models_dir / "current").write_bytes(b"\xff")
    table = logic.updateModelsTable(workspace.root)
    assert table.GetNumberOfRows() == 1
    assert logic.workspaceSummary(workspace.root)["model_version"] is None
    assert logic.useModelVersion(workspace.root, "v0")["repaired"]
    assert logic.workspaceSummary(workspace.root)["model_version"] == "v0"


def test_a_ranking_made_with_another_version_says_so(mrml, tiny_workspace):
    """After a rollback the worklist showed the other version's ranking without a word
    (issue 22): both front ends say which version ranked it, until the next ranking."""
    from assft.workspace.model_versions import ModelVersions

    workspace, labels = tiny_workspace
    logic = _logic()
    registry = ModelVersions(workspace)
    workspace.save_ranking(_ranking(sorted(labels)))  # by v0
    summary = logic.workspaceSummary(workspace.root)
    assert logic.describeRankingModel(summary) == ""
    state = registry.load("v0").network.state_dict()
    registry.promote(registry.add_version(state, {"mode": "none"}), reason="test")
    said = logic.describeRankingModel(logic.workspaceSummary(workspace.root))
    assert said == (
        "The worklist was ranked with model v0; the current model is v1: rank again to follow it."
    )
    assert said in logic.describeWorkspace(logic.workspaceSummary(workspace.root))
    logic.useModelVersion(workspace.root, "v0")  # the rollback
    assert logic.describeRankingModel(logic.workspaceSummary(workspace.root)) == ""


def test_the_panel_says_which_structures_to_correct(mrml, tiny_workspace):
    workspace, _ = tiny_workspace
    logic = _logic()
    names = [label.name for label in workspace.config.labels]
    assert "Correct" not in logic.describeWorkspace(logic.workspaceSummary(workspace.root))
    workspace.set_labeled_structures([workspace.config.label_values[-1]])
    try:
        text = logic.describeWorkspace(logic.workspaceSummary(workspace.root))
        others = ", ".join(names[:-1])
        assert text.endswith(
            f". Correct {names[-1]} only: {others} stay as the model predicts them"
        )
    finally:
        workspace.set_labeled_structures(None)
    assert (
        logic.describeCorrection(["a"], ["a"]) == "" and logic.describeCorrection([], ["a"]) == ""
    )


def test_a_fine_tuned_version_shows_its_learning_curve(mrml, tiny_workspace):
    """A real fine-tuning job (6 supervised steps, held-out Dice at every step): the models
    table sums it up, and the chart has one line of training loss and one of held-out Dice."""
    from assft.training import FinetuneConfig
    from assft.training.finetune import run_finetune

    workspace, labels = tiny_workspace
    cases = sorted(labels)
    for case in cases[:3]:
        workspace.submit_label(case, labels[case], user="tester")
    workspace.set_status(cases[2], "held-out")
    config = FinetuneConfig(
        iterations=6, semi_iterations=6, views=1, tau_c=0.0, validate_every=1, mode="none"
    )
    manifest = run_finetune(workspace, config, device="cpu")
    curve = manifest["learning_curve"]
    logic = _logic()

    # A fine-tune that will take more than a few minutes is said before it starts; a short one
    # is not (the estimate is this job's pace).
    assert logic.longFinetuneQuestion(workspace.root, "none", 6) == ""
    many = int(manifest["timings"]["iterations_per_s"] * 600)  # ten minutes of steps
    question = logic.longFinetuneQuestion(workspace.root, "none", many)
    assert question.startswith("This fine-tune will take about 10 minutes"), question
    assert f"({many} steps" in question and manifest["version"] in question

    table = logic.updateModelsTable(workspace.root)
    best = curve["best"]
    assert curve["steps"]["1"] == 6 and {p[0] for p in curve["loss"]} == {1}  # stage 1 ran
    assert best["stage"] == 1
    assert logic._cell(table, 0, "Learning curve") == (
        f"6 steps; kept step {best['step']} ({best['validation_dice']:.3f})"
    )
    assert logic._cell(table, 1, "Learning curve") == ""  # v0: the pretrained model

    chart = logic.showLearningCurve(workspace.root, manifest["version"])
    assert chart.GetNumberOfPlotSeriesNodes() == 2
    series = [chart.GetNthPlotSeriesNode(i) for i in range(2)]
    assert [s.GetYColumnName() for s in series] == ["Training loss", "Held-out Dice"]
    loss, dice = (s.GetTableNode() for s in series)
    assert dice.GetNumberOfRows() == len(curve["validation"]) == 7  # the parent's, every step
    for row, (stage, step, value) in enumerate(curve["validation"]):
        assert stage == 1 and float(dice.GetCellText(row, 0)) == step == row
        assert float(dice.GetCellText(row, 1)) == pytest.approx(value)
    assert loss.GetNumberOfRows() == len(curve["loss"]) == 6
    assert [float(loss.GetCellText(row, 1)) for row in range(6)] == pytest.approx(
        [p[2] for p in curve["loss"]]
    )
    # Shown again (another version, or the same): the same nodes are refilled, not added.
    assert logic.showLearningCurve(workspace.root, manifest["version"]) is chart
    assert len(slicer.util.getNodesByClass("vtkMRMLPlotChartNode")) == 1
    with pytest.raises(ValueError, match="v0 has no learning curve"):
        logic.showLearningCurve(workspace.root, "v0")
    with pytest.raises(ValueError, match="unknown model version 'v9' \\(versions: v0, v1\\)"):
        logic.showLearningCurve(workspace.root, "v9")


def test_progress_and_job_descriptions():
    logic = _logic()
    text = logic.describeProgress(
        {
            "event": "progress",
            "phase": "supervised",
            "done": 5,
            "total": 200,
            "eta_s": 300,
            "loss": 0.4321,
        }
    )
    assert text == "supervised 5/200, loss 0.432, about 5 min left"
    # A fine-tune's events give the whole job's time left (both stages): that is shown.
    whole = {"event": "progress", "phase": "supervised", "done": 5, "total": 200, "eta_s": 300}
    assert logic.describeProgress({**whole, "job_eta_s": 700}).endswith("about 12 min left")
    assert (
        logic.describeProgress(
            {
                "event": "progress",
                "phase": "ranking",
                "done": 1,
                "total": 4,
                "eta_s": 12.4,
                "case": "c1",
            }
        )
        == "ranking 1/4, c1, about 12 s left"
    )
    assert logic.describeProgress({"event": "error", "message": "boom"}) == "boom"
    done = {"state": "done", "last_progress": {"event": "done", "version": "v2", "promoted": True}}
    assert logic.jobPromotedVersion(done) == "v2"
    assert (
        logic.jobPromotedVersion(
            {"state": "done", "last_progress": {"event": "done", "promoted": False}}
        )
        is None
    )
    assert logic.jobPromotedVersion({"state": "cancelled"}) is None


def test_a_detached_launch_is_followed_to_its_job_or_its_failure(mrml, tiny_workspace, tmp_path):
    from assft.workspace.jobs import JobStore

    workspace, _ = tiny_workspace
    logic = _logic()
    log = tmp_path / "detached.log"
    log.write_text("Traceback...\nassft: error: batch_size must be at least 2\n")
    dead = {"pid": 2**22 + 12345, "log": str(log)}
    assert logic.detachedJobStatus(workspace.root, dead) == {
        "state": "failed",
        "message": "assft: error: batch_size must be at least 2",
    }
    assert logic.detachedJobStatus(workspace.root, {"pid": os.getpid()})["state"] == "starting"
    job = JobStore(workspace).create("finetune", ["finetune"])
    job.mark_running()  # this process plays the job
    found = logic.detachedJobStatus(workspace.root, {"pid": os.getpid()})
    assert found["id"] == job.id and found["state"] == "running"
    assert logic.finetuneJob(workspace.root, states=("running",))["id"] == job.id
    # A running job holds the workspace lock, which alone says a job runs.
    with workspace.job_lock("workspace", description="finetune"):
        with pytest.raises(ValueError, match="already running"):
            logic.startFinetune(workspace.root)
    job.finish("done", 0, "version v1 (promoted)")
    assert logic.describeJob(logic.finetuneJob(workspace.root)) == "done: version v1 (promoted)"


def test_the_job_followed_stays_its_own_when_the_folder_field_names_another(
    mrml, tiny_workspace, tmp_path
):
    """The monitor read the folder field: once it named another workspace, a traceback every
    2 s and a Cancel that did nothing (issue 22). The Logic follows the job's own workspace."""
    import shutil as shell

    from assft.workspace import Workspace
    from assft.workspace.jobs import JobStore

    workspace, _ = tiny_workspace
    other = Workspace.create(
        tmp_path / "other", [tmp_path / "images"], label_names={1: "a"}, user="tester"
    )
    logic = _logic()
    assert not logic.followRunningJob(other.root) and logic.jobWorkspace is None
    assert logic.followedJobStatus({})["state"] == "failed" and logic.cancelFollowedJob() is None
    job = JobStore(workspace).create("finetune", ["finetune"])
    job.mark_running()  # this process plays the job
    assert logic.followRunningJob(workspace.root)
    # The field now names the other workspace: the job is still read in its own.
    assert logic.followedJobStatus({"pid": os.getpid()})["id"] == job.id
    assert logic.isJobWorkspace(workspace.root) and not logic.isJobWorkspace(other.root)
    job.finish("done", 0, "version v1 (promoted)")
    assert logic.followedJobStatus({"pid": os.getpid()})["state"] == "done"
    # A job's workspace that vanished is said once, as a failed job, not raised at each poll.
    shell.rmtree(workspace.root)
    gone = logic.followedJobStatus({"pid": os.getpid()})
    assert gone["state"] == "failed" and str(workspace.root) in gone["message"]


def test_fine_tuning_needs_a_label_and_ranking_needs_unlabeled_cases(mrml, tiny_workspace):
    workspace, _ = tiny_workspace
    logic = _logic()
    with pytest.raises(ValueError, match="at least one label"):
        logic.startFinetune(workspace.root)
    for case in ("case_000", "case_001", "case_002", "case_003"):
        workspace.skip(case)
    with pytest.raises(ValueError, match="No unlabeled cases"):
        logic.startRank(workspace.root, 2)
    with pytest.raises(ValueError, match="Choose a workspace folder"):
        logic.startRank("", 2)


def test_versions_come_from_the_installed_packages_metadata(monkeypatch):
    import importlib.metadata

    import numpy

    assert dependencies.dependencyProblems() == []  # this venv has what the engine needs
    assert dependencies.installedVersion("numpy") == numpy.__version__
    assert dependencies.installedVersion("assft-no-such-package") is None
    monkeypatch.setattr(
        dependencies,
        "REQUIREMENTS",
        {"numpy": "numpy>=999", "assft_missing_pkg": "assft-missing-pkg>=1", "psutil": "psutil"},
    )
    problems = dependencies.dependencyProblems()
    assert [(p.name, p.installed) for p in problems] == [
        ("numpy", importlib.metadata.version("numpy")),
        ("assft_missing_pkg", None),
    ]
    text = dependencies.describeMissing(problems)
    assert f"numpy {numpy.__version__} is installed, numpy>=999 is needed" in text
    assert "assft_missing_pkg is missing" in text and dependencies.describeMissing([]) == ""


def test_torch_must_be_what_the_installed_monai_needs():
    import importlib.metadata

    from packaging.requirements import Requirement
    from packaging.version import Version

    monai = importlib.metadata.version("monai")
    torch_line = next(
        r for r in importlib.metadata.requires("monai") if Requirement(r).name == "torch"
    )
    needed = Requirement(torch_line)
    floor = max(Version(s.version) for s in needed.specifier if s.operator == ">=")
    assert dependencies.torchFloor() == max(floor, Version("2.4.1"))
    if Version(monai) >= Version("1.6"):
        assert dependencies.torchFloor() >= Version("2.8")  # not the engine's own 2.4.1
    # An older torch than MONAI's is a problem that names MONAI (the real metadata, an older
    # installed torch).
    older = lambda name: "2.5.0" if name == "torch" else dependencies.installedVersion(name)  # noqa: E731
    problems = dependencies.dependencyProblems(older)
    if Version("2.5.0") not in needed.specifier:
        assert [(p.name, p.requirement, p.neededBy) for p in problems] == [
            ("torch", f"torch{needed.specifier}", f"monai {monai}")
        ]
    # Without MONAI, the torch asked for is the newest MONAI's.
    without_monai = lambda name: None if name == "monai" else "2.13.0"  # noqa: E731
    assert dependencies.torchFloor(without_monai) == Version(dependencies.NEWEST_MONAI_TORCH_FLOOR)


def test_installing_asks_for_the_torch_floor_and_pins_torch_for_the_rest(monkeypatch):
    import importlib.metadata

    monkeypatch.setattr(
        dependencies,
        "REQUIREMENTS",
        {"torch": "torch>=99", "numpy": "numpy>=1.24", "assft_missing_pkg": "assft-missing-pkg>=1"},
    )
    with pytest.raises(ValueError, match="confirmation"):
        dependencies.installDependencies(confirmed=False, pipInstall=pytest.fail)

    asked, ensured = [], []

    class TorchLogic:  # the PyTorch extension's installTorch
        def installTorch(self, askConfirmation, torchVersionRequirement):
            asked.append((askConfirmation, torchVersionRequirement))
            return object()

    def pip_ensure(requirements, constraints):
        ensured.append((requirements.read_text(), constraints.read_text()))

    with pytest.raises(RuntimeError, match="assft_missing_pkg is missing"):
        dependencies.installDependencies(
            confirmed=True, pipInstall=pytest.fail, torchLogic=TorchLogic(), pipEnsure=pip_ensure
        )
    assert asked == [(False, ">=99")]
    torch = importlib.metadata.version("torch")
    numpy = importlib.metadata.version("numpy")
    [(requirements, constraints)] = ensured
    assert requirements == "assft-missing-pkg>=1\n"
    # Every installed package stays as it is (Slicer's numpy above all), torch included; what
    # is to be installed is not pinned.
    pinned = constraints.splitlines()
    assert f"torch=={torch}" in pinned and f"numpy=={numpy}" in pinned
    assert not [line for line in pinned if line.lower().startswith("assft-missing-pkg")]
    assert len(pinned) == len({line.split("==")[0].lower() for line in pinned}) > 20

    # Without Slicer's pip_ensure (slicer-core has none) and without the PyTorch extension: pip,
    # with the same constraint.
    monkeypatch.setitem(dependencies.REQUIREMENTS, "torch", "torch>=2.4.1")
    assert dependencies._slicerPipEnsure() is None
    calls = []

    def pip_install(arguments):
        calls.append(arguments)
        if arguments[0] == "-r":
            assert Path(arguments[3]).read_text() == constraints
            assert Path(arguments[1]).read_text() == "assft-missing-pkg>=1\n"

    with pytest.raises(RuntimeError):
        dependencies.installDependencies(confirmed=True, pipInstall=pip_install)
    assert [c[0] for c in calls] == ["-r"] and calls[0][2] == "-c"


def test_slicer_5_12_pip_ensure_gets_the_requirements_and_the_constraints(monkeypatch, tmp_path):
    import types

    received = {}
    packaging = types.ModuleType("slicer.packaging")  # Slicer >= 5.12's API, absent in slicer-core
    packaging.load_requirements = lambda path: Path(path).read_text().split()
    packaging.pip_ensure = lambda requirements, **options: received.update(
        requirements=requirements, **options
    )
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    requirements, constraints = tmp_path / "r.txt", tmp_path / "c.txt"
    requirements.write_text("monai>=1.5\n")
    constraints.write_text("torch==2.13.0\n")
    dependencies._slicerPipEnsure()(requirements, constraints)
    assert received == {
        "requirements": ["monai>=1.5"],
        "constraints": str(constraints),
        "prompt_install": False,
        "requester": "ASSFT Slicer",
    }


def test_the_real_dependency_check_imports_nothing():
    import subprocess

    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from ASSFTSlicerLib import dependencies; "
        "missing = dependencies.missingPackages(); "
        "print(missing, 'torch' in sys.modules, 'monai' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(ASSFTSlicer.MODULE_DIR)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "[] False False"


def test_an_engine_that_fails_to_import_is_not_blamed_on_missing_packages(
    monkeypatch, tiny_workspace
):
    workspace, _ = tiny_workspace
    # None in sys.modules makes the import fail as a broken or unsupported engine would
    # (e.g. a POSIX-only module on Windows), while every package is installed.
    monkeypatch.setitem(sys.modules, "assft.workspace", None)
    with pytest.raises(ValueError) as refused:
        _logic().openWorkspace(str(workspace.root))
    assert "cannot be loaded" in str(refused.value) and "install" not in str(refused.value)


@pytest.mark.skipif(
    os.environ.get("ASSFT_SELFTEST") != "1",
    reason="the whole loop takes about a minute on 2 cores: set ASSFT_SELFTEST=1 "
    "(Slicer's 'Reload and Test' runs the same code)",
)
def test_the_self_test_loop_runs_with_slicer_core(mrml, tmp_path):
    from ASSFTSlicerLib.selftest import runAnnotationLoop

    report = runAnnotationLoop(_logic(), tmp_path, log=lambda message: None)
    assert report["labeled"] == 2 and report["promoted_version"] == "v1"
    assert json.dumps(report)


def test_the_registered_slicer_tests_skip_with_the_reason_when_packages_are_missing(monkeypatch):
    import unittest

    from ASSFTSlicerLib.selftest import requireDependencies

    requireDependencies()  # this venv has them: the tests run in full
    monkeypatch.setitem(dependencies.REQUIREMENTS, "assft_missing_pkg", "assft-missing-pkg>=1")
    with pytest.raises(
        unittest.SkipTest, match="assft_missing_pkg is missing.*Install dependencies"
    ):
        requireDependencies()


def test_validation_scans_are_proposed_and_held_out(mrml, tiny_workspace):
    workspace, labels = tiny_workspace
    logic = _logic()
    result = logic.startProposeValidation(workspace.root, "cpu").wait(timeout=120)
    assert result.ok, result.output[-5:]
    proposed = [row["case"] for row in result.doneEvent["proposed"]]
    assert len(proposed) >= 2 and set(proposed) <= set(labels)
    text = logic.describeProposal(result)
    assert text.startswith("Validation scans that cover the archive") and proposed[0] in text
    assert "label it as validation" in text
    # A proposed scan, labeled, becomes a validation scan; an unlabeled one cannot.
    first = proposed[0]
    with pytest.raises(ValueError, match="only labeled cases can be held out"):
        logic.holdOutCase(workspace.root, first)
    workspace.submit_label(first, labels[first], user="tester")
    logic.holdOutCase(workspace.root, first)
    assert workspace.registry.case(first)["status"] == "held-out"
    again = logic.startProposeValidation(workspace.root, "cpu").wait(timeout=120)
    assert again.doneEvent["proposed"][0] == {**again.doneEvent["proposed"][0], "case": first}
    assert "held out already" in logic.describeProposal(again)
    logic.holdOutCase(workspace.root, first, release=True)
    assert workspace.registry.case(first)["status"] == "labeled"
    with pytest.raises(ValueError, match="No case is selected"):
        logic.holdOutCase(workspace.root, "")

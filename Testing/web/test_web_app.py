"""The web app's actions in process (no browser): what comes from the page is checked as
everywhere else, and one server serves one workspace."""

from __future__ import annotations

import os

import pytest

from assft_testing.browser import require_web

require_web(browser=False)  # in process: no browser


@pytest.fixture(scope="module")
def app(tmp_path_factory, synthetic_pool):
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    from trame.app import get_server

    from assft.workspace import Workspace
    from assft_web.app import AnnotationApp

    _, cases = synthetic_pool
    root = tmp_path_factory.mktemp("web-app") / "ws"
    Workspace.create(root, [case.image for case in cases[:3]], label_names={1: "a", 2: "b"})
    return AnnotationApp(root, get_server("assft-web-test", client_type="vue3"))


@pytest.mark.parametrize("case", ["../../etc/passwd", "case_000/../../x", "nope", ""])
def test_a_case_id_from_the_page_is_validated(app, case):
    app.state.message = ""
    app.label_case(case)
    assert app.state.message_is_error and app.state.message
    assert app.state.current_case == "" and app.logic.loadedCase() is None
    assert not app.logic.tasks.busy  # nothing was started for it


def test_submit_and_skip_without_a_case_say_so_and_write_nothing(app):
    labels = app.workspace / "labels"
    before = sorted(labels.iterdir())
    app.submit()
    assert app.state.message == "No case is loaded: use 'Label next' first."
    app.skip()
    assert app.state.message_is_error and "No case is loaded" in app.state.message
    app.state.message = ""
    app.submit_validation()
    assert app.state.message_is_error and "No case is loaded" in app.state.message
    assert sorted(labels.iterdir()) == before


def test_label_next_before_any_ranking_says_what_to_do(app):
    app.state.message = ""
    app.label_next()
    assert app.state.message_is_error and "no ranking yet" in app.state.message
    assert app.state.current_case == ""


def test_the_tables_reach_the_page_as_json_without_nan():
    import json
    import math

    from assft_web.app import _json_rows

    rows = _json_rows([{"case": "a", "dkd": math.nan, "score": 0.5}])
    assert rows == [{"case": "a", "dkd": None, "score": 0.5}]
    json.dumps(rows, allow_nan=False)


def test_the_page_shows_the_workspace_it_serves(app):
    app.refresh()
    assert app.state.workspace_name == "ws" and app.state.worklist == []
    assert [row["version"] for row in app.state.versions] == ["v0"]
    # Every column of the versions table is in the rows (the learning curve, too).
    from assft_web.page import VERSION_HEADERS

    assert {h["key"] for h in VERSION_HEADERS} - {"use"} <= set(app.state.versions[0])
    assert app.state.versions[0]["curve"] == ""  # v0: the pretrained model
    assert app.state.counts == "0 held-out, 0 labeled, 0 skipped, 3 unlabeled"


def test_each_panel_declares_the_state_it_reads_and_the_app_holds_it(app):
    """One function per panel of the page, each with the state keys it reads: every key is
    used in the panel's template and is in the app's state from the start."""
    import inspect

    from assft_web.page import PANELS

    assert len(PANELS) >= 5
    for build in PANELS:
        source = inspect.getsource(build)
        assert build.reads, build.__name__
        for key in build.reads:
            assert key in source.split("def ", 1)[1], f"{build.__name__} declares {key} unused"
            assert key in app.state, f"{build.__name__} reads {key}, which the app never sets"


def test_changes_made_outside_the_page_reach_it(app, monkeypatch):
    """Another program (the command line, Slicer) skips a case: the page reads its tables again
    at its next look at the workspace, and only when something changed."""
    from assft.workspace import Workspace

    app.refresh()
    assert "0 skipped" in app.state.counts
    refreshed = []
    real_refresh = app.refresh
    monkeypatch.setattr(app, "refresh", lambda: (refreshed.append(1), real_refresh()))
    app._lastWorkspacePoll = 0.0
    app.poll_once()
    assert refreshed == []  # nothing changed
    case = Workspace.open(app.workspace).registry.cases(status="unlabeled")[0]["case_id"]
    Workspace.open(app.workspace).skip(case)
    app.poll_once()  # looked less than WORKSPACE_POLL_SECONDS ago: not yet
    assert refreshed == [] and "0 skipped" in app.state.counts
    app._lastWorkspacePoll = 0.0
    app.poll_once()
    assert refreshed == [1] and "1 skipped" in app.state.counts


def test_a_workspace_that_labels_some_structures_says_which_to_correct(app):
    from assft.workspace import Workspace

    assert app.correction_hint() == ""
    Workspace.open(app.workspace).set_labeled_structures([2])
    try:
        assert app.correction_hint() == "Correct b only: a stay as the model predicts them"
    finally:
        Workspace.open(app.workspace).set_labeled_structures(None)
    assert app.correction_hint() == ""


def test_an_edit_not_submitted_is_asked_about_before_another_case_opens(app):
    """Opening another case dropped the loaded case's edits without a word (issue 22): the
    page asks, and only 'Discard and open' lets them go."""
    import numpy as np
    import slicer

    from assft.workspace import Workspace

    workspace = Workspace.open(app.workspace)
    shape = _predicted(app, "case_000", "case_001")  # the cases open at once
    try:
        app.label_case("case_000")
        assert app.state.current_case == "case_000" and app.state.discard_question == ""
        nodes = app.logic.loadedCase()
        segmentation = nodes.segmentation.GetSegmentation()
        slicer.util.updateSegmentBinaryLabelmapFromArray(
            np.zeros(shape, np.uint8),  # the clinician erased segment a
            nodes.segmentation,
            segmentation.GetSegmentIdBySegmentName("a"),
            nodes.volume,
        )
        app.label_case("case_001")
        assert app.state.discard_question == (
            "Case case_000 has edits that are not submitted. Discard them and open case case_001?"
        )
        assert app.state.current_case == "case_000" and app.logic.loadedCase() is nodes
        app.state.discard_question = app.state.discard_target = ""  # "Back to editing"
        assert app.logic.unsubmittedEdits() == "case_000"  # still there

        app.label_case("case_001")
        app.discard_and_open()
        assert app.state.current_case == "case_001" and app.state.discard_question == ""
        assert app.logic.unsubmittedEdits() is None and nodes.segmentation.GetScene() is None
        assert workspace.label_path("case_000") is None  # nothing was stored either way
    finally:
        _close_case(app)


def test_keys_select_effects_segments_and_brush_and_hide_the_labels(app):
    """Ctrl+Z and every other key did nothing on the page (issue 22); the brush was a sphere
    that edits slices the user cannot see."""

    assert app.brush.data.use_sphere_brush is False  # a disc in the slice by default
    assert app.on_key("z") is None  # no case: nothing to edit
    _predicted(app, "case_002")
    editor = app.slicer.segmentation_editor
    try:
        app.label_case("case_002")
        assert app.state.current_case == "case_002"
        active = lambda: editor.get_active_effect_name().rsplit(".", 1)[-1]  # noqa: E731
        assert app.on_key("1") == "paint" and active() == "SegmentationEffectPaint"
        assert app.on_key("2") == "erase" and active() == "SegmentationEffectErase"
        assert app.on_key("escape") == "no_tool" and active() == "SegmentationEffectNoTool"
        segments = list(editor.get_all_segment_properties())
        editor.set_active_segment_id(segments[0])
        assert app.on_key("w") == "next_segment" and editor.get_active_segment_id() == segments[1]
        app.on_key("q")
        app.on_key("q")  # from the first, the last
        assert editor.get_active_segment_id() == segments[-1]
        slider = app.brush.data.brush_diameter_slider
        slider.value = 5.0
        app.on_key("+")
        assert abs(slider.value - 6.0) < 1e-9
        app.on_key("-")
        assert abs(slider.value - 5.0) < 1e-9
        display = app.logic.loadedCase().segmentation.GetDisplayNode()
        assert app.on_key("h") == "toggle_labels"
        assert not app.state.labels_visible and not display.GetVisibility()
        app.on_key("h")
        assert app.state.labels_visible and display.GetVisibility()
        assert app.on_key("?") == "help" and app.state.shortcuts_shown
        assert app.on_key("x") is None and app.on_key("ctrl+a") is None
    finally:
        app.state.shortcuts_shown = False
        _close_case(app)


def test_each_submission_records_the_annotator_asked_once(app):
    """Every label from the page was recorded as the server's login user (issue 22): the page
    asks for a name once (the browser keeps it) and each submit records it."""

    from assft.workspace import Workspace

    workspace = Workspace.open(app.workspace)
    _predicted(app, "case_002")
    app.state.annotator = ""
    try:
        app.label_case("case_002")
        app.submit()
        assert app.state.annotator_question and workspace.label_path("case_002") is None
        for bad, said in (("", "Enter your name"), ("x" * 65, "At most 64"), ("a\x1bb", "only")):
            app.set_annotator(bad)
            assert said in app.state.annotator_error and app.state.annotator_question
        app.state.annotator = "evil\x00name"  # set by the page itself: checked again
        app.submit()
        assert app.state.annotator_question and workspace.label_path("case_002") is None
        app.set_annotator("  Dr. Ada   Lovelace ")
        assert not app.state.annotator_question and app.state.annotator == "Dr. Ada Lovelace"
        assert workspace.label_path("case_002") is not None  # the submit that waited ran
        trail = workspace.registry.audit_trail("case_002")
        assert trail[-1]["user"] == "Dr. Ada Lovelace", trail[-1]
    finally:
        app.state.annotator_question = False
        _close_case(app)


def test_the_page_says_when_the_worklist_was_ranked_by_another_version(app):
    from assft.workspace import Workspace
    from assft.workspace.model_versions import ModelVersions

    workspace = Workspace.open(app.workspace)
    registry = ModelVersions(workspace)
    workspace.save_ranking(
        {
            "model_version": "v0",
            "cases": [
                {"case": case, "rank": rank, "score": 1.0 / rank}
                for rank, case in enumerate(["case_000", "case_001", "case_002"], start=1)
            ],
        }
    )
    app.refresh()
    # The demo model has no head for labels a and b: the page says so until the first fine-tune.
    assert app.state.ranking_note.startswith("The model has no segmentation head")
    assert "ranked with model" not in app.state.ranking_note
    before = registry.current()
    registry.promote(
        registry.add_version(registry.load("v0").network.state_dict(), {}), reason="test"
    )
    try:
        app.refresh()
        assert "ranked with model v0" in app.state.ranking_note
        assert "no segmentation head" not in app.state.ranking_note
    finally:
        registry.rollback(before)
    app.refresh()
    assert "ranked with model" not in app.state.ranking_note  # ranked with v0, current again


def _predicted(app, *cases: str) -> tuple[int, ...]:
    """A prediction of the current model for each case (all ones: segment a), so that the case
    opens at once; returns the last scan's shape."""
    import numpy as np
    import SimpleITK as sitk

    from assft.workspace import Workspace
    from assft_testing.slicer_side import write_label_like

    workspace = Workspace.open(app.workspace)
    folder = app.workspace / "predictions" / workspace.current_model_version()
    for case in cases:
        scan = workspace.image_path(case)
        shape = sitk.GetArrayFromImage(sitk.ReadImage(str(scan))).shape
        write_label_like(folder / f"{case}.nii.gz", scan, np.ones(shape, np.uint16))
    return shape


def _close_case(app) -> None:
    """What the next test of this module's one app expects: no case loaded."""
    app.logic.closeCase()
    app.state.current_case = ""
    app.state.case_ready = False


def test_a_long_fine_tune_is_asked_before_it_starts(tmp_path, synthetic_pool, tiny_preset_file):
    """After a fine-tune has measured this machine's pace, one estimated at ten minutes asks
    first (a dialog whose Start launches it) and launches nothing meanwhile."""
    from trame.app import get_server

    from assft.training import FinetuneConfig
    from assft.training.finetune import run_finetune
    from assft.workspace import Workspace
    from assft_web.app import AnnotationApp

    _, cases = synthetic_pool
    workspace = Workspace.create(
        tmp_path / "ws",
        [case.image for case in cases[:3]],
        label_names={1: "shell", 2: "core"},
        model=str(tiny_preset_file),
    )
    workspace.submit_label(cases[0].case_id, cases[0].label, user="tester")
    quick = FinetuneConfig(iterations=4, semi_iterations=4, views=1, tau_c=0.0, mode="none")
    manifest = run_finetune(workspace, quick, device="cpu")
    many = int(manifest["timings"]["iterations_per_s"] * 600)
    app = AnnotationApp(
        workspace.root,
        get_server("assft-web-long-finetune", client_type="vue3"),
        finetune_config={"mode": "none", "iterations": many},
    )
    app.finetune()
    assert app.state.finetune_question.startswith("This fine-tune will take about 10 minutes")
    assert not app.session.followsJob and not app.state.job_active
    jobs = sorted(p.name for p in workspace.jobs_dir.iterdir() if p.name.startswith("finetune-"))
    assert jobs == [manifest["job"]]  # nothing launched

"""The annotation loop in a browser: trame-slicer's views and segment editor on the module's Logic.

One workspace per server. Everything the loop does goes through the Slicer module's Logic
(:class:`ASSFTSlicerLib.logic.WorkspaceLogic`): ranking, prediction and fine-tuning run as the
same background engine processes, labels are stored by the same validated, atomic ``submit``,
and the same workspace lock holds against a CLI job running beside the server. This file only
binds the Logic to trame's state and to trame-slicer's scene and views.

The engine's processes are read without Qt (the Logic's ``thread`` mode): a task on the server's
event loop drains them every 100 ms and refreshes the page's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import pathlib
import sys
import time
from collections.abc import Iterator
from typing import Any

from trame.app import TrameApp
from trame.decorators import change, controller, trigger
from trame_server.utils.typed_state import TypedState
from trame_slicer import module as trame_slicer_module
from trame_slicer.app.logic.segmentation import SegmentEditorLogic
from trame_slicer.app.ui import PaintEffectState
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories
from trame_slicer.segmentation import (
    SegmentationEffectDraw,
    SegmentationEffectErase,
    SegmentationEffectNoTool,
    SegmentationEffectPaint,
    SegmentationEffectScissors,
)
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

from assft_web.curve_chart import chart
from assft_web.page import build_page
from assft_web.shortcuts import BRUSH_STEP, action_of
from assft_web.slice_views import slice_view_ui
from ASSFTSlicerLib.logic import WorkspaceLogic
from ASSFTSlicerLib.scene import OverlapPolicy, SegmentOverlapError, UnsubmittedEditsError
from ASSFTSlicerLib.session import LoopSession
from ASSFTSlicerLib.standalone import bindScene
from ASSFTSlicerLib.tasks import TaskKind

LAYOUT_ID = "ASSFT"
VALIDATION = "validation"
"""A submit waiting for the annotator's name that stores a validation scan."""
ANNOTATOR_MAX = 64


def annotator_problem(name: Any) -> str:
    """Why a name from the page cannot stand for an annotator ("" when it can): it is recorded
    in the workspace's audit with every label."""
    text = " ".join(str(name or "").split())
    if not text:
        return "Enter your name."
    if len(text) > ANNOTATOR_MAX:
        return f"At most {ANNOTATOR_MAX} characters."
    if not text.isprintable():
        return "Letters, digits, spaces and punctuation only."
    return ""


POLL_SECONDS = 0.1
JOB_POLL_SECONDS = 1.0
WORKSPACE_POLL_SECONDS = 2.0
"""How often the page looks for changes made outside it (a job from the command line, labels
from Slicer): the tables are read again when the workspace's mark changed."""


@contextlib.contextmanager
def _without_vtk_warnings() -> Iterator[None]:
    """VTK's warnings off while the views are made, on again after: trame-slicer 2.0.0's views
    observe the interactor's WindowResizeEvent, and VTK warns at each start, once per view, that
    it will not send it after VTK 9.6 (a note for trame-slicer, not for the user)."""
    from vtkmodules.vtkCommonCore import vtkObject

    shown = vtkObject.GetGlobalWarningDisplay()
    vtkObject.GlobalWarningDisplayOff()
    try:
        yield
    finally:
        vtkObject.SetGlobalWarningDisplay(shown)


def _views_layout() -> Layout:
    """The scan in three slice views, axial first (no 3-D view: it would render on the CPU)."""
    return Layout(
        LayoutDirection.Horizontal,
        [
            ViewLayoutDefinition.axial_view(),
            Layout(
                LayoutDirection.Vertical,
                [ViewLayoutDefinition.coronal_view(), ViewLayoutDefinition.sagittal_view()],
            ),
        ],
    )


def _json_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Table rows for the page: NaN (a missing score) as None, since the page gets JSON."""
    return [
        {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
        for row in rows
    ]


def _with_curve_chart(row: dict[str, Any]) -> dict[str, Any]:
    """A versions-table row with its learning curve as chart geometry (``chart``, None for the
    pretrained model) instead of its points."""
    points = row.pop("curve_points", None) or {}
    row["chart"] = chart(points.get("loss", []), points.get("dice", []), points.get("kept"))
    return row


class AnnotationApp(TrameApp):
    """The page and its server-side state for one workspace.

    Args:
        workspace: The workspace folder.
        server: A trame server (default: a new one).
        device: ``auto``, ``cpu`` or ``cuda`` for ranking, prediction and fine-tuning.
        budget: Cases each ranking selects.
        finetune_config: FinetuneConfig fields for every fine-tuning job (the lab's recipe, as
            ``assft finetune --config``); None: the workspace's settings and the defaults.
        python: The interpreter of the engine processes (default: this one).
    """

    def __init__(
        self,
        workspace: pathlib.Path,
        server=None,
        *,
        device: str = "auto",
        budget: int = 4,
        finetune_config: dict[str, Any] | None = None,
        python: str | None = None,
    ) -> None:
        super().__init__(server)
        self.server.enable_module(trame_slicer_module)
        self.logic = WorkspaceLogic(python=python or sys.executable, launcher="thread")
        self.workspace = self.logic.openWorkspace(workspace).root
        self.device = device
        self.budget = budget
        self.finetune_config = finetune_config
        self.session = LoopSession(self.logic)  # the fine-tuning job followed, the mark
        self._lastJobPoll = 0.0
        self._lastWorkspacePoll = 0.0
        self._pollTask: asyncio.Task | None = None

        self.slicer = SlicerApp()
        bindScene(self.slicer.scene, self.slicer.segmentations_logic, self.slicer.volumes_logic)
        register_rca_factories(self.slicer.view_manager, self.server, slice_view_ui_f=slice_view_ui)
        self.layout_manager = LayoutManager(
            self.slicer.scene, self.slicer.view_manager, self.server
        )
        self._initial_state()
        with _without_vtk_warnings():  # registering the layout makes its views
            self.layout_manager.register_layout_dict({LAYOUT_ID: _views_layout()})
            self.ui = build_page(self)
            self.layout_manager.set_layout(LAYOUT_ID)
        for view in self.slicer.view_manager.get_slice_views():
            # Before the views' own interaction, which may end the event's handling.
            view.interactor().AddObserver(
                "MouseMoveEvent",
                lambda _interactor, _event, view=view: self._on_cursor(view),
                100.0,
            )
        self._drag_adjusts_window_level()
        # trame-slicer 2.0.0: in its stock segmentation app, Paint and Erase raise "'NoneType'
        # object has no attribute 'paint_interaction_stopped'" (an effect pipeline without a
        # view), which the feasibility probe fixed by creating the effects after the views. The
        # effects' logic is created here, after the layout made the views, as a precaution: with
        # this app's layout, painting worked in the browser test with either order (checked on
        # 2026-11-30), so the bug was not reproduced here.
        self.editor_logic = SegmentEditorLogic(self.server, self.slicer)
        self.editor_logic.set_ui(self.ui.editor)
        # Paint and Erase share these settings. A disc in the slice shown by default: the
        # sphere edits slices the user cannot see.
        self.brush = TypedState(self.state, PaintEffectState)
        self.brush.data.use_sphere_brush = False
        self.logic.tasks.onChanged = self._on_tasks_changed
        self.logic.tasks.onDeferredError = lambda kind, error: self._error(str(error))
        self.server.controller.on_server_ready.add(self._start_polling)
        self.refresh()

    # state -------------------------------------------------------------------------------

    def _initial_state(self) -> None:
        state = self.state
        state.trame__title = "ASSFT annotation"
        state.trame__favicon = ""  # the page asks nothing of any other host
        state.workspace_name = self.workspace.name
        state.worklist = []
        state.versions = []
        state.counts = ""
        state.current_case = ""
        state.case_ready = False
        state.correction_hint = ""
        state.task_text = ""
        state.task_kind = ""
        state.task_progress = None
        state.job_text = ""
        state.job_progress = None
        state.job_active = False
        state.show_uncertainty = True
        state.has_uncertainty = False
        state.overlap_question = ""
        state.labels_visible = True
        state.ranking_note = ""
        state.annotator = ""  # the browser sends the name it keeps (shortcuts.ANNOTATOR_SCRIPT)
        state.annotator_question = False
        state.annotator_error = ""
        state.pending_submit = ""
        state.shortcuts_shown = False
        state.discard_question = ""
        state.finetune_question = ""
        state.discard_target = ""
        state.message = ""
        state.message_is_error = False
        state.rerank_after_promotion = True
        # Window/level of the loaded case (ASSFTSlicerLib.window_level).
        self._window_level_presets: dict[str, tuple[float, float]] = {}
        self._view_under_mouse: Any = None
        state.cursor_info = ""  # under the mouse in a slice view (ASSFTSlicerLib.cursor)
        state.wl_presets = []
        state.wl_preset = ""
        state.wl_window = 1.0
        state.wl_level = 0.0
        self._window_level_observed: tuple[Any, int] | None = None  # display node, tag

    def correction_hint(self) -> str:
        """Which structures to correct, when the workspace labels only some ("" otherwise)."""
        config = self.logic.openWorkspace(self.workspace).config
        names = config.label_names
        return self.logic.describeCorrection(
            [names[v] for v in config.labeled_values], list(names.values())
        )

    def _message(self, text: str, error: bool = False) -> None:
        self.state.message = text
        self.state.message_is_error = error

    def _error(self, text: str) -> None:
        logging.warning("%s", text)
        self._message(text, error=True)

    @contextlib.contextmanager
    def _reporting_errors(self) -> Iterator[None]:
        """An action's refusal (a bad case id, another task running, a file that cannot be
        read) shows on the page in one line; the rest of the action's block is skipped."""
        try:
            yield
        except (ValueError, OSError) as error:
            self._error(str(error))

    def refresh(self) -> None:
        """The worklist, the counts and the model versions, read from the workspace (opened
        once)."""
        workspace = self.logic.openWorkspace(self.workspace)
        self.session.markRead(workspace.root)
        self.state.worklist = _json_rows(self.logic.worklist(workspace))
        self.state.versions = _json_rows(
            [_with_curve_chart(row) for row in self.logic.modelVersions(workspace)]
        )
        summary = workspace.status_summary()  # the counts and the latest ranking, read once
        self.state.counts = self.logic.describeCounts(summary["counts"])
        notes = (
            self.logic.describeHead(self.logic.modelHasHead(workspace)),
            self.logic.describeRankingModel(summary),
        )
        self.state.ranking_note = ". ".join(note for note in notes if note)
        self._on_tasks_changed()

    def _on_tasks_changed(self) -> None:
        tasks = self.logic.tasks
        self.state.task_kind = tasks.kind.value if tasks.busy and tasks.kind else ""
        self.state.task_text = tasks.describe()
        if not tasks.busy:
            self.state.task_progress = None

    def _on_task_progress(self, event: dict[str, Any]) -> None:
        self.state.task_text = self.logic.describeProgress(event)
        if event.get("total"):
            self.state.task_progress = _percent(event)

    def _end_task(self, result) -> bool:
        """Report how a task ended; whether it succeeded."""
        self._on_tasks_changed()
        if result.cancelled:
            self._message(f"{result.name or 'task'} cancelled")
            return False
        if not result.ok:
            self._error(self.logic.describeResult(result))
            return False
        return True

    # polling -----------------------------------------------------------------------------

    def _start_polling(self, **_kwargs) -> None:
        if self._pollTask is None:
            self._pollTask = asyncio.get_event_loop().create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            try:
                with self.state:
                    self.poll_once()
            except Exception:  # one bad poll must not stop the loop
                logging.exception("polling the background tasks failed")
            await asyncio.sleep(POLL_SECONDS)

    def poll_once(self) -> None:
        """Read what the background processes printed; follow the fine-tuning job; read the
        tables again when the workspace changed outside the page."""
        tasks = self.logic.tasks
        for process in (tasks.current, tasks.jobCommand):
            if process is not None and process.result is None:  # the Logic's launcher="thread"
                process.drain()
        launched = self.session.launchedJob or {}
        if launched.get("pid") and time.monotonic() - self._lastJobPoll > JOB_POLL_SECONDS:
            self._lastJobPoll = time.monotonic()
            self._poll_job()
        # The page's own ranking or prediction refreshes the tables when it ends: until then,
        # what it writes is not yet news (a worklist before its Rank button is back).
        if not tasks.busy and time.monotonic() - self._lastWorkspacePoll > WORKSPACE_POLL_SECONDS:
            self._lastWorkspacePoll = time.monotonic()
            if self.session.changedElsewhere(self.workspace):
                self.refresh()  # changed outside the page

    # ranking -----------------------------------------------------------------------------

    @controller.set("rank")
    def rank(self) -> None:
        """Rank, or cancel the ranking that runs."""
        if self.logic.tasks.isRunning(TaskKind.RANK):
            self.logic.cancelTask()
            return
        with self._reporting_errors():
            self.logic.runRank(
                self.workspace,
                self.budget,
                device=self.device,
                onProgress=self._on_task_progress,
                onFinished=self._on_ranked,
            )

    def _on_ranked(self, result) -> None:
        if self._end_task(result):
            self._message("Ranked.")
        self.refresh()

    # annotating --------------------------------------------------------------------------

    @controller.set("label_next")
    def label_next(self) -> None:
        if self.logic.tasks.isRunning(TaskKind.PREDICT):
            self.logic.cancelTask()
            return
        with self._reporting_errors():
            case_id = self.logic.nextCase(self.workspace)
            if case_id is None:
                self._message("Every ranked case is labeled or skipped: fine-tune or rank again.")
                return
            self.label_case(case_id)

    def _ask_to_discard(self, edited: str, case_id: str) -> None:
        """Ask on the page before edits not submitted go (the Slicer panel asks the same)."""
        self.state.discard_target = case_id
        self.state.discard_question = (
            f"Case {edited} has edits that are not submitted. Discard them and open case {case_id}?"
        )

    @controller.set("discard_and_open")
    def discard_and_open(self) -> None:
        """The answer yes to :meth:`_ask_to_discard`: the edits go, the case asked for opens."""
        case_id = self.state.discard_target
        self.state.discard_question = self.state.discard_target = ""
        if case_id:
            self.logic.discardEdits()
            self.label_case(case_id)

    @controller.set("label_case")
    def label_case(self, case_id: str) -> None:
        """Load a case with its prediction, predicting it first in the background if needed;
        edits of the loaded case that were not submitted are asked about first."""
        edited = self.logic.unsubmittedEdits()
        if edited is not None:
            self._ask_to_discard(edited, case_id)
            return
        with self._reporting_errors():  # a bad case id, another task running
            self.logic.prepareCase(
                self.workspace,
                case_id,
                self.show_case,
                self.device,
                onProgress=self._on_task_progress,
                onPredicted=self._end_task,
            )

    def show_case(self, case_id: str) -> None:
        editor = self.slicer.segmentation_editor
        editor.deactivate_effect()
        try:
            nodes = self.logic.loadCase(
                self.workspace, case_id, showUncertainty=self.state.show_uncertainty
            )
        except UnsubmittedEditsError as error:  # edited while the case was being predicted
            self._ask_to_discard(error.caseId, case_id)
            return
        except Exception as error:
            self._error(f"Failed to load case {case_id}: {error}")
            return
        display = self.slicer.display_manager
        display.show_volume_in_slice_background(nodes.volume)
        editor.set_active_segmentation(nodes.segmentation, nodes.volume)
        nodes.segmentation.GetDisplayNode().SetVisibility(bool(self.state.labels_visible))
        self.logic.setUncertaintyVisible(self.state.show_uncertainty)
        display.reset_views()
        self._reset_window_level()
        self._observe_window_level(nodes.volume.GetDisplayNode())
        self.state.current_case = case_id
        self.state.has_uncertainty = nodes.uncertainty is not None
        self.state.case_ready = True
        self.state.correction_hint = self.correction_hint()
        self._message(f"Case {case_id} loaded: correct the segmentation, then submit.")
        self._on_tasks_changed()  # loading a case changes no table

    @change("labels_visible")
    def _on_labels_visible(self, labels_visible, **_kwargs) -> None:
        nodes = self.logic.loadedCase()
        display = None if nodes is None else nodes.segmentation.GetDisplayNode()
        if display is not None:
            display.SetVisibility(bool(labels_visible))

    # keyboard ----------------------------------------------------------------------------

    EFFECT_KEYS = {
        "no_tool": SegmentationEffectNoTool,
        "paint": SegmentationEffectPaint,
        "erase": SegmentationEffectErase,
        "scissors": SegmentationEffectScissors,
        "draw": SegmentationEffectDraw,
    }

    @trigger("assft_key")
    def on_key(self, key: str) -> str | None:
        """A key pressed on the page (see :mod:`assft_web.shortcuts`); the action it ran."""
        action = action_of(str(key))
        if action is None:
            return None
        editor = self.ui.editor
        if action == "help":
            self.state.shortcuts_shown = not self.state.shortcuts_shown
        elif action == "submit":
            if self.state.case_ready:
                self.submit()
        elif action == "toggle_labels":
            self.state.labels_visible = not self.state.labels_visible
            self._on_labels_visible(self.state.labels_visible)  # now, not at the next flush
        elif not self.state.case_ready:
            return None  # the rest edits a case
        elif action == "undo":
            editor.undo_clicked.emit()
        elif action == "redo":
            editor.redo_clicked.emit()
        elif action in self.EFFECT_KEYS:
            editor.effect_button_clicked.emit(self.EFFECT_KEYS[action])
        elif action in ("previous_segment", "next_segment"):
            self._step_segment(-1 if action == "previous_segment" else 1)
        elif action in ("previous_slice", "next_slice"):
            self._step_slice(1 if action == "next_slice" else -1)
        elif action in ("smaller_brush", "larger_brush"):
            slider = self.brush.data.brush_diameter_slider
            factor = BRUSH_STEP if action == "larger_brush" else 1 / BRUSH_STEP
            slider.value = min(max(slider.value * factor, slider.min_value), slider.max_value)
        return action

    def _step_slice(self, step: int) -> None:
        """Move the slice view the mouse was last over (the axial view before the mouse has
        been over any) by ``step`` slices, within the scan."""
        views = self.slicer.view_manager.get_slice_views()
        view = self._view_under_mouse
        if view not in views:
            view = next((v for v in views if v.get_orientation() == "Axial"), None)
        if view is not None:
            low, high = view.get_slice_range()
            value = view.get_slice_value() + step * view.get_slice_step()
            view.set_slice_value(min(max(value, low), high))

    def _step_segment(self, step: int) -> None:
        editor = self.slicer.segmentation_editor
        segments = list(editor.get_all_segment_properties())
        if not segments:
            return
        current = editor.get_active_segment_id()
        index = segments.index(current) if current in segments else -step
        editor.set_active_segment_id(segments[(index + step) % len(segments)])

    def _on_cursor(self, view) -> None:
        """The position, voxel and intensity under the mouse in a slice view, on the page."""
        self._view_under_mouse = view  # the view the slice keys move
        x, y = view.interactor().GetEventPosition()
        sliceNode = self.slicer.scene.GetNodeByID(view.get_view_node_id())
        with self.state:
            self.state.cursor_info = self.logic.describeCursor(sliceNode, x, y)

    # window/level --------------------------------------------------------------------------

    @controller.set("reset_window_level")
    def _reset_window_level(self) -> None:
        """The loaded scan's presets on the page, and its first ("Auto") applied."""
        self._window_level_presets = self.logic.caseWindowLevel()
        self.state.wl_presets = list(self._window_level_presets)
        first = next(iter(self._window_level_presets), "")
        self.state.wl_preset = first
        self._on_window_level_preset(first)

    def _drag_adjusts_window_level(self) -> None:
        """Left-drag in a slice view sets the window (left-right) and the level (up-down), as in
        Slicer's window/level mouse mode. The editor's tools claim the drag first (Paint, Erase,
        Scissors, Draw), so the drag adjusts window/level when no tool is active (Esc)."""
        import slicer

        interaction = self.slicer.scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
        if interaction is not None:
            interaction.SetCurrentInteractionMode(slicer.vtkMRMLInteractionNode.AdjustWindowLevel)
        for view in self.slicer.view_manager.get_slice_views():
            # The scan's window/level, never the uncertainty overlay's (the foreground layer,
            # which Slicer's widget would take where the overlay shows).
            manager = view.get_displayable_manager_by_class(
                slicer.vtkMRMLScalarBarDisplayableManager
            )
            if manager is not None:
                manager.SetAdjustForegroundWindowLevelEnabled(False)

    def _observe_window_level(self, display: Any) -> None:
        """Show on the page the window/level a drag in the views sets on the scan."""
        if self._window_level_observed is not None:
            node, tag = self._window_level_observed
            node.RemoveObserver(tag)
            self._window_level_observed = None
        if display is not None:
            tag = display.AddObserver("ModifiedEvent", self._on_display_window_level)
            self._window_level_observed = (display, tag)

    def _on_display_window_level(self, display: Any, _event: str) -> None:
        shown = (round(display.GetWindow(), 2), round(display.GetLevel(), 2))
        if shown == (self.state.wl_window, self.state.wl_level) or shown[0] <= 0:
            return
        preset = self._window_level_presets.get(self.state.wl_preset)
        with self.state:
            self.state.wl_window, self.state.wl_level = shown
            if preset is not None and tuple(round(v, 2) for v in preset) != shown:
                self.state.wl_preset = ""  # a drag left the preset

    @change("wl_preset")
    def _on_window_level_preset(self, wl_preset, **_kwargs) -> None:
        chosen = self._window_level_presets.get(wl_preset)
        if chosen is not None:
            self.state.wl_window, self.state.wl_level = (round(v, 2) for v in chosen)
            self._on_window_level(self.state.wl_window, self.state.wl_level)

    @change("wl_window", "wl_level")
    def _on_window_level(self, wl_window, wl_level, **_kwargs) -> None:
        try:
            window, level = float(wl_window), float(wl_level)
        except (TypeError, ValueError):
            return  # a field being typed into: the last whole number stays shown
        if math.isfinite(window) and math.isfinite(level) and window > 0:
            self.logic.setCaseWindowLevel(window, level)

    @change("show_uncertainty")
    def _on_show_uncertainty(self, show_uncertainty, **_kwargs) -> None:
        self.logic.setUncertaintyVisible(bool(show_uncertainty))

    @controller.set("submit")
    def submit(self, overlap: str = OverlapPolicy.REFUSE.value) -> None:
        """Store the case's segmentation (validated, atomic), then open the next case.

        Overlapping segments are refused first and asked about on the page ("last wins"
        answers yes).
        """
        if not self.state.current_case:
            self._error("No case is loaded: use 'Label next' first.")
            return
        if self._ask_annotator(overlap):
            return
        self.slicer.segmentation_editor.deactivate_effect()  # an unapplied preview ends
        self.state.overlap_question = ""
        try:
            path = self.logic.submitCase(
                self.workspace, overlap=OverlapPolicy(overlap), user=self.state.annotator
            )
        except SegmentOverlapError as error:
            self.state.overlap_question = (
                f"{error} Give each shared voxel the label of the segment lowest in the list, "
                "and submit?"
            )
            return
        except Exception as error:
            self._error(f"Failed to submit the label: {error}")
            return
        self._case_done(f"Stored {path.name}.")

    def _ask_annotator(self, pending: str) -> bool:
        """Whether the annotator's name must be asked first (once per browser); ``pending``
        is the submit to run once it is given (an overlap policy, or VALIDATION)."""
        if self.state.annotator and not annotator_problem(self.state.annotator):
            return False  # (checked again: the page may set the state itself)
        self.state.pending_submit = pending
        self.state.annotator_error = ""
        self.state.annotator_question = True
        return True

    @controller.set("set_annotator")
    def set_annotator(self, name: str) -> None:
        """The name asked for: checked, kept, and the submit that waited for it runs."""
        problem = annotator_problem(name)
        if problem:
            self.state.annotator_error = problem
            return
        self.state.annotator = " ".join(str(name).split())
        self.state.annotator_question = False
        self.state.annotator_error = ""
        pending, self.state.pending_submit = self.state.pending_submit, ""
        if pending == VALIDATION:
            self.submit_validation()
        elif pending:
            self.submit(pending)

    @controller.set("submit_validation")
    def submit_validation(self) -> None:
        """Store the case's label and hold it out: a validation scan the gate reads."""
        if not self.state.current_case:
            self._error("No case is loaded: use 'Label next' first.")
            return
        if self._ask_annotator(VALIDATION):
            return
        case = self.state.current_case
        self.slicer.segmentation_editor.deactivate_effect()
        try:
            self.logic.submitCase(self.workspace, user=self.state.annotator)
        except Exception as error:
            self._error(f"Failed to submit the label: {error}")
            return
        try:
            self.logic.holdOutCase(self.workspace, case)
        except ValueError as error:
            self._error(f"Stored the label, but could not hold {case} out: {error}")
            return
        self._case_done(f"{case} is a validation scan now (held out of training).")

    @controller.set("propose_validation")
    def propose_validation(self) -> None:
        """Propose validation scans that cover the archive, or cancel the proposal."""
        if self.logic.tasks.isRunning(TaskKind.PROPOSE):
            self.logic.cancelTask()
            return
        with self._reporting_errors():
            self.logic.runProposeValidation(
                self.workspace,
                device=self.device,
                onProgress=self._on_task_progress,
                onFinished=self._on_proposed,
            )

    def _on_proposed(self, result) -> None:
        if self._end_task(result):
            self._message(self.logic.describeProposal(result))

    @controller.set("skip")
    def skip(self) -> None:
        with self._reporting_errors():
            case = self.state.current_case
            self.logic.skipCase(self.workspace, case)
            self._case_done(f"Skipped {case}.")

    def _case_done(self, said: str) -> None:
        """Open the next case; what was done stays in front of what the next step says."""
        self.slicer.segmentation_editor.deactivate_effect()
        self.state.current_case = ""
        self.state.case_ready = False
        self.refresh()
        self.label_next()
        if not self.state.message_is_error:
            self._message(f"{said} {self.state.message}".strip())

    # fine-tuning -------------------------------------------------------------------------

    @controller.set("finetune")
    def finetune(self) -> None:
        """Launch fine-tuning in the background, or cancel the job that runs."""
        with self._reporting_errors():
            if self.session.followsJob:
                if self.session.cancelJob(onFinished=self._on_cancelled):
                    self.state.job_text = "Cancelling..."
                return
            question = self.logic.longFinetuneQuestion(self.workspace, config=self.finetune_config)
            if question:
                self.state.finetune_question = question  # the dialog's Start calls start_finetune
                return
            self.start_finetune()

    @controller.set("start_finetune")
    def start_finetune(self) -> None:
        """Launch fine-tuning in the background (asked first when it will take long)."""
        self.state.finetune_question = ""
        with self._reporting_errors():
            self.session.launchFinetune(
                self.workspace,
                onLaunched=self._on_finetune_launched,
                device=self.device,
                config=self.finetune_config,
            )
            self.state.job_active = True
            self.state.job_text = "Starting fine-tuning..."

    def _on_finetune_launched(self, _result, problem: str) -> None:
        if problem:
            self.state.job_active = False
            self._error(problem)
            return
        self.state.job_active = True  # followed from now on (poll_once)
        self._lastJobPoll = 0.0

    def _on_cancelled(self, result) -> None:
        if not result.ok:
            self._error(self.logic.describeResult(result))

    def _poll_job(self) -> None:
        update = self.session.pollJob(self.workspace, bool(self.state.rerank_after_promotion))
        self.state.job_text = update.text
        self.state.job_progress = update.percent
        if update.active:
            return
        self.state.job_active = False
        self.refresh()
        if update.error:
            self._error(update.error)
        elif update.rankAgain:
            self.logic.rankWhenFree(
                self.workspace,
                self.budget,
                device=self.device,
                onProgress=self._on_task_progress,
                onFinished=self._on_ranked,
            )

    @controller.set("use_version")
    def use_version(self, version: str) -> None:
        with self._reporting_errors():
            self.logic.useModelVersion(self.workspace, version)
            self._message(f"Model version {version} is current.")
            self.refresh()

    # closing -----------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop a running ranking or prediction (a fine-tuning job goes on)."""
        self.logic.shutdown()


def _percent(event: dict[str, Any]) -> float | None:
    """A progress event's done/total as a percentage (None without a total)."""
    return 100.0 * (event.get("done") or 0) / event["total"] if event.get("total") else None

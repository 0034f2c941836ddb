"""The page: the worklist and the loop's buttons on the left, the slice views in the middle,
trame-slicer's segment editor (its effects, with undo) on the right.

Only layout here: every button calls a controller method of :class:`assft_web.app.AnnotationApp`.
Elements the browser tests find carry an ``id``.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from trame.ui.vuetify3 import VAppLayout
from trame.widgets import client, html
from trame.widgets import vuetify3 as v
from trame_client.widgets.core import AbstractElement
from trame_slicer.app.ui.segmentation import SegmentEditorUI, SegmentEditorUndoRedoUI

from assft_web.curve_chart import HEIGHT as CHART_HEIGHT
from assft_web.curve_chart import WIDTH as CHART_WIDTH
from assft_web.shortcuts import ANNOTATOR_SCRIPT, HELP, KEY_SCRIPT

# Five columns that fit the drawer without scrolling sideways (the browser tests measure it): the
# rank the order follows, the case (with the budget's picks marked), the priority it is ranked by
# (DKD, ASD and the hardest structure in its tooltip), the status, and the reason in full.
WORKLIST_HEADERS = [
    {"title": "#", "key": "rank"},
    {"title": "Case", "key": "case"},
    {"title": "Priority", "key": "priority"},
    {"title": "Status", "key": "status"},
    {"title": "Why", "key": "reason", "sortable": False},
]
# The parent shows in the version's tooltip; the gate's verdict and the curve wrap, so the
# Version column stays in view whatever their length.
VERSION_HEADERS = [
    {"title": "Version", "key": "version"},
    {"title": "Current", "key": "current"},
    {"title": "Held-out Dice", "key": "dice"},
    {"title": "Gate", "key": "gate", "sortable": False},
    {"title": "Learning curve", "key": "curve", "sortable": False},
    {"title": "", "key": "use", "sortable": False},
]
WRAP = "white-space: normal; overflow-wrap: anywhere; min-width: 0;"
NUMBER = "{{ item.%s == null ? '' : Number(item.%s).toFixed(3) }}"


Panel = Callable[[Any], None]


def panel(*reads: str) -> Callable[[Panel], Panel]:
    """Declare the state keys a panel reads (``panel.reads``): the app's initial state holds
    each one (``Testing/web/test_web_app.py`` checks it)."""

    def declare(build: Panel) -> Panel:
        build.reads = reads  # type: ignore[attr-defined]
        return build

    return declare


@panel(
    "task_kind", "case_ready", "job_active", "show_uncertainty", "has_uncertainty", "labels_visible"
)
def _loop_buttons(ctrl) -> None:
    with html.Div(classes="pa-2 d-flex flex-wrap ga-2"):
        v.VBtn(
            "{{ task_kind === 'rank' ? 'Cancel ranking' : 'Rank' }}",
            id="rank",
            click=ctrl.rank,
            disabled=("task_kind !== '' && task_kind !== 'rank'",),
            size="small",
        )
        v.VBtn(
            "{{ task_kind === 'predict' ? 'Cancel prediction' : 'Label next' }}",
            id="label-next",
            click=ctrl.label_next,
            disabled=("task_kind !== '' && task_kind !== 'predict'",),
            color="primary",
            size="small",
        )
        v.VBtn(
            "Submit and next",
            id="submit",
            click=ctrl.submit,
            disabled=("!case_ready",),
            color="success",
            size="small",
        )
        v.VBtn("Skip", id="skip", click=ctrl.skip, disabled=("!case_ready",), size="small")
        v.VBtn(
            "Submit as validation scan",
            id="submit-validation",
            click=ctrl.submit_validation,
            disabled=("!case_ready",),
            title="Store the label and keep the scan out of training: the promotion "
            "gate measures every new version on it",
            size="small",
        )
        v.VBtn(
            "{{ task_kind === 'propose' ? 'Cancel' : 'Propose validation scans' }}",
            id="propose-validation",
            click=ctrl.propose_validation,
            disabled=("(task_kind !== '' && task_kind !== 'propose') || job_active",),
            title="Scans to label as validation scans, one per part of the archive",
            size="small",
        )
        v.VCheckbox(
            id="show-uncertainty",
            v_model=("show_uncertainty",),
            label="Uncertainty",
            disabled=("!has_uncertainty",),
            density="compact",
            hide_details=True,
        )
        v.VCheckbox(
            id="show-labels",
            v_model=("labels_visible",),
            label="Labels (H)",
            density="compact",
            hide_details=True,
        )
        v.VBtn(
            "Keys (?)",
            id="show-shortcuts",
            click="shortcuts_shown = true",
            variant="text",
            size="small",
        )


@panel("case_ready", "wl_presets", "wl_preset", "wl_window", "wl_level", "cursor_info")
def _window_level(ctrl) -> None:
    with html.Div(
        id="window-level", v_show=("case_ready",), classes="px-2 pb-1 d-flex align-center ga-2"
    ):
        v.VSelect(
            id="wl-preset",
            v_model=("wl_preset",),
            items=("wl_presets",),
            label="Window/level",
            density="compact",
            hide_details=True,
            style="max-width: 160px;",
        )
        for key, title in (("wl_window", "Window"), ("wl_level", "Level")):
            v.VTextField(
                id=key.replace("_", "-"),
                v_model=(key,),
                type="number",
                label=title,
                density="compact",
                hide_details=True,
                style="max-width: 110px;",
            )
        v.VBtn(
            "Reset",
            id="wl-reset",
            click=ctrl.reset_window_level,
            size="small",
            variant="text",
            title="The scan's automatic window/level again",
        )
    html.Div(
        "{{ cursor_info }}",
        id="cursor-info",
        v_show=("case_ready",),
        classes="px-2 text-caption",
        style="min-height: 1.5em;",
        title="Under the mouse in a view: position (RAS, mm), voxel (i, j, k), intensity",
    )


@panel(
    "task_text",
    "task_kind",
    "task_progress",
    "message",
    "message_is_error",
    "current_case",
    "annotator",
    "correction_hint",
    "ranking_note",
)
def _status(ctrl) -> None:
    with html.Div(classes="px-2"):
        html.Div("{{ task_text }}", id="task-text", classes="text-caption")
        v.VProgressLinear(
            id="task-progress",
            v_show=("task_kind !== ''",),
            model_value=("task_progress ?? 0",),
            indeterminate=("task_progress == null",),
            color="primary",
        )
        html.Div(
            "{{ message }}",
            id="message",
            classes=("message_is_error ? 'text-error text-caption' : 'text-caption'",),
        )
        html.Div("Case: {{ current_case || '-' }}", id="current-case", classes="text-body-2")
        html.Div(
            "{{ annotator ? 'Labeling as ' + annotator : '' }}",
            id="annotator",
            classes="text-caption",
        )
        html.Div(
            "{{ correction_hint }}",
            v_if="correction_hint",
            id="correction-hint",
            classes="text-caption text-warning",
        )
    html.Div(
        "{{ ranking_note }}",
        id="ranking-note",
        v_show=("ranking_note",),
        classes="px-2 text-caption text-warning",
    )


@panel("worklist", "current_case")
def _worklist(ctrl) -> None:
    with v.VDataTable(
        id="worklist",
        headers=("worklist_headers", WORKLIST_HEADERS),
        items=("worklist",),
        item_value="case",
        density="compact",
        items_per_page=10,
        hover=True,
        row_props=(
            "({item}) => ({'data-case': item.case, 'data-pick': item.selected === 'yes', "
            "class: item.case === current_case ? 'bg-primary' : ''})",
        ),
        style="font-size: 12px;",
    ):
        with v.Template(raw_attrs=['v-slot:item.case="{ item }"']):
            v.VBtn(
                "{{ item.case }}",
                variant="text",
                size="small",
                classes="px-1 text-none",
                title="Label this case",
                click=(ctrl.label_case, "[item.case]"),
            )
            v.VChip(
                "pick",
                v_if="item.selected === 'yes'",
                size="x-small",
                color="amber",
                variant="flat",
                classes="pick",
                title="One of the cases this ranking selects for labeling (its budget)",
            )
        with v.Template(raw_attrs=['v-slot:item.priority="{ item }"']):
            html.Span(
                NUMBER % ("priority", "priority"),
                classes="priority",
                title=(
                    "'DKD ' + (item.dkd == null ? '-' : Number(item.dkd).toFixed(3)) + "
                    "', ASD ' + (item.asd == null ? '-' : Number(item.asd).toFixed(3)) + "
                    "(item.hardest ? ', hardest structure: ' + item.hardest : '')",
                ),
            )
        with v.Template(raw_attrs=['v-slot:item.reason="{ item }"']):
            html.Div("{{ item.reason }}", classes="reason", style=WRAP)


@panel("versions")
def _versions(ctrl) -> None:
    with v.VDataTable(
        id="versions",
        headers=("version_headers", VERSION_HEADERS),
        items=("versions",),
        density="compact",
        items_per_page=5,
        style="font-size: 12px;",
    ):
        with v.Template(raw_attrs=['v-slot:item.version="{ item }"']):
            html.Span(
                "{{ item.version }}",
                title=("item.parent ? 'fine-tuned from ' + item.parent : 'the pretrained model'",),
            )
        with v.Template(raw_attrs=['v-slot:item.dice="{ item }"']):
            html.Span(NUMBER % ("dice", "dice"))
        with v.Template(raw_attrs=['v-slot:item.gate="{ item }"']):
            html.Div("{{ item.gate }}", style=WRAP)
        with v.Template(raw_attrs=['v-slot:item.curve="{ item }"']):
            _curve_cell()
        with v.Template(raw_attrs=['v-slot:item.use="{ item }"']):
            v.VBtn(
                "Use",
                size="x-small",
                variant="tonal",
                v_if="item.current !== 'yes'",
                click=(ctrl.use_version, "[item.version]"),
            )


def _curve_cell() -> None:
    """A version's learning curve: a chart of the training loss (grey, scaled to its range) and
    the held-out Dice (green, 0 to 1) by step, the kept step circled, and the summary below."""
    with html.Div(style=WRAP, title=("item.curve",)):
        with html.Svg(
            v_if="item.chart",
            classes="curve-chart",
            raw_attrs=[
                f'width="{CHART_WIDTH}"',
                f'height="{CHART_HEIGHT}"',
                f'viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}"',
                'style="background: #fafafa; border: 1px solid #e0e0e0;"',
            ],
        ):
            AbstractElement(
                "polyline",
                classes="curve-loss",
                raw_attrs=[':points="item.chart.loss"', 'fill="none"', 'stroke="#90a4ae"'],
            )
            AbstractElement(
                "polyline",
                classes="curve-dice",
                raw_attrs=[':points="item.chart.dice"', 'fill="none"', 'stroke="#2e7d32"'],
            )
            AbstractElement(
                "circle",
                v_if="item.chart.kept",
                classes="curve-kept",
                raw_attrs=[
                    ':cx="item.chart.kept[0]"',
                    ':cy="item.chart.kept[1]"',
                    'r="2.5"',
                    'fill="#2e7d32"',
                ],
            )
        html.Div("{{ item.curve }}", style="font-size: 11px;")


@panel("job_active", "rerank_after_promotion", "job_text", "job_progress")
def _finetune(ctrl) -> None:
    with html.Div(classes="pa-2"):
        with html.Div(classes="d-flex align-center ga-2"):
            v.VBtn(
                "{{ job_active ? 'Cancel fine-tuning' : 'Fine-tune' }}",
                id="finetune",
                click=ctrl.finetune,
                size="small",
            )
            v.VCheckbox(
                v_model=("rerank_after_promotion",),
                label="Rank again after a promotion",
                density="compact",
                hide_details=True,
            )
        html.Div("{{ job_text }}", id="job-text", classes="text-caption")
        v.VProgressLinear(
            v_show=("job_active",),
            model_value=("job_progress ?? 0",),
            indeterminate=("job_progress == null",),
            color="secondary",
        )


@panel(
    "finetune_question",
    "overlap_question",
    "annotator_question",
    "annotator_error",
    "shortcuts_shown",
    "discard_question",
)
def _dialogs(ctrl) -> None:
    with v.VDialog(model_value=("overlap_question !== ''",), max_width=520, persistent=True):
        with v.VCard(id="overlap-dialog"):
            v.VCardText("{{ overlap_question }}")
            with v.VCardActions():
                v.VBtn(
                    "Submit, last segment wins",
                    id="overlap-yes",
                    click=(ctrl.submit, "['lastWins']"),
                )
                v.VBtn("Back to editing", id="overlap-no", click="overlap_question = ''")
    client.Script(KEY_SCRIPT)
    client.Script(ANNOTATOR_SCRIPT)
    with v.VDialog(model_value=("annotator_question",), max_width=440, persistent=True):
        with v.VCard(id="annotator-dialog", title="Who is labeling?"):
            v.VCardText("Your name is recorded with each label you submit; this browser keeps it.")
            with v.VCardText():
                v.VTextField(
                    id="annotator-name",
                    v_model=("annotator_input", ""),
                    label="Your name",
                    density="compact",
                    error_messages=("annotator_error",),
                    keydown_enter=(ctrl.set_annotator, "[annotator_input]"),
                )
            with v.VCardActions():
                v.VBtn(
                    "Save and submit",
                    id="annotator-save",
                    click=(ctrl.set_annotator, "[annotator_input]"),
                )
                v.VBtn(
                    "Back to editing",
                    id="annotator-cancel",
                    click="annotator_question = false",
                )
    with v.VDialog(v_model=("shortcuts_shown",), max_width=480):
        with v.VCard(id="shortcuts", title="Keyboard shortcuts"):
            with v.VTable(density="compact"), html.Tbody():
                for keys, what in HELP:
                    with html.Tr():
                        html.Td(keys, classes="font-weight-medium")
                        html.Td(what)
            with v.VCardActions():
                v.VBtn("Close", id="shortcuts-close", click="shortcuts_shown = false")
    with v.VDialog(model_value=("finetune_question !== ''",), max_width=520, persistent=True):
        with v.VCard(id="finetune-dialog"):
            v.VCardText("{{ finetune_question }}")
            with v.VCardActions():
                v.VBtn("Start", id="finetune-yes", click=ctrl.start_finetune)
                v.VBtn("Not now", id="finetune-no", click="finetune_question = ''")
    with v.VDialog(model_value=("discard_question !== ''",), max_width=520, persistent=True):
        with v.VCard(id="discard-dialog"):
            v.VCardText("{{ discard_question }}")
            with v.VCardActions():
                v.VBtn("Discard and open", id="discard-yes", click=ctrl.discard_and_open)
                v.VBtn(
                    "Back to editing",
                    id="discard-no",
                    click="discard_question = ''; discard_target = ''",
                )


PANELS: tuple[Panel, ...] = (
    _loop_buttons,
    _window_level,
    _status,
    _worklist,
    _finetune,
    _versions,
    _dialogs,
)
"""Every panel of the page, each with the state keys it reads (``reads``)."""


def build_page(app: Any) -> SimpleNamespace:
    """Build the page of ``app``; returns its parts (``layout``, ``editor``)."""
    ctrl = app.server.controller
    with VAppLayout(app.server, full_height=True) as layout:
        layout.root.theme = "dark"
        with v.VAppBar(density="compact"):
            v.VToolbarTitle("ASSFT annotation: {{ workspace_name }}")
            html.Span("{{ counts }}", id="counts", classes="text-caption mr-4")

        with v.VNavigationDrawer(permanent=True, location="left", width=520):
            _loop_buttons(ctrl)
            _window_level(ctrl)
            _status(ctrl)
            _worklist(ctrl)
            v.VDivider()
            _finetune(ctrl)
            _versions(ctrl)

        with v.VNavigationDrawer(permanent=True, location="right", width=330):
            editor = SegmentEditorUI()
            SegmentEditorUndoRedoUI(editor_ui=editor, classes="d-flex flex-row justify-center")

        with v.VMain():
            with html.Div(classes="fill-height d-flex flex-row", id="views"):
                app.layout_manager.initialize_layout_grid(layout)

        _dialogs(ctrl)
    return SimpleNamespace(layout=layout, editor=editor)

"""What each slice view shows over the scan: its name, the patient's directions at its edges
(R/L, A/P, S/I, from Slicer's own slice-to-RAS matrix of the view's orientation), the slice number,
the reset button and the slice slider.

trame-slicer's default overlay also has a "Show in 3D" button, which does nothing on a page that
has no 3-D view: it is left out. The overlays let the mouse through to the view.
"""

from __future__ import annotations

from typing import Any

from trame.widgets import html
from trame_slicer.app.logic.slice_view_logic import connect_slice_view_slider_to_state
from trame_slicer.app.ui.slider import Slider
from trame_slicer.app.ui.view_gutter import create_vertical_view_gutter_ui

__all__ = ["direction_letter", "edge_letters", "slice_view_ui"]

DIRECTIONS = (("R", "L"), ("A", "P"), ("S", "I"))
"""The patient's directions along RAS's axes: (positive, negative)."""

OVERLAY = (
    "position: absolute; pointer-events: none; color: #ffd54f; font-size: 13px; "
    "font-weight: 600; text-shadow: 0 0 3px #000;"
)
EDGE_PLACES = {
    "left": "left: 6px; top: 50%;",
    "right": "right: 6px; top: 50%;",
    "top": "top: 4px; left: 50%;",
    "bottom": "bottom: 34px; left: 50%;",
}


def direction_letter(vector: list[float]) -> str:
    """The patient's direction a RAS vector points to most: R, L, A, P, S or I."""
    axis = max(range(3), key=lambda i: abs(vector[i]))
    positive, negative = DIRECTIONS[axis]
    return positive if vector[axis] > 0 else negative


def edge_letters(orientation: str) -> dict[str, str]:
    """The direction at each edge of a view of Slicer's ``orientation`` (Axial, Coronal,
    Sagittal): the screen's x axis points to the right edge, its y axis to the top. Empty for an
    orientation Slicer has no matrix for (a reformatted view)."""
    import slicer
    import vtk

    getter = getattr(slicer.vtkMRMLSliceNode, f"Get{orientation}SliceToRASMatrix", None)
    if getter is None:
        return {}
    matrix = vtk.vtkMatrix3x3()
    getter(matrix)
    right = [matrix.GetElement(row, 0) for row in range(3)]
    up = [matrix.GetElement(row, 1) for row in range(3)]
    return {
        "left": direction_letter([-x for x in right]),
        "right": direction_letter(right),
        "top": direction_letter(up),
        "bottom": direction_letter([-x for x in up]),
    }


def slice_view_ui(server: Any, view_id: str, view: Any) -> None:
    """The overlay of one slice view (trame-slicer's ``slice_view_ui_f``)."""
    create_vertical_view_gutter_ui(server, view_id, view)  # the reset button only
    orientation = str(view.get_orientation() or "")
    html.Div(
        orientation,
        classes="view-name",
        style=OVERLAY + "top: 4px; right: 8px; color: #ffffff;",
    )
    for edge, letter in edge_letters(orientation).items():
        html.Div(
            letter, classes=f"orientation orientation-{edge}", style=OVERLAY + EDGE_PLACES[edge]
        )
    with html.Div(
        classes="slice-slider-gutter",
        style="position: absolute; bottom: 0; left: 0; background-color: transparent; width: 100%;",
    ):
        slider = connect_slice_view_slider_to_state(server, view)
        name = slider.name
        index = f"Math.round(({name.value} - {name.min_value}) / ({name.step} || 1)) + 1"
        count = f"Math.round(({name.max_value} - {name.min_value}) / ({name.step} || 1)) + 1"
        html.Div(
            f"{{{{ {name.step} ? 'slice ' + ({index}) + ' / ' + ({count}) : '' }}}}",
            classes="slice-number",
            style=OVERLAY + "bottom: 34px; right: 8px; color: #ffffff; font-weight: 400;",
        )
        Slider(classes="slice-slider", typed_state=slider, theme="dark", dense=True)

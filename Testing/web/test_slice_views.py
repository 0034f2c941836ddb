"""The slice views' overlay: the patient's directions at each view's edges come from Slicer's own
slice-to-RAS matrices (slicer-core), as Slicer's views show them."""

from __future__ import annotations

import pytest

from assft_testing.browser import require_web

require_web(browser=False)


def test_each_view_names_the_directions_at_its_edges_as_slicer_does():
    from assft_web.slice_views import direction_letter, edge_letters

    # Radiological convention: the patient's right on the screen's left.
    assert edge_letters("Axial") == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    assert edge_letters("Coronal") == {"left": "R", "right": "L", "top": "S", "bottom": "I"}
    assert edge_letters("Sagittal") == {"left": "A", "right": "P", "top": "S", "bottom": "I"}
    assert edge_letters("Reformat") == {}
    assert direction_letter([0.2, -0.9, 0.1]) == "P"
    assert direction_letter([0.0, 0.3, 0.95]) == "S"


@pytest.mark.parametrize("orientation", ["Axial", "Coronal", "Sagittal"])
def test_opposite_edges_name_opposite_directions(orientation):
    from assft_web.slice_views import DIRECTIONS, edge_letters

    opposite = {a: b for pair in DIRECTIONS for a, b in (pair, pair[::-1])}
    letters = edge_letters(orientation)
    assert opposite[letters["left"]] == letters["right"]
    assert opposite[letters["top"]] == letters["bottom"]

"""The learning curve in the page's versions table is a chart (issue 22, item 7): its geometry
from a version's curve points, on plain Python."""

from __future__ import annotations

import pytest

from assft_testing.browser import require_web

require_web(browser=False)


def _pairs(points: str) -> list[tuple[float, float]]:
    return [tuple(float(v) for v in pair.split(",")) for pair in points.split()]


def test_the_chart_spans_the_steps_and_puts_dice_on_zero_to_one():
    from assft_web.curve_chart import HEIGHT, PAD, WIDTH, chart

    drawn = chart([[1, 2.0], [5, 1.0], [9, 0.5]], [[5, 0.25], [9, 0.75]], kept=9)
    loss, dice = _pairs(drawn["loss"]), _pairs(drawn["dice"])
    # Steps 1..9 across the width; the loss falls (SVG's y grows downwards), from top to bottom.
    assert [x for x, _ in loss] == pytest.approx([PAD, WIDTH / 2, WIDTH - PAD])
    assert loss[0][1] == pytest.approx(PAD) and loss[-1][1] == pytest.approx(HEIGHT - PAD)
    # Dice 0.25 and 0.75 a quarter and three quarters up the inner height.
    inner = HEIGHT - 2 * PAD
    assert [y for _, y in dice] == pytest.approx([HEIGHT - PAD - 0.25 * inner, PAD + 0.25 * inner])
    assert drawn["kept"] == pytest.approx(list(dice[-1]), abs=0.05)


def test_a_curve_without_held_out_scans_or_points_draws_what_it_has():
    from assft_web.curve_chart import chart

    assert chart([], []) is None
    only_loss = chart([[1, 0.9], [2, float("nan")], [3, 0.4]], [], kept=None)
    assert len(_pairs(only_loss["loss"])) == 2  # the NaN point is left out
    assert only_loss["dice"] == "" and only_loss["kept"] is None
    flat = chart([[4, 1.0]], [[4, 0.5]], kept=7)  # one step; a kept step not evaluated
    assert _pairs(flat["loss"])[0][0] > 0 and flat["kept"] is None


def test_each_version_row_carries_its_curve_for_the_chart():
    from ASSFTSlicerLib.worklist import modelRows

    curve = {  # LearningCurve.to_dict(): stage 2's steps follow stage 1's
        "steps": {"1": 4, "2": 4},
        "loss": [[1, 1, 0.9], [1, 4, 0.4], [2, 4, 0.3]],
        "validation": [[1, 0, 0.5], [1, 4, 0.55], [2, 4, 0.6]],
        "best": {"stage": 2, "step": 4, "validation_dice": 0.6},
    }
    rows = modelRows({"versions": [{"version": "v0"}, {"version": "v1", "learning_curve": curve}]})
    assert rows[1]["curve_points"] is None  # v0: the pretrained model has none
    points = rows[0]["curve_points"]
    assert points is not None and [step for step, _ in points["loss"]] == [1, 4, 8]
    assert [step for step, _ in points["dice"]] == [0, 4, 8] and points["kept"] == 8
    odd = modelRows({"versions": [{"version": "v3", "learning_curve": {"best": {"step": 1}}}]})
    assert odd[0]["curve_points"] is None

"""Dice per label value, worked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from assft.metrics import dice_scores, mean_dice

PRED = np.array([0, 1, 1, 2, 2, 0])
TRUTH = np.array([0, 1, 2, 2, 2, 1])


def test_dice_by_hand():
    # label 1: P = {1, 2}, T = {1, 5}, overlap {1}: 2 * 1 / (2 + 2) = 0.5
    # label 2: P = {3, 4}, T = {2, 3, 4}, overlap {3, 4}: 2 * 2 / (2 + 3) = 0.8
    # label 3: absent from both: NaN
    scores = dice_scores(PRED, TRUTH, [1, 2, 3])
    assert list(scores) == [1, 2, 3]
    assert scores[1] == pytest.approx(0.5)
    assert scores[2] == pytest.approx(0.8)
    assert math.isnan(scores[3])
    assert mean_dice(scores) == pytest.approx(0.65)


def test_dice_torch_and_mixed_inputs_agree_with_numpy():
    expected = dice_scores(PRED, TRUTH, [1, 2])
    for pred, truth in (
        (torch.as_tensor(PRED), torch.as_tensor(TRUTH)),
        (torch.as_tensor(PRED), TRUTH),
        (PRED, torch.as_tensor(TRUTH)),
    ):
        scores = dice_scores(pred, truth, [1, 2])
        assert scores == pytest.approx(expected)


def test_dice_perfect_disjoint_and_one_sided():
    a = np.zeros((4, 4, 4), dtype=np.uint16)
    a[1:3, 1:3, 1:3] = 1
    b = np.zeros_like(a)
    b[0, 0, 0] = 1
    assert dice_scores(a, a, [1]) == {1: 1.0}
    assert dice_scores(a, b, [1]) == {1: 0.0}
    # Present in the prediction only (or the truth only): 0, not NaN.
    assert dice_scores(a, np.zeros_like(a), [1]) == {1: 0.0}
    assert dice_scores(np.zeros_like(a), a, [1]) == {1: 0.0}
    # 3D, two labels, by hand: 8 voxels of 1 vs 8 of 1 shifted by one plane (4 shared).
    c = np.zeros_like(a)
    c[2:4, 1:3, 1:3] = 1
    assert dice_scores(a, c, [1])[1] == pytest.approx(2 * 4 / 16)


def test_dice_refuses_different_shapes():
    with pytest.raises(ValueError, match="shape"):
        dice_scores(np.zeros((2, 3)), np.zeros((3, 2)), [1])


def test_mean_dice_skips_undefined_scores():
    assert mean_dice({1: 0.2, 2: math.nan, 3: None, 4: 0.6}) == pytest.approx(0.4)
    assert math.isnan(mean_dice({1: math.nan}))
    assert math.isnan(mean_dice({}))


def test_mean_per_structure_skips_the_cases_where_a_structure_is_undefined():
    from assft.metrics.overlap import mean_per_structure

    per_case = [{1: 0.5, 2: math.nan}, {1: 1.0, 2: math.nan}, {1: math.nan, 2: math.nan}]
    means = mean_per_structure(per_case, [1, 2])
    assert means[1] == 0.75 and math.isnan(means[2])

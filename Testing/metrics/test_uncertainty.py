import math

import pytest
import torch

from assft.metrics import foreground_roi, segmentation_difficulty, voxel_entropy
from assft.metrics.uncertainty import dilate, predicted_foreground


def test_voxel_entropy_hand_values():
    probs = torch.tensor([[0.5, 1.0, 1 / 3], [0.5, 0.0, 1 / 3], [0.0, 0.0, 1 / 3]])
    h = voxel_entropy(probs)
    # [0.5, 0.5, 0]: ln2 / ln3; [1, 0, 0]: 0; uniform: 1.
    assert h.tolist() == pytest.approx([math.log(2) / math.log(3), 0.0, 1.0], abs=1e-6)


def test_voxel_entropy_three_classes():
    probs = torch.tensor([0.5, 0.25, 0.25]).reshape(3, 1)
    expected = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)) / math.log(3)
    assert float(voxel_entropy(probs)[0]) == pytest.approx(expected, abs=1e-6)


def test_voxel_entropy_refuses_one_class():
    with pytest.raises(ValueError):
        voxel_entropy(torch.ones(1, 2, 2, 2))


def _line(foreground: list[float]) -> torch.Tensor:
    """A (2, 1, 1, N) two-class volume whose foreground probabilities are given."""
    fg = torch.tensor(foreground).reshape(1, 1, -1)
    return torch.stack([1 - fg, fg])


def test_roi_threshold_and_dilation():
    probs = _line([0, 0, 0, 0.6, 0, 0, 0])
    assert foreground_roi(probs, radius=0)[0, 0].tolist() == [0, 0, 0, 1, 0, 0, 0]
    assert foreground_roi(probs, radius=1)[0, 0].tolist() == [0, 0, 1, 1, 1, 0, 0]
    # Below tau: nothing.
    assert not foreground_roi(_line([0.4] * 7), tau=0.5, radius=2).any()


def test_roi_unites_every_views_foreground():
    probs = _line([0.0] * 7)
    second_view = _line([0.0] * 6 + [0.7])
    views = predicted_foreground(probs) | predicted_foreground(second_view)
    assert foreground_roi(probs, views, radius=0)[0, 0].tolist() == [0, 0, 0, 0, 0, 0, 1]


def test_predicted_foreground_matches_argmax():
    probs = torch.softmax(torch.randn(3, 5, 6, 7, generator=torch.Generator().manual_seed(0)), 0)
    assert torch.equal(predicted_foreground(probs), probs.argmax(0) > 0)


def test_separable_dilation_equals_a_cube():
    mask = torch.rand(9, 10, 11, generator=torch.Generator().manual_seed(1)) > 0.97
    cube = (
        torch.nn.functional.max_pool3d(mask.float()[None, None], 5, stride=1, padding=2)[0, 0] > 0
    )
    assert torch.equal(dilate(mask, 2), cube)
    stacked = dilate(torch.stack([mask, ~mask]), 2)
    assert torch.equal(stacked[0], cube)


def test_asd_is_mean_entropy_over_roi_only():
    # Voxel 3 is foreground at 0.6; its neighbours (2, 4) are at 0.2; the far background is
    # noisy at 0.45 but lies outside the dilated ROI, so it must not count.
    probs = _line([0.45, 0.0, 0.2, 0.6, 0.2, 0.0, 0.45])
    result = segmentation_difficulty(probs, radius=1)

    def h(p: float) -> float:
        return -(p * math.log(p) + (1 - p) * math.log(1 - p)) / math.log(2)

    assert not result.empty_roi
    assert result.asd == pytest.approx((h(0.2) * 2 + h(0.6)) / 3, abs=1e-5)
    assert result.roi_fraction == pytest.approx(3 / 7)
    assert result.per_class[1] == pytest.approx(result.asd, abs=1e-5)
    assert result.class_entropy[1] == pytest.approx(h(0.6), abs=1e-5)
    assert result.confidence == pytest.approx((0.8 * 2 + 0.6) / 3, abs=1e-5)
    assert result.mean_entropy == pytest.approx((2 * h(0.45) + 2 * h(0.2) + h(0.6)) / 7, abs=1e-5)


def test_empty_roi_falls_back_to_whole_volume_and_flags():
    probs = _line([0.1, 0.3, 0.2, 0.1])
    result = segmentation_difficulty(probs)
    assert result.empty_roi
    assert result.asd == pytest.approx(result.mean_entropy)
    assert result.per_class == {}


def test_per_structure_difficulty_names_the_hard_class():
    # Three classes: class 1 predicted confidently, class 2 barely.
    probs = torch.zeros(3, 1, 1, 8)
    probs[:, 0, 0, :] = torch.tensor([1.0, 0.0, 0.0]).reshape(3, 1)
    probs[:, 0, 0, 1] = torch.tensor([0.0, 1.0, 0.0])
    probs[:, 0, 0, 6] = torch.tensor([0.2, 0.35, 0.45])
    result = segmentation_difficulty(probs, radius=0)
    assert set(result.per_class) == {1, 2}
    assert result.per_class[1] == pytest.approx(0.0, abs=1e-6)
    assert result.per_class[2] > 0.9

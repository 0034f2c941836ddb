import numpy as np
import pytest

from assft.metrics import (
    cosine_distance,
    greedy_diverse_selection,
    k_center_greedy,
    power_sampling_order,
    rank_normalise,
)


def test_rank_normalise():
    assert rank_normalise(np.array([3.0, 1.0, 2.0])).tolist() == [1.0, 0.0, 0.5]
    assert rank_normalise(np.array([1.0, 1.0, 2.0])).tolist() == [0.25, 0.25, 1.0]
    assert rank_normalise(np.array([7.0])).tolist() == [0.5]
    # Scale does not matter.
    x = np.array([0.001, 5.0, 0.2, 1e6])
    assert rank_normalise(x).tolist() == rank_normalise(np.log(x)).tolist()
    with pytest.raises(ValueError):
        rank_normalise(np.array([1.0, np.nan]))


def test_cosine_distance():
    d = cosine_distance(np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([[3.0, 0.0]]))
    assert d[:, 0].tolist() == pytest.approx([0.0, 1.0])


def test_greedy_selection_prefers_diversity_over_a_near_duplicate():
    z0 = np.array([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0]])
    scores = np.array([1.0, 0.9, 0.1])
    # Pick 1: every D is 1 (nothing labeled) -> case 0. Then D = (-, ~0, 1) and q(D) over the
    # remaining two is (0, 1): case 1 scores 0.9, case 2 scores 1.1 -> case 2.
    diverse = greedy_diverse_selection(scores, z0, 2, lambda_div=1.0)
    assert diverse.picks == [0, 2]
    assert diverse.diversity[0] == 1.0
    assert diverse.diversity[2] == pytest.approx(1.0)
    assert diverse.objective[2] == pytest.approx(1.1)
    # Without the diversity term it is plain top-k.
    assert greedy_diverse_selection(scores, z0, 2, lambda_div=0.0).picks == [0, 1]


def test_greedy_selection_counts_labeled_cases():
    z0 = np.array([[1.0, 0.0], [0.0, 1.0]])
    labeled = np.array([[1.0, 0.0]])
    # Case 0 duplicates a labeled case: its D is 0, case 1's is 1.
    result = greedy_diverse_selection(np.array([0.6, 0.5]), z0, 1, labeled_z0=labeled)
    assert result.picks == [1]
    assert result.diversity[0] == pytest.approx(0.0)


def test_greedy_budget_checked():
    with pytest.raises(ValueError):
        greedy_diverse_selection(np.zeros(2), np.ones((2, 3)), 3)


def test_k_center_greedy():
    z = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.7, 0.7]])
    result = k_center_greedy(z, 2, labeled_z=np.array([[1.0, 0.05]]))
    assert result.picks[0] == 2
    assert result.picks[1] in (0, 3)
    # With (0, 1) and (1, 0.05) as centres, (0.7, 0.7) is the farthest.
    assert result.picks[1] == 3


def test_power_sampling_is_seeded_and_stratified():
    scores = np.array([[0.9, np.nan], [0.8, 0.01], [0.01, 0.9], [0.01, 0.02]])
    a = power_sampling_order(scores, 3, np.random.default_rng(1), beta=50.0)
    b = power_sampling_order(scores, 3, np.random.default_rng(1), beta=50.0)
    assert a == b
    # With a large power the noise vanishes: class 0's best, class 1's best, class 0's next.
    assert a == [0, 2, 1]
    assert len(set(power_sampling_order(scores, 4, np.random.default_rng(3)))) == 4

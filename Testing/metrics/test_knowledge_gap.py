import numpy as np
import pytest

from assft.metrics import (
    batchnorm_knowledge_gap,
    gaussian_symmetric_kl,
    pool_mean_gap,
    prototype_count,
    prototype_knowledge_gap,
    representation_drift,
)


def test_symmetric_kl_hand_values():
    assert gaussian_symmetric_kl(0.0, 1.0, 0.0, 1.0) == pytest.approx(0.0, abs=1e-9)
    # Means 1 apart, unit variances: ((1 + 1) / 1 + (1 + 1) / 1) / 2 - 1 = 1.
    assert gaussian_symmetric_kl(0.0, 1.0, 1.0, 1.0) == pytest.approx(1.0, abs=1e-4)
    # Same mean, variances 1 and 4: (1/4 + 4) / 2 - 1 = 1.125.
    assert gaussian_symmetric_kl(0.0, 1.0, 0.0, 4.0) == pytest.approx(1.125, abs=1e-4)
    # Symmetric.
    assert gaussian_symmetric_kl(2.0, 3.0, -1.0, 0.5) == pytest.approx(
        gaussian_symmetric_kl(-1.0, 0.5, 2.0, 3.0)
    )


def test_batchnorm_gap_averages_channels_then_layers():
    running = [(np.zeros(2), np.ones(2)), (np.zeros(1), np.ones(1))]
    case = [(np.array([1.0, 0.0]), np.ones(2)), (np.zeros(1), np.full(1, 4.0))]
    # Layer 1: channels (1.0, 0.0) -> 0.5; layer 2: 1.125; mean of layers 0.8125.
    assert batchnorm_knowledge_gap(case, running) == pytest.approx(0.8125, abs=1e-4)
    with pytest.raises(ValueError):
        batchnorm_knowledge_gap(case[:1], running)


def test_prototype_count():
    assert prototype_count(2) == 2
    assert prototype_count(10) == 3
    assert prototype_count(45) == 5


def test_prototype_gap_measures_distance_to_the_surest_cases():
    z0 = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [1.0, 1.0]])
    asd = np.array([0.1, 0.9, 0.2, 0.5])
    gap, prototypes = prototype_knowledge_gap(z0, asd, k=2)
    assert sorted(prototypes.tolist()) == [0, 2]
    expected_diag = 1 - 1 / np.sqrt(2)
    assert gap == pytest.approx([0.0, 1.0, 0.0, expected_diag])


def test_drift_and_pool_mean():
    z0 = np.array([[1.0, 0.0], [0.0, 1.0]])
    zt = np.array([[1.0, 0.0], [1.0, 0.0]])
    assert representation_drift(z0, zt) == pytest.approx([0.0, 1.0])
    # Pool mean direction (1, 1)/sqrt2: both at 1 - 1/sqrt2.
    assert pool_mean_gap(z0) == pytest.approx([1 - 1 / np.sqrt(2)] * 2)

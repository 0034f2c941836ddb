"""The acquisition descriptor, its distance, k-means parts and the parts of an archive."""

from __future__ import annotations

import numpy as np
import pytest

from assft.metrics import acquisition_descriptor, acquisition_distance
from assft.metrics.clustering import choose_parts, kmeans, silhouette
from assft.query.parts import ArchiveParts, coverage_notes, find_parts, propose_held_out


def test_the_descriptor_is_the_log_spread_of_the_first_layer():
    first = (np.array([5.0, -1.0]), np.array([4.0, 0.25]))
    second = (np.array([0.0]), np.array([9.0]))
    described = acquisition_descriptor([first, second], np.array([0.6, 0.8]))
    assert described == pytest.approx([np.log(2.0), np.log(0.5)], abs=1e-6)
    # Without BatchNorm the embedding stands in.
    assert acquisition_descriptor([], np.array([0.6, 0.8])) == pytest.approx([0.6, 0.8])


def test_acquisition_distance_is_the_rms_channel_difference():
    a = np.array([[0.0, 0.0, 0.0, 0.0], [0.1, 0.1, 0.1, 0.1]])
    b = np.array([[0.0, 0.0, 0.0, 0.2]])
    d = acquisition_distance(a, b)
    assert d.shape == (2, 1)
    assert d[0, 0] == pytest.approx(0.1)  # sqrt(0.04 / 4)
    assert d[1, 0] == pytest.approx(0.1)  # sqrt((3 * 0.01 + 0.01) / 4)
    # The same per-channel change means the same distance for any number of channels.
    wide = acquisition_distance(np.zeros((1, 64)), np.full((1, 64), 0.1))
    assert wide[0, 0] == pytest.approx(0.1)


def _blobs(sizes, centres, spread=0.05, seed=0):
    rng = np.random.default_rng(seed)
    points = [
        c + spread * rng.standard_normal((n, len(c))) for n, c in zip(sizes, centres, strict=True)
    ]
    truth = np.concatenate([np.full(n, i) for i, n in enumerate(sizes)])
    return np.concatenate(points), truth


def test_kmeans_finds_separated_blobs_numbers_them_by_size_and_is_deterministic():
    x, truth = _blobs([5, 12, 8], [np.array([0.0, 0.0]), np.array([3.0, 0.0]), [0.0, 3.0]])
    clusters = kmeans(x, 3, seed=1)
    assert clusters.sizes() == [12, 8, 5]
    # Each found part is one blob, the largest first.
    for part, blob in enumerate([1, 2, 0]):
        assert set(np.flatnonzero(clusters.labels == part)) == set(np.flatnonzero(truth == blob))
        representative = clusters.representatives[part]
        assert clusters.labels[representative] == part
    again = kmeans(x, 3, seed=1)
    assert np.array_equal(again.labels, clusters.labels)
    with pytest.raises(ValueError, match="k must be between 1"):
        kmeans(x, 0)


def test_the_number_of_parts_follows_the_silhouette():
    x, truth = _blobs([10, 10, 6], [np.array([0.0, 0.0]), np.array([2.0, 0.0]), [0.0, 2.0]])
    assert choose_parts(x).k == 3
    assert silhouette(x, truth) > 0.8
    one, _ = _blobs([30], [np.array([0.0, 0.0])], spread=1.0)
    assert choose_parts(one).k == 1  # one acquisition: no split scores
    assert silhouette(one, np.zeros(30, dtype=int)) == 0.0


def _archive():
    # 12 scans of a majority acquisition, 5 of one minority, 3 of another.
    x, truth = _blobs([12, 5, 3], [np.zeros(4), np.full(4, 1.0), np.array([0, 0, 2.0, 0])])
    ids = [f"case_{i:02d}" for i in range(len(x))]
    return find_parts(ids, x), ids, truth


def test_parts_of_an_archive_and_held_out_scans_that_cover_them():
    parts, ids, truth = _archive()
    assert parts.count == 3 and parts.sizes == [12, 5, 3]
    for part, blob in enumerate([0, 1, 2]):
        members = {c for c, p in parts.of_case.items() if p == part}
        assert members == {ids[i] for i in np.flatnonzero(truth == blob)}
    proposed = propose_held_out(parts, 4)
    # One per part, the largest first, then the largest part again.
    assert [parts.of_case[c] for c in proposed] == [0, 1, 2, 0]
    assert proposed[:3] == parts.representatives
    # Scans already held out count; training scans are never proposed.
    again = propose_held_out(parts, 3, keep=[proposed[0]], exclude=[parts.representatives[1]])
    assert again[0] == proposed[0] and [parts.of_case[c] for c in again] == [0, 1, 2]
    assert parts.representatives[1] not in again
    assert parts.name(1) == f"part 2 (5 scans, like {parts.representatives[1]})"
    restored = ArchiveParts.from_dict(parts.to_dict())
    assert restored.of_case == parts.of_case and restored.representatives == parts.representatives


def test_coverage_notes_name_the_parts_the_gate_cannot_see():
    parts, _, _ = _archive()
    majority, minority, rare = parts.representatives
    minority_labeled = parts.by_closeness[1][1]
    # The labeled scan's part has no held-out scan, nor has the rare part.
    notes = coverage_notes(parts, labeled=[minority_labeled], held_out=[majority])
    assert len(notes) == 2
    assert f"no held-out scan comes from {parts.name(1)}" in notes[0]
    assert minority_labeled in notes[0] and minority in notes[0]
    assert parts.name(2) in notes[1] and "forgets" in notes[1]
    assert (
        coverage_notes(parts, labeled=[minority_labeled], held_out=[majority, minority, rare]) == []
    )

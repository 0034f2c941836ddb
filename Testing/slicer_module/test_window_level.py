"""Window/level presets of a case's scan on real MRML volume nodes (slicer-core): "Auto" from the
scan's percentiles, Slicer's CT presets where the scan holds CT values, and setting one."""

from __future__ import annotations

import numpy as np
import pytest

from assft_testing.slicer_side import require_slicer

slicer = require_slicer()
import SimpleITK as sitk  # noqa: E402

from ASSFTSlicerLib.scene import volumeNodeFromImage  # noqa: E402
from ASSFTSlicerLib.window_level import (  # noqa: E402
    AUTO,
    CT_PRESETS,
    setWindowLevel,
    windowLevelPresets,
)


def _volume(array: np.ndarray, name: str):
    node = volumeNodeFromImage(sitk.GetImageFromArray(array.astype(np.float32)), name)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def test_an_mr_scan_gets_auto_from_its_percentiles_only(mrml):
    rng = np.random.default_rng(0)
    mr = rng.uniform(100.0, 900.0, size=(12, 14, 16))
    presets = windowLevelPresets(_volume(mr, "mr"))
    low, high = np.percentile(mr.astype(np.float32), [1, 99])
    assert list(presets) == [AUTO]
    window, level = presets[AUTO]
    assert window == pytest.approx(high - low, rel=1e-5)
    assert level == pytest.approx((high + low) / 2, rel=1e-5)
    # A flat scan gets a window of at least 1 around its value.
    assert windowLevelPresets(_volume(np.full((4, 4, 4), 7.0), "flat")) == {AUTO: (1.0, 7.5)}


def test_a_ct_scan_also_gets_slicers_ct_presets_and_a_preset_is_shown(mrml):
    ct = np.full((12, 14, 16), -1000.0)
    ct[3:9, 3:11, 3:13] = 40.0  # soft tissue in air
    node = _volume(ct, "ct")
    presets = windowLevelPresets(node)
    assert list(presets) == [AUTO, *CT_PRESETS]
    window, level = presets["CT brain"]
    setWindowLevel(node, window, level)
    display = node.GetDisplayNode()
    assert not display.GetAutoWindowLevel()
    assert (display.GetWindow(), display.GetLevel()) == (100.0, 50.0)
    with pytest.raises(ValueError, match="positive"):
        setWindowLevel(node, 0.0, 10.0)
    assert (display.GetWindow(), display.GetLevel()) == (100.0, 50.0)  # unchanged

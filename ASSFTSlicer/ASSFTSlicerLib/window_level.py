"""Window/level of a case's scan: the presets a clinician expects for it, and setting one.

"Auto" spans the scan's 1st to 99th intensity percentiles (MR has no fixed unit, so a preset must
come from the scan itself). A scan that holds CT values (air near -1000 HU) also gets Slicer's own
CT presets, with the window and level of the Volumes module's ``VolumeDisplayPresets.json``.
Slicer's panel has its own window/level tools; the web page uses these.
"""

from __future__ import annotations

import numpy as np
import slicer

__all__ = ["AUTO", "CT_PRESETS", "setWindowLevel", "windowLevelPresets"]

AUTO = "Auto"

CT_PRESETS = {
    "CT brain": (100.0, 50.0),
    "CT abdomen": (350.0, 40.0),
    "CT lung": (1400.0, -500.0),
    "CT bone": (1000.0, 400.0),
}
"""Slicer's CT presets: name -> (window, level) in Hounsfield units."""

CT_AIR_BELOW = -500.0
"""A scan whose 1st percentile is below this holds CT values (air is -1000 HU)."""


def windowLevelPresets(volumeNode) -> dict[str, tuple[float, float]]:
    """The window/level presets for the scan in ``volumeNode``: name -> (window, level), "Auto"
    first."""
    voxels = np.asarray(slicer.util.arrayFromVolume(volumeNode), dtype=np.float64)
    voxels = voxels[np.isfinite(voxels)]
    if voxels.size == 0:
        return {AUTO: (1.0, 0.0)}
    low, high = (float(v) for v in np.percentile(voxels, [1.0, 99.0]))
    if high <= low:  # a flat scan
        low, high = float(voxels.min()), max(float(voxels.max()), float(voxels.min()) + 1.0)
    presets = {AUTO: (high - low, (high + low) / 2.0)}
    if low < CT_AIR_BELOW:
        presets.update(CT_PRESETS)
    return presets


def setWindowLevel(volumeNode, window: float, level: float) -> None:
    """Show ``volumeNode`` with this window and level (its automatic window/level turned off)."""
    display = volumeNode.GetDisplayNode()
    if display is None:
        raise ValueError(f"volume '{volumeNode.GetName()}' has no display node")
    if not (np.isfinite(window) and np.isfinite(level)) or window <= 0:
        raise ValueError(f"a window must be a positive number, got {window} (level {level})")
    wasModified = display.StartModify()
    display.SetAutoWindowLevel(False)
    display.SetWindowLevel(float(window), float(level))
    display.EndModify(wasModified)

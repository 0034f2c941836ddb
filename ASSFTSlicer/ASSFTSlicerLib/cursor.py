"""What lies under the cursor in a slice view: the patient position (RAS), the scan's voxel and its
intensity there.

Slicer's own Data Probe shows this in its panel; the web page shows :func:`describePoint`'s line.
"""

from __future__ import annotations

import math

import vtk

__all__ = ["describePoint", "rasAtSlicePixel", "voxelAt"]


def rasAtSlicePixel(sliceNode, x: float, y: float) -> tuple[float, float, float]:
    """The RAS position of pixel ``(x, y)`` of a slice view (VTK's display coordinates, origin at
    the bottom left), through the slice node's XY-to-RAS matrix."""
    point = sliceNode.GetXYToRAS().MultiplyPoint((float(x), float(y), 0.0, 1.0))
    return (point[0], point[1], point[2])


def voxelAt(volumeNode, ras) -> tuple[int, int, int] | None:
    """The (i, j, k) voxel of ``volumeNode`` at a RAS position, or None outside the scan."""
    rasToIjk = vtk.vtkMatrix4x4()
    volumeNode.GetRASToIJKMatrix(rasToIjk)
    ijk = rasToIjk.MultiplyPoint((*ras, 1.0))[:3]
    index = tuple(int(math.floor(c + 0.5)) for c in ijk)
    dimensions = volumeNode.GetImageData().GetDimensions()
    if any(not 0 <= i < n for i, n in zip(index, dimensions, strict=True)):
        return None
    return index  # type: ignore[return-value]


def describePoint(volumeNode, ras) -> str:
    """One line for the point: ``R 12.0 A 3.5 S 40.0 | voxel (31, 40, 22) | 512.3``; the voxel
    and its intensity only inside the scan."""
    r, a, s = ras
    position = f"{'R' if r >= 0 else 'L'} {abs(r):.1f} {'A' if a >= 0 else 'P'} {abs(a):.1f} "
    position += f"{'S' if s >= 0 else 'I'} {abs(s):.1f}"
    index = voxelAt(volumeNode, ras)
    if index is None:
        return position
    i, j, k = index
    value = volumeNode.GetImageData().GetScalarComponentAsDouble(i, j, k, 0)
    return f"{position} | voxel ({i}, {j}, {k}) | {value:.6g}"

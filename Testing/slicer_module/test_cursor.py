"""What lies under the cursor (ASSFTSlicerLib/cursor.py) on real MRML volume nodes: the voxel and
intensity at a RAS position, through the node's own geometry."""

from __future__ import annotations

import numpy as np
import pytest

from assft_testing.slicer_side import require_slicer

slicer = require_slicer()
import SimpleITK as sitk  # noqa: E402
import vtk  # noqa: E402

from ASSFTSlicerLib.cursor import describePoint, rasAtSlicePixel, voxelAt  # noqa: E402
from ASSFTSlicerLib.scene import volumeNodeFromImage  # noqa: E402


def test_the_voxel_and_intensity_under_a_point_follow_the_scans_geometry(mrml):
    array = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)  # (k, j, i)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((2.0, 3.0, 4.0))
    image.SetOrigin((-10.0, 20.0, 5.0))
    node = volumeNodeFromImage(image, "scan")
    ijkToRas = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijkToRas)
    for i, j, k in [(0, 0, 0), (5, 4, 3), (2, 1, 3)]:
        ras = ijkToRas.MultiplyPoint((i, j, k, 1.0))[:3]
        assert voxelAt(node, ras) == (i, j, k)
        line = describePoint(node, ras)
        assert line.endswith(f"| voxel ({i}, {j}, {k}) | {array[k, j, i]:.6g}"), line
    # Half a voxel off still names the nearest voxel; outside the scan, the position alone.
    ras = ijkToRas.MultiplyPoint((5.4, 3.6, 2.6, 1.0))[:3]
    assert voxelAt(node, ras) == (5, 4, 3)
    outside = ijkToRas.MultiplyPoint((9.0, 0.0, 0.0, 1.0))[:3]
    assert voxelAt(node, outside) is None and "voxel" not in describePoint(node, outside)
    r, a, s = outside
    assert describePoint(node, outside).startswith(f"{'R' if r >= 0 else 'L'} {abs(r):.1f} ")


def test_a_slice_views_pixel_is_placed_by_its_slice_nodes_matrix(mrml):
    sliceNode = mrml.scene.AddNewNodeByClass("vtkMRMLSliceNode")
    sliceNode.SetDimensions(200, 100, 1)
    sliceNode.SetFieldOfView(400.0, 200.0, 1.0)  # 2 mm a pixel
    sliceNode.UpdateMatrices()
    centre = rasAtSlicePixel(sliceNode, 100, 50)
    right = rasAtSlicePixel(sliceNode, 110, 50)
    assert float(np.linalg.norm(np.subtract(right, centre))) == pytest.approx(20.0)

"""Fixtures for the workspace tests: tiny synthetic pools written to tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from assft.workspace import Workspace
from assft_testing.workspaces import LABEL_NAMES, write_volume


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    """A folder with three scans in three formats and a non-image file."""
    folder = tmp_path / "pool"
    write_volume(folder / "case_b.nii.gz", seed=2)
    write_volume(folder / "case_a.nrrd", seed=1)
    write_volume(folder / "case_c.mha", seed=3)
    (folder / "README.txt").write_text("not an image")
    return folder


@pytest.fixture
def workspace(tmp_path: Path, pool: Path) -> Workspace:
    """A workspace over :func:`pool` with two declared labels."""
    return Workspace.create(tmp_path / "ws", [pool], label_names=LABEL_NAMES, user="tester")

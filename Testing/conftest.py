"""Shared fixtures: a tiny model preset and tiny synthetic pools, written to temporary folders."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_preset_file(tmp_path_factory) -> Path:
    from assft.datasets.synthetic import write_tiny_preset

    return write_tiny_preset(tmp_path_factory.mktemp("preset") / "tiny-unet.json")


@pytest.fixture(scope="session")
def synthetic_pool(tmp_path_factory):
    """Eight 24^3 synthetic cases with ground truth (read-only: copy before changing)."""
    from assft.datasets.synthetic import write_synthetic_pool

    out = tmp_path_factory.mktemp("pool")
    cases = write_synthetic_pool(out, 8, seed=3, size=24)
    return out, cases

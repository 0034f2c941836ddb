"""Per-case statistics of the frozen pretrained model f0, computed once and cached.

z0 (and the acquisition descriptor a0, the `bn` gap and the ASD under f0) never change while the
image, the preset and the view settings stay the same, so later rankings only run the current
model. An entry written before a0 existed is a miss, and is computed again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from assft.io.atomic import atomic_path


@dataclass
class PretrainedStatistics:
    """f0's view of one case: embedding, `bn` gap (NaN without BatchNorm), ASD (NaN without a
    head), acquisition descriptor (:mod:`assft.metrics.acquisition`)."""

    z0: np.ndarray
    kg_bn: float
    asd0: float
    a0: np.ndarray


def cache_key(image_path: Path, settings: dict) -> str:
    """A key that changes when the image file or anything that shapes f0's statistics does."""
    stat = image_path.stat() if image_path.is_file() else None
    if stat is None and image_path.is_dir():
        stat_text = ";".join(
            f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
            for p in sorted(image_path.iterdir())
        )
    else:
        stat_text = f"{stat.st_size}:{stat.st_mtime_ns}" if stat else "missing"
    payload = json.dumps({"image": str(image_path), "stat": stat_text, **settings}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


class PretrainedCache:
    """``cache/pretrained/<case>.npz`` files, each holding its key."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, case_id: str) -> Path:
        return self.folder / f"{case_id}.npz"

    def get(self, case_id: str, key: str) -> PretrainedStatistics | None:
        path = self._path(case_id)
        try:
            with np.load(path) as data:
                if str(data["key"]) != key:
                    return None
                return PretrainedStatistics(
                    z0=data["z0"].copy(),
                    kg_bn=float(data["kg_bn"]),
                    asd0=float(data["asd0"]),
                    a0=data["a0"].copy(),
                )
        except (OSError, KeyError, ValueError):
            return None

    def put(self, case_id: str, key: str, stats: PretrainedStatistics) -> None:
        with atomic_path(self._path(case_id)) as temporary, open(temporary, "wb") as stream:
            np.savez(stream, key=key, z0=stats.z0, kg_bn=stats.kg_bn, asd0=stats.asd0, a0=stats.a0)

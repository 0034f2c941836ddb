"""Predicting label maps (and voxel uncertainty) for a workspace's cases.

``predict_workspace`` is what ``assft predict WS (CASE|--all) [--out DIR]`` runs. Each case is
read once, brought onto the model grid, run through the sliding-window network with the same
test-time views as ranking, and the view-averaged result is mapped back onto the scan's exact
grid: the label map nearest-neighbour, the entropy map linearly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from assft.errors import BadInputError
from assft.io.imaging import read_image, write_image_atomic
from assft.io.preprocessing import to_image_grid, to_model_grid
from assft.metrics import voxel_entropy
from assft.models import resolve_device
from assft.models.inference import VIEW_FLIPS, sliding_window_probabilities
from assft.runtime.progress import Progress
from assft.workspace.model_versions import ModelRegistry
from assft.workspace.versions import check_version
from assft.workspace.workspace import Workspace

__all__ = ["Prediction", "Predictor", "predict_workspace"]


@dataclass
class Prediction:
    """One case's prediction on the scan's exact grid.

    Attributes:
        case_id: the case.
        label: uint16 label map holding 0 and the workspace's label values.
        uncertainty: float32 voxel entropy of the view-averaged probabilities, in [0, 1].
        seconds: time spent on the case (reading, inference, regridding).
    """

    case_id: str
    label: sitk.Image
    uncertainty: sitk.Image
    seconds: float


class Predictor:
    """A workspace's model version, loaded once, predicting cases one at a time.

    Args:
        workspace: the open workspace.
        version: model version (``v0`` is the preset as configured, ``vN`` the checkpoint
            ``models/vN/model.pt``); None: the workspace's current version.
        device: ``auto``, ``cpu``, ``cuda``...
        views: test-time views (1 to 4: identity, then flips of x, y, z).

    Raises:
        BadInputError: a malformed or missing version, a model that cannot be loaded, a bad
            number of views.
    """

    def __init__(
        self,
        workspace: Workspace,
        *,
        version: str | None = None,
        device: str = "auto",
        views: int = 4,
    ) -> None:
        if not 1 <= int(views) <= len(VIEW_FLIPS):
            raise BadInputError(f"views must be between 1 and {len(VIEW_FLIPS)}, not {views}")
        self.workspace = workspace
        self.version = check_version(
            workspace.current_model_version() if version is None else version
        )
        self.views = int(views)
        self.device = resolve_device(device)
        self.model = ModelRegistry(workspace).load(self.version, device=self.device)
        self.preset = self.model.preset
        self.label_values = [int(v) for v in workspace.config.label_values]
        self._lut = np.array([0, *self.label_values], dtype=np.uint16)

    @property
    def has_head(self) -> bool:
        """Whether the segmentation head is trained for the workspace's labels."""
        return bool(self.model.has_head)

    def predict(self, case_id: str) -> Prediction:
        """Predict one registered case.

        Raises:
            BadInputError: an unknown case or an unreadable scan.
        """
        started = time.perf_counter()
        image = read_image(self.workspace.image_path(case_id))
        label, uncertainty = self.predict_image(image)
        return Prediction(
            case_id=case_id,
            label=label,
            uncertainty=uncertainty,
            seconds=time.perf_counter() - started,
        )

    def predict_image(self, image: sitk.Image) -> tuple[sitk.Image, sitk.Image]:
        """Predict a scan already read: ``(label map, entropy map)`` on its exact grid."""
        pre = self.preset
        grid = to_model_grid(
            image, spacing=pre.spacing, orientation=pre.orientation, intensity=pre.intensity
        )
        total: torch.Tensor | None = None
        for flips in VIEW_FLIPS[: self.views]:
            probs = sliding_window_probabilities(self.model, grid.tensor, flips)
            total = probs if total is None else total.add_(probs)
            del probs
        assert total is not None
        mean = total.div_(self.views)
        channels = mean.argmax(dim=0).cpu().numpy()
        entropy = voxel_entropy(mean).clamp_(0.0, 1.0).cpu().numpy().astype(np.float32)
        del total, mean
        label = to_image_grid(self._lut[channels], grid, image, nearest=True)
        uncertainty = to_image_grid(entropy, grid, image, nearest=False)
        return label, uncertainty

    def default_out_dir(self) -> Path:
        """``<workspace>/predictions/<version>``."""
        return self.workspace.resolve_inside(Path("predictions") / self.version)

    def predict_to_files(
        self,
        case_ids: list[str],
        out_dir: Path | None = None,
        *,
        uncertainty: bool = False,
        progress: Progress | None = None,
    ) -> list[dict[str, Any]]:
        """Predict cases and write ``<case>.nii.gz`` (and ``<case>_uncertainty.nii.gz``).

        Every case id is checked before the first prediction. Files are written atomically.

        Args:
            case_ids: registered cases.
            out_dir: where to write; None: :meth:`default_out_dir` inside the workspace. A
                folder the user names may be anywhere.
            uncertainty: also write the entropy maps.
            progress: reports the ``predict`` phase.

        Returns:
            Per case ``{"case", "label", "uncertainty", "seconds"}`` (paths as strings; the
            uncertainty path is None unless asked for).

        Raises:
            BadInputError: an unknown or malformed case id, an unreadable scan, an output
                folder that cannot be created.
        """
        progress = progress or Progress("none")
        for case_id in case_ids:
            self.workspace.check_case_id(case_id)
        folder = self.default_out_dir() if out_dir is None else Path(out_dir).expanduser()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise BadInputError(f"cannot be created ({error.strerror or error})", folder) from None
        folder = folder.resolve()
        progress.phase("predict", len(case_ids))
        results: list[dict[str, Any]] = []
        for done, case_id in enumerate(case_ids, start=1):
            prediction = self.predict(case_id)
            label_path = write_image_atomic(prediction.label, folder / f"{case_id}.nii.gz")
            uncertainty_path = (
                write_image_atomic(prediction.uncertainty, folder / f"{case_id}_uncertainty.nii.gz")
                if uncertainty
                else None
            )
            seconds = round(prediction.seconds, 3)
            results.append(
                {
                    "case": case_id,
                    "label": str(label_path),
                    "uncertainty": None if uncertainty_path is None else str(uncertainty_path),
                    "seconds": seconds,
                }
            )
            progress.update(done, case=case_id, seconds=seconds)
        return results


def predict_workspace(
    workspace: Workspace,
    case: str | None = None,
    all_cases: bool = False,
    out_dir: Path | str | None = None,
    version: str | None = None,
    device: str = "auto",
    uncertainty: bool = False,
    progress: Progress | None = None,
    *,
    views: int = 4,
) -> dict[str, Any]:
    """Predict one case or all cases of a workspace (``assft predict``).

    Args:
        workspace: the open workspace.
        case: one case id (exclusive with ``all_cases``).
        all_cases: every registered case.
        out_dir: output folder; None: ``<workspace>/predictions/<version>``.
        version: model version; None: the current one.
        device: ``auto``, ``cpu``, ``cuda``...
        uncertainty: also write the entropy maps.
        progress: progress reporter.
        views: test-time views (1 to 4).

    Returns:
        ``{"model_version", "device", "has_head", "out_dir", "predictions": [...],
        "seconds"}`` with the per-case rows of :meth:`Predictor.predict_to_files`.

    Raises:
        BadInputError: neither or both of ``case`` and ``all_cases``, an unknown case, a bad
            version, an empty workspace.
    """
    if (case is None) == (not all_cases):
        raise BadInputError("give either one case id or --all")
    if all_cases:
        case_ids = [row["case_id"] for row in workspace.registry.cases()]
        if not case_ids:
            raise BadInputError("the workspace has no cases", workspace.root)
    else:
        assert case is not None
        case_ids = [workspace.check_case_id(case)]
    started = time.perf_counter()
    predictor = Predictor(workspace, version=version, device=device, views=views)
    folder = None if out_dir is None else Path(out_dir)
    rows = predictor.predict_to_files(case_ids, folder, uncertainty=uncertainty, progress=progress)
    written_to = predictor.default_out_dir() if folder is None else folder.expanduser().resolve()
    return {
        "model_version": predictor.version,
        "device": str(predictor.device),
        "has_head": predictor.has_head,
        "out_dir": str(written_to),
        "predictions": rows,
        "seconds": round(time.perf_counter() - started, 3),
    }

"""Predicting label maps (and voxel uncertainty) for a workspace's cases.

``predict_workspace`` is what ``assft predict WS (CASE|--all) [--out DIR]`` runs. Each case is
read once, brought onto the model grid, run through the sliding-window network with the same
test-time views as ranking, and the view-averaged result is mapped back onto the scan's exact
grid: the label map nearest-neighbour, the entropy map linearly.

Predictions never go into a folder the workspace owns (``labels/``, ``models/``, ``jobs/``,
``cache/``, ``rankings/`` or its root): a prediction written there would pass for a clinician's
label. ``--out`` may name a folder outside the workspace or under ``predictions/``
(:func:`check_out_dir`); it may not overwrite a registered scan either.
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
from assft.io.atomic import PinnedFolder
from assft.io.imaging import read_image, write_image_atomic
from assft.io.preprocessing import to_image_grid, to_model_grid
from assft.metrics import voxel_entropy
from assft.models import resolve_device
from assft.models.inference import VIEW_FLIPS, sliding_window_probabilities
from assft.runtime import syncpoints
from assft.runtime.progress import Progress
from assft.workspace.config import enclosing_workspace
from assft.workspace.model_versions import ModelVersions
from assft.workspace.version_names import check_version
from assft.workspace.workspace import Workspace

__all__ = ["Prediction", "Predictor", "check_out_dir", "predict_workspace"]


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
        views: test-time views (1 to 8: identity, flips of x, y, z, then of two and three
            axes; :data:`~assft.models.inference.VIEW_FLIPS`).

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
        self.model = ModelVersions(workspace).load(self.version, device=self.device)
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
        path = self.workspace.image_path(case_id)
        label, uncertainty = self.predict_image(read_image(path), source=path)
        return Prediction(
            case_id=case_id,
            label=label,
            uncertainty=uncertainty,
            seconds=time.perf_counter() - started,
        )

    def predict_image(
        self, image: sitk.Image, *, source: Path | None = None
    ) -> tuple[sitk.Image, sitk.Image]:
        """Predict a scan already read: ``(label map, entropy map)`` on its exact grid.

        ``source`` (the scan's file) is named when the scan is refused.
        """
        pre = self.preset
        grid = to_model_grid(
            image,
            spacing=pre.spacing,
            orientation=pre.orientation,
            intensity=pre.intensity,
            source=source,
        )
        # nnU-Net averages its mirrored views' logits: the mean of log-probabilities has the same
        # softmax (each view's log-sum-exp is a constant per voxel), so an nnU-Net model's labels
        # are nnU-Net's. Other models average probabilities, as ranking does.
        logits_mean = pre.architecture == "nnunet"
        total: torch.Tensor | None = None
        for flips in VIEW_FLIPS[: self.views]:
            probs = sliding_window_probabilities(self.model, grid.tensor, flips)
            if logits_mean:
                probs = probs.clamp_min_(1e-30).log_()
            total = probs if total is None else total.add_(probs)
            del probs
        assert total is not None
        mean = total.div_(self.views)
        if logits_mean:
            mean = torch.softmax(mean, dim=0)
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
                folder the user names may be anywhere outside the workspace or under its
                ``predictions/`` folder (:func:`check_out_dir`).
            uncertainty: also write the entropy maps.
            progress: reports the ``predict`` phase.

        Returns:
            Per case ``{"case", "label", "uncertainty", "seconds"}`` (paths as strings; the
            uncertainty path is None unless asked for).

        Raises:
            BadInputError: an unknown or malformed case id, an unreadable scan, an output
                folder the workspace owns or that cannot be created, an output file that would
                overwrite a registered scan.
        """
        progress = progress or Progress("none")
        for case_id in case_ids:
            self.workspace.check_case_id(case_id)
        folder = check_out_dir(
            self.workspace,
            self.default_out_dir() if out_dir is None else out_dir,
            case_ids,
            uncertainty=uncertainty,
        )
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise BadInputError(f"cannot be created ({error.strerror or error})", folder) from None
        folder = folder.resolve()
        # Held open from here: a link swapped in for the folder's path while the cases are
        # predicted (towards labels/, say) cannot redirect a prediction there.
        with PinnedFolder(folder) as pinned:
            return self._predict_into(case_ids, pinned, uncertainty, progress)

    def _predict_into(
        self, case_ids: list[str], pinned: PinnedFolder, uncertainty: bool, progress: Progress
    ) -> list[dict[str, Any]]:
        folder = pinned.path
        progress.phase("predict", len(case_ids))
        results: list[dict[str, Any]] = []
        for done, case_id in enumerate(case_ids, start=1):
            prediction = self.predict(case_id)
            label_path = write_image_atomic(
                prediction.label, folder / f"{case_id}.nii.gz", pinned=pinned
            )
            uncertainty_path = (
                write_image_atomic(
                    prediction.uncertainty,
                    folder / f"{case_id}_uncertainty.nii.gz",
                    pinned=pinned,
                )
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
            syncpoints.reach("prediction-written")
        return results


def _owned_folders(workspace: Workspace) -> list[tuple[str, Path]]:
    """The folders the workspace owns, by name, resolved (a symlinked one where it points)."""
    folders = [
        workspace.labels_dir,
        workspace.models_dir,
        workspace.jobs_dir,
        workspace.cache_dir,
        workspace.rankings_dir,
    ]
    return [(f"{folder.name}/", folder.resolve()) for folder in folders]


def check_out_dir(
    workspace: Workspace,
    out_dir: str | Path,
    case_ids: list[str] | None = None,
    *,
    uncertainty: bool = False,
) -> Path:
    """Check a folder the user named for predictions; returns it resolved (nothing is written).

    Symlinks are resolved first, so a link into ``labels/`` is refused like ``labels/`` itself.

    Args:
        workspace: the open workspace.
        out_dir: the folder (``--out``); it need not exist.
        case_ids: the cases to be written there, checked not to overwrite a registered scan.
        uncertainty: the entropy maps will be written too.

    Raises:
        BadInputError: the folder is (or lies in) one the workspace owns (``labels/``,
            ``models/``, ``jobs/``, ``cache/``, ``rankings/``), is the workspace's root or lies
            in it outside ``predictions/``, or a file to write there is a registered scan.
    """
    given = Path(out_dir).expanduser()
    folder = given.resolve()
    root = workspace.root.resolve()
    advice = (
        "predictions never go into a folder the workspace owns: choose a folder outside the "
        f"workspace or under {root / 'predictions'}"
    )
    for name, owned in _owned_folders(workspace):
        if folder.is_relative_to(owned):
            where = "" if given == folder else f" (it resolves to {folder})"
            raise BadInputError(f"is in the workspace's {name} folder{where}; {advice}", given)
    if folder.is_relative_to(root) and not folder.is_relative_to(root / "predictions"):
        raise BadInputError(
            f"is inside the workspace {root}, outside predictions/; {advice}", given
        )
    # Another workspace's folders are as much the clinicians' as this one's.
    other = enclosing_workspace(folder)
    if other is not None and other != root and not folder.is_relative_to(other / "predictions"):
        raise BadInputError(
            f"is inside another workspace, {other}, outside its predictions/; "
            "predictions never go into a folder a workspace owns",
            given,
        )
    scans = {
        Path(row["image_path"]).resolve(): row["case_id"] for row in workspace.registry.cases()
    }
    suffixes = ("", "_uncertainty") if uncertainty else ("",)
    for case_id in case_ids or []:
        for suffix in suffixes:
            target = (folder / f"{case_id}{suffix}.nii.gz").resolve()
            if target in scans:
                raise BadInputError(
                    f"holds the scan of case {scans[target]!r}: the prediction of {case_id} "
                    "would overwrite it; choose another folder",
                    given,
                )
    return folder


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
        out_dir: output folder, outside the workspace or under its ``predictions/``
            (:func:`check_out_dir`); None: ``<workspace>/predictions/<version>``.
        version: model version; None: the current one.
        device: ``auto``, ``cpu``, ``cuda``...
        uncertainty: also write the entropy maps.
        progress: progress reporter.
        views: test-time views (1 to 8, :data:`~assft.models.inference.VIEW_FLIPS`).

    Returns:
        ``{"model_version", "device", "has_head", "out_dir", "predictions": [...],
        "seconds"}`` with the per-case rows of :meth:`Predictor.predict_to_files`.

    Raises:
        BadInputError: neither or both of ``case`` and ``all_cases``, an unknown case, a bad
            version, an empty workspace, an output folder the workspace owns.
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
    if out_dir is not None:  # before the model loads: a refused folder costs nothing
        check_out_dir(workspace, out_dir, case_ids, uncertainty=uncertainty)
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

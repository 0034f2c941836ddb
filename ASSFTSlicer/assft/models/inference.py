"""One pass per test-time view: probabilities, embeddings and BatchNorm statistics together.

The metrics of a case come from the same sliding-window forward passes that predict it
(method.md, "One pass per view"); a case's probability maps are reduced to its scores and freed
before the next case is read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from assft.metrics import SegmentationDifficulty, segmentation_difficulty, voxel_entropy
from assft.metrics.uncertainty import predicted_foreground
from assft.runtime import cancellation

if TYPE_CHECKING:
    from assft.models.loading import LoadedModel

# Spatial dims of a (B, C, X, Y, Z) tensor flipped by each test-time view: the identity and
# one flip per axis (the method's views: ranking and fine-tuning take at most these four), then
# the flips of two and three axes (prediction only: all eight are nnU-Net's test-time mirroring).
VIEW_FLIPS: tuple[tuple[int, ...], ...] = (
    (),
    (2,),
    (3,),
    (4,),
    (2, 3),
    (2, 4),
    (3, 4),
    (2, 3, 4),
)


@dataclass
class CaseInference:
    """What one case's forward passes give.

    Attributes:
        difficulty: ASD and the other uncertainty summaries.
        embedding: the L2-normalised embedding z (mean over windows and views).
        batchnorm: per encoder BatchNorm layer, the per-channel (mean, var) of its input.
        probabilities: view-averaged probabilities (C, X, Y, Z), only when asked for.
        entropy: voxel entropy (X, Y, Z), only when probabilities are asked for.
        view_entropy: per view, the mean entropy of that view's own prediction over the voxels
            it predicts as foreground (the whole scan where it predicts none).
        view_energy: per view, the mean free energy -logsumexp(logits) over the same voxels.
    """

    difficulty: SegmentationDifficulty
    embedding: np.ndarray
    batchnorm: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    probabilities: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    view_entropy: list[float] = field(default_factory=list)
    view_energy: list[float] = field(default_factory=list)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[object]:
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def _cancellable(predict: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``predict`` with a safe point before each batch of windows: a cancel is answered inside
    one case, however many windows its preset makes."""

    def predict_windows(windows: torch.Tensor) -> torch.Tensor:
        cancellation.check()
        return predict(windows)

    return predict_windows


def sliding_window_probabilities(
    model: LoadedModel, tensor: torch.Tensor, flips: tuple[int, ...] = ()
) -> torch.Tensor:
    """Softmax probabilities of one view, flipped back: (C, X, Y, Z) float32 on the device."""
    return sliding_window_outputs(model, tensor, flips)[0]


def sliding_window_outputs(
    model: LoadedModel, tensor: torch.Tensor, flips: tuple[int, ...] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """One view's softmax probabilities (C, X, Y, Z) and free energy -logsumexp(logits)
    (X, Y, Z), flipped back, float32 on the device (Liu et al., "Energy-based
    out-of-distribution detection", NeurIPS 2020)."""
    preset = model.preset
    x = tensor[None].to(model.device)
    if flips:
        x = torch.flip(x, flips)
    with torch.inference_mode(), _autocast(model.device):
        logits = sliding_window_inference(
            x,
            roi_size=tuple(preset.patch_size),
            sw_batch_size=preset.sw_batch_size,
            predictor=_cancellable(model.predict_logits),
            overlap=preset.overlap,
            mode="gaussian",
        )
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"sliding-window inference gave {type(logits).__name__}, not a tensor")
    probs = torch.softmax(logits.float(), dim=1)
    energy = -torch.logsumexp(logits.float(), dim=1)
    if flips:
        probs = torch.flip(probs, flips)
        energy = torch.flip(energy, [axis - 1 for axis in flips])
    return probs[0], energy[0]


def infer_case(
    model: LoadedModel,
    tensor: torch.Tensor,
    *,
    views: int = 4,
    tau: float = 0.5,
    radius: int = 2,
    batchnorm: bool = True,
    keep_probabilities: bool = False,
) -> CaseInference:
    """Test-time-augmented inference of one case with its metrics from the same passes.

    Args:
        model: a :class:`assft.models.LoadedModel`.
        tensor: the case on the model grid, (1, X, Y, Z).
        views: test-time views (identity, then flips of x, y, z).
        tau: ASD's ROI threshold.
        radius: ASD's ROI dilation in voxels.
        batchnorm: collect the encoder's BatchNorm input statistics.
        keep_probabilities: return the averaged probabilities and the entropy map too.
    """
    probs_sum: torch.Tensor | None = None
    view_foreground: torch.Tensor | None = None
    with model.capture_features(
        embedding=True, batchnorm=batchnorm and model.has_batchnorm
    ) as capture:
        view_entropy: list[float] = []
        view_energy: list[float] = []
        for flips in VIEW_FLIPS[:views]:
            probs, energy = sliding_window_outputs(model, tensor, flips)
            foreground = predicted_foreground(probs)
            where = foreground if bool(foreground.any()) else torch.ones_like(foreground)
            view_entropy.append(float(voxel_entropy(probs)[where].mean()))
            view_energy.append(float(energy[where].mean()))
            del energy
            view_foreground = (
                foreground if view_foreground is None else view_foreground | foreground
            )
            probs_sum = probs if probs_sum is None else probs_sum.add_(probs)
            del probs
        embedding = capture.embedding()
        stats = capture.batchnorm_statistics() if batchnorm and model.has_batchnorm else []
    assert probs_sum is not None
    probs_mean = probs_sum.div_(views)
    entropy = voxel_entropy(probs_mean)
    difficulty = segmentation_difficulty(
        probs_mean, view_foreground, tau=tau, radius=radius, entropy=entropy
    )
    return CaseInference(
        difficulty=difficulty,
        embedding=embedding,
        batchnorm=stats,
        probabilities=probs_mean if keep_probabilities else None,
        entropy=entropy if keep_probabilities else None,
        view_entropy=view_entropy,
        view_energy=view_energy,
    )


def epistemic_uncertainty(
    model: LoadedModel,
    tensor: torch.Tensor,
    *,
    samples: int = 5,
    dropout: float = 0.2,
    seed: int = 0,
) -> tuple[float, bool]:
    """MC-dropout mean predictive entropy of a case (the `epistemic` baseline).

    Returns:
        The mean over voxels of the entropy of the MC-averaged probabilities, and whether
        dropout had to be injected because the network has none.
    """
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with model.mc_dropout(dropout) as injected:
            total: torch.Tensor | None = None
            for _ in range(samples):
                probs = sliding_window_probabilities(model, tensor)
                total = probs if total is None else total.add_(probs)
        assert total is not None
        return float(voxel_entropy(total / samples).mean()), bool(injected)
    finally:
        torch.random.set_rng_state(generator_state)

"""Accumulating a case's embedding and BatchNorm input statistics during inference.

Sliding-window inference calls the network once per batch of windows. While a
:class:`FeatureCapture` is active, every call adds, on the device and in float64:

- the global-average-pooled embedding-layer output of each window (a sum and a count), and
- for every BatchNorm layer of the encoder, the per-channel mean and spread of its *input*
  (what the layer normalises), merged across calls with Chan et al.'s parallel update
  ("Updating formulae and a pairwise algorithm for computing sample variances", 1979) rather
  than raw sums of squares, which lose the variance to cancellation when mean >> spread.

Nothing is copied to the host until :meth:`FeatureCapture.embedding` or
:meth:`FeatureCapture.batchnorm_statistics` is called.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

import numpy as np
import torch


class _Moments:
    """Running per-channel count, mean and sum of squared deviations (float64, on device)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        x = x.detach()
        if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        dims = [0, *range(2, x.dim())]
        count = x.numel() // max(1, x.shape[1])
        if count == 0:
            return
        var, mean = torch.var_mean(x, dim=dims, correction=0)
        mean = mean.double()
        m2 = var.double() * count
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = count, mean, m2
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + delta.square() * (self.count * count / total)
        self.count = total

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        if self.mean is None or self.m2 is None:
            raise RuntimeError("no BatchNorm input was seen while capturing")
        variance = (self.m2 / self.count).clamp_min(0.0)
        return self.mean.cpu().numpy(), variance.cpu().numpy()


class FeatureCapture:
    """Collects the embedding and BatchNorm statistics of the windows run while active.

    Use it as a context manager around the inference of one case (obtained from
    :meth:`assft.models.LoadedModel.capture_features`)::

        with model.capture_features() as capture:
            sliding_window_inference(image, patch, batch, model.predict_logits)
        z = capture.embedding()
        statistics = capture.batchnorm_statistics()

    The results stay readable after the ``with`` block; :meth:`reset` starts over.
    """

    def __init__(
        self,
        *,
        embedding: bool,
        batchnorm: bool,
        batchnorm_layers: int,
        attach: Callable[[FeatureCapture], None],
        detach: Callable[[FeatureCapture], None],
    ) -> None:
        self.wants_embedding = embedding
        self.wants_batchnorm = batchnorm and batchnorm_layers > 0
        self._layers = batchnorm_layers if self.wants_batchnorm else 0
        self._attach = attach
        self._detach = detach
        self._active = False
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._embedding_sum: torch.Tensor | None = None
        self._windows = 0
        self._moments = [_Moments() for _ in range(self._layers)]

    @property
    def windows(self) -> int:
        """Number of windows whose embedding was accumulated."""
        return self._windows

    def __enter__(self) -> FeatureCapture:
        if self._active:
            raise RuntimeError("this FeatureCapture is already active")
        self._attach(self)
        self._active = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._active = False
        self._detach(self)

    def add_embedding(self, features: torch.Tensor) -> None:
        """Accumulate the global-average-pooled feature map of each window ``[B, C, ...]``."""
        pooled = features.detach().flatten(2).mean(dim=2).double().sum(dim=0)
        self._embedding_sum = (
            pooled if self._embedding_sum is None else self._embedding_sum + pooled
        )
        self._windows += int(features.shape[0])

    def add_batchnorm_input(self, layer: int, x: torch.Tensor) -> None:
        """Accumulate the input of the encoder's ``layer``-th BatchNorm layer."""
        self._moments[layer].add(x)

    def embedding(self) -> np.ndarray:
        """The mean pooled embedding over windows, L2-normalised (float64, shape ``[D]``).

        Raises:
            RuntimeError: no window was run while capturing, or embeddings were not requested.
        """
        if not self.wants_embedding:
            raise RuntimeError("this capture was opened with embedding=False")
        if self._embedding_sum is None or self._windows == 0:
            raise RuntimeError("no window was run while capturing")
        mean = self._embedding_sum / self._windows
        normalised = mean / mean.norm().clamp_min(1e-12)
        return normalised.cpu().numpy()

    def batchnorm_statistics(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per encoder BatchNorm layer, the per-channel mean and (population) variance of its input.

        Same layer order as :meth:`assft.models.LoadedModel.running_statistics`; empty when
        the encoder has no BatchNorm layer or statistics were not requested.
        """
        return [moments.result() for moments in self._moments]

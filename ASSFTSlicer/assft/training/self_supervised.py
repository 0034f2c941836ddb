"""Self-supervised pretraining of an encoder without labels (the foundation-model setting).

The objective is the one MONAI's SwinUNETR pretraining uses (Tang et al., "Self-Supervised
Pre-Training of Swin Transformers for 3D Medical Image Analysis", CVPR 2022), on a network of the
project's own kind (a MONAI UNet with BatchNorm) instead of a Swin transformer:

- **masked-volume inpainting**: cubes of each patch are dropped and others shuffled (MONAI's
  ``RandCoarseDropout`` and ``RandCoarseShuffle``, as in MONAI's pretraining tutorial); the
  network, with one output channel, reconstructs the whole patch (L1);
- **rotation prediction**: each patch is turned by 0, 90, 180 or 270 degrees in one plane and a
  linear head on the encoder's pooled deepest features names the turn (cross-entropy);
- **contrastive coding**: two such views of each patch are pulled together and the other
  patches of the batch pushed away, on a projection of the same pooled features (MONAI's
  ``ContrastiveLoss``, NT-Xent).

The loss is their sum, weights 1 each as in the paper. The heads of the objective (the
reconstruction output layer, the rotation and projection heads) are thrown away afterwards:
what remains is an encoder (and a decoder trained to inpaint) with no segmentation head.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from monai.losses import ContrastiveLoss
from monai.transforms import Compose, RandCoarseDropout, RandCoarseShuffle

ROTATIONS = 4
"""Quarter turns a patch may be given (0, 90, 180, 270 degrees)."""


def masking(patch: int, seed: int) -> Compose:
    """The inpainting corruption of one ``(1, p, p, p)`` patch: six dropped cubes of an eighth
    to three eighths of the patch's side filled with noise, then, four times in five, ten small
    cubes whose voxels are shuffled (the tutorial's proportions for a 96^3 patch, scaled)."""
    side = max(2, patch // 8)
    transform = Compose(
        [
            RandCoarseDropout(holes=6, spatial_size=side, max_spatial_size=3 * side, prob=1.0),
            RandCoarseShuffle(holes=10, spatial_size=side, max_spatial_size=2 * side, prob=0.8),
        ]
    )
    transform.set_random_state(seed=seed)
    return transform


def rotate(patches: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Each ``(C, X, Y, Z)`` patch of ``patches`` turned ``turns[i]`` quarter turns in the
    first two spatial axes (cubes stay cubes)."""
    return torch.stack(
        [torch.rot90(p, int(k), dims=(1, 2)) for p, k in zip(patches, turns, strict=True)]
    )


@dataclass
class Views:
    """Two corrupted, turned views of each patch, and what the objective must recover."""

    inputs: torch.Tensor
    """``(2B, 1, p, p, p)``: the first views of every patch, then the second ones."""
    targets: torch.Tensor
    """The same patches turned but not corrupted (the inpainting target)."""
    turns: torch.Tensor
    """``(2B,)`` quarter turns of each view (the rotation target)."""

    def to(self, device: torch.device) -> Views:
        return Views(self.inputs.to(device), self.targets.to(device), self.turns.to(device))


def make_views(patches: torch.Tensor, rng: np.random.Generator, corrupt: Compose) -> Views:
    """Two views of each of ``patches`` ``(B, 1, p, p, p)``: a random turn each, then the
    inpainting corruption."""
    both = torch.cat([patches, patches])
    turns = torch.as_tensor(rng.integers(ROTATIONS, size=both.shape[0]), dtype=torch.long)
    targets = rotate(both, turns)
    inputs = torch.stack([torch.as_tensor(corrupt(t.clone())) for t in targets]).float()
    return Views(inputs=inputs, targets=targets, turns=turns)


class ObjectiveHeads(torch.nn.Module):
    """The rotation and contrastive heads over the encoder's pooled deepest features."""

    def __init__(self, channels: int, projection: int = 128) -> None:
        super().__init__()
        self.rotation = torch.nn.Linear(channels, ROTATIONS)
        self.projection = torch.nn.Sequential(
            torch.nn.Linear(channels, channels),
            torch.nn.ReLU(),
            torch.nn.Linear(channels, projection),
        )

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rotation(pooled), self.projection(pooled)


class SelfSupervisedObjective:
    """Inpainting + rotation + contrastive loss of a network with one output channel.

    ``embedding_layer`` names the module whose output is the encoder's deepest feature map (the
    preset's ``embedding_layer``); a forward hook reads it.
    """

    def __init__(
        self, network: torch.nn.Module, embedding_layer: str, channels: int, temperature: float
    ) -> None:
        self.network = network
        self.heads = ObjectiveHeads(channels)
        self.contrastive = ContrastiveLoss(temperature=temperature)
        self._features: torch.Tensor | None = None
        layer = dict(network.named_modules())[embedding_layer]
        layer.register_forward_hook(self._keep)

    def _keep(self, _module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> None:
        self._features = output

    def parameters(self) -> list[torch.nn.Parameter]:
        return [*self.network.parameters(), *self.heads.parameters()]

    def train(self) -> None:
        self.network.train()
        self.heads.train()

    def losses(self, views: Views) -> dict[str, torch.Tensor]:
        """Each part of the loss on ``views``, their sum (``loss``), and the share of views whose
        turn the rotation head names (``rotation_accuracy``, not differentiable)."""
        reconstruction = self.network(views.inputs)
        assert self._features is not None
        pooled = self._features.flatten(2).mean(dim=2)
        rotation_logits, projected = self.heads(pooled)
        half = views.inputs.shape[0] // 2
        parts = {
            "inpainting": torch.nn.functional.l1_loss(reconstruction, views.targets),
            "rotation": torch.nn.functional.cross_entropy(rotation_logits, views.turns),
            "contrastive": self.contrastive(projected[:half], projected[half:]),
        }
        parts["loss"] = parts["inpainting"] + parts["rotation"] + parts["contrastive"]
        parts["rotation_accuracy"] = (rotation_logits.argmax(1) == views.turns).float().mean()
        return parts

    def evaluate(self, views: Views) -> dict[str, float]:
        """The parts of :meth:`losses` on ``views`` in evaluation mode (one forward pass)."""
        self.network.eval()
        self.heads.eval()
        with torch.no_grad():
            return {name: float(value) for name, value in self.losses(views).items()}

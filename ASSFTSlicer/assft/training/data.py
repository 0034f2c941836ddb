"""Training data: cases prepared once on the model grid (cached), patches, augmentation.

Every case is resampled and normalised once and cached as tensors, so a training step only
crops patches from memory and augments them: data loading never starves the model.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandAffined,
    RandBiasFieldd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandShiftIntensityd,
    RandSimulateLowResolutiond,
)

from assft.errors import BadInputError
from assft.io.atomic import load_torch_safely, save_torch_atomic
from assft.io.imaging import read_image, read_label
from assft.io.preprocessing import to_model_grid
from assft.models import ModelPreset
from assft.training.losses import IGNORE


@dataclass
class TrainingCase:
    """One case on the model grid.

    Attributes:
        case_id: the workspace's id.
        image: normalised intensities ``(1, X, Y, Z)`` float32, padded to at least the patch.
        target: class indices ``(X, Y, Z)`` int64 (``IGNORE`` in padding and unreliable voxels);
            None for an unlabeled case.
    """

    case_id: str
    image: torch.Tensor
    target: torch.Tensor | None = None
    _foreground: torch.Tensor | None = None

    @property
    def foreground(self) -> torch.Tensor:
        """Flat indices of the target's foreground voxels (computed once)."""
        if self._foreground is None:
            if self.target is None:
                self._foreground = torch.zeros(0, dtype=torch.long)
            else:
                self._foreground = torch.nonzero(self.target.flatten() > 0)[:, 0]
        return self._foreground

    def with_target(self, target: torch.Tensor) -> TrainingCase:
        return TrainingCase(self.case_id, self.image, target)


def label_to_classes(label: np.ndarray, label_values: list[int]) -> np.ndarray:
    """Map label values to channel indices (0 background, c for ``label_values[c-1]``)."""
    lookup = np.zeros(int(max([0, *label_values, int(label.max(initial=0))])) + 1, dtype=np.int64)
    for channel, value in enumerate(label_values, start=1):
        lookup[value] = channel
    return lookup[label.astype(np.int64)]


def pad_to_patch(
    image: torch.Tensor, target: torch.Tensor | None, patch: tuple[int, int, int]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pad (at the end of each axis) so every axis is at least the patch's size."""
    shape = image.shape[1:]
    pads: list[int] = []
    for size, want in reversed(list(zip(shape, patch, strict=True))):
        pads += [0, max(0, want - size)]
    if not any(pads):
        return image, target
    image = F.pad(image, pads, value=0.0)
    if target is not None:
        target = F.pad(target, pads, value=IGNORE)
    return image, target


class PreparedCases:
    """Cases on the model grid, cached in ``cache/training/`` keyed by their files and preset.

    The cache is recomputable: a file that cannot be loaded safely (damaged, or holding Python
    objects besides tensors) is discarded with a warning and the case is prepared again.
    """

    def __init__(
        self,
        folder: Path,
        preset: ModelPreset,
        label_values: list[int],
        patch: tuple[int, int, int],
    ) -> None:
        self.folder = folder
        self.preset = preset
        self.label_values = list(label_values)
        self.patch = patch

    def _key(self, image_path: Path, label_path: Path | None) -> str:
        parts: dict[str, Any] = {
            "preset": self.preset.to_dict(),
            "labels": self.label_values,
            "patch": self.patch,
        }
        for name, path in (("image", image_path), ("label", label_path)):
            if path is None:
                parts[name] = None
            elif path.is_dir():
                parts[name] = [
                    (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.iterdir())
                ]
            else:
                parts[name] = [str(path), path.stat().st_size, path.stat().st_mtime_ns]
        if label_path is not None:
            parts["label_sha256"] = hashlib.sha256(label_path.read_bytes()).hexdigest()
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[
            :32
        ]

    def load(self, case_id: str, image_path: Path, label_path: Path | None = None) -> TrainingCase:
        """The case on the model grid (from the cache when its files did not change)."""
        key = self._key(image_path, label_path)
        path = self.folder / f"{case_id}-{'l' if label_path else 'u'}.pt"
        stored = self._cached(path)
        if stored is not None and stored.get("key") == key:
            target = stored.get("target")
            return TrainingCase(case_id, stored["image"], target)
        case = self._prepare(case_id, image_path, label_path)
        payload = {"key": key, "image": case.image}
        if case.target is not None:
            payload["target"] = case.target
        save_torch_atomic(payload, path)
        return case

    @staticmethod
    def _cached(path: Path) -> dict[str, Any] | None:
        """A cache file's content, or None (a bad file is discarded with a warning)."""
        if not path.is_file():
            return None
        try:
            stored = load_torch_safely(path)
        except BadInputError as error:
            stored = None
            reason = str(error)
        else:
            reason = f"{path}: does not hold a prepared case"
            if isinstance(stored, dict) and isinstance(stored.get("image"), torch.Tensor):
                return stored
        warnings.warn(f"discarded a training cache file: {reason}; it is rebuilt", stacklevel=2)
        path.unlink(missing_ok=True)
        return None

    def _prepare(self, case_id: str, image_path: Path, label_path: Path | None) -> TrainingCase:
        pre = self.preset
        grid = to_model_grid(
            read_image(image_path),
            spacing=pre.spacing,
            orientation=pre.orientation,
            intensity=pre.intensity,
            source=image_path,
        )
        target = None
        if label_path is not None:
            label = read_label(label_path)
            on_grid = sitk.Resample(
                label,
                grid.reference,
                sitk.Transform(),
                sitk.sitkNearestNeighbor,
                0,
                label.GetPixelID(),
            )
            array = sitk.GetArrayViewFromImage(on_grid).transpose(2, 1, 0)
            undeclared = sorted(set(np.unique(array).tolist()) - {0, *self.label_values})
            if undeclared:
                raise BadInputError(f"holds undeclared label values {undeclared}", label_path)
            target = torch.as_tensor(
                np.ascontiguousarray(label_to_classes(array, self.label_values))
            )
        image, target = pad_to_patch(grid.tensor, target, self.patch)
        return TrainingCase(
            case_id, image.contiguous(), None if target is None else target.contiguous()
        )


def sample_patch(
    case: TrainingCase, patch: tuple[int, int, int], rng: np.random.Generator, *, foreground: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop one patch, centred on a random foreground voxel or on any voxel."""
    shape = case.image.shape[1:]
    centre: tuple[int, ...]
    if foreground and case.foreground.numel():
        flat = int(case.foreground[int(rng.integers(case.foreground.numel()))])
        centre = tuple(int(c) for c in np.unravel_index(flat, shape))
    else:
        centre = tuple(int(rng.integers(s)) for s in shape)
    start = [
        int(min(max(c - p // 2, 0), s - p)) for c, p, s in zip(centre, patch, shape, strict=True)
    ]
    region = tuple(slice(b, b + p) for b, p in zip(start, patch, strict=True))
    assert case.target is not None
    return case.image[(slice(None), *region)], case.target[region]


def make_augmentation(
    seed: int, flip_axes: Sequence[int] = (0, 1, 2), *, intensity: bool = False
) -> Compose:
    """Patch augmentation (MONAI dictionary transforms on ``image`` and ``label``).

    Spatial: a mirror along each of ``flip_axes`` (spatial axes 0..2; a brain is mirrored only
    left-right: mirroring it top-bottom makes anatomy no scan shows) and, one patch in five, a
    rotation and scaling.

    Intensity (``intensity``): nnU-Net's default ranges (Isensee et al., Nature Methods 2021,
    supplementary note 4), as MONAI's Auto3DSeg also draws them: Gaussian noise (variance up to
    0.1, p 0.1), Gaussian blur (sigma 0.5-1, p 0.2), brightness x0.75-1.25 (p 0.15), contrast
    x0.75-1.25 about the mean (p 0.15), low resolution (zoom 0.5-1, p 0.25), gamma 0.7-1.5 on the
    inverted image (p 0.1) and on the image (p 0.3), and MONAI's bias field (p 0.15). Without
    it: a small intensity scale and shift, as the demo model's first pretraining used.
    """
    keys = ("image", "label")
    transforms: list[Any] = [RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in flip_axes]
    transforms.append(
        RandAffined(
            keys,
            prob=0.2,
            rotate_range=(0.26, 0.26, 0.26),
            scale_range=(0.15, 0.15, 0.15),
            mode=("bilinear", "nearest"),
            padding_mode="zeros",
        )
    )
    if intensity:
        transforms += [
            RandGaussianNoised("image", prob=0.1, std=0.32),
            RandGaussianSmoothd(
                "image", prob=0.2, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0)
            ),
            RandScaleIntensityd("image", factors=0.25, prob=0.15),
            RandScaleIntensityFixedMeand("image", factors=0.25, prob=0.15, preserve_range=True),
            RandSimulateLowResolutiond("image", prob=0.25, zoom_range=(0.5, 1.0)),
            RandAdjustContrastd(
                "image", prob=0.1, gamma=(0.7, 1.5), invert_image=True, retain_stats=True
            ),
            RandAdjustContrastd("image", prob=0.3, gamma=(0.7, 1.5), retain_stats=True),
            RandBiasFieldd("image", prob=0.15),
        ]
    else:
        transforms += [
            RandScaleIntensityd("image", factors=0.1, prob=0.5),
            RandShiftIntensityd("image", offsets=0.1, prob=0.5),
        ]
    transform = Compose(transforms)
    transform.set_random_state(seed=seed)
    return transform


def step_seed(seed: int, stage: int, step: int) -> int:
    """A seed for one step: resuming at a step replays exactly the same randomness."""
    return int(np.random.SeedSequence([seed, stage, step]).generate_state(1)[0])


def make_batch(
    cases: list[TrainingCase],
    count: int,
    patch: tuple[int, int, int],
    rng: np.random.Generator,
    *,
    foreground_ratio: float,
    augment: Compose | None,
    start: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` augmented patches from ``cases``: images ``(B, 1, ...)``, targets ``(B, ...)``.

    At the default ratio the centres alternate foreground / background from patch ``start``
    on (a foreground centre first when ``start`` is even).
    """
    images, targets = [], []
    for i in range(count):
        case = cases[int(rng.integers(len(cases)))]
        # Alternate foreground / background centres (1:1 at the default ratio).
        foreground = (
            ((start + i) % 2 == 0) if foreground_ratio == 0.5 else rng.random() < foreground_ratio
        )
        image, target = sample_patch(case, patch, rng, foreground=foreground)
        if augment is not None:
            out = augment({"image": image, "label": target[None].float()})
            image, target = (
                torch.as_tensor(out["image"]),
                torch.as_tensor(out["label"])[0].round().long(),
            )
        images.append(torch.as_tensor(image, dtype=torch.float32))
        targets.append(torch.as_tensor(target, dtype=torch.long))
    return torch.stack(images), torch.stack(targets)

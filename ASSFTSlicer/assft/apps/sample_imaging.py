"""How a sample case is imaged: its contrast, resolution, motion, bias field and noise.

An :class:`Imaging` says how one case is acquired, from its site's protocol or (source, mixed
pool) its drawn acquisition and shifts (:func:`imaging_for`); :func:`contrast_map` maps the
template's T1 and tissue fractions onto the case's contrast, :func:`acquire` adds the
resolution, head motion, bias field and Rician noise. :func:`smooth_field` and
:func:`rotation` are the random smooth fields and rotations that deform a case as well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from assft.apps.mni_template import gaussian_blur
from assft.apps.sample_plans import CasePlan
from assft.apps.sites import ACQUISITIONS, Site

__all__ = ["Imaging", "acquire", "contrast_map", "imaging_for", "rotation", "smooth_field"]

_MIXTURE_SHARPNESS = 4.0  # see _tissue_mixture


# Random smooth fields ----------------------------------------------------------------------


def smooth_field(
    rng: np.random.Generator, unit: np.ndarray, *, modes: int = 8, max_cycles: float = 2.0
) -> np.ndarray:
    """A smooth random field on points ``unit`` (..., 3) in [-0.5, 0.5]: unit RMS, zero mean."""
    frequencies = rng.uniform(-max_cycles, max_cycles, size=(modes, 3))
    phases = rng.uniform(0, 2 * np.pi, size=modes)
    amplitudes = rng.normal(size=modes) / np.sqrt(1.0 + (frequencies**2).sum(1))
    field_ = np.zeros(unit.shape[:-1], dtype=np.float64)
    for f, p, a in zip(frequencies, phases, amplitudes, strict=True):
        field_ += a * np.sin(2 * np.pi * (unit @ f) + p)
    field_ -= field_.mean()
    rms = float(np.sqrt((field_**2).mean()))
    return (field_ / rms if rms > 0 else field_).astype(np.float32)


def rotation(angles_deg: np.ndarray) -> np.ndarray:
    """The rotation by ``angles_deg`` about x, then y, then z (acts on (x, y, z) points)."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


# How a case is imaged ----------------------------------------------------------------------


@dataclass(frozen=True)
class Imaging:
    """How one case is imaged, from its site or (mixed pool) its shifts, in this order:

    the template's T1 mapped to ``tissue_levels`` (CSF, GM, WM; None: the T1 levels) times the
    case's jitter, the grey/white then CSF/grey contrast reduced to the ``*_kept`` fractions,
    a ``gamma`` (or, with ``tissue_mixture``, the levels mixed by the tissue fractions);
    lesions set to ``lesion_level`` (None: made T1-hypointense before the map); each
    ``resampling`` (z, y, x factors: slice profile, down and back); a bias field
    exp(``bias_amplitude`` B); Rician noise of ``noise_sigma`` times the mean brain intensity;
    stored in ``orientation`` (None: the template's).
    """

    tissue_levels: tuple[float, float, float] | None = None
    grey_white_kept: float | None = None
    csf_grey_kept: float | None = None
    gamma: float = 1.0
    tissue_mixture: bool = False
    lesion_level: float | None = None
    resampling: tuple[tuple[float, float, float], ...] = ()
    bias_amplitude: float = 0.0
    noise_sigma: float = 0.0
    orientation: str | None = None


def _shift_imaging(plan: CasePlan) -> Imaging:
    """The imaging of a source or mixed-pool case: its drawn acquisition plus its shifts."""
    levels = None
    grey_white = csf_grey = None
    gamma = 1.0
    resampling: list[tuple[float, float, float]] = []
    for shift in plan.shifts:
        if shift["kind"] == "contrast":
            grey_white = shift["grey_white_contrast_kept"]
            csf_grey = shift["csf_grey_contrast_kept"]
            gamma = shift["gamma"]
        elif shift["kind"] == "t2like":
            levels = (shift["levels"]["csf"], shift["levels"]["gm"], shift["levels"]["wm"])
        elif shift["kind"] == "thick_slices":
            factors = [1.0, 1.0, 1.0]
            factors["zyx".index(shift["axis"])] = shift["thickness_factor"]
            resampling.append((factors[0], factors[1], factors[2]))
        elif shift["kind"] == "low_resolution":
            resampling.append((shift["resolution_factor"],) * 3)
    return Imaging(
        tissue_levels=levels,
        grey_white_kept=grey_white,
        csf_grey_kept=csf_grey,
        gamma=gamma,
        resampling=tuple(resampling),
        bias_amplitude=plan.acquisition["bias_amplitude"]
        + sum(s["amplitude"] for s in plan.shifts if s["kind"] == "bias"),
        noise_sigma=plan.acquisition["noise_sigma"]
        + sum(s["sigma"] for s in plan.shifts if s["kind"] == "noise"),
    )


def _site_imaging(site: Site, plan: CasePlan, spacing: float) -> Imaging:
    """The imaging of a named site's case: the site's protocol at the case's jittered levels."""
    coarser = max(1.0, site.resolution_mm / spacing)  # no blur where the grid is as coarse
    factors = [coarser] * 3
    factors["zyx".index(site.slice_axis)] *= site.thickness_factor
    resampling = (factors[0], factors[1], factors[2])
    return Imaging(
        tissue_levels=site.tissue_levels,
        grey_white_kept=site.grey_white_kept,
        csf_grey_kept=site.csf_grey_kept,
        tissue_mixture=site.tissue_mixture,
        lesion_level=site.lesion_level,
        resampling=(resampling,) if max(resampling) > 1.0 else (),
        bias_amplitude=plan.acquisition["bias_amplitude"],
        noise_sigma=plan.acquisition["noise_sigma"],
        orientation=site.orientation,
    )


def imaging_for(plan: CasePlan, spacing: float) -> Imaging:
    """How the case of ``plan`` is imaged at ``spacing``: its protocol, or (source, mixed pool)
    its drawn acquisition and shifts."""
    if plan.protocol is None:
        return _shift_imaging(plan)
    return _site_imaging(ACQUISITIONS[plan.protocol], plan, spacing)


def _tissue_targets(imaging: Imaging, jitter: np.ndarray, levels: dict[str, float]) -> np.ndarray:
    """The case's CSF, GM and WM intensities: the imaging's levels, jittered, contrast reduced."""
    base = (levels["csf"], levels["gm"], levels["wm"])
    targets = np.array(base if imaging.tissue_levels is None else imaging.tissue_levels) * jitter
    if imaging.grey_white_kept is not None and imaging.csf_grey_kept is not None:
        tc, tg, tw = targets
        tg = tw - (tw - tg) * imaging.grey_white_kept
        tc = tg - (tg - tc) * imaging.csf_grey_kept
        targets = np.array([tc, tg, tw])
    return targets


def _tissue_mixture(fractions: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Tissue levels (CSF, GM, WM ``targets``) mixed by the GM, WM, CSF ``fractions``.

    The template's probability maps average 152 brains: they are softer than one subject's
    tissue, and mixed as they are, partial volume would wash out a contrast whose brightest
    tissue lies between the others (GM in FLAIR). The fractions (and the background's) are
    sharpened to the power ``_MIXTURE_SHARPNESS`` and renormalised: the dominant tissue, which
    is the label, sets most of a voxel's intensity.
    """
    gm, wm, csf = fractions
    background = np.clip(1.0 - gm - wm - csf, 0.0, None)
    weights = np.stack([background, csf, gm, wm]) ** _MIXTURE_SHARPNESS
    weights /= np.maximum(weights.sum(0), 1e-12)
    return np.tensordot(targets, weights[1:], axes=1)


def contrast_map(
    values: np.ndarray, imaging: Imaging, jitter: np.ndarray, levels: dict[str, float]
) -> np.ndarray:
    """The case's contrast from the template's T1 and tissue fractions ``values`` (4, ...).

    T1 and T2 families map the T1 intensity piecewise linearly onto the tissue levels (monotone
    either way). ``tissue_mixture`` contrasts (FLAIR: GM > WM > CSF, not monotone in T1) mix the
    tissue levels by the tissue fractions instead (see :func:`_tissue_mixture`).
    """
    t1 = values[0]
    c, g, w = levels["csf"], levels["gm"], levels["wm"]
    targets = _tissue_targets(imaging, jitter, levels)
    if imaging.tissue_mixture:
        return _tissue_mixture(values[1:], targets)
    gamma = imaging.gamma
    xs = np.array([0.0, c, g, w])
    ys = np.array([0.0, *targets])
    slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    mapped = np.interp(t1, xs, ys)
    above = t1 > w
    mapped[above] = ys[-1] + slope * (t1[above] - w)
    mapped = np.clip(mapped, 0.0, None)
    if gamma != 1.0:
        top = max(float(targets.max()), 1e-6)
        mapped = top * (mapped / top) ** gamma
    return mapped


def _resample_axes(image: np.ndarray, factors: tuple[float, float, float]) -> np.ndarray:
    """Blur to a coarser resolution (factor per z, y, x axis), sample, interpolate back."""
    sigma_z, sigma_y, sigma_x = (math.sqrt(max(f * f - 1.0, 0.0)) / 2.355 for f in factors)
    tensor = torch.from_numpy(image.astype(np.float32))[None]
    blurred = gaussian_blur(tensor, (sigma_z, sigma_y, sigma_x))[None]
    shape = image.shape
    coarse = [max(2, int(round(s / f))) for s, f in zip(shape, factors, strict=True)]
    low = F.interpolate(blurred, size=coarse, mode="trilinear", align_corners=True)
    back = F.interpolate(low, size=list(shape), mode="trilinear", align_corners=True)
    return back[0, 0].numpy().astype(np.float64)


def _moved(image: np.ndarray, move: dict[str, Any], spacing: float) -> np.ndarray:
    """``image`` (z, y, x) with the head rotated about the field of view's centre and shifted."""
    matrix = rotation(np.array(move["rotation_deg"]))  # acts on (x, y, z)
    shift = np.array(move["translation_mm"]) / (image.shape[2] * spacing / 2.0)
    # affine_grid maps output to input coordinates (x, y, z order, normalised to [-1, 1]).
    theta = torch.from_numpy(np.concatenate([matrix.T, -(matrix.T @ shift)[:, None]], 1))
    volume = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    grid = F.affine_grid(theta[None].float(), list(volume.shape), align_corners=False)
    moved = F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return moved[0, 0].numpy().astype(np.float64)


def _motion(image: np.ndarray, artefact: dict[str, Any], spacing: float) -> np.ndarray:
    """The magnitude image whose phase-encoding lines (y) after each move saw the moved head
    (see ``sample_plans._draw_motion``)."""
    kspace = np.fft.fftshift(np.fft.fftn(image), axes=(0, 1, 2))
    acquired_at = np.arange(image.shape[1]) / image.shape[1]  # lines in order, -ky to +ky
    for move in artefact["moves"]:  # in time order: a later move replaces the later lines
        later = acquired_at >= move["after_fraction_of_lines"]
        moved = np.fft.fftshift(np.fft.fftn(_moved(image, move, spacing)), axes=(0, 1, 2))
        kspace[:, later, :] = moved[:, later, :]
    return np.abs(np.fft.ifftn(np.fft.ifftshift(kspace, axes=(0, 1, 2))))


def acquire(
    image: np.ndarray,
    imaging: Imaging,
    unit: np.ndarray,
    brain: np.ndarray,
    rng: np.random.Generator,
    *,
    artefact: dict[str, Any] | None = None,
    spacing: float = 3.0,
) -> np.ndarray:
    """Resolution, motion (an ``artefact``), bias field and Rician noise (before the case's
    global scale). The coil's bias field and the noise do not move with the head."""
    for factors in imaging.resampling:
        image = _resample_axes(image, factors)
    if artefact is not None and artefact["kind"] == "motion":
        image = _motion(image, artefact, spacing)
    bias = smooth_field(rng, unit, modes=6, max_cycles=1.0)
    bias /= max(float(np.abs(bias[brain]).max()) if brain.any() else 1.0, 1e-6)
    image = image * np.exp(imaging.bias_amplitude * bias)
    reference = float(image[brain].mean()) if brain.any() else 1.0
    sigma = reference * imaging.noise_sigma
    real = image + rng.normal(0.0, sigma, image.shape)
    imaginary = rng.normal(0.0, sigma, image.shape)
    return np.sqrt(real**2 + imaginary**2)  # Rician magnitude

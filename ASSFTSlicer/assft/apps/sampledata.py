"""Sample data from real anatomy: the MNI ICBM152 2009a template, deformed and re-acquired.

The T1-weighted template and its grey/white-matter probability maps ship inside nilearn's
wheel (``pip install "assft[demo]"`` installs it; ``pip install --no-deps nilearn`` is enough:
only its data files are read, nilearn is never imported). From them this module builds
labelled volumes on one 192 mm field of view (64^3 voxels at the default 3 mm):

* labels: 0 background (outside the skull-stripped template's brain), 1 grey matter,
  2 white matter, 3 cerebrospinal fluid (inside the brain: ventricles, cisterns, sulci), the
  argmax of the anti-aliased tissue probabilities, so a label always matches its image; with
  ``brain_mask`` a single label 1 = brain (their union);
* a *source* domain (what the demo model is pretrained on): mild affine and elastic
  deformations, clean T1 contrast, weak bias and noise;
* named *target sites* (``assft.apps.sites``), each one coherent acquisition as a lab's
  scanner gives it (``t2``, ``lowfield``, ``flair``: a contrast family, a resolution and slice
  thickness, a noise level, a bias field, an orientation, with a small jitter per case), whose
  cases differ as subjects do: target-range deformations, atrophy (grey matter thinned from the
  pial side and ventricles enlarged, both turned into CSF) and white-matter lesions (labelled as
  the white matter they lie in) in some subjects;
* the ``mixed`` site, the heterogeneous target pool of earlier releases (folder ``target``):
  stronger deformations, the same anatomical variation, acquisition shifts of graded severity
  (``contrast``, ``t2like`` inversion, ``bias`` field, Rician ``noise``, anisotropic
  ``thick_slices``, isotropic ``low_resolution``), one or two per case; and one case in five
  acquired and deformed like the source (``near_source``).

Every case is drawn from its own seed ``SeedSequence([seed, code, index])`` (a code per domain:
source 0, mixed 1, each site its own): a case does not depend on how many others are made, and
the whole set is the same for a seed on any machine.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from assft.apps.mni_template import Template, gaussian_blur, template_at, template_source
from assft.apps.sites import (
    ACQUISITIONS,
    MIXED,
    SITE_NAMES,
    SITES,
    SOURCE_CODE,
    Archive,
    Site,
    parse_sites,
    site_folder,
)
from assft.errors import BadInputError
from assft.io.imaging import write_image_atomic
from assft.workspace.files import write_text_atomic

if TYPE_CHECKING:
    from assft.runtime.progress import Progress

__all__ = [
    "ACQUISITIONS",
    "BRAIN_LABEL_NAMES",
    "LABEL_NAMES",
    "SHIFT_KINDS",
    "SITES",
    "SITE_NAMES",
    "SampleCase",
    "Site",
    "make_case",
    "parse_sites",
    "site_folder",
    "write_sample_data",
]

LABEL_NAMES = {1: "grey matter", 2: "white matter", 3: "cerebrospinal fluid"}
BRAIN_LABEL_NAMES = {1: "brain"}

FOV_MM = 192.0
"""Edge of the cubic field of view, centred on the template brain's bounding box."""

SHIFT_KINDS = ("contrast", "t2like", "bias", "noise", "thick_slices", "low_resolution")
LEVELS = {1: ("mild", 1.0 / 3.0), 2: ("moderate", 2.0 / 3.0), 3: ("severe", 1.0)}
_EXCLUSIVE = ({"contrast", "t2like"}, {"thick_slices", "low_resolution"})
_NEAR_SOURCE_EVERY = 5
_MIXTURE_SHARPNESS = 4.0  # see _tissue_mixture


# Random smooth fields ----------------------------------------------------------------------


def _smooth_field(
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


def _rotation(angles_deg: np.ndarray) -> np.ndarray:
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


# One case ----------------------------------------------------------------------------------


@dataclass
class CasePlan:
    """What is done to one case (drawn from its seed)."""

    domain: str  # source or target
    index: int
    near_source: bool
    deformation: dict[str, Any]
    shifts: list[dict[str, Any]] = field(default_factory=list)
    atrophy: dict[str, Any] | None = None
    lesions: dict[str, Any] | None = None
    acquisition: dict[str, Any] = field(default_factory=dict)
    site: str = "source"  # source, or the target site: mixed (the heterogeneous pool), t2, ...
    protocol: str | None = None  # the acquisition (ACQUISITIONS) of a site's or archive's case
    stratum: str | None = None  # an archive's case: its stratum (acquisition, + artefact)
    artefact: dict[str, Any] | None = None  # an artefact added to the acquisition (motion)


def _site(domain: str) -> Site | Archive | None:
    """The target site or archive of ``domain`` (``target`` is ``mixed``); None for the source.

    Raises:
        BadInputError: an unknown domain.
    """
    if domain == "source":
        return None
    site = SITES.get(MIXED if domain == "target" else domain)
    if site is None:
        raise BadInputError(
            f"domain must be source, target or a site ({', '.join(SITE_NAMES)}), got {domain!r}"
        )
    return site


def _domain_code(domain: str) -> int:
    site = _site(domain)
    return SOURCE_CODE if site is None else site.code


def case_seed(seed: int, domain: str, index: int) -> np.random.SeedSequence:
    """The seed of one case: ``[seed, domain code, index]`` (a distinct code per site)."""
    return np.random.SeedSequence([int(seed), _domain_code(domain), int(index)])


def _level(value: int) -> dict[str, Any]:
    name, severity = LEVELS[value]
    return {"level": name, "severity": round(severity, 4)}


def _draw_deformation(rng: np.random.Generator, near: bool) -> dict[str, Any]:
    """Affine and elastic deformation: source-like when ``near``, else the target ranges."""
    drawn: dict[str, np.ndarray | float]
    if near:
        drawn = {
            "rotation_deg": rng.uniform(-4, 4, 3),
            "brain_scale": rng.uniform(0.92, 1.0, 3),
            "translation_mm": rng.uniform(-3, 3, 3),
            "elastic_rms_mm": float(rng.uniform(1.0, 2.0)),
        }
    else:
        drawn = {
            "rotation_deg": rng.uniform(-12, 12, 3),
            "brain_scale": rng.uniform(0.86, 1.02, 3),
            "translation_mm": rng.uniform(-6, 6, 3),
            "elastic_rms_mm": float(rng.uniform(2.5, 4.0)),
        }
    return {
        k: np.round(v, 4).tolist() if isinstance(v, np.ndarray) else round(v, 4)
        for k, v in drawn.items()
    }


def _draw_acquisition(
    rng: np.random.Generator, bias: tuple[float, float], noise: tuple[float, float]
) -> dict[str, Any]:
    """Per-case acquisition: tissue-level jitter, bias and noise levels drawn in their ranges."""
    return {
        "tissue_jitter": np.round(rng.normal(0.0, 0.02, 3), 4).tolist(),
        "bias_amplitude": round(float(rng.uniform(*bias)), 4),
        "noise_sigma": round(float(rng.uniform(*noise)), 4),
        "scale": round(float(rng.uniform(600.0, 1400.0)), 2),
    }


def _maybe_atrophy(rng: np.random.Generator, fraction: float) -> dict[str, Any] | None:
    """Atrophy of a random grade in ``fraction`` of the subjects."""
    if rng.random() >= fraction:
        return None
    level = int(rng.integers(1, 4))
    severity = LEVELS[level][1]
    return {
        **_level(level),
        "cortical_thinning_mm": round(0.2 + 0.6 * severity, 3),
        "ventricle_growth_mm": round(1.0 + 4.0 * severity, 3),
    }


def _maybe_lesions(rng: np.random.Generator, fraction: float) -> dict[str, Any] | None:
    """White-matter lesions of a random grade in ``fraction`` of the subjects."""
    if rng.random() >= fraction:
        return None
    level = int(rng.integers(1, 4))
    severity = LEVELS[level][1]
    return {
        **_level(level),
        "count": int(rng.integers(2, 4) + 2 * level),
        "radius_mm": [round(3.0 + 3.0 * severity, 3), round(5.0 + 4.0 * severity, 3)],
    }


def _mixed_shifts(index: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """The mixed pool's shifts: one by turns (kinds, then severities), a second one at times."""
    turn = index - index // _NEAR_SOURCE_EVERY - 1
    kind = SHIFT_KINDS[turn % len(SHIFT_KINDS)]
    level = (turn // len(SHIFT_KINDS)) % 3 + 1
    shifts = [{"kind": kind, **_level(level)}]
    if rng.random() < 0.35:
        used = {kind}
        for group in _EXCLUSIVE:
            if kind in group:
                used |= group
        others = [k for k in SHIFT_KINDS if k not in used]
        shifts.append({"kind": str(rng.choice(others)), **_level(int(rng.integers(1, 4)))})
    for shift in shifts:
        _shift_parameters(shift, rng)
    return shifts


def _plan_site(site: Site, index: int, rng: np.random.Generator) -> CasePlan:
    """A case of a named site: the site's acquisition with a small jitter, a subject's anatomy."""
    deformation = _draw_deformation(rng, near=False)
    low, high = 1.0 - site.jitter, 1.0 + site.jitter
    acquisition = _draw_acquisition(
        rng,
        bias=(site.bias_amplitude * low, site.bias_amplitude * high),
        noise=(site.noise_sigma * low, site.noise_sigma * high),
    )
    plan = CasePlan(
        "target",
        index,
        False,
        deformation,
        acquisition=acquisition,
        site=site.name,
        protocol=site.name,
    )
    plan.atrophy = _maybe_atrophy(rng, site.atrophy_fraction)
    plan.lesions = _maybe_lesions(rng, site.lesion_fraction)
    return plan


def _plan_archive(archive: Archive, index: int, rng: np.random.Generator) -> CasePlan:
    """A case of an archive: its stratum's acquisition (a subject's anatomy, the protocol's
    jitter), and the stratum's artefact drawn after everything else."""
    stratum = archive.stratum(index)
    plan = _plan_site(ACQUISITIONS[stratum.acquisition], index, rng)
    plan.site = archive.name
    plan.stratum = stratum.name
    if stratum.artefact == "motion":
        plan.artefact = _draw_motion(rng)
    return plan


def _draw_motion(rng: np.random.Generator) -> dict[str, Any]:
    """Head motion during the scan: one or two rigid moves after the centre of k-space.

    Lines along the phase-encoding axis (y, anterior-posterior) are acquired in order; the
    lines after each move see the moved head. The moves come after 55-85 % of the lines, so
    the contrast (the centre of k-space) is the head where the label has it, and the moves
    show as ghosts and ringing along y, as clinical motion does.
    """
    moves = int(rng.integers(1, 3))
    times = np.sort(rng.uniform(0.55, 0.85, moves))
    return {
        "kind": "motion",
        "phase_axis": "y",
        "moves": [
            {
                "after_fraction_of_lines": round(float(t), 4),
                "translation_mm": np.round(rng.uniform(-6.0, 6.0, 3), 3).tolist(),
                "rotation_deg": np.round(rng.uniform(-5.0, 5.0, 3), 3).tolist(),
            }
            for t in times
        ],
    }


def plan_case(domain: str, index: int, rng: np.random.Generator) -> CasePlan:
    """Draw the deformation, anatomy and acquisition of one case.

    ``domain`` is ``source``, ``target`` (the mixed pool) or a site name.
    """
    site = _site(domain)
    if isinstance(site, Archive):
        return _plan_archive(site, index, rng)
    if site is not None and not site.heterogeneous:
        return _plan_site(site, index, rng)
    near = site is None or index % _NEAR_SOURCE_EVERY == 0
    deformation = _draw_deformation(rng, near)
    acquisition = _draw_acquisition(rng, bias=(0.0, 0.06), noise=(0.005, 0.015))
    if site is None:
        return CasePlan("source", index, near, deformation, acquisition=acquisition)
    plan = CasePlan("target", index, near, deformation, acquisition=acquisition, site=MIXED)
    if near:
        return plan
    plan.shifts = _mixed_shifts(index, rng)
    plan.atrophy = _maybe_atrophy(rng, 0.3)
    plan.lesions = _maybe_lesions(rng, 0.3)
    return plan


def _shift_parameters(shift: dict[str, Any], rng: np.random.Generator) -> None:
    s = shift["severity"]
    kind = shift["kind"]
    if kind == "contrast":
        shift["gamma"] = round(float(np.exp(rng.choice([-1.0, 1.0]) * 0.6 * s)), 4)
        shift["grey_white_contrast_kept"] = round(1.0 - 0.55 * s, 4)
        shift["csf_grey_contrast_kept"] = round(1.0 - 0.5 * s, 4)
    elif kind == "t2like":
        shift["levels"] = {"csf": 0.95, "gm": round(0.75 - 0.18 * s, 4), "wm": 0.45}
    elif kind == "bias":
        shift["amplitude"] = round(0.5 * s, 4)
    elif kind == "noise":
        shift["sigma"] = round(0.10 * s, 4)
    elif kind == "thick_slices":
        shift["axis"] = str(rng.choice(["x", "y", "z"], p=[0.25, 0.25, 0.5]))
        shift["thickness_factor"] = round(1.0 + 2.5 * s, 4)
    elif kind == "low_resolution":
        shift["resolution_factor"] = round(1.0 + 1.2 * s, 4)


@dataclass
class SampleCase:
    """One generated case: arrays (z, y, x) on the template grid, its geometry and what was done.

    ``orientation`` (a DICOM-style code such as ``LPS``) is how the case is stored: the written
    image and label are reoriented to it, the arrays here are not.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray
    spacing: float
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    meta: dict[str, Any]
    orientation: str | None = None

    def to_images(self) -> tuple[sitk.Image, sitk.Image]:
        """The image and label as stored (same geometry, reoriented to ``orientation``)."""
        images = []
        for array in (self.image, self.label):
            item = sitk.GetImageFromArray(array)
            item.SetSpacing((self.spacing,) * 3)
            item.SetOrigin(self.origin)
            item.SetDirection(self.direction)
            if self.orientation is not None:
                item = sitk.DICOMOrient(item, self.orientation)
            images.append(item)
        return images[0], images[1]


def grid_shape(spacing: float) -> int:
    """Voxels per axis of the field of view at ``spacing`` (64 at 3 mm)."""
    if not 0.5 <= spacing <= 12.0:
        raise BadInputError(f"spacing must be between 0.5 and 12 mm, got {spacing}")
    return int(round(FOV_MM / spacing))


def _sample(
    template: Template, plan: CasePlan, rng: np.random.Generator, spacing: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = grid_shape(spacing)
    axis = (np.arange(n) - (n - 1) / 2.0) * spacing
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    offset = np.stack([x, y, z], -1)  # (n, n, n, 3) mm from the centre, (x, y, z)
    d = plan.deformation
    matrix = _rotation(np.array(d["rotation_deg"])) @ np.diag(1.0 / np.array(d["brain_scale"]))
    unit = offset / FOV_MM
    elastic = np.stack([_smooth_field(rng, unit) for _ in range(3)], -1) * d["elastic_rms_mm"]
    position = template.centre + offset @ matrix.T + np.array(d["translation_mm"]) + elastic
    size = np.array(template.channels.shape[2:][::-1], dtype=np.float64)  # (X, Y, Z)
    grid = 2.0 * ((position - template.crop_start) / template.step) / (size - 1.0) - 1.0
    grid_t = torch.from_numpy(grid.astype(np.float32))[None]
    values = F.grid_sample(
        template.channels[:, :4], grid_t, mode="bilinear", padding_mode="zeros", align_corners=True
    )[0]
    distances = F.grid_sample(
        template.channels[:, 4:], grid_t, mode="bilinear", padding_mode="border", align_corners=True
    )[0]
    return values.numpy().astype(np.float64), distances.numpy().astype(np.float64), unit


def _atrophy(
    values: np.ndarray,
    distances: np.ndarray,
    unit: np.ndarray,
    plan: CasePlan,
    levels: dict[str, float],
    spacing: float,
    rng: np.random.Generator,
) -> dict[str, float]:
    t1, gm, wm, csf = values
    depth, ventricle = distances
    atrophy = plan.atrophy
    assert atrophy is not None
    # Thinning varies smoothly over the cortex (0.5x to 1.5x the mean).
    variation = np.clip(1.0 + 0.35 * _smooth_field(rng, unit, max_cycles=1.5), 0.5, 1.5)
    thinning = atrophy["cortical_thinning_mm"] * variation
    from_pial = np.clip((thinning - depth) / spacing + 0.5, 0.0, 1.0)
    lost_gm = gm * from_pial
    gm -= lost_gm
    growth = atrophy["ventricle_growth_mm"]
    from_ventricle = np.clip((growth - ventricle) / spacing + 0.5, 0.0, 1.0)
    lost_gm_v, lost_wm_v = gm * from_ventricle, wm * from_ventricle
    gm -= lost_gm_v
    wm -= lost_wm_v
    csf += lost_gm + lost_gm_v + lost_wm_v
    t1 -= (lost_gm + lost_gm_v) * (levels["gm"] - levels["csf"])
    t1 -= lost_wm_v * (levels["wm"] - levels["csf"])
    np.clip(t1, 0.0, None, out=t1)
    voxel_ml = spacing**3 / 1000.0
    return {
        "grey_matter_to_csf_ml": round(float((lost_gm + lost_gm_v).sum()) * voxel_ml, 2),
        "white_matter_to_csf_ml": round(float(lost_wm_v.sum()) * voxel_ml, 2),
    }


def _lesions(
    values: np.ndarray,
    distances: np.ndarray,
    plan: CasePlan,
    spacing: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray | None, dict[str, float]]:
    """The soft lesion mask (inside white matter: labelled as it) and its figures."""
    t1, gm, wm, csf = values
    depth = distances[0]
    lesions = plan.lesions
    assert lesions is not None
    candidates = np.argwhere((wm > 0.9) & (depth > 4.0))
    if not len(candidates):
        return None, {"volume_ml": 0.0, "placed": 0}
    n = t1.shape[0]
    coords = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1) * spacing
    mask = np.zeros_like(t1)
    for _ in range(lesions["count"]):
        centre = candidates[int(rng.integers(len(candidates)))] * spacing
        radius = rng.uniform(*lesions["radius_mm"]) * rng.uniform(0.7, 1.3, 3)
        rho = np.sqrt((((coords - centre) / radius) ** 2).sum(-1))
        mask = np.maximum(mask, 1.0 / (1.0 + np.exp((rho - 1.0) / 0.15)))
    mask *= wm  # a lesion stays inside white matter: it is labelled as the white matter it is in
    volume_ml = round(float(mask.sum()) * spacing**3 / 1000.0, 2)
    return mask, {"volume_ml": volume_ml, "placed": lesions["count"]}


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


def _imaging(plan: CasePlan, spacing: float) -> Imaging:
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


def _contrast_map(
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
    matrix = _rotation(np.array(move["rotation_deg"]))  # acts on (x, y, z)
    shift = np.array(move["translation_mm"]) / (image.shape[2] * spacing / 2.0)
    # affine_grid maps output to input coordinates (x, y, z order, normalised to [-1, 1]).
    theta = torch.from_numpy(np.concatenate([matrix.T, -(matrix.T @ shift)[:, None]], 1))
    volume = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    grid = F.affine_grid(theta[None].float(), list(volume.shape), align_corners=False)
    moved = F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return moved[0, 0].numpy().astype(np.float64)


def _motion(image: np.ndarray, artefact: dict[str, Any], spacing: float) -> np.ndarray:
    """The magnitude image whose phase-encoding lines (y) after each move saw the moved head
    (see :func:`_draw_motion`)."""
    kspace = np.fft.fftshift(np.fft.fftn(image), axes=(0, 1, 2))
    acquired_at = np.arange(image.shape[1]) / image.shape[1]  # lines in order, -ky to +ky
    for move in artefact["moves"]:  # in time order: a later move replaces the later lines
        later = acquired_at >= move["after_fraction_of_lines"]
        moved = np.fft.fftshift(np.fft.fftn(_moved(image, move, spacing)), axes=(0, 1, 2))
        kspace[:, later, :] = moved[:, later, :]
    return np.abs(np.fft.ifftn(np.fft.ifftshift(kspace, axes=(0, 1, 2))))


def _acquire(
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
    bias = _smooth_field(rng, unit, modes=6, max_cycles=1.0)
    bias /= max(float(np.abs(bias[brain]).max()) if brain.any() else 1.0, 1e-6)
    image = image * np.exp(imaging.bias_amplitude * bias)
    reference = float(image[brain].mean()) if brain.any() else 1.0
    sigma = reference * imaging.noise_sigma
    real = image + rng.normal(0.0, sigma, image.shape)
    imaginary = rng.normal(0.0, sigma, image.shape)
    return np.sqrt(real**2 + imaginary**2)  # Rician magnitude


def _orientation(image: sitk.Image) -> str:
    """The DICOM-style orientation code of ``image`` (the template's is RAS)."""
    return str(sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection()))


def _prefix(domain: str) -> str:
    site = _site(domain)
    return "src" if site is None else site.prefix


def make_case(
    domain: str, index: int, *, seed: int = 0, spacing: float = 3.0, brain_mask: bool = False
) -> SampleCase:
    """Build one case of ``domain`` from its own seed.

    ``domain`` is ``source``, ``target`` (the mixed pool, the same cases as ``mixed``) or the
    name of a target site (``t2``, ``lowfield``, ``flair``, ``mixed``).

    Raises:
        BadInputError: an unknown domain or spacing, or the template is not installed.
    """
    _site(domain)
    template = template_at(spacing)
    sequence = case_seed(seed, domain, index)
    plan_rng, field_rng, anatomy_rng, acquisition_rng = (
        np.random.default_rng(s) for s in sequence.spawn(4)
    )
    plan = plan_case(domain, index, plan_rng)
    imaging = _imaging(plan, spacing)
    values, distances, unit = _sample(template, plan, field_rng, spacing)
    meta: dict[str, Any] = {}
    if plan.atrophy is not None:
        meta["atrophy"] = {
            **plan.atrophy,
            **_atrophy(values, distances, unit, plan, template.levels, spacing, anatomy_rng),
        }
    gm, wm, csf = values[1], values[2], values[3]
    background = np.clip(1.0 - gm - wm - csf, 0.0, 1.0)
    label = np.argmax(np.stack([background, gm, wm, csf]), 0).astype(np.uint8)
    lesion_mask = None
    if plan.lesions is not None:
        lesion_mask, figures = _lesions(values, distances, plan, spacing, anatomy_rng)
        meta["lesions"] = {**plan.lesions, **figures}
    t1 = values[0]
    if lesion_mask is not None and imaging.lesion_level is None:
        hypointense = 0.5 * (template.levels["csf"] + template.levels["gm"])
        t1 += lesion_mask * (hypointense - t1)  # T1-hypointense, then mapped like the tissue
    jitter = 1.0 + np.array(plan.acquisition["tissue_jitter"])
    image = _contrast_map(values, imaging, jitter, template.levels)
    if lesion_mask is not None and imaging.lesion_level is not None:
        image += lesion_mask * (imaging.lesion_level - image)  # the site's lesion contrast
    image = _acquire(
        image, imaging, unit, label > 0, acquisition_rng, artefact=plan.artefact, spacing=spacing
    )
    image = (image * plan.acquisition["scale"]).astype(np.float32)
    counts = np.bincount(label.ravel(), minlength=4)
    voxel_ml = spacing**3 / 1000.0
    volumes = {LABEL_NAMES[v]: round(float(counts[v]) * voxel_ml, 1) for v in (1, 2, 3)}
    if brain_mask:
        label = (label > 0).astype(np.uint8)
    n = grid_shape(spacing)
    origin_index = template.centre - (n - 1) / 2.0 * spacing
    origin = template.reference.TransformContinuousIndexToPhysicalPoint(origin_index.tolist())
    case_id = f"{_prefix(domain)}_{index:03d}"
    meta = {
        "case": case_id,
        "domain": plan.domain,
        "site": plan.site,
        "protocol": plan.protocol,
        "stratum": plan.stratum or plan.protocol,
        "artefact": plan.artefact,
        "index": index,
        "seed": [int(seed), _domain_code(domain), int(index)],
        "near_source": plan.near_source,
        "shifts": plan.shifts,
        "shift_kinds": [s["kind"] for s in plan.shifts],
        "max_severity": max((s["severity"] for s in plan.shifts), default=0.0),
        "deformation": plan.deformation,
        "acquisition": plan.acquisition,
        "orientation": imaging.orientation or _orientation(template.reference),
        "atrophy": meta.get("atrophy"),
        "lesions": meta.get("lesions"),
        "volumes_ml": volumes,
    }
    return SampleCase(
        case_id,
        image,
        label,
        float(spacing),
        tuple(origin),
        template.reference.GetDirection(),
        meta,
        orientation=imaging.orientation,
    )


def write_sample_data(
    out: str | Path,
    n: int = 40,
    *,
    n_source: int = 24,
    sites: str | Sequence[str] | None = None,
    seed: int = 0,
    spacing: float = 3.0,
    brain_mask: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write the source domain, the target sites and ``manifest.json`` under ``out``.

    Layout (an image and its label share a name and a geometry; :func:`site_folder` finds a
    site's folder): ``out/source/{images,labels}/src_XXX.nii.gz``;
    ``out/sites/<site>/{images,labels}/<site>_XXX.nii.gz`` for ``t2``, ``lowfield`` and
    ``flair``; the ``mixed`` site (the heterogeneous pool) in ``out/target/{images,labels}/
    tgt_XXX.nii.gz``; ``out/manifest.json``: ``sites`` (name -> folder, n, prefix, seed code,
    description) and one entry per case (domain, site, shifts with kind and severity,
    acquisition, anatomy, seed).

    Args:
        out: destination folder (created; existing cases of the same names are replaced).
        n: cases per target site.
        n_source: source domain size.
        sites: the target sites to write (names, or one comma-separated string; default all).
        seed: the data seed.
        spacing: voxel size in mm (the field of view stays 192 mm).
        brain_mask: labels are the brain (1) rather than GM/WM/CSF (for the ``deepbet`` preset).

    Returns:
        The manifest.

    Raises:
        BadInputError: no case to write, an unknown site, a bad spacing, no template.
    """
    chosen = parse_sites(sites)
    if n < 0 or n_source < 0 or n * len(chosen) + n_source == 0:
        raise BadInputError(
            f"need at least one case ({n} per target site for {len(chosen)} site(s), "
            f"source {n_source})"
        )
    out = Path(out)
    started = time.perf_counter()
    source_info = template_source()
    groups = [("source", n_source), *((name, n) for name in chosen)]
    if progress is not None:
        progress.phase("sample-data", sum(count for _, count in groups))
    cases = []
    for domain, count in groups:
        for index in range(count):
            cases.append(_write_case(out, domain, index, seed, spacing, brain_mask))
            if progress is not None:
                progress.update(len(cases), case=cases[-1]["case"])
    manifest = {
        "generator": "assft.apps.sampledata",
        "format": 2,
        "seed": int(seed),
        "spacing_mm": float(spacing),
        "shape": [grid_shape(spacing)] * 3,
        "fov_mm": FOV_MM,
        "brain_mask": bool(brain_mask),
        "labels": {
            str(k): v for k, v in (BRAIN_LABEL_NAMES if brain_mask else LABEL_NAMES).items()
        },
        "source": {"n": n_source, "folder": "source", "prefix": "src", "seed_code": SOURCE_CODE},
        "target": {
            "n": n if MIXED in chosen else 0,
            "folder": SITES[MIXED].folder,
            "site": MIXED,
            "near_source_every": _NEAR_SOURCE_EVERY,
        },
        "sites": {
            name: {
                "folder": SITES[name].folder,
                "n": n,
                "prefix": SITES[name].prefix,
                "seed_code": SITES[name].code,
                "description": SITES[name].describe(),
            }
            for name in chosen
        },
        "shift_kinds": list(SHIFT_KINDS),
        "severity_levels": {name: round(value, 4) for name, value in LEVELS.values()},
        "template": source_info,
        "seconds": round(time.perf_counter() - started, 2),
        "cases": cases,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return manifest


def _write_case(
    out: Path, domain: str, index: int, seed: int, spacing: float, brain_mask: bool
) -> dict[str, Any]:
    """Write one case's image and label into its site's folder; its manifest entry."""
    case = make_case(domain, index, seed=seed, spacing=spacing, brain_mask=brain_mask)
    image, label = case.to_images()
    folder = site_folder(out, domain)
    relative = folder.relative_to(out).as_posix()
    write_image_atomic(image, folder / "images" / f"{case.case_id}.nii.gz")
    write_image_atomic(label, folder / "labels" / f"{case.case_id}.nii.gz")
    return {
        **case.meta,
        "image": f"{relative}/images/{case.case_id}.nii.gz",
        "label": f"{relative}/labels/{case.case_id}.nii.gz",
    }

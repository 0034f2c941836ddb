"""What is drawn for one sample case, before a voxel is made: its deformation, anatomy and
acquisition.

:func:`plan_case` draws a :class:`CasePlan` from the case's generator: the affine and elastic
deformation (source-like or in the target ranges), atrophy and white-matter lesions in some
subjects, the acquisition's per-case levels, and by domain the mixed pool's graded shifts
(:data:`SHIFT_KINDS` at :data:`LEVELS`), a site's protocol (``assft.apps.sites``) or an
archive's stratum and its artefact (head motion). :func:`case_seed` is the seed of a case.
:mod:`assft.apps.sample_imaging` images a plan, :mod:`assft.apps.sampledata` builds the case.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from assft.apps.sites import ACQUISITIONS, MIXED, SITE_NAMES, SITES, SOURCE_CODE, Archive, Site
from assft.errors import BadInputError

__all__ = [
    "LEVELS",
    "NEAR_SOURCE_EVERY",
    "SHIFT_KINDS",
    "CasePlan",
    "case_seed",
    "domain_code",
    "domain_site",
    "plan_case",
]

SHIFT_KINDS = ("contrast", "t2like", "bias", "noise", "thick_slices", "low_resolution")
LEVELS = {1: ("mild", 1.0 / 3.0), 2: ("moderate", 2.0 / 3.0), 3: ("severe", 1.0)}
_EXCLUSIVE = ({"contrast", "t2like"}, {"thick_slices", "low_resolution"})
NEAR_SOURCE_EVERY = 5


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


def domain_site(domain: str) -> Site | Archive | None:
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


def domain_code(domain: str) -> int:
    site = domain_site(domain)
    return SOURCE_CODE if site is None else site.code


def case_seed(seed: int, domain: str, index: int) -> np.random.SeedSequence:
    """The seed of one case: ``[seed, domain code, index]`` (a distinct code per site)."""
    return np.random.SeedSequence([int(seed), domain_code(domain), int(index)])


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
    turn = index - index // NEAR_SOURCE_EVERY - 1
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
    site = domain_site(domain)
    if isinstance(site, Archive):
        return _plan_archive(site, index, rng)
    if site is not None and not site.heterogeneous:
        return _plan_site(site, index, rng)
    near = site is None or index % NEAR_SOURCE_EVERY == 0
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

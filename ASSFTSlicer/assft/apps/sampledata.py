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

What a case is drawn to be (deformation, anatomy, shifts, protocol) is
:mod:`assft.apps.sample_plans`; how it is imaged (contrast, resolution, motion, bias, noise) is
:mod:`assft.apps.sample_imaging`. This module samples the template through a case's deformation,
adds its atrophy and lesions, labels it (:func:`make_case`), and writes the folders and
``manifest.json`` (:func:`write_sample_data`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from assft.apps.mni_template import Template, template_at, template_source
from assft.apps.sample_imaging import acquire, contrast_map, imaging_for, rotation, smooth_field
from assft.apps.sample_plans import (
    LEVELS,
    NEAR_SOURCE_EVERY,
    SHIFT_KINDS,
    CasePlan,
    case_seed,
    domain_code,
    domain_site,
    plan_case,
)
from assft.apps.sites import MIXED, SITES, SOURCE_CODE, parse_sites, site_folder
from assft.errors import BadInputError
from assft.io.imaging import write_image_atomic
from assft.workspace.files import write_text_atomic

if TYPE_CHECKING:
    from assft.runtime.progress import Progress

__all__ = [
    "BRAIN_LABEL_NAMES",
    "LABEL_NAMES",
    "SITES",
    "SampleCase",
    "make_case",
    "parse_sites",
    "site_folder",
    "write_sample_data",
]

LABEL_NAMES = {1: "grey matter", 2: "white matter", 3: "cerebrospinal fluid"}
BRAIN_LABEL_NAMES = {1: "brain"}

FOV_MM = 192.0
"""Edge of the cubic field of view, centred on the template brain's bounding box."""


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
    matrix = rotation(np.array(d["rotation_deg"])) @ np.diag(1.0 / np.array(d["brain_scale"]))
    unit = offset / FOV_MM
    elastic = np.stack([smooth_field(rng, unit) for _ in range(3)], -1) * d["elastic_rms_mm"]
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
    variation = np.clip(1.0 + 0.35 * smooth_field(rng, unit, max_cycles=1.5), 0.5, 1.5)
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


def _orientation(image: sitk.Image) -> str:
    """The DICOM-style orientation code of ``image`` (the template's is RAS)."""
    return str(sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection()))


def _prefix(domain: str) -> str:
    site = domain_site(domain)
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
    domain_site(domain)
    template = template_at(spacing)
    sequence = case_seed(seed, domain, index)
    plan_rng, field_rng, anatomy_rng, acquisition_rng = (
        np.random.default_rng(s) for s in sequence.spawn(4)
    )
    plan = plan_case(domain, index, plan_rng)
    imaging = imaging_for(plan, spacing)
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
    image = contrast_map(values, imaging, jitter, template.levels)
    if lesion_mask is not None and imaging.lesion_level is not None:
        image += lesion_mask * (imaging.lesion_level - image)  # the site's lesion contrast
    image = acquire(
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
        "seed": [int(seed), domain_code(domain), int(index)],
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
            "near_source_every": NEAR_SOURCE_EVERY,
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

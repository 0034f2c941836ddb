"""The named target sites of the sample data: one coherent acquisition each, as a lab's scanner.

A lab's target domain is *its* scanner and protocol: every scan has the same contrast family,
resolution, slice thickness, noise level, bias field and orientation, and the scans differ as
subjects do (anatomy, deformation, atrophy, lesions). A :class:`Site` holds those acquisition
parameters; ``assft.apps.sampledata`` reads them to build a site's cases, adding a small
per-case jitter (``jitter``: the noise and bias level within ±15 %, tissue levels ±2 %).

``mixed`` is not one acquisition: it is the heterogeneous target pool of earlier releases (each
case its own one or two acquisition shifts), kept bit for bit for comparison; it lives in the
``target/`` folder with the ``tgt`` prefix.

A lab's *archive* (:class:`Archive`: ``hospital``, ``multicentre``) mixes a few coherent
acquisitions in fixed shares: a majority close to the demo model's source and minorities with
stronger shifts, and, in one of them, a rare subgroup of cases with a motion artefact. Each
case's acquisition (its *stratum*) follows from its index alone, so that the benchmark's test
scans (every ``TEST_EVERY``-th case) and its pool hold the same mix. The acquisitions an archive
draws from are the :data:`ACQUISITIONS`: the coherent sites and two protocols that exist only
inside archives. Why each archive holds what it holds is written in ``SampleData.md``.

This module imports neither numpy nor torch: the command line validates ``--sites`` with it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assft.errors import BadInputError

__all__ = [
    "ACQUISITIONS",
    "ARCHIVE_NAMES",
    "ARTEFACTS",
    "MIXED",
    "SITES",
    "SITE_NAMES",
    "SOURCE_CODE",
    "TEST_EVERY",
    "Archive",
    "Site",
    "Stratum",
    "parse_sites",
    "site_folder",
]

SOURCE_CODE = 0
"""The domain code of the source cases in their seed ``[seed, code, index]``."""

MIXED = "mixed"


@dataclass(frozen=True)
class Site:
    """One target site: how its scanner acquires every case (see the module docstring).

    Intensities are relative (0..1 before the random global scale); noise and bias are
    fractions of the mean brain intensity and the log-amplitude of the bias field.
    """

    name: str
    code: int  # the domain code in each case's seed [seed, code, index]: distinct per site
    models: str  # the real acquisition it stands for and the shift from the source it exercises
    contrast: str  # contrast family: T1, T2 or FLAIR
    tissue_levels: tuple[float, float, float] | None = None  # CSF, GM, WM; None: the T1 template
    grey_white_kept: float | None = None  # fraction of the grey/white contrast kept
    csf_grey_kept: float | None = None  # fraction of the CSF/grey contrast kept
    tissue_mixture: bool = False  # levels mixed by tissue fraction (a contrast not monotone in T1)
    lesion_level: float | None = None  # lesion intensity after the contrast; None: T1-hypointense
    resolution_mm: float = 3.0  # acquired in-plane resolution (no blur where the grid is coarser)
    slice_axis: str = "z"
    thickness_factor: float = 1.0  # slices this many times thicker than the in-plane resolution
    noise_sigma: float = 0.01  # Rician sigma, fraction of the mean brain intensity
    bias_amplitude: float = 0.03  # a smooth field exp(amplitude * B), B in [-1, 1] over the brain
    orientation: str | None = None  # stored orientation (DICOM-style code); None: the template's
    atrophy_fraction: float = 0.3  # share of subjects with atrophy (of mild to severe grade)
    lesion_fraction: float = 0.3  # share of subjects with white-matter lesions
    jitter: float = 0.15  # per-case relative jitter of the noise and bias levels
    heterogeneous: bool = False  # the mixed pool: the acquisition is drawn per case

    @property
    def folder(self) -> str:
        """The site's folder relative to the sample data root (``images/``, ``labels/`` in it)."""
        return "target" if self.heterogeneous else f"sites/{self.name}"

    @property
    def prefix(self) -> str:
        """Case ids are ``<prefix>_XXX``."""
        return "tgt" if self.heterogeneous else self.name

    def describe(self) -> dict[str, Any]:
        """What the site models, for the manifest."""
        if self.heterogeneous:
            return {
                "models": self.models,
                "contrast": "per case: T1, reduced-contrast or T2-like (see each case's shifts)",
                "acquisition": "per case: one or two shifts of graded severity, one case in "
                "five near the source",
                "anatomy": "per case: stronger deformation than the source, atrophy and "
                "white-matter lesions in about 30 % of cases each",
            }
        return {
            "models": self.models,
            "contrast": self.contrast,
            "contrast_model": "tissue levels mixed by the (sharpened) tissue fractions"
            if self.tissue_mixture
            else "the T1 template's intensity mapped piecewise linearly to the tissue levels",
            "tissue_levels": None
            if self.tissue_levels is None
            else dict(zip(("csf", "gm", "wm"), self.tissue_levels, strict=True)),
            "grey_white_contrast_kept": self.grey_white_kept,
            "csf_grey_contrast_kept": self.csf_grey_kept,
            "resolution_mm": self.resolution_mm,
            "thickness": {"axis": self.slice_axis, "factor": self.thickness_factor},
            "noise_sigma": self.noise_sigma,
            "bias_amplitude": self.bias_amplitude,
            "acquisition_jitter": self.jitter,
            "orientation": self.orientation or "RAS",
            "anatomy": {
                "deformation": "target ranges (rotation ±12°, scale 0.86-1.02, translation "
                "±6 mm, elastic 2.5-4 mm RMS)",
                "atrophy_fraction": self.atrophy_fraction,
                "lesion_fraction": self.lesion_fraction,
                "lesion_intensity": "T1-hypointense, mapped with the tissue"
                if self.lesion_level is None
                else self.lesion_level,
            },
        }


TEST_EVERY = 4
"""The benchmark's split (``Dataset.split``): every ``TEST_EVERY``-th case is a test scan. An
archive's strata are dealt out over the test scans and the pool separately, so both hold its mix."""

ARTEFACTS = ("motion",)
"""Artefacts a stratum of an archive may add to its acquisition (see ``sample_imaging._motion``)."""


@dataclass(frozen=True)
class Stratum:
    """One part of an archive's mix: an acquisition (a name in :data:`ACQUISITIONS`), its share
    of the cases, and an artefact added to it (None: none)."""

    acquisition: str
    share: float
    artefact: str | None = None

    @property
    def name(self) -> str:
        """``t1-3t``, or ``t1-3t + motion`` with an artefact: the group the benchmark reports."""
        return (
            self.acquisition if self.artefact is None else f"{self.acquisition} + {self.artefact}"
        )


@dataclass(frozen=True)
class Archive:
    """A lab's archive: cases from a few acquisitions in fixed shares (see the module docstring).

    Case ``index`` belongs to :meth:`stratum`; its anatomy varies as in every site, and its
    acquisition is that stratum's protocol (with the protocol's per-case jitter).
    """

    name: str
    code: int  # the domain code in each case's seed [seed, code, index]: distinct per site
    models: str  # the real archive it stands for
    strata: tuple[Stratum, ...]

    def __post_init__(self) -> None:
        total = sum(s.share for s in self.strata)
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"archive {self.name}: the shares add up to {total}, not 1")
        for stratum in self.strata:
            if stratum.acquisition not in ACQUISITIONS or stratum.artefact not in (
                None,
                *ARTEFACTS,
            ):
                raise ValueError(f"archive {self.name}: unknown stratum {stratum}")

    @property
    def heterogeneous(self) -> bool:
        """As :attr:`Site.heterogeneous`: an archive is not the mixed pool."""
        return False

    @property
    def folder(self) -> str:
        return f"sites/{self.name}"

    @property
    def prefix(self) -> str:
        return self.name

    def stratum(self, index: int) -> Stratum:
        """The stratum of case ``index``: dealt out by smooth weighted round robin over the test
        scans and over the pool separately (``TEST_EVERY``), so that each holds the shares as
        closely as its size allows, whatever the number of cases."""
        test = index % TEST_EVERY == TEST_EVERY - 1
        position = index // TEST_EVERY if test else index - index // TEST_EVERY
        credit = [0.0] * len(self.strata)
        chosen = 0
        for _ in range(position + 1):
            for k, stratum in enumerate(self.strata):
                credit[k] += stratum.share
            chosen = max(range(len(credit)), key=lambda k: (credit[k], -k))
            credit[chosen] -= 1.0
        return self.strata[chosen]

    def describe(self) -> dict[str, Any]:
        """What the archive holds, for the manifest."""
        return {
            "models": self.models,
            "strata": [
                {
                    "stratum": s.name,
                    "acquisition": s.acquisition,
                    "share": s.share,
                    "artefact": s.artefact,
                    "protocol": ACQUISITIONS[s.acquisition].describe(),
                }
                for s in self.strata
            ],
            "split": f"strata dealt out over the test scans (every {TEST_EVERY}th case) and the "
            "pool separately",
        }


SITES: dict[str, Site | Archive] = {
    site.name: site
    for site in (
        Site(
            "t2",
            2,
            "a clinical T2-weighted protocol (e.g. a 2D turbo spin echo) at 3 mm: the contrast "
            "is inverted (CSF brightest, GM > WM), the anatomy and resolution are as in the source",
            "T2",
            tissue_levels=(0.95, 0.57, 0.45),  # the t2like shift's levels at severity 1
            resolution_mm=3.0,
            noise_sigma=0.01,
            bias_amplitude=0.2,
        ),
        Site(
            "lowfield",
            3,
            "a low-field (e.g. 0.064-0.5 T) T1 scanner: grey/white and CSF/grey contrast reduced, "
            "thick (5 mm) axial slices, high noise and a strong bias field",
            "T1",
            grey_white_kept=0.56,  # the contrast shift at severity 0.8, gamma 1
            csf_grey_kept=0.6,
            # 5 mm slices, as low-field T1 protocols acquire them (e.g. 1.5 x 1.5 x 5 mm). It was
            # 3x (9 mm) at first: measured, argmax of the label's own tissue maps acquired at 9 mm
            # reaches only Dice 0.84 against the truth (0.95 at 1.5x), a ceiling no model can
            # pass, and no low-field protocol slices that thick.
            thickness_factor=1.7,
            noise_sigma=0.06,
            bias_amplitude=0.35,
        ),
        Site(
            "flair",
            4,
            "a 2D FLAIR protocol of a lesion clinic: CSF nulled, GM brighter than WM, "
            "white-matter lesions hyperintense in most subjects, 2x thick axial slices, "
            "stored in DICOM (LPS) order",
            "FLAIR",
            tissue_levels=(0.15, 0.75, 0.55),
            tissue_mixture=True,
            lesion_level=0.95,
            thickness_factor=2.0,
            noise_sigma=0.03,
            bias_amplitude=0.15,
            orientation="LPS",
            lesion_fraction=0.8,
        ),
        Site(
            MIXED,
            1,
            "the heterogeneous target pool of earlier releases (a zoo of acquisition shifts, "
            "one or two per case), kept bit for bit for comparison",
            "mixed",
            heterogeneous=True,
        ),
    )
}

ACQUISITIONS: dict[str, Site] = {
    **{
        name: site
        for name, site in SITES.items()
        if isinstance(site, Site) and not site.heterogeneous
    },
    **{
        site.name: site
        for site in (
            Site(
                "t1-3t",
                0,  # an acquisition inside archives only: its cases take the archive's code
                "a 3 T volumetric T1 (MPRAGE-like) research protocol, close to the demo model's "
                "source: the same contrast and resolution, a little more noise, a 3 T bias field",
                "T1",
                resolution_mm=3.0,
                noise_sigma=0.015,
                bias_amplitude=0.12,
            ),
            Site(
                "t1-se-1.5t",
                0,
                "an older 1.5 T 2D T1 spin-echo protocol: 5 mm sagittal slices, grey/white "
                "contrast lower than at 3 T (spin echo), more noise",
                "T1",
                grey_white_kept=0.7,
                csf_grey_kept=0.85,
                slice_axis="x",
                thickness_factor=1.7,
                noise_sigma=0.03,
                bias_amplitude=0.1,
            ),
        )
    },
}
"""Every acquisition protocol an archive may draw from, by name: the coherent sites and the
archive-only protocols."""

for _archive in (
    Archive(
        "hospital",
        5,
        "a general hospital's brain MRI archive pulled by body part: the volumetric T1 of its "
        "research scanner for most studies, 2D FLAIR from its MS clinic and clinical T2",
        (Stratum("t1-3t", 0.60), Stratum("flair", 0.25), Stratum("t2", 0.15)),
    ),
    Archive(
        "multicentre",
        6,
        "a multi-centre T1 study: the coordinating centre's 3 T scanner for most subjects, older "
        "1.5 T scanners with 2D sagittal spin echo at partner sites, a low-field scanner at one "
        "site, and a few subjects who moved in the scanner",
        (
            Stratum("t1-3t", 0.525),
            Stratum("t1-3t", 0.075, artefact="motion"),
            Stratum("t1-se-1.5t", 0.25),
            Stratum("lowfield", 0.15),
        ),
    ),
):
    SITES[_archive.name] = _archive
SITE_NAMES: tuple[str, ...] = tuple(SITES)
ARCHIVE_NAMES: tuple[str, ...] = tuple(n for n, s in SITES.items() if isinstance(s, Archive))


def parse_sites(names: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"t2,flair"`` or ``["t2", "flair"]`` -> ``("t2", "flair")``; None -> every site.

    Raises:
        BadInputError: an unknown name (named, with the valid ones).
    """
    if names is None:
        return SITE_NAMES
    items = names.split(",") if isinstance(names, str) else list(names)
    chosen: list[str] = []
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        if item not in SITES:
            raise BadInputError(f"unknown site {item!r}: the sites are {', '.join(SITE_NAMES)}")
        if item not in chosen:
            chosen.append(item)
    return tuple(chosen)


def site_folder(root: str | Path, site: str) -> Path:
    """The folder of a site (``source`` or a target site) under the sample data ``root``.

    It holds ``images/`` and ``labels/`` (an image and its label share a name). ``mixed`` is
    ``root/target``; the other target sites are ``root/sites/<site>``.

    Raises:
        BadInputError: an unknown site.
    """
    if site == "source":
        return Path(root) / "source"
    if site not in SITES:
        raise BadInputError(f"unknown site {site!r}: the sites are source, {', '.join(SITE_NAMES)}")
    return Path(root) / SITES[site].folder

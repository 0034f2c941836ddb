"""Scoring a workspace's pool: the per-case signals the strategies read, from one pass per case.

:class:`PoolScorer` reads each case once, runs the current model (and the frozen pretrained
model f0 where its cached statistics are missing) with test-time views, and keeps only the
case's scores and embeddings (:class:`CaseScores`); :func:`score_pool` does so for the whole
unlabeled pool, plus f0's statistics of the labeled and held-out cases, into a
:class:`ScoredPool` that every strategy can rank without another forward pass.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from assft.errors import BadInputError
from assft.io.imaging import read_image, read_label
from assft.io.preprocessing import ModelGrid, to_image_grid, to_model_grid
from assft.metrics import (
    acquisition_descriptor,
    batchnorm_knowledge_gap,
    dice_scores,
    mean_dice,
)
from assft.models import get_preset, resolve_device
from assft.models.inference import (
    CaseInference,
    epistemic_uncertainty,
    infer_case,
    sliding_window_probabilities,
)
from assft.query.config import QueryConfig
from assft.query.parts import ArchiveParts, find_parts
from assft.query.pretrained_cache import PretrainedCache, PretrainedStatistics, cache_key
from assft.query.strategies import GapEstimator, PoolStatistics, strategy_info
from assft.runtime import distributed, portable
from assft.runtime.progress import Progress
from assft.workspace import Workspace
from assft.workspace.model_versions import ModelVersions
from assft.workspace.version_names import BASE_VERSION


@dataclass
class CaseScores:
    """One case's statistics, gathered for the strategies."""

    case_id: str
    z0: np.ndarray
    kg_bn: float
    asd0: float
    asd: float
    asd_per_class: dict[int, float]
    empty_roi: bool
    mean_entropy: float
    class_entropy: dict[int, float]
    zt: np.ndarray | None = None
    epistemic: float = math.nan
    a0: np.ndarray | None = None
    view_entropy: float = math.nan
    energy_variance: float = math.nan


class PoolScorer:
    """Loads the models once and scores cases one at a time."""

    def __init__(self, workspace: Workspace, config: QueryConfig, device: str = "auto") -> None:
        self.workspace = workspace
        self.config = config
        self.device = distributed.setup(resolve_device(device))
        self.preset = get_preset(workspace.config.model)
        self.label_values = list(workspace.config.label_values)
        # The structures a label is trusted for (all, unless clinicians label only some).
        self.labeled_values = list(workspace.config.labeled_values)
        self.version = workspace.current_model_version()
        versions = ModelVersions(workspace)
        self.pretrained = versions.load(BASE_VERSION, device=self.device)
        # While the current version is v0, both roles share one network (one pass per view).
        self.current = (
            self.pretrained
            if self.version == BASE_VERSION
            else versions.load(self.version, device=self.device)
        )
        self.running_statistics = self.pretrained.running_statistics()
        self.cache = PretrainedCache(workspace.cache_folder("pretrained"))
        self.mc_dropout_injected: bool | None = None

    @property
    def has_head(self) -> bool:
        return bool(self.current.has_head)

    def _grid(self, image_path: Path) -> ModelGrid:
        pre = self.preset
        return to_model_grid(
            read_image(image_path),
            spacing=pre.spacing,
            orientation=pre.orientation,
            intensity=pre.intensity,
            source=image_path,
        )

    def _cache_settings(self) -> dict[str, Any]:
        return {
            "preset": self.preset.to_dict(),
            "labels": self.label_values,
            "views": self.config.views,
            "tau": self.config.asd.tau,
            "radius": self.config.asd.radius,
        }

    def _pretrained_statistics(self, inference: CaseInference) -> PretrainedStatistics:
        kg_bn = (
            batchnorm_knowledge_gap(inference.batchnorm, self.running_statistics)
            if inference.batchnorm
            else math.nan
        )
        asd0 = inference.difficulty.asd if self.pretrained.has_head else math.nan
        return PretrainedStatistics(
            z0=inference.embedding,
            kg_bn=kg_bn,
            asd0=asd0,
            a0=acquisition_descriptor(inference.batchnorm, inference.embedding),
        )

    def score_case(self, case_id: str, image_path: Path, *, epistemic: bool = False) -> CaseScores:
        """Run the passes one case needs and reduce them to its scores."""
        key = cache_key(image_path, self._cache_settings())
        cached = self.cache.get(case_id, key)
        grid = self._grid(image_path)
        asd = self.config.asd
        current = infer_case(
            self.current,
            grid.tensor,
            views=self.config.views,
            tau=asd.tau,
            radius=asd.radius,
            batchnorm=self.current is self.pretrained,
        )
        if self.current is self.pretrained:
            pretrained = self._pretrained_statistics(current)
            zt = None
        else:
            zt = current.embedding
            if cached is None:
                pretrained = self._pretrained_statistics(
                    infer_case(
                        self.pretrained,
                        grid.tensor,
                        views=self.config.views,
                        tau=asd.tau,
                        radius=asd.radius,
                    )
                )
            else:
                pretrained = cached
        if cached is None:
            self.cache.put(case_id, key, pretrained)
        epistemic_value = math.nan
        if epistemic:
            epistemic_value, injected = epistemic_uncertainty(
                self.current,
                grid.tensor,
                samples=self.config.mc_samples,
                dropout=self.config.mc_dropout,
                seed=self.config.seed,
            )
            self.mc_dropout_injected = injected
        d = current.difficulty
        return CaseScores(
            case_id=case_id,
            z0=pretrained.z0,
            kg_bn=pretrained.kg_bn,
            asd0=pretrained.asd0,
            asd=d.asd,
            asd_per_class=d.per_class,
            empty_roi=d.empty_roi,
            mean_entropy=d.mean_entropy,
            class_entropy=d.class_entropy,
            zt=zt,
            epistemic=epistemic_value,
            a0=pretrained.a0,
            view_entropy=float(np.mean(current.view_entropy)) if current.view_entropy else math.nan,
            # One view: no disagreement to measure (0 for every case).
            energy_variance=float(np.var(current.view_energy)) if current.view_energy else math.nan,
        )

    def dice_of(self, image_path: Path, label_path: Path) -> float:
        """The current model's mean Dice on a labeled scan (one view, on the scan's grid): the
        evidence of the `evidence` knowledge gap."""
        image = read_image(image_path)
        pre = self.preset
        grid = to_model_grid(
            image,
            spacing=pre.spacing,
            orientation=pre.orientation,
            intensity=pre.intensity,
            source=image_path,
        )
        channels = sliding_window_probabilities(self.current, grid.tensor).argmax(0).cpu()
        values = np.array([0, *self.label_values], dtype=np.int64)[channels.numpy()]
        prediction = to_image_grid(values.astype(np.int32), grid, image, nearest=True)
        truth = sitk.GetArrayFromImage(read_label(label_path))
        scores = dice_scores(sitk.GetArrayFromImage(prediction), truth, self.labeled_values)
        return float(mean_dice(scores))

    def pretrained_only(self, case_id: str, image_path: Path) -> PretrainedStatistics:
        """f0's statistics of a labeled or held-out case (from the cache when possible): its z0
        for the diversity term, its a0 for the parts of the archive."""
        key = cache_key(image_path, self._cache_settings())
        cached = self.cache.get(case_id, key)
        if cached is not None:
            return cached
        asd = self.config.asd
        inference = infer_case(
            self.pretrained,
            self._grid(image_path).tensor,
            views=self.config.views,
            tau=asd.tau,
            radius=asd.radius,
        )
        stats = self._pretrained_statistics(inference)
        self.cache.put(case_id, key, stats)
        return stats


def pool_statistics(
    scores: list[CaseScores],
    labeled_z0: np.ndarray,
    *,
    labeled_a0: np.ndarray | None = None,
    evidence_a0: np.ndarray | None = None,
    evidence_failure: np.ndarray | None = None,
    has_head: bool,
    n_labels: int,
    round_index: int,
) -> PoolStatistics:
    """Stack per-case scores into the arrays the strategies read."""
    z0 = np.stack([s.z0 for s in scores])
    kg_bn = np.array([s.kg_bn for s in scores])
    asd0 = np.array([s.asd0 for s in scores])
    class_entropy = np.full((len(scores), max(n_labels, 1)), np.nan)
    for i, s in enumerate(scores):
        for channel, value in s.class_entropy.items():
            class_entropy[i, channel - 1] = value
    epistemic = np.array([s.epistemic for s in scores])
    view_entropy = np.array([s.view_entropy for s in scores])
    energy_variance = np.array([s.energy_variance for s in scores])
    zt = [s.zt for s in scores if s.zt is not None]
    a0 = [s.a0 for s in scores if s.a0 is not None]
    return PoolStatistics(
        z0=z0,
        labeled_z0=labeled_z0,
        asd=np.array([s.asd for s in scores]) if has_head else None,
        asd0=None if np.isnan(asd0).any() else asd0,
        mean_entropy=np.array([s.mean_entropy for s in scores]),
        class_entropy=class_entropy,
        kg_bn=None if np.isnan(kg_bn).any() else kg_bn,
        zt=np.stack(zt) if len(zt) == len(scores) else None,  # None while f0 is current
        epistemic=None if np.isnan(epistemic).any() else epistemic,
        round=round_index,
        a0=np.stack(a0) if a0 and len(a0) == len(scores) else None,
        labeled_a0=labeled_a0,
        evidence_a0=evidence_a0,
        evidence_failure=evidence_failure,
        view_entropy=None if np.isnan(view_entropy).any() else view_entropy,
        energy_variance=None if np.isnan(energy_variance).any() else energy_variance,
    )


@dataclass
class ScoredPool:
    """A pool scored once: every strategy can rank it without another forward pass.

    ``scores`` are the unlabeled cases'; ``others`` holds f0's statistics of the labeled and
    held-out cases (case -> (status, statistics)): z0 of the labeled ones for the diversity
    term, a0 of all of them for the parts of the archive.
    """

    scores: list[CaseScores]
    others: dict[str, tuple[str, PretrainedStatistics]]
    has_head: bool
    version: str
    label_values: list[int]
    device: str
    preset: str
    mc_dropout_injected: bool | None
    seconds: float
    evidence: dict[str, float] = field(default_factory=dict)
    """The scoring model's Dice on the labeled and held-out scans (the `evidence` gap's)."""

    @property
    def labeled_z0(self) -> np.ndarray:
        """z0 of the labeled cases (the held-out ones are not trained on), ``(L, D)``."""
        rows = [stats.z0 for status, stats in self.others.values() if status == "labeled"]
        return np.stack(rows) if rows else np.zeros((0, self.scores[0].z0.shape[0]))

    def statistics(self) -> PoolStatistics:
        labeled_a0 = [stats.a0 for status, stats in self.others.values() if status == "labeled"]
        known = [c for c in self.evidence if c in self.others]
        return pool_statistics(
            self.scores,
            self.labeled_z0,
            labeled_a0=np.stack(labeled_a0) if labeled_a0 else None,
            evidence_a0=np.stack([self.others[c][1].a0 for c in known]) if known else None,
            evidence_failure=np.array([1.0 - self.evidence[c] for c in known]) if known else None,
            has_head=self.has_head,
            n_labels=len(self.label_values),
            round_index=0 if self.version == "v0" else int(self.version.lstrip("v") or 0),
        )

    def descriptors(self) -> tuple[list[str], np.ndarray]:
        """Every case of the workspace (unlabeled first) and its acquisition descriptor a0."""
        ids = [s.case_id for s in self.scores] + list(self.others)
        rows = [s.a0 for s in self.scores] + [stats.a0 for _, stats in self.others.values()]
        return ids, np.stack([np.asarray(r, dtype=np.float64) for r in rows])

    def parts(self) -> ArchiveParts:
        """The parts of the archive, from every case's a0 (:mod:`assft.query.parts`)."""
        ids, descriptors = self.descriptors()
        return find_parts(ids, descriptors)

    def hold_out(self, case_ids: list[str]) -> None:
        """Move scored cases out of the pool as held out (a simulation labels them once)."""
        chosen = set(case_ids)
        for s in self.scores:
            if s.case_id in chosen:
                assert s.a0 is not None
                self.others[s.case_id] = (
                    "held-out",
                    PretrainedStatistics(z0=s.z0, kg_bn=s.kg_bn, asd0=s.asd0, a0=s.a0),
                )
        self.scores = [s for s in self.scores if s.case_id not in chosen]


def score_pool(
    workspace: Workspace,
    config: QueryConfig,
    *,
    device: str = "auto",
    progress: Progress | None = None,
    epistemic: bool | None = None,
) -> ScoredPool:
    """Run the passes each unlabeled case needs (and f0's statistics of the labeled and
    held-out cases), once.

    Under torchrun each rank scores its share of the pool and the scores are gathered.

    Raises:
        BadInputError: empty pool, budget larger than the pool, bad images or model.
    """
    progress = progress or Progress("none")
    pool = workspace.registry.cases(status="unlabeled")
    others = workspace.registry.cases(status="labeled") + workspace.registry.cases(
        status="held-out"
    )
    if not pool:
        raise BadInputError("no unlabeled cases left to rank", workspace.root)
    if config.budget > len(pool):
        raise BadInputError(
            f"budget {config.budget} is larger than the unlabeled pool ({len(pool)} cases)",
            workspace.root,
        )
    started = time.perf_counter()
    scorer = PoolScorer(workspace, config, device)
    if epistemic is None:
        epistemic = strategy_info(config.strategy).needs_mc_dropout
    my_pool, my_others = distributed.shard(pool), distributed.shard(others)
    progress.phase("ranking", len(my_pool) + len(my_others))
    my_scores: list[CaseScores] = []
    for done, case in enumerate(my_pool, start=1):
        my_scores.append(
            scorer.score_case(
                case["case_id"], workspace.image_path(case["case_id"]), epistemic=epistemic
            )
        )
        portable.release_freed_memory()  # memory flat as the pool grows
        progress.update(done, case=case["case_id"])
    # The evidence gap's scans, only where the estimator may read them: the held-out scans, and
    # the labeled ones while the current model has not trained on them.
    measure_evidence = (
        scorer.has_head
        and strategy_info(config.strategy).uses_gap
        and config.dkd.gap in (GapEstimator.AUTO, GapEstimator.EVIDENCE)
    )
    my_stats = []
    for done, case in enumerate(my_others, start=len(my_pool) + 1):
        image_path = workspace.image_path(case["case_id"])
        stats = scorer.pretrained_only(case["case_id"], image_path)
        label = workspace.label_path(case["case_id"])
        untrained = case["status"] == "held-out" or scorer.version == BASE_VERSION
        dice = (
            scorer.dice_of(image_path, Path(label))
            if measure_evidence and untrained and label is not None
            else math.nan
        )
        my_stats.append((case["case_id"], case["status"], stats, dice))
        progress.update(done, case=case["case_id"])
    gathered = distributed.gather((my_scores, my_stats, scorer.mc_dropout_injected))
    scores = distributed.unshard([g[0] for g in gathered])
    stats_rows = distributed.unshard([g[1] for g in gathered])
    return ScoredPool(
        scores=scores,
        others={case_id: (status, stats) for case_id, status, stats, _ in stats_rows},
        evidence={case_id: d for case_id, _, _, d in stats_rows if math.isfinite(d)},
        has_head=scorer.has_head,
        version=scorer.version,
        label_values=scorer.label_values,
        device=str(scorer.device),
        preset=scorer.preset.name,
        mc_dropout_injected=any(bool(g[2]) for g in gathered) if epistemic else None,
        seconds=time.perf_counter() - started,
    )

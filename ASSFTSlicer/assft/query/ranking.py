"""Ranking a workspace's unlabeled pool, and proposing held-out scans that cover the archive.

``rank_workspace`` is what ``assft rank`` runs: it scores the pool once
(:func:`assft.query.scoring.score_pool`), runs the chosen strategy and saves the ranking
document (:mod:`assft.query.ranking_document`). ``propose_validation_set`` is what
``assft hold-out --propose`` runs, from the parts of the archive (:func:`archive_parts`).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import numpy as np

from assft.errors import BadInputError
from assft.query.config import QueryConfig
from assft.query.parts import ArchiveParts, coverage_notes, find_parts, propose_held_out
from assft.query.ranking_document import build_document
from assft.query.scoring import PoolScorer, ScoredPool, score_pool
from assft.query.strategies import PoolStatistics, run_strategy, strategy_info
from assft.runtime import cancellation, distributed
from assft.runtime.progress import Progress
from assft.workspace import Workspace


def rank_scored_pool(
    scored: ScoredPool,
    config: QueryConfig,
    *,
    label_names: dict[int, str],
    stats: PoolStatistics | None = None,
) -> dict[str, Any]:
    """The ranking document of a scored pool under a strategy (no forward pass)."""
    stats = stats or scored.statistics()
    started = time.perf_counter()
    result = run_strategy(stats, config)
    extra: dict[str, Any] = {
        "device": scored.device,
        "world_size": distributed.world_size(),
        "preset": scored.preset,
        "pool_size": len(scored.scores),
        "labeled": int(scored.labeled_z0.shape[0]),
        "seconds": round(scored.seconds + time.perf_counter() - started, 3),
    }
    if strategy_info(config.strategy).needs_mc_dropout:
        extra["mc_dropout_injected"] = scored.mc_dropout_injected
    parts = scored.parts()
    extra["parts"] = parts.to_dict()
    coverage = coverage_notes(
        parts,
        [c for c, (status, _) in scored.others.items() if status == "labeled"],
        [c for c, (status, _) in scored.others.items() if status == "held-out"],
    )
    document = build_document(
        case_ids=[s.case_id for s in scored.scores],
        scores=scored.scores,
        result=result,
        config=config,
        model_version=scored.version,
        has_head=scored.has_head,
        label_names=label_names,
        label_values=scored.label_values,
        extra=extra,
    )
    if coverage:
        document["notes"]["held_out_coverage"] = coverage
    return document


def rank_workspace(
    workspace: Workspace,
    config: QueryConfig,
    *,
    device: str = "auto",
    progress: Progress | None = None,
    save: bool = True,
) -> dict[str, Any]:
    """Rank the workspace's unlabeled cases and save the ranking under ``rankings/``, holding the
    workspace's job lock meanwhile (rank 0 holds it for all ranks under torchrun, as the
    fine-tuning job does).

    Raises:
        BadInputError: empty pool, budget larger than the pool, bad images or model.
        WorkspaceLockedError: another job (a fine-tuning, a ranking) holds the workspace.
    """
    lock = (
        workspace.job_lock("workspace", description=f"rank {config.strategy.value}")
        if distributed.is_main()
        else contextlib.nullcontext()
    )
    with lock:
        scored = score_pool(workspace, config, device=device, progress=progress)
        document = rank_scored_pool(scored, config, label_names=workspace.config.label_names)
        cancellation.check()  # the last safe point: a cancelled ranking is not saved
        if save:
            name = workspace.save_ranking(document).name if distributed.is_main() else None
            document["file"] = distributed.broadcast(name)
    return document


def archive_parts(
    workspace: Workspace,
    *,
    device: str = "auto",
    views: int | None = None,
    progress: Progress | None = None,
) -> tuple[ArchiveParts, dict[str, str]]:
    """The parts of the workspace's archive from every case's f0 statistics (cached; computed
    with the pretrained model where missing), and each case's status.

    Raises:
        BadInputError: an empty workspace, bad images or model.
    """
    progress = progress or Progress("none")
    rows = workspace.registry.cases()
    if not rows:
        raise BadInputError("holds no cases", workspace.root)
    config = QueryConfig(budget=1) if views is None else QueryConfig(budget=1, views=views)
    scorer = PoolScorer(workspace, config, device)
    progress.phase("describing", len(rows))
    ids, descriptors = [], []
    for done, row in enumerate(rows, start=1):
        stats = scorer.pretrained_only(row["case_id"], workspace.image_path(row["case_id"]))
        ids.append(row["case_id"])
        descriptors.append(stats.a0)
        progress.update(done, case=row["case_id"])
    return find_parts(ids, np.stack(descriptors)), {r["case_id"]: r["status"] for r in rows}


def propose_validation_set(
    workspace: Workspace,
    count: int | None = None,
    *,
    device: str = "auto",
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Held-out scans that cover the archive (``assft hold-out --propose``): one per part, the
    largest part first (``count`` None: one per part, at least two), keeping the scans held out
    already and never proposing a scan labeled for training.

    Returns:
        ``proposed`` (case, status, part name), ``parts`` (:meth:`ArchiveParts.to_dict`) and
        ``notes`` (the parts the held-out set would miss, :func:`coverage_notes`).
    """
    parts, statuses = archive_parts(workspace, device=device, progress=progress)
    labeled = [c for c, s in statuses.items() if s == "labeled"]
    held = [c for c, s in statuses.items() if s == "held-out"]
    wanted = max(2, parts.count) if count is None else count
    proposed = propose_held_out(parts, max(wanted, len(held)), exclude=labeled, keep=held)
    return {
        "proposed": [
            {"case": c, "status": statuses[c], "part": parts.name(parts.of_case[c])}
            for c in proposed
        ],
        "parts": parts.to_dict(),
        "notes": coverage_notes(parts, labeled, proposed),
    }

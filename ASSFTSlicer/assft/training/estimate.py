"""How long a fine-tune will take, said before it starts.

The steps are the recipe's rule for the labeled set (:meth:`FinetuneConfig.steps_for`), with the
patches per case that the newest fine-tune of the workspace counted (its manifest's
``schedule.patches_per_case``); the pace is that fine-tune's steps per second on this machine,
plus its time outside the steps (preparing the cases, pseudo-labeling, validating). The first
fine-tune of a workspace is not estimated: nothing has been measured there yet. Light (no
torch): the front ends ask before they launch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from assft.training.config import FinetuneConfig, FinetuneMode
from assft.workspace.model_versions import ModelVersions

if TYPE_CHECKING:
    from assft.workspace import Workspace

LONG_FINETUNE_S = 180.0
"""A fine-tune estimated to take longer is said before it starts."""


def _measured(entry: dict[str, Any]) -> tuple[float, float, float] | None:
    """(steps per second, seconds outside the steps, patches per case) of a fine-tuned
    version's manifest, or None when it did not record them."""
    timings = entry.get("timings") or {}
    pace, total = timings.get("iterations_per_s"), timings.get("total_s")
    patches = (entry.get("schedule") or {}).get("patches_per_case")
    if not (pace and total and patches):
        return None
    trained = float(timings.get("supervised_s", 0.0)) + float(timings.get("semi_supervised_s", 0.0))
    return float(pace), max(0.0, float(total) - trained), float(patches)


def estimate_finetune(workspace: Workspace, config: FinetuneConfig) -> dict[str, Any] | None:
    """The estimate of a fine-tune of the workspace's labeled cases with ``config``.

    Returns:
        ``seconds``, ``steps`` (both stages) and ``version`` (the fine-tune whose pace was
        used); None before any fine-tune of the workspace recorded its pace (versions made
        before the estimate existed did not), or without labels.
    """
    labeled = len(workspace.cases("labeled"))
    if labeled == 0:
        return None
    for entry in reversed(ModelVersions(workspace).versions()):
        measured = _measured(entry)
        if measured is not None:
            break
    else:
        return None
    pace, outside, patches = measured
    supervised, semi = config.steps_for(labeled, patches, (1, 1, 1))  # patches of one voxel
    steps = supervised + (0 if config.mode == FinetuneMode.NONE else semi)
    return {"seconds": steps / pace + outside, "steps": steps, "version": entry["version"]}

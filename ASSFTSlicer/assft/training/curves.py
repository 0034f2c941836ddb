"""A fine-tuning job's learning curve (training loss and held-out Dice by step) and its best
checkpoint by held-out Dice.

Both live in the job's folder: ``curve.json`` (rewritten whole at each evaluation) and
``best.pt`` (the network's weights at the best evaluation so far), so a resumed job keeps them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from assft.io.atomic import load_torch_safely, save_torch_atomic
from assft.workspace.files import write_json_atomic

if TYPE_CHECKING:  # imports no torch at load: `assft models` reads curves without it
    import torch

CURVE_FILE = "curve.json"
BEST_FILE = "best.pt"
LOSS_POINTS = 200
"""About this many training-loss points per stage are kept (each the mean of a run of steps)."""


@dataclass
class LearningCurve:
    """Training loss and held-out Dice of one job, by step.

    Attributes:
        steps: the steps planned for each stage, ``{"1": n, "2": m}`` (the x axis: stage 2's
            steps follow stage 1's); :meth:`ran_steps` gives those of the stages that ran.
        loss: ``[stage, step, mean loss over the steps since the previous point]``.
        validation: ``[stage, step, held-out Dice]``; step 0 of stage 1 is the parent version.
        best: ``{"stage", "step", "validation_dice"}`` of the best evaluation after training
            began, or None.
    """

    steps: dict[str, int] = field(default_factory=dict)
    loss: list[list[float]] = field(default_factory=list)
    validation: list[list[float]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    _pending: list[float] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": dict(self.steps),
            "loss": self.loss,
            "validation": self.validation,
            "best": self.best,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LearningCurve:
        return cls(
            steps={str(k): int(v) for k, v in (data.get("steps") or {}).items()},
            loss=[list(p) for p in data.get("loss") or []],
            validation=[list(p) for p in data.get("validation") or []],
            best=data.get("best"),
        )

    def ran_steps(self) -> dict[str, int]:
        """The steps of the stages that ran: those with loss points (every stage records its
        loss at every run of steps; ``steps`` is the plan, and stage 2 may not run)."""
        if not self.loss:
            return dict(self.steps)
        ran = {str(int(p[0])) for p in self.loss}
        return {stage: n for stage, n in self.steps.items() if stage in ran}

    def points(self) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
        """``(loss, held-out Dice)`` points, each ``(step from the start of the job, value)``:
        the x axis of a chart of both stages."""
        at = self.global_step
        return (
            [(at(p[0], p[1]), float(p[2])) for p in self.loss],
            [(at(p[0], p[1]), float(p[2])) for p in self.validation],
        )

    def global_step(self, stage: float, step: float) -> int:
        """The step counted from the start of the job (stage 2 follows stage 1)."""
        return int(step) + (self.steps.get("1", 0) if int(stage) == 2 else 0)

    def add_loss(self, stage: int, step: int, total: int, loss: float) -> None:
        """One step's loss: a point is kept for every run of ``total / LOSS_POINTS`` steps."""
        self._pending.append(loss)
        every = max(1, total // LOSS_POINTS)
        if step % every == 0 or step == total:
            finite = [v for v in self._pending if math.isfinite(v)]
            if finite:
                self.loss.append([stage, step, round(sum(finite) / len(finite), 5)])
            self._pending.clear()

    def add_validation(self, stage: int, step: int, dice: float) -> bool:
        """Record a held-out Dice; True when it is the best after training began."""
        self.validation = [p for p in self.validation if (p[0], p[1]) != (stage, step)]
        self.validation.append([stage, step, round(dice, 5)])
        if step == 0 and stage == 1 or not math.isfinite(dice):
            return False
        if self.best is None or dice > float(self.best["validation_dice"]):
            self.best = {"stage": stage, "step": step, "validation_dice": round(dice, 5)}
            return True
        return False


def curve_points(
    curve: dict[str, Any] | None,
) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """A stored curve (``LearningCurve.to_dict()``) as :meth:`LearningCurve.points`."""
    return LearningCurve.from_dict(curve).points() if curve else ([], [])


def describe_curve(curve: dict[str, Any] | None) -> str:
    """A version's learning curve in one line: steps, loss from first to last point, held-out
    Dice by step, and the best checkpoint (empty when none was recorded)."""
    if not curve:
        return ""
    parsed = LearningCurve.from_dict(curve)
    parts = [f"steps {' + '.join(str(v) for v in parsed.ran_steps().values())}"]
    loss, validation = parsed.points()
    if loss:
        parts.append(f"loss {loss[0][1]:.3f} -> {loss[-1][1]:.3f}")
    if validation:
        shown = " ".join(f"{step}:{dice:.3f}" for step, dice in validation)
        parts.append(f"held-out Dice by step {shown}")
    best = parsed.best
    if best:
        kept = parsed.global_step(best["stage"], best["step"])
        parts.append(f"kept step {kept} ({best['validation_dice']:.4f})")
    return "; ".join(parts)


def summarize_curve(curve: dict[str, Any] | LearningCurve | None) -> str:
    """A table cell: the job's steps and the checkpoint kept (empty when none was recorded);
    ``curve`` stored (``LearningCurve.to_dict()``) or already parsed."""
    if not curve:
        return ""
    parsed = curve if isinstance(curve, LearningCurve) else LearningCurve.from_dict(curve)
    total = sum(parsed.ran_steps().values())
    best = parsed.best
    if not best:
        return f"{total} steps"
    kept = parsed.global_step(best["stage"], best["step"])
    return f"{total} steps; kept step {kept} ({best['validation_dice']:.3f})"


def validation_steps(total: int, every: int | None) -> int:
    """Steps between held-out evaluations in a stage of ``total`` (None: about ten a stage)."""
    return every if every is not None else max(1, math.ceil(total / 10))


class CurveStore:
    """A job folder's ``curve.json`` and ``best.pt``."""

    def __init__(self, folder: Path) -> None:
        self.curve_path = folder / CURVE_FILE
        self.best_path = folder / BEST_FILE

    def load(self) -> LearningCurve:
        """The stored curve (a resumed job), or an empty one."""
        if not self.curve_path.is_file():
            return LearningCurve()
        return LearningCurve.from_dict(json.loads(self.curve_path.read_text(encoding="utf-8")))

    def save(self, curve: LearningCurve) -> None:
        write_json_atomic(self.curve_path, curve.to_dict())

    def save_best(self, network: torch.nn.Module) -> None:
        state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
        save_torch_atomic(state, self.best_path)

    def load_best(self) -> dict[str, torch.Tensor] | None:
        if not self.best_path.is_file():
            return None
        state = load_torch_safely(self.best_path)
        return state if isinstance(state, dict) else None

"""The learning curve and the best checkpoint a fine-tuning job keeps (training/curves.py)."""

from __future__ import annotations

import math

import torch

from assft.training.curves import LOSS_POINTS, CurveStore, LearningCurve, validation_steps


def test_the_loss_is_kept_as_about_loss_points_means_per_stage():
    curve = LearningCurve(steps={"1": 1000, "2": 10})
    for step in range(1, 1001):
        curve.add_loss(1, step, 1000, float(step))
    every = 1000 // LOSS_POINTS  # 5 steps a point
    assert len(curve.loss) == LOSS_POINTS
    assert curve.loss[0] == [1, every, 3.0]  # the mean of steps 1..5
    assert curve.loss[-1] == [1, 1000, 998.0]
    for step in range(1, 11):  # a short stage keeps every step; a NaN alone makes no point
        curve.add_loss(2, step, 10, float("nan") if step == 3 else 1.0)
    assert [p[1] for p in curve.loss if p[0] == 2] == [1, 2, 4, 5, 6, 7, 8, 9, 10]
    assert all(math.isfinite(p[2]) for p in curve.loss)
    assert curve.global_step(2, 4) == 1004


def test_the_best_evaluation_after_training_began_is_kept():
    curve = LearningCurve(steps={"1": 100, "2": 100})
    assert curve.add_validation(1, 0, 0.9) is False  # the parent: a point, never "best"
    assert curve.best is None
    assert curve.add_validation(1, 10, 0.5) is True
    assert curve.add_validation(1, 20, 0.7) is True
    assert curve.add_validation(1, 30, 0.6) is False
    assert curve.add_validation(2, 10, float("nan")) is False
    assert curve.best == {"stage": 1, "step": 20, "validation_dice": 0.7}
    # A resumed job evaluates a step again: the point is replaced, not repeated.
    curve.add_validation(1, 30, 0.65)
    assert [p[:2] for p in curve.validation] == [[1, 0], [1, 10], [1, 20], [2, 10], [1, 30]]
    assert LearningCurve.from_dict(curve.to_dict()).to_dict() == curve.to_dict()


def test_evaluations_about_ten_a_stage_unless_set():
    assert validation_steps(300, None) == 30
    assert validation_steps(7, None) == 1
    assert validation_steps(300, 25) == 25


def test_the_curve_and_best_weights_survive_in_the_job_folder(tmp_path):
    store = CurveStore(tmp_path)
    assert store.load().to_dict() == LearningCurve().to_dict()
    assert store.load_best() is None
    curve = LearningCurve(steps={"1": 4, "2": 4})
    curve.add_validation(1, 2, 0.5)
    store.save(curve)
    network = torch.nn.Linear(3, 2)
    store.save_best(network)
    assert store.load().to_dict() == curve.to_dict()
    best = store.load_best()
    assert best is not None and set(best) == {"weight", "bias"}
    assert torch.equal(best["weight"], network.weight.detach())


def test_the_steps_shown_are_those_of_the_stages_that_ran():
    from assft.training.curves import describe_curve, summarize_curve

    # A supervised job: stage 2 was planned, 6 steps of stage 1 ran, not 12.
    supervised = {
        "steps": {"1": 6, "2": 6},
        "loss": [[1, step, 0.5] for step in range(1, 7)],
        "validation": [[1, 0, 0.2], [1, 6, 0.4]],
        "best": {"stage": 1, "step": 6, "validation_dice": 0.4},
    }
    assert summarize_curve(supervised) == "6 steps; kept step 6 (0.400)"
    assert describe_curve(supervised).startswith("steps 6; loss 0.500 -> 0.500")
    # Both stages ran: stage 2's steps follow stage 1's.
    both = LearningCurve(steps={"1": 6, "2": 4}, loss=[[1, 6, 0.5], [2, 2, 0.4]])
    assert summarize_curve(both.to_dict()) == "10 steps"
    assert both.points()[0] == [(6, 0.5), (8, 0.4)]
    assert summarize_curve(None) == ""

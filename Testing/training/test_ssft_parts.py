"""The pure parts of SSFT: loss with ignored voxels, reliable-set selection, the ramp, patches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from assft.errors import BadInputError
from assft.training import FinetuneConfig, masked_dice_ce, select_reliable_cases
from assft.training.data import (
    TrainingCase,
    label_to_classes,
    make_batch,
    pad_to_patch,
    sample_patch,
)
from assft.training.losses import IGNORE, distillation
from assft.training.reliability import semantic_distance
from assft.training.ssft import ramp


def test_loss_ignores_ignored_voxels():
    logits = torch.randn(1, 3, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    target = torch.randint(0, 3, (1, 4, 4, 4), generator=torch.Generator().manual_seed(1))
    changed = target.clone()
    changed[0, 0] = (changed[0, 0] + 1) % 3
    ignored = target.clone()
    ignored[0, 0] = IGNORE
    ignored_changed = changed.clone()
    ignored_changed[0, 0] = IGNORE
    # What lies under IGNORE does not matter; what lies outside does.
    assert masked_dice_ce(logits, ignored) == pytest.approx(
        float(masked_dice_ce(logits, ignored_changed))
    )
    assert float(masked_dice_ce(logits, target)) != pytest.approx(
        float(masked_dice_ce(logits, changed))
    )


def test_loss_hand_value_for_a_perfect_confident_prediction():
    target = torch.tensor([[[[0, 1]]]])  # (1, 1, 1, 2)
    logits = torch.zeros(1, 2, 1, 1, 2)
    logits[0, 0, 0, 0, 0] = 50.0
    logits[0, 1, 0, 0, 1] = 50.0
    assert float(masked_dice_ce(logits, target)) == pytest.approx(0.0, abs=1e-5)
    # Uniform logits: CE = ln 2, soft Dice of each class = 1 - 2*0.5/(1+1) = 0.5.
    uniform = torch.zeros(1, 2, 1, 1, 2)
    assert float(masked_dice_ce(uniform, target)) == pytest.approx(math.log(2) + 0.5, abs=1e-4)
    # Everything ignored: zero, but still differentiable.
    all_ignored = masked_dice_ce(uniform.requires_grad_(), torch.full((1, 1, 1, 2), IGNORE))
    assert float(all_ignored.detach()) == 0.0
    all_ignored.backward()


def test_distillation_is_zero_at_the_teacher_and_pulls_the_student_to_it():
    teacher = torch.randn(2, 3, 4, 4, 4)
    assert float(distillation(teacher.clone(), teacher)) == pytest.approx(0.0, abs=1e-6)
    # Hand value, one voxel, temperature 1: KL([0.5, 0.5] || softmax([log 3, 0]) = [0.75, 0.25]).
    one = torch.tensor([math.log(3.0), 0.0]).reshape(1, 2, 1, 1, 1)
    even = torch.zeros(1, 2, 1, 1, 1)
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert float(distillation(one, even, temperature=1.0)) == pytest.approx(expected, rel=1e-5)
    # Gradient steps on the student's logits bring its distribution to the teacher's.
    student = torch.zeros_like(teacher, requires_grad=True)
    optimizer = torch.optim.SGD([student], lr=5.0)
    before = float(distillation(student, teacher))
    for _ in range(200):
        optimizer.zero_grad()
        distillation(student, teacher).backward()
        optimizer.step()
    assert before > 0.1 and float(distillation(student, teacher)) < 0.05 * before
    # A mask: only its voxels count (the others may disagree freely); an empty one is 0.
    mask = torch.zeros(2, 4, 4, 4, dtype=torch.bool)
    mask[:, :2] = True
    apart = teacher.clone()
    apart[:, :, 2:] = -teacher[:, :, 2:]
    assert float(distillation(apart, teacher, mask=mask)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation(apart, teacher, mask=~mask)) > 0.1
    assert float(distillation(apart, teacher, mask=torch.zeros_like(mask))) == 0.0


def test_reliable_set_hand_worked():
    confidence = np.array([0.95, 0.99, 0.80, 0.97, 0.92])
    distance = np.array([0.10, 0.50, 0.01, 0.05, 0.20])
    # q(c) = [0.5, 1, 0, 0.75, 0.25]; q(d) = [0.5, 1, 0, 0.25, 0.75];
    # q(c) - q(d) = [0, 0, 0, 0.5, -0.5] (ties by index). Case 2 is below tau_c = 0.9.
    assert select_reliable_cases(confidence, distance, rho=0.4, tau_c=0.9) == [3, 0]
    assert select_reliable_cases(confidence, distance, rho=1.0, tau_c=0.9) == [3, 0, 1, 4]
    assert select_reliable_cases(confidence, distance, rho=0.4, tau_c=0.999) == []
    assert select_reliable_cases(confidence, distance, rho=0.0) == []


def test_semantic_distance():
    z_u = np.array([[1.0, 0.0], [0.0, 1.0]])
    z_l = np.array([[1.0, 0.0], [1.0, 1.0]])
    assert semantic_distance(z_u, z_l) == pytest.approx([0.0, 1 - 1 / np.sqrt(2)])


def test_ramp():
    assert [ramp(s, 100, 0.2) for s in (0, 10, 20, 50)] == [0.0, 0.5, 1.0, 1.0]
    assert ramp(0, 100, 0.0) == 1.0


def test_config_checks():
    with pytest.raises(BadInputError, match="mode"):
        FinetuneConfig(mode="most")
    with pytest.raises(BadInputError, match="tau_v"):
        FinetuneConfig(tau_v=1.5)
    with pytest.raises(BadInputError, match="1:1"):
        FinetuneConfig(batch_size=1)
    assert FinetuneConfig(mode="none", batch_size=1, semi_iterations=7).steps_for(
        1, 64.0, (4, 4, 4)
    ) == (300, 7)
    with pytest.raises(BadInputError, match="^min_iterations must not exceed max_iterations 5"):
        FinetuneConfig(min_iterations=6, max_iterations=5)


@pytest.mark.parametrize(
    ("n_labeled", "voxels", "expected"),
    [
        (2, 64**3, 300),  # 2 cases x 8 patches x 50 epochs / 4 a step = 200: the minimum
        (16, 64**3, 1600),  # 16 x 8 x 50 / 4
        (30, 64**3, 3000),
        (100, 64**3, 4000),  # the maximum
        (3, 16**3, 300),  # a case smaller than a patch still counts one
    ],
)
def test_the_steps_follow_the_labeled_set(n_labeled, voxels, expected):
    config = FinetuneConfig(batch_size=4)
    assert config.steps_for(n_labeled, float(voxels), (32, 32, 32)) == (expected, expected)


def test_the_learning_rate_warms_up_then_stays_or_decays_on_a_cosine():
    from assft.training.ssft import lr_factor

    default = FinetuneConfig(warmup_fraction=0.1)
    assert [lr_factor(s, 100, default) for s in (1, 10, 50, 100)] == pytest.approx(
        [0.1, 1.0, 1.0, 1.0]
    )  # constant after the warm-up: measured better (BENCHMARKS.md)
    config = FinetuneConfig(warmup_fraction=0.1, min_lr_fraction=0.01, schedule="cosine")
    factors = [lr_factor(step, 100, config) for step in range(1, 101)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    after = factors[9:]
    assert all(a > b for a, b in zip(after, after[1:], strict=False))
    # Halfway through the decay the rate is halfway between the peak and the floor.
    assert lr_factor(55, 100, config) == pytest.approx(0.01 + 0.99 * 0.5)
    assert factors[-1] == pytest.approx(0.01)
    constant = FinetuneConfig(warmup_fraction=0.1, schedule="constant")
    assert [lr_factor(s, 100, constant) for s in (10, 50, 100)] == [1.0, 1.0, 1.0]
    with pytest.raises(BadInputError, match="unknown"):
        FinetuneConfig.from_dict({"learning_rate": 1})


def test_label_mapping_and_padding():
    label = np.array([0, 5, 9, 5])
    assert label_to_classes(label, [5, 9]).tolist() == [0, 1, 2, 1]
    image, target = pad_to_patch(
        torch.ones(1, 3, 5, 2), torch.zeros(3, 5, 2, dtype=torch.long), (4, 4, 4)
    )
    assert tuple(image.shape) == (1, 4, 5, 4) and tuple(target.shape) == (4, 5, 4)
    assert int((target == IGNORE).sum()) == 4 * 5 * 4 - 3 * 5 * 2
    assert float(image[0, 3].sum()) == 0.0


def test_foreground_patches_contain_foreground_and_batches_are_seeded():
    image = torch.randn(1, 20, 20, 20)
    target = torch.zeros(20, 20, 20, dtype=torch.long)
    target[15:17, 2:4, 9:11] = 2
    case = TrainingCase("c", image, target)
    rng = np.random.default_rng(0)
    for _ in range(5):
        _, patch = sample_patch(case, (8, 8, 8), rng, foreground=True)
        assert int((patch > 0).sum()) > 0
    a = make_batch(
        [case], 4, (8, 8, 8), np.random.default_rng(3), foreground_ratio=0.5, augment=None
    )
    b = make_batch(
        [case], 4, (8, 8, 8), np.random.default_rng(3), foreground_ratio=0.5, augment=None
    )
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert tuple(a[0].shape) == (4, 1, 8, 8, 8) and tuple(a[1].shape) == (4, 8, 8, 8)
    # 1:1 foreground/background centres: the even patches hold foreground.
    assert all(int((a[1][i] > 0).sum()) > 0 for i in (0, 2))


def test_the_learning_rate_warms_up_over_the_first_steps_of_a_stage():
    from assft.datasets.synthetic import TINY_PRESET
    from assft.models import ModelPreset, load_model
    from assft.training.ssft import Trainer, run_stage

    model = load_model(
        ModelPreset.from_dict(TINY_PRESET), label_values=[1, 2], checkpoint=None, device="cpu"
    )
    config = FinetuneConfig(
        mode="none",
        iterations=20,
        warmup_fraction=0.5,
        schedule="constant",
        lr=1e-3,
        encoder_lr_scale=0.1,
        augment=False,
        batch_size=2,
    )
    trainer = Trainer(model, config, (8, 8, 8))
    target = torch.zeros(16, 16, 16, dtype=torch.long)
    target[4:12, 4:12, 4:12] = 1
    case = TrainingCase("c", torch.randn(1, 16, 16, 16), target)
    seen: list[dict[str, float]] = []

    def record(done, metrics):
        seen.append({group["name"]: group["lr"] for group in trainer.optimizer.param_groups})

    # One step at a time, as a resumed job would run them: the rate depends on the step alone.
    for step in range(12):
        run_stage(
            trainer,
            stage=1,
            start=step,
            end=step + 1,
            total=20,
            labeled=[case],
            pseudo=None,
            config=config,
            on_step=record,
        )
    decoder = [lrs["decoder"] for lrs in seen]
    assert decoder[0] == pytest.approx(1e-4) and decoder[4] == pytest.approx(5e-4)
    assert decoder[9:] == [pytest.approx(1e-3)] * 3
    assert seen[0]["encoder"] == pytest.approx(
        1e-5
    )  # the pretrained encoder at a tenth, warmed up too


def test_patches_are_mirrored_only_along_the_presets_symmetric_axes():
    from assft.models import get_preset, load_model
    from assft.training.data import make_augmentation
    from assft.training.ssft import flip_axes

    demo = get_preset("demo")
    assert demo.symmetric_axes == ("left-right",) and demo.mirror_axes == (0,)
    model = load_model(demo, label_values=[1, 2, 3], checkpoint=None, device="cpu")
    assert flip_axes(model, FinetuneConfig()) == (0,)
    assert flip_axes(model, FinetuneConfig(flips="all")) == (0, 1, 2)
    assert flip_axes(model, FinetuneConfig(flips="none")) == ()
    # An asymmetric patch: every output is the patch or its mirror along axis 0, never another.
    image = torch.arange(4 * 5 * 6, dtype=torch.float32).reshape(1, 4, 5, 6)
    label = (image > 60).float()
    seen = set()
    for seed in range(40):
        transform = make_augmentation(seed, (0,))
        transform.transforms = tuple(
            t for t in transform.transforms if type(t).__name__ == "RandFlipd"
        )
        out = transform({"image": image, "label": label})
        result = torch.as_tensor(out["image"])
        if torch.equal(result, image):
            seen.add("as is")
        else:
            assert torch.equal(result, torch.flip(image, dims=[1]))
            seen.add("mirrored left-right")
    assert seen == {"as is", "mirrored left-right"}


def test_intensity_augmentation_changes_intensities_and_never_the_label():
    from monai.data import set_track_meta

    from assft.training.data import make_augmentation

    set_track_meta(False)
    image = torch.randn(1, 16, 16, 16)
    label = (image > 0).float()
    changed = 0
    for seed in range(30):
        out = make_augmentation(seed, (), intensity=True)({"image": image, "label": label})
        result, kept = torch.as_tensor(out["image"]), torch.as_tensor(out["label"])
        assert result.shape == image.shape and torch.isfinite(result).all()
        assert set(torch.unique(kept).tolist()) <= {0.0, 1.0}
        changed += int(not torch.allclose(result, image))
    assert changed >= 15  # most draws change something (each transform fires 10-30 % of draws)


def test_anchor_cases_are_sure_borne_out_and_far_from_the_labels():
    from assft.training.reliability import nearest_borne_out, select_anchor_cases

    confidence = np.array([0.95, 0.99, 0.80, 0.97, 0.92, 0.96])
    distance = np.array([0.10, 0.50, 0.90, 0.05, 0.20, 0.70])
    borne_out = np.array([True, True, True, True, True, False])
    # q(c) + q(d) = [0.6, 1.8, 0.8, 0.8, 0.6, 1.4]; case 2 is unsure, case 5 not borne out.
    assert select_anchor_cases(confidence, distance, borne_out, rho=0.5, tau_c=0.9) == [1, 3, 0]
    assert select_anchor_cases(confidence, distance, np.zeros(6, bool), rho=1.0) == []
    # Borne out: the nearest evidence scan (by acquisition) showed the parent right.
    evidence = np.array([[0.0, 0.0], [1.0, 1.0]])
    right = np.array([True, False])
    cases = np.array([[0.1, 0.0], [0.9, 1.2], [0.4, 0.4]])
    assert nearest_borne_out(cases, evidence, right).tolist() == [True, False, True]
    assert nearest_borne_out(cases, np.zeros((0, 2)), np.zeros(0, bool)).tolist() == [False] * 3


def test_unlabeled_patches_are_shared_between_the_sets_from_step_to_step():
    from assft.training.ssft import split_slots

    assert split_slots(2, 1, 0) == [2]
    assert split_slots(2, 2, 5) == [1, 1]
    assert [split_slots(1, 2, step) for step in range(3)] == [[1, 0], [0, 1], [1, 0]]
    assert split_slots(3, 2, 0) == [2, 1] and split_slots(3, 2, 1) == [1, 2]
    assert split_slots(4, 0, 0) == []

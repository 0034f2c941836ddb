"""The config models check every field where it is declared: type, range, finiteness, unknown keys.

Each table names bad values for every field of a config class (a test checks that no field is
left out), and each must be refused with a :class:`ConfigFieldError` naming that field.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from assft.errors import EXIT_BAD_INPUT, BadInputError
from assft.query.config import ASDConfig, DKDConfig, GapEstimator, QueryConfig, Strategy
from assft.training.config import FinetuneConfig, FinetuneMode
from assft.validation import MAX_SEED, ConfigFieldError, config_keys

NAN, INF = math.nan, math.inf
FRACTION = [-0.1, 1.5, NAN, INF, True, "0.5", None]

QUERY_BAD: dict[str, list[Any]] = {
    "strategy": ["best", 3, None, True],
    "budget": [0, -1, True, False, 2.5, "5", None],
    "views": [0, 5, True, 2.0],
    "weight": FRACTION,
    "lambda_div": [-1.0, NAN, INF, -INF, True, "1"],
    "seed": [-1, MAX_SEED + 1, True, 1.0],
    "mc_samples": [1, 0, True, 5.0, 10**6],
    "mc_dropout": [-0.1, 1.0, NAN, True],
    "clasp_beta": [-1.0, NAN, INF],
    "diversity": ["wide", 1, None],
    "diversity_on": ["pixels", 1, None],
    "power_beta": [-1.0, NAN, INF, True, "1"],
    "dkd": [3, "bn", [1], None],
    "asd": [3, None],
}
DKD_BAD: dict[str, list[Any]] = {
    "gap": ["best", 1, None],
    "drift": [1, "yes", None],
    "prototypes": [0, -3, True, 2.5, "3"],
}
ASD_BAD: dict[str, list[Any]] = {
    "tau": FRACTION,
    "radius": [-1, 65, True, 1.5, None],
}
FINETUNE_BAD: dict[str, list[Any]] = {
    "mode": ["most", 1, None],
    "iterations": [0, -5, True, 10.0, "10", 10**9],
    "semi_iterations": [0, -5, True, 2.5],
    "epochs": [0, -1, True, None, 2.5],
    "min_iterations": [0, None],
    "max_iterations": [0, None, 1.5],
    "schedule": ["linear", None, 1],
    "min_lr_fraction": FRACTION,
    "flips": ["left", None, True],
    "intensity_augment": [0, None],
    "validate_every": [0, -3, True],
    "keep_best": [1, None],
    "batch_size": [0, -1, True, 2.0, 10**6],
    "patch_size": [
        [0, 0, 0],
        [8, 8],
        [8, 8, 8, 8],
        "32",
        32,
        [8, 8, True],
        [8.0, 8, 8],
        [10**5, 10**5, 10**5],
    ],
    "lr": [0.0, -1e-4, NAN, INF, True, "1e-4", 1e39, 1e308, 2e6],
    "encoder_lr_scale": [-0.1, NAN, INF, 1e39],
    "weight_decay": [-1.0, INF, NAN, 1e39],
    "foreground_ratio": FRACTION,
    "rho": FRACTION,
    "tau_c": FRACTION,
    "tau_v": FRACTION,
    "ramp_fraction": FRACTION,
    "warmup_fraction": FRACTION,
    "refresh_pseudo_labels": [1, "false", None],
    "views": [0, 5, True],
    "roi_tau": FRACTION,
    "roi_radius": [-1, 65, True],
    "checkpoint_every": [0, -1, True, 25.0],
    "seed": [-1, MAX_SEED + 1, True],
    "augment": [0, 1, "true", None],
    "amp": [0, "yes"],
    "freeze_batchnorm": [1, None],
    "anchor": [1, "yes", None],
    "anchor_rho": FRACTION,
    "anchor_margin": FRACTION,
    "labeled_share": [0.0, 1.0, *FRACTION],
    "anchor_distill": [-1.0, NAN, INF, True, "1", 1e39],
    "partial_distill": [-0.5, NAN, INF, False, "4", 1e300],
}


def _cases(kind: type, table: dict[str, list[Any]], section: str | None = None):
    for name, values in table.items():
        for value in values:
            data = {name: value}
            field = name if section is None else f"{section}.{name}"
            yield pytest.param(
                kind, {section: data} if section else data, field, id=f"{field}={value!r}"
            )


ALL_CASES = [
    *_cases(QueryConfig, QUERY_BAD),
    *_cases(QueryConfig, DKD_BAD, "dkd"),
    *_cases(QueryConfig, ASD_BAD, "asd"),
    *_cases(FinetuneConfig, FINETUNE_BAD),
]


@pytest.mark.parametrize(
    ("kind", "table"),
    [
        (QueryConfig, QUERY_BAD),
        (DKDConfig, DKD_BAD),
        (ASDConfig, ASD_BAD),
        (FinetuneConfig, FINETUNE_BAD),
    ],
)
def test_every_field_has_bad_values_in_the_tables(kind, table):
    assert sorted(table) == config_keys(kind)


@pytest.mark.parametrize(("kind", "data", "field"), ALL_CASES)
def test_a_bad_value_is_refused_naming_its_field(kind, data, field):
    with pytest.raises(ConfigFieldError) as refused:
        kind.from_dict(data)
    error = refused.value
    assert isinstance(error, BadInputError) and error.exit_code == EXIT_BAD_INPUT
    assert error.field == field
    assert str(error).startswith(f"{field} must "), str(error)
    assert "\n" not in str(error)


@pytest.mark.parametrize(
    "kind", [QueryConfig, DKDConfig, ASDConfig, FinetuneConfig], ids=lambda k: k.__name__
)
def test_every_float_field_refuses_nan_and_infinities(kind):
    """Item 13: no float of any config takes NaN or an infinity (``--lambda-div nan``)."""
    floats = [name for name, hint in kind.__annotations__.items() if hint == "float"]
    assert floats or kind is DKDConfig
    for name in floats:
        for value in (NAN, INF, -INF):
            with pytest.raises(ConfigFieldError, match=rf"^{name} must be a finite number"):
                kind(**{name: value})


def test_the_same_checks_apply_to_a_config_made_directly():
    with pytest.raises(ConfigFieldError, match=r"^lambda_div must be a finite number, got nan$"):
        QueryConfig(lambda_div=NAN)
    with pytest.raises(ConfigFieldError, match=r"^asd\.radius must be between 0 and 64, got -1$"):
        QueryConfig(asd={"radius": -1})  # type: ignore[arg-type]
    with pytest.raises(ConfigFieldError, match=r"^budget must be an integer, got true$"):
        QueryConfig(budget=True)
    with pytest.raises(ConfigFieldError, match=r"^semi_iterations must be at least 1, got -5$"):
        FinetuneConfig(semi_iterations=-5)
    with pytest.raises(
        ConfigFieldError, match=r"^patch_size must be three integers each at least 1, got \[0, 0, 0"
    ):
        FinetuneConfig(patch_size=[0, 0, 0])  # type: ignore[arg-type]
    with pytest.raises(ConfigFieldError, match=r"^checkpoint_every must be at least 1, got 0$"):
        FinetuneConfig(checkpoint_every=0)
    with pytest.raises(ConfigFieldError, match=r"^lr must be a finite number, got nan$"):
        FinetuneConfig(lr=NAN)
    with pytest.raises(ConfigFieldError, match=r"^mc_dropout must be at least 0 and below 1"):
        QueryConfig(mc_dropout=1.0)


def test_checks_across_fields():
    with pytest.raises(ConfigFieldError, match=r"holds 536870912 voxels a step, more than"):
        FinetuneConfig(patch_size=(512, 512, 512), batch_size=4)  # type: ignore[arg-type]
    with pytest.raises(ConfigFieldError, match=r"^batch_size must be at least 2 with pseudo") as e:
        FinetuneConfig(batch_size=1)
    assert e.value.field == "batch_size"
    assert FinetuneConfig(mode="none", batch_size=1).batch_size == 1  # type: ignore[arg-type]


def test_good_values_are_kept_and_converted():
    edges = QueryConfig(
        budget=1,
        views=4,
        weight=1,
        lambda_div=0,
        seed=MAX_SEED,
        mc_dropout=0,
        clasp_beta=0,
        dkd={"gap": "bn", "prototypes": 1},  # type: ignore[arg-type]
        asd={"tau": 0, "radius": 64},  # type: ignore[arg-type]
    )
    assert isinstance(edges.weight, float) and edges.weight == 1.0
    assert isinstance(edges.lambda_div, float) and isinstance(edges.asd.tau, float)
    assert edges.dkd == DKDConfig(gap=GapEstimator.BN, drift=True, prototypes=1)
    assert edges.strategy is Strategy("attsq")
    finetune = FinetuneConfig.from_dict({"patch_size": [16, 16, 8], "mode": "all", "lr": 1})
    assert finetune.patch_size == (16, 16, 8) and finetune.mode is FinetuneMode.ALL
    assert isinstance(finetune.lr, float)
    assert FinetuneConfig(iterations=200, semi_iterations=None).steps_for(3, 8.0, (1, 1, 2)) == (
        200,
        200,
    )
    for config in (edges, finetune, QueryConfig(), FinetuneConfig()):
        assert type(config).from_dict(config.to_dict()) == config


def test_unknown_keys_are_refused_with_the_closest_known_key():
    with pytest.raises(ConfigFieldError) as refused:
        FinetuneConfig.from_dict({"iteration": 5})
    assert str(refused.value).startswith(
        "unknown FinetuneConfig field(s) ['iteration'] (did you mean iterations?); known: amp, "
    )
    assert refused.value.field == "iteration"
    with pytest.raises(ConfigFieldError) as refused:
        QueryConfig.from_dict({"asd": {"radius": 1, "tua": 0.5}})
    assert str(refused.value) == (
        "unknown asd field(s) ['tua'] (did you mean tau?); known: radius, tau"
    )
    assert refused.value.field == "asd.tua"
    with pytest.raises(BadInputError, match=r"a QueryConfig must be a JSON object, got \[1\]"):
        QueryConfig.from_dict([1])  # type: ignore[arg-type]

"""The one resolver: flags over a config file over the workspace's settings over the defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assft.errors import BadInputError
from assft.query.config import GapEstimator, QueryConfig, Strategy
from assft.settings import resolve_config
from assft.training.config import FinetuneConfig, FinetuneMode
from assft_testing import run_cli


def _file(tmp_path, data, name="config.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_each_layer_overrides_the_one_below(tmp_path):
    defaults = resolve_config(QueryConfig)
    assert defaults == QueryConfig()
    settings = {"budget": 8, "strategy": "dkd"}
    assert resolve_config(QueryConfig, settings=settings).budget == 8
    config = _file(tmp_path, {"budget": 3})
    from_file = resolve_config(QueryConfig, config_file=config, settings=settings)
    assert (from_file.budget, from_file.strategy) == (3, Strategy("dkd"))
    flagged = resolve_config(
        QueryConfig, flags={"budget": 2, "strategy": None}, config_file=config, settings=settings
    )
    assert (flagged.budget, flagged.strategy) == (2, Strategy("dkd"))


def test_a_config_file_sets_only_the_keys_it_names(tmp_path):
    """A file with just ``weight`` leaves the workspace's budget in force, not the default's."""
    config = _file(tmp_path, {"weight": 0.25})
    resolved = resolve_config(QueryConfig, config_file=config, settings={"budget": 7})
    assert (resolved.budget, resolved.weight) == (7, 0.25)


def test_sections_merge_key_by_key(tmp_path):
    config = _file(tmp_path, {"dkd": {"drift": False}, "asd": {"tau": 0.4}})
    resolved = resolve_config(
        QueryConfig, flags={"dkd": {"gap": "bn"}, "views": None}, config_file=config
    )
    assert resolved.dkd.gap == GapEstimator.BN and resolved.dkd.drift is False
    assert resolved.asd.tau == 0.4 and resolved.asd.radius == QueryConfig().asd.radius
    untouched = resolve_config(QueryConfig, flags={"dkd": {"gap": None}})
    assert untouched.dkd == QueryConfig().dkd


def test_only_mapped_workspace_settings_take_part():
    settings = {"budget": 4, "strategy": "random", "finetune_mode": "all"}
    query = resolve_config(QueryConfig, settings=settings)
    assert (query.budget, query.strategy) == (4, Strategy("random"))
    finetune = resolve_config(FinetuneConfig, settings=settings)
    assert finetune.mode == FinetuneMode.ALL
    flagged = resolve_config(FinetuneConfig, flags={"mode": "none"}, settings=settings)
    assert flagged.mode == FinetuneMode.NONE


def test_config_json_is_a_config_file_as_text_and_not_both(tmp_path):
    resolved = resolve_config(FinetuneConfig, config_json='{"iterations": 9}', flags={"seed": 4})
    assert (resolved.iterations, resolved.seed) == (9, 4)
    with pytest.raises(BadInputError, match="--config and --config-json cannot be given together"):
        resolve_config(FinetuneConfig, config_file=_file(tmp_path, {}), config_json="{}")
    with pytest.raises(BadInputError, match="--config-json is not valid JSON"):
        resolve_config(FinetuneConfig, config_json="{")


def test_errors_name_the_file_the_bad_value_came_from(tmp_path):
    workspace_file = tmp_path / "assft.json"
    config = _file(tmp_path, {"budget": 0})
    with pytest.raises(BadInputError) as refused:
        resolve_config(QueryConfig, config_file=config)
    assert str(refused.value) == f"{config}: budget must be at least 1, got 0"
    # A flag that overrides the bad value wins: nothing is refused.
    assert resolve_config(QueryConfig, flags={"budget": 2}, config_file=config).budget == 2
    with pytest.raises(BadInputError) as e:
        resolve_config(QueryConfig, settings={"budget": "ten"}, settings_file=workspace_file)
    assert str(e.value) == f'{workspace_file}: settings.budget must be an integer, got "ten"'
    assert e.value.path == str(workspace_file)
    unknown = _file(tmp_path, {"budjet": 3}, "typo.json")
    with pytest.raises(BadInputError, match=r"typo.json: unknown QueryConfig field\(s\) \['budjet"):
        resolve_config(QueryConfig, config_file=unknown, settings={"budget": 4})
    with pytest.raises(BadInputError, match=r"bad.json: strategy must be one of attsq"):
        resolve_config(QueryConfig, config_file=_file(tmp_path, {"strategy": "best"}, "bad.json"))
    with pytest.raises(BadInputError, match=r"^--budget: budget must be at least 1, got -1$"):
        resolve_config(
            QueryConfig, flags={"budget": -1}, config_file=_file(tmp_path, {"views": 2}, "ok.json")
        )


def test_an_unreadable_config_file_is_named(tmp_path):
    with pytest.raises(BadInputError, match=r"missing.json: cannot read the configuration"):
        resolve_config(QueryConfig, config_file=tmp_path / "missing.json")
    with pytest.raises(BadInputError, match=r"list.json: the configuration must be a JSON object"):
        resolve_config(QueryConfig, config_file=_file(tmp_path, [1], "list.json"))


def test_a_deeply_nested_config_is_refused_in_one_line_naming_the_file(tmp_path, synthetic_pool):
    from assft.workspace import Workspace

    workspace = Workspace.create(tmp_path / "ws", [synthetic_pool[1][0].image])
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    result = run_cli("rank", str(workspace.root), "--config", str(deep))
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert str(deep) in line and "nested too deeply" in line
    assert "RecursionError" not in result.stderr
    with pytest.raises(BadInputError, match="--config-json is nested too deeply"):
        resolve_config(QueryConfig, config_json="[" * 100_000 + "]" * 100_000)


def test_a_refused_flag_is_named_as_the_flag_with_its_field():
    """Item 13: ``--lambda-div nan`` is refused, naming the flag and the field."""
    with pytest.raises(BadInputError) as refused:
        resolve_config(QueryConfig, flags={"lambda_div": float("nan")})
    assert str(refused.value) == "--lambda-div: lambda_div must be a finite number, got nan"
    with pytest.raises(BadInputError) as refused:
        resolve_config(QueryConfig, flags={"dkd": {"gap": "best"}})
    assert str(refused.value).startswith("--gap: dkd.gap must be one of auto, bn, prototype")
    with pytest.raises(BadInputError) as refused:
        resolve_config(FinetuneConfig, flags={"semi_iterations": -5})
    assert str(refused.value) == "--semi-iterations: semi_iterations must be at least 1, got -5"


def test_a_refused_section_value_names_the_file_that_set_it(tmp_path):
    config = _file(tmp_path, {"dkd": {"prototypes": 0}, "asd": {"tau": 0.3}})
    # The flag sets another key of the same section: the file is still the one named.
    with pytest.raises(BadInputError) as refused:
        resolve_config(QueryConfig, flags={"dkd": {"gap": "bn"}}, config_file=config)
    assert str(refused.value) == f"{config}: dkd.prototypes must be at least 1, got 0"
    whole = _file(tmp_path, {"dkd": "bn"}, "whole.json")
    with pytest.raises(BadInputError, match=rf"^{whole}: dkd must be an object of drift, gap"):
        resolve_config(QueryConfig, flags={"weight": 0.5}, config_file=whole)
    typo = _file(tmp_path, {"asd": {"radius": 1, "tua": 0.5}}, "typo.json")
    with pytest.raises(BadInputError) as refused:
        resolve_config(QueryConfig, config_file=typo)
    assert str(refused.value) == (
        f"{typo}: unknown asd field(s) ['tua'] (did you mean tau?); known: radius, tau"
    )


def test_workspace_settings_are_checked_and_named_by_their_key(tmp_path):
    workspace_file = tmp_path / "assft.json"
    cases = [
        (QueryConfig, {"budget": True}, "settings.budget must be an integer, got true"),
        (QueryConfig, {"budget": 0}, "settings.budget must be at least 1, got 0"),
        (QueryConfig, {"strategy": 7}, "settings.strategy must be one of attsq"),
        (FinetuneConfig, {"finetune_mode": "most"}, "settings.finetune_mode must be one of none"),
    ]
    for kind, settings, message in cases:
        with pytest.raises(BadInputError) as refused:
            resolve_config(kind, settings=settings, settings_file=workspace_file)
        assert str(refused.value).startswith(f"{workspace_file}: {message}"), refused.value
    # A typo is refused (it would be ignored), with the known keys; for every config class.
    for kind in (QueryConfig, FinetuneConfig):
        with pytest.raises(BadInputError) as refused:
            resolve_config(kind, settings={"budjet": 3}, settings_file=workspace_file)
        assert str(refused.value) == (
            f"{workspace_file}: unknown setting(s) ['budjet'] in settings (did you mean budget?);"
            " known: budget, finetune_mode, strategy"
        )


def test_a_bad_batch_size_for_the_mode_names_the_file_of_the_batch_size(tmp_path):
    config = _file(tmp_path, {"batch_size": 1})
    with pytest.raises(BadInputError) as refused:
        resolve_config(FinetuneConfig, config_file=config, settings={"finetune_mode": "all"})
    assert str(refused.value).startswith(f"{config}: batch_size must be at least 2")
    resolved = resolve_config(FinetuneConfig, config_file=config, flags={"mode": "none"})
    assert resolved.batch_size == 1


def test_a_config_that_is_a_device_or_holds_an_unconvertible_number_is_one_line(tmp_path):
    from assft.errors import BadInputError
    from assft.settings import MAX_CONFIG_BYTES, read_config_file

    digits = tmp_path / "digits.json"
    digits.write_text('{"budget": ' + "9" * 5000 + "}")
    big = tmp_path / "big.json"
    big.write_text('{"budget": 2, "pad": "' + "x" * MAX_CONFIG_BYTES + '"}')
    for path, message in (
        (digits, "holds a value no setting can take"),
        (big, "more than a configuration's"),
        (Path("/dev/zero"), "is not a regular file"),
        (tmp_path, "is not a regular file"),
    ):
        with pytest.raises(BadInputError) as caught:
            read_config_file(path)
        assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)

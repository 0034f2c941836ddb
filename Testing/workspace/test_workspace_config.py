"""Tests of the workspace configuration (assft.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assft.errors import BadInputError
from assft.workspace import (
    DEFAULT_LABEL_NAMES,
    LABEL_PALETTE,
    LabelInfo,
    WorkspaceConfig,
    make_labels,
)


def test_make_labels_sorts_and_colors() -> None:
    labels = make_labels({2: "white matter", 1: "grey matter"}, colors={2: (0.0, 0.0, 1.0)})
    assert [label.value for label in labels] == [1, 2]
    assert labels[0].color == LABEL_PALETTE[0]
    assert labels[1].color == (0.0, 0.0, 1.0)
    assert [label.name for label in make_labels()] == [DEFAULT_LABEL_NAMES[1]]


@pytest.mark.parametrize(
    "names",
    [{0: "background"}, {-1: "x"}, {70000: "x"}, {1: ""}, {1: "a", 2: "a"}, {}],
)
def test_make_labels_refuses_bad_names(names: dict[int, str]) -> None:
    with pytest.raises(BadInputError):
        make_labels(names)


def test_config_round_trip(tmp_path: Path) -> None:
    config = WorkspaceConfig(
        labels=make_labels({1: "liver", 3: "tumour"}),
        model="/models/preset.json",
        settings={"budget": 4, "strategy": "dkd"},
    )
    path = config.save(tmp_path / "assft.json")
    assert [p.name for p in tmp_path.iterdir()] == ["assft.json"]
    loaded = WorkspaceConfig.load(path)
    assert loaded == config
    assert loaded.label_values == [1, 3]
    assert loaded.label_names == {1: "liver", 3: "tumour"}
    assert loaded.describe_labels() == "1 (liver), 3 (tumour)"
    assert json.loads(path.read_text())["labels"][1] == {
        "value": 3,
        "name": "tumour",
        "color": list(LABEL_PALETTE[1]),
    }
    assert WorkspaceConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "not a JSON object"),
        ('{"labels": []}', "non-empty list"),
        ('{"labels": [{"value": 0, "name": "bg", "color": [0, 0, 0]}]}', "outside 1..65535"),
        ('{"labels": [{"value": 1, "name": "a", "color": [2, 0, 0]}]}', "color"),
        ('{"labels": [{"value": 1, "name": "a", "color": [0, 0, 0]}], "version": 99}', "newer"),
        ('{"labels": [{"value": 1, "name": "a", "color": [0, 0, 0]}], "settings": 3}', "settings"),
    ],
)
def test_malformed_config_names_the_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "assft.json"
    path.write_text(content)
    with pytest.raises(BadInputError, match=message) as caught:
        WorkspaceConfig.load(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_label_info_from_dict_checks_types() -> None:
    assert LabelInfo.from_dict({"value": 2, "name": "b", "color": [0, 0.5, 1]}) == LabelInfo(
        2, "b", (0.0, 0.5, 1.0)
    )
    with pytest.raises(ValueError, match="not an integer"):
        LabelInfo.from_dict({"value": True, "name": "b", "color": [0, 0, 0]})

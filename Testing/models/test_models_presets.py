"""Model presets: the shipped file against its schema, parsing, lookup by name or file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from assft.errors import BadInputError
from assft.models import (
    CheckpointKind,
    ModelPreset,
    get_preset,
    load_presets,
    resources_dir,
)
from assft_testing.models import preset_dict

REQUIRED_PRESETS = {"demo", "swinunetr-ssl", "monai-bundle-segresnet", "deepbet"}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    data = json.loads((resources_dir() / "Models.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(data)
    return data


def preset_validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    single = {**schema, "$ref": "#/$defs/preset"}
    for key in ("required", "properties", "additionalProperties", "type"):
        single.pop(key, None)
    return jsonschema.Draft202012Validator(single)


def test_models_json_matches_schema(schema: dict[str, Any]) -> None:
    data = json.loads((resources_dir() / "Models.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(schema).validate(data)
    for preset in data["presets"]:
        preset_validator(schema).validate(preset)
    assert {p["name"] for p in data["presets"]} >= REQUIRED_PRESETS


def test_presets_parse_and_round_trip() -> None:
    data = json.loads((resources_dir() / "Models.json").read_text(encoding="utf-8"))
    presets = load_presets()
    assert list(presets) == [p["name"] for p in data["presets"]]
    for raw, preset in zip(data["presets"], presets.values(), strict=True):
        assert preset.to_dict() == raw
        assert ModelPreset.from_dict(preset.to_dict()) == preset
    demo = presets["demo"]
    assert demo.architecture == "monai.UNet"
    assert demo.patch_size == (64, 64, 64)
    assert demo.spacing == (3.0, 3.0, 3.0)
    assert demo.label_names == {1: "grey matter", 2: "white matter", 3: "cerebrospinal fluid"}
    assert demo.label_values == [1, 2, 3]
    assert demo.in_encoder("model.1.submodule.0.conv.unit0.adn.N")
    assert not demo.in_encoder("model.1.submodule.2.0.adn.N")
    assert demo.in_head("model.2.0.conv.weight") and not demo.in_head("model.20")
    ssl = presets["swinunetr-ssl"]
    assert not ssl.has_head and ssl.label_names == {}
    assert ssl.checkpoint is not None and ssl.checkpoint.source is CheckpointKind.URL
    deepbet = presets["deepbet"]
    assert deepbet.is_torchscript and deepbet.checkpoint is not None
    assert deepbet.checkpoint.source is CheckpointKind.PACKAGE


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"architecture": "monai.VNet"}, "architecture"),
        ({"patch_size": [64, 64]}, "patch_size"),
        ({"arguments": {"spatial_dims": 3, "in_channels": 1, "out_channels": 3}}, "out_channels"),
        ({"label_names": {"one": "grey matter"}}, "label_names"),
        ({"checkpoint": {"source": "url"}}, "url"),
        ({"overlap": 1.5}, "overlap"),
        ({"overlap": 0.99999}, "overlap"),  # a window a voxel apart: millions for one case
        ({"sw_batch_size": 100000}, "sw_batch_size"),
        ({"patch_size": [100000, 100000, 100000]}, "patch_size"),
        ({"has_head": "yes"}, "has_head"),
        ({"embeding_layer": "model.1"}, "embeding_layer"),
        ({"symmetric_axes": ["sideways"]}, "symmetric_axes has 'sideways'; expected left-right"),
    ],
)
def test_bad_preset_is_refused(
    schema: dict[str, Any], change: dict[str, Any], problem: str
) -> None:
    data = preset_dict("demo", **change)
    with pytest.raises(jsonschema.ValidationError):
        preset_validator(schema).validate(data)
    with pytest.raises(BadInputError, match=problem):
        ModelPreset.from_dict(data, source=Path("my-preset.json"))


def test_symmetric_axes_name_array_axes_of_the_model_grid() -> None:
    lps = preset_dict("demo", symmetric_axes=["left-right", "superior-inferior"])
    lps["preprocessing"]["orientation"] = "PSL"
    preset = ModelPreset.from_dict(lps)
    assert preset.mirror_axes == (1, 2)  # S is axis 1, L axis 2
    assert ModelPreset.from_dict(preset.to_dict()) == preset
    assert ModelPreset.from_dict(preset_dict("demo", symmetric_axes=[])).mirror_axes == ()
    unoriented = preset_dict("demo")
    unoriented["preprocessing"]["orientation"] = None
    with pytest.raises(BadInputError, match="symmetric_axes needs preprocessing.orientation"):
        ModelPreset.from_dict(unoriented)


def test_bad_intensity_is_refused(schema: dict[str, Any]) -> None:
    data = preset_dict("demo")
    data["preprocessing"]["intensity"] = {"kind": "range", "a_min": 0}
    with pytest.raises(jsonschema.ValidationError):
        preset_validator(schema).validate(data)
    with pytest.raises(BadInputError, match="intensity.a_max is missing"):
        ModelPreset.from_dict(data)


def test_get_preset_by_name_and_file(tmp_path: Path) -> None:
    assert get_preset("demo").name == "demo"
    copy = preset_dict("monai-bundle-segresnet", name="my-bundle")
    copy["checkpoint"] = {"source": "path", "path": "weights/model.pt"}
    file = tmp_path / "my-bundle.json"
    file.write_text(json.dumps(copy), encoding="utf-8")
    preset = get_preset(str(file))
    assert preset.name == "my-bundle"
    assert preset.checkpoint is not None
    assert preset.checkpoint.path == str(tmp_path.resolve() / "weights" / "model.pt")
    with pytest.raises(BadInputError, match="demo, swinunetr-ssl"):
        get_preset("no-such-model")
    with pytest.raises(BadInputError, match="does not exist"):
        get_preset(str(tmp_path / "missing.json"))
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")
    with pytest.raises(BadInputError, match="broken.json: is not valid JSON"):
        get_preset(str(tmp_path / "broken.json"))


def test_presets_file_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "Models.json"
    demo = preset_dict("demo")
    file.write_text(json.dumps({"presets": [{**demo, "name": "only"}]}), encoding="utf-8")
    monkeypatch.setenv("ASSFT_MODELS_JSON", str(file))
    assert list(load_presets()) == ["only"]
    assert get_preset("only").name == "only"
    duplicate = {"presets": [demo, demo]}
    file.write_text(json.dumps(duplicate), encoding="utf-8")
    with pytest.raises(BadInputError, match="appears twice"):
        load_presets()


def test_a_network_too_large_for_memory_is_refused_in_one_line() -> None:
    from assft.models import build_network

    data = preset_dict("demo", checkpoint=None)
    data["arguments"]["channels"] = [100000, 100000, 100000, 100000]
    with pytest.raises(BadInputError, match="does not fit in memory|parameters, over"):
        build_network(ModelPreset.from_dict(data), 4)

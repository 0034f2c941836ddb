"""Model versions: add, list, promote, rollback, damaged checkpoints, a full disk."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from assft.errors import AssftError, BadInputError
from assft.workspace import Workspace
from assft.workspace.model_versions import ModelRegistry, ModelStorageError


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    array = np.random.default_rng(0).normal(size=(6, 7, 8)).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "scan.nii.gz"))
    return Workspace.create(
        tmp_path / "ws", [tmp_path / "scan.nii.gz"], model="demo", user="tester"
    )


@pytest.fixture
def registry(workspace: Workspace) -> ModelRegistry:
    return ModelRegistry(workspace)


def _weights(value: float) -> dict[str, torch.Tensor]:
    """Weights that do not fit the workspace's preset: enough for storing, not for using."""
    return {"conv.weight": torch.full((2, 3), value), "conv.bias": torch.arange(2.0)}


def _fitting(registry: ModelRegistry, value: float) -> dict[str, torch.Tensor]:
    """Weights of the workspace's preset (the demo UNet), every float shifted by ``value``."""
    state = registry.load("v0").network.state_dict()
    return {k: v + value if v.is_floating_point() else v for k, v in state.items()}


def _listing(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_a_fresh_workspace_has_only_the_preset(registry):
    assert registry.current() == "v0"
    assert registry.versions() == [
        {
            "version": "v0",
            "parent": None,
            "created_at": None,
            "metrics": {},
            "promoted": True,
            "preset": "demo",
            "current": True,
        }
    ]
    assert registry.checkpoint_path("v0") is None
    assert registry.load_state("v0") is None
    assert registry.next_version() == "v1"


def test_add_promote_rollback(registry, workspace):
    v1 = registry.add_version(
        _fitting(registry, 1.0),
        {
            "label_set_hash": "abc",
            "mode": "selective",
            "metrics": {"dice": 0.5},
            "gate": {"passed": True},
        },
    )
    assert v1 == "v1" and registry.current() == "v0"  # adding never moves the pointer
    manifest = registry.manifest("v1")
    assert manifest["parent"] == "v0" and manifest["promoted"] is False
    assert manifest["mode"] == "selective" and manifest["metrics"] == {"dice": 0.5}
    assert {"created_at", "checkpoint_sha256", "label_set_hash", "gate"} <= manifest.keys()
    assert (workspace.models_dir / "v1" / "model.pt").is_file()

    registry.promote("v1", reason="gate passed: dice 0.50 >= 0.40")
    assert registry.current() == "v1" and workspace.current_model_version() == "v1"
    assert registry.manifest("v1")["promoted"] is True
    state = registry.load_state("v1")
    key = next(iter(state))
    assert torch.equal(state[key], _fitting(registry, 1.0)[key])

    v2 = registry.add_version(_fitting(registry, 2.0), {"mode": "all"})
    assert v2 == "v2" and registry.manifest("v2")["parent"] == "v1"
    listed = registry.to_json()
    assert listed["current"] == "v1"
    assert [(v["version"], v["current"]) for v in listed["versions"]] == [
        ("v0", False),
        ("v1", True),
        ("v2", False),
    ]

    result = registry.rollback("v2")  # a newer version, not promoted: stays unpromoted
    assert registry.current() == "v2" and result["rolled_back_from"] == "v1"
    assert registry.manifest("v2")["promoted"] is False
    registry.rollback("v0")
    assert registry.current() == "v0"

    actions = [row for row in workspace.registry.audit_trail() if row["action"].endswith("-model")]
    assert [row["action"] for row in actions] == [
        "promote-model",
        "rollback-model",
        "rollback-model",
    ]
    assert actions[0]["detail"] == {
        "version": "v1",
        "previous": "v0",
        "reason": "gate passed: dice 0.50 >= 0.40",
        "job": None,
    }
    assert actions[1]["detail"] == {"version": "v2", "rolled_back_from": "v1"}


@pytest.mark.parametrize(
    "bad", ["../x", "v1/../../etc", "V1", "v", "", "v1 ", "v00", "current", None]
)
def test_malformed_versions_are_refused(registry, bad):
    registry.promote(registry.add_version(_weights(1.0), {}), reason="test")
    for call in (registry.manifest, registry.checkpoint_path, registry.verify, registry.rollback):
        with pytest.raises(BadInputError, match="not a model version"):
            call(bad)
    with pytest.raises(BadInputError):
        registry.promote(bad, reason="x")
    assert registry.current() == "v1"


def test_unknown_versions_are_refused(registry):
    registry.add_version(_weights(1.0), {})
    expected = r"unknown model version 'v7' \(versions: v0, v1\)"
    with pytest.raises(BadInputError, match=expected):
        registry.manifest("v7")
    with pytest.raises(BadInputError, match="unknown"):
        registry.rollback("v7")
    assert registry.current() == "v0"


def test_a_truncated_checkpoint_is_detected_and_the_parent_used(registry, workspace):
    registry.promote(registry.add_version(_fitting(registry, 1.0), {}), reason="gate")
    registry.promote(registry.add_version(_fitting(registry, 2.0), {}), reason="gate")
    assert registry.current() == "v2"
    checkpoint = registry.checkpoint_path("v2")
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])

    with pytest.raises(BadInputError, match="is damaged: sha256 differs") as caught:
        registry.verify("v2")
    assert str(checkpoint) in str(caught.value)
    with pytest.raises(BadInputError, match="is damaged"):
        registry.load_state("v2")

    version, warning = registry.current_or_fallback()
    assert version == "v1" and "v2" in warning and "using v1" in warning
    key = next(iter(registry.load_state(version)))
    assert torch.equal(registry.load_state(version)[key], _fitting(registry, 1.0)[key])

    registry.rollback("v1")
    with pytest.raises(BadInputError, match="is damaged"):
        registry.rollback("v2")
    with pytest.raises(BadInputError, match="is damaged"):
        registry.promote("v2", reason="x")
    assert registry.current() == "v1"
    assert registry.current_or_fallback() == ("v1", None)

    checkpoint.unlink()  # a missing file walks up the chain too
    workspace.set_current_model_version("v2")
    assert registry.current_or_fallback()[0] == "v1"
    workspace.set_current_model_version("v9")  # a pointer to nothing falls back to the preset
    assert registry.current_or_fallback()[0] == "v0"


def test_left_over_partial_folders_are_never_reused(registry, workspace):
    (workspace.models_dir / ".v4.partial").mkdir()
    assert registry.next_version() == "v5"
    assert registry.add_version(_weights(1.0), {}) == "v5"
    assert [v["version"] for v in registry.versions()] == ["v0", "v5"]


@pytest.mark.parametrize("target", ["save", "replace"])
def test_a_full_disk_leaves_everything_as_it_was(registry, workspace, monkeypatch, target):
    registry.promote(registry.add_version(_weights(1.0), {}), reason="gate")
    before = _listing(workspace.models_dir)
    v1_bytes = registry.checkpoint_path("v1").read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if target == "save":
        monkeypatch.setattr(torch, "save", full_disk)
    else:
        monkeypatch.setattr(os, "replace", full_disk)
    expected = "cannot store model version v2.*No space left"
    with pytest.raises(ModelStorageError, match=expected) as caught:
        registry.add_version(_weights(2.0), {})
    assert isinstance(caught.value, AssftError)
    monkeypatch.undo()

    assert _listing(workspace.models_dir) == before  # no v2, no .v2.partial
    assert registry.current() == "v1"
    assert registry.checkpoint_path("v1").read_bytes() == v1_bytes
    registry.verify("v1")
    assert registry.add_version(_weights(2.0), {}) == "v2"


def test_label_set_hash_depends_on_content_not_order():
    first = ModelRegistry.label_set_hash({"a": "11", "b": "22"})
    assert first == ModelRegistry.label_set_hash({"b": "22", "a": "11"})
    assert first != ModelRegistry.label_set_hash({"a": "11", "b": "23"})
    assert first != ModelRegistry.label_set_hash({"a": "11"})
    assert len(first) == 64


def test_load_resolves_a_version_to_its_model(registry, workspace):
    assert registry.checkpoint() is None and registry.checkpoint("v0") is None
    base = registry.load(device="cpu")  # the current version: v0, the preset as configured
    assert base.preset.name == "demo"
    assert base.label_values == [int(v) for v in workspace.config.label_values]
    tuned = {
        key: value + 1.0 if value.is_floating_point() else value
        for key, value in base.network.state_dict().items()
    }
    version = registry.add_version(tuned, {"mode": "test"})
    assert registry.checkpoint(version) == workspace.models_dir / "v1" / "model.pt"

    def same_weights(model, expected) -> bool:
        state = model.network.state_dict()
        return state.keys() == expected.keys() and all(
            torch.equal(state[key].cpu(), expected[key]) for key in expected
        )

    assert same_weights(registry.load(version), tuned) and registry.load(version).has_head
    assert same_weights(registry.load(), base.network.state_dict())  # None: still v0
    registry.promote(version, reason="test")
    assert registry.checkpoint() == registry.checkpoint_path("v1")
    assert same_weights(registry.load(), tuned)  # None follows the pointer

    checkpoint = registry.checkpoint_path("v1")
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    with pytest.raises(BadInputError, match="is damaged") as caught:
        registry.load()
    assert str(checkpoint) in str(caught.value)


@pytest.mark.parametrize(
    ("version", "message"),
    [
        ("v7", r"unknown model version 'v7' \(versions: v0, v1\)"),
        ("v01", r"'v01' is not a model version name \(did you mean v1\?\)"),
        ("../v1", r"'../v1' is not a model version name \(v0, v1, v2, \.\.\.\)"),
        ("latest", r"'latest' is not a model version name"),
    ],
)
def test_load_refuses_unknown_and_malformed_versions_in_one_line(registry, version, message):
    registry.add_version(_weights(1.0), {})
    for call in (registry.load, registry.checkpoint):
        with pytest.raises(BadInputError, match=message) as caught:
            call(version)
        assert "\n" not in str(caught.value)

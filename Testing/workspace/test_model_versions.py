"""Model versions: add, list, promote, rollback, damaged checkpoints and pointers, a full disk,
non-finite weights, pointer changes that fail or are killed."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from assft.errors import AssftError, BadInputError, DivergedError
from assft.workspace import Workspace
from assft.workspace.files import sha256_file
from assft.workspace.model_versions import ModelVersions
from assft.workspace.version_store import ModelStorageError
from assft_testing import pause_env, wait_until_paused


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    array = np.random.default_rng(0).normal(size=(6, 7, 8)).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "scan.nii.gz"))
    return Workspace.create(
        tmp_path / "ws", [tmp_path / "scan.nii.gz"], model="demo", user="tester"
    )


@pytest.fixture
def registry(workspace: Workspace) -> ModelVersions:
    return ModelVersions(workspace)


def _weights(value: float) -> dict[str, torch.Tensor]:
    """Weights that do not fit the workspace's preset: enough for storing, not for using."""
    return {"conv.weight": torch.full((2, 3), value), "conv.bias": torch.arange(2.0)}


def _fitting(registry: ModelVersions, value: float) -> dict[str, torch.Tensor]:
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


def test_listing_the_versions_again_hashes_the_current_weights_once(
    registry, workspace, monkeypatch
):
    """Every panel refresh hashed the current weights on the GUI thread (0.4 s for 250 MB,
    issue 22): a listing remembers the hash of an unchanged file; a changed file, even of the
    same size and time, is hashed again; loading always hashes afresh."""
    import assft.workspace.files as files

    registry.promote(registry.add_version(_fitting(registry, 1.0), {}), reason="gate")
    hashed: list[str] = []
    real = files.sha256_file
    monkeypatch.setattr(files, "sha256_file", lambda path: hashed.append(str(path)) or real(path))
    checkpoint = str(registry.checkpoint_path("v1"))
    for _ in range(3):
        assert registry.to_json()["problems"] == [] and registry.problems() == []
    assert hashed.count(checkpoint) == 1  # the first listing only

    data = bytearray(Path(checkpoint).read_bytes())
    data[-5] ^= 0xFF  # same size; the modification time set back as it was
    stat = os.stat(checkpoint)
    Path(checkpoint).write_bytes(bytes(data))
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert any("is damaged" in problem for problem in registry.problems())
    listed = {entry["version"]: entry for entry in registry.versions()}
    assert "is damaged" in listed["v1"]["error"]


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
    first = ModelVersions.label_set_hash({"a": "11", "b": "22"})
    assert first == ModelVersions.label_set_hash({"b": "22", "a": "11"})
    assert first != ModelVersions.label_set_hash({"a": "11", "b": "23"})
    assert first != ModelVersions.label_set_hash({"a": "11"})
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


# Non-finite weights, failed and killed pointer changes, damaged pointers, rollback checks --------


def _audit(workspace: Workspace, action: str) -> list[dict]:
    return [row for row in workspace.registry.audit_trail() if row["action"] == action]


def _refuse_audit_rows(workspace: Workspace) -> None:
    """Make SQLite itself refuse every new audit row (a trigger), as a broken registry would."""
    with sqlite3.connect(workspace.registry.path) as connection:
        connection.execute(
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit "
            "BEGIN SELECT RAISE(ABORT, 'audit rows refused by the test'); END"
        )


def _accept_audit_rows(workspace: Workspace) -> None:
    with sqlite3.connect(workspace.registry.path) as connection:
        connection.execute("DROP TRIGGER refuse_audit")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_add_version_refuses_non_finite_weights(registry, workspace, bad):
    weights = _fitting(registry, 0.0)
    key = next(k for k, v in weights.items() if v.is_floating_point())
    weights[key] = weights[key].clone()
    weights[key].view(-1)[0] = bad
    with pytest.raises(DivergedError, match=f"non-finite values .* in {key}"):
        registry.add_version(weights, {})
    assert not workspace.models_dir.exists() or _listing(workspace.models_dir) == []
    assert registry.next_version() == "v1"


def test_a_promotion_the_registry_refuses_changes_nothing(registry, workspace):
    registry.promote(registry.add_version(_fitting(registry, 1.0), {}), reason="gate")
    v2 = registry.add_version(_fitting(registry, 2.0), {})
    manifest_before = (workspace.models_dir / v2 / "manifest.json").read_bytes()
    _refuse_audit_rows(workspace)
    with pytest.raises(BadInputError, match="audit rows refused by the test"):
        registry.promote(v2, reason="gate")
    with pytest.raises(BadInputError, match="audit rows refused by the test"):
        registry.rollback("v0")
    # Not the pointer, not the manifest, not the audit trail: the promotion did not happen.
    assert registry.current() == "v1" and registry.recorded_current() == "v1"
    assert (workspace.models_dir / v2 / "manifest.json").read_bytes() == manifest_before
    assert [row["detail"]["version"] for row in _audit(workspace, "promote-model")] == ["v1"]
    assert registry.problems() == []
    _accept_audit_rows(workspace)
    registry.promote(v2, reason="gate")
    assert registry.current() == "v2" and registry.manifest("v2")["promoted"] is True


def test_a_promotion_checks_the_version_it_was_validated_against(registry, workspace):
    registry.promote(registry.add_version(_fitting(registry, 1.0), {}), reason="gate")
    v2 = registry.add_version(_fitting(registry, 2.0), {"parent": "v1"})
    registry.rollback("v0")  # meanwhile the clinician went back to the preset
    result = registry.promote(v2, reason="gate passed", expect_current="v1", job="job-1")
    assert result["current"] is False and registry.current() == "v0"
    manifest = registry.manifest(v2)
    assert manifest["promoted"] is False
    assert "the current version is v0, not v1" in manifest["not_promoted_reason"]
    (decision,) = _audit(workspace, "register-model")
    assert decision["detail"]["version"] == "v2" and decision["detail"]["job"] == "job-1"
    assert registry.decision("v2") == decision
    # Still current: promoted.
    v3 = registry.add_version(_fitting(registry, 3.0), {"parent": "v0"})
    assert registry.promote(v3, reason="gate", expect_current="v0", job="job-2")["current"]
    assert registry.current() == "v3" and _audit(workspace, "promote-model")[-1]["detail"] == {
        "version": "v3",
        "previous": "v0",
        "reason": "gate",
        "job": "job-2",
    }


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", r"is damaged \(empty\)"),
        (b"\n  \n", r"is damaged \(empty\)"),
        (b"\xff\xfe\x00garbage", r"is damaged \(not text\)"),
        (b"hello world", r"is damaged \('hello world' is not a version name\)"),
        (b"../../etc", r"is damaged \('../../etc' is not a version name\)"),
    ],
)
def test_a_damaged_pointer_is_reported_in_one_line_and_rollback_repairs_it(
    registry, workspace, content, problem
):
    registry.promote(registry.add_version(_fitting(registry, 1.0), {}), reason="gate")
    pointer = workspace.models_dir / "current"
    pointer.write_bytes(content)
    for call in (registry.current, workspace.current_model_version, registry.load):
        with pytest.raises(BadInputError, match=problem) as caught:
            call()
        message = str(caught.value)
        assert "\n" not in message and str(pointer) in message and "assft rollback" in message
    assert workspace.status_summary()["model_version"] is None
    listed = registry.to_json()
    assert listed["current"] is None and len(listed["problems"]) == 1
    assert not any(v["current"] for v in listed["versions"])

    result = registry.rollback("v1")
    assert result["rolled_back_from"] is None and "is damaged" in result["repaired"]
    assert registry.current() == "v1" and pointer.read_text() == "v1\n"
    assert "is damaged" in _audit(workspace, "rollback-model")[-1]["detail"]["repaired"]
    assert registry.problems() == []


def test_a_missing_pointer_is_the_preset(registry, workspace):
    assert not (workspace.models_dir / "current").exists()
    assert registry.current() == "v0" and registry.problems() == []


def test_a_deleted_pointer_is_refused_not_taken_for_the_preset(registry, workspace):
    """Once a version was made current, a missing models/current is damage: every reader
    refuses in one line naming the file and the repair, rather than using v0 in silence."""
    registry.promote(registry.add_version(_fitting(registry, 1.0), {}), reason="gate")
    pointer = workspace.models_dir / "current"
    pointer.unlink()
    for call in (registry.current, workspace.current_model_version, registry.load):
        with pytest.raises(BadInputError) as caught:
            call()
        message = str(caught.value)
        assert "\n" not in message and str(pointer) in message
        assert "is missing, but v1 was made current" in message
        assert f"assft rollback {workspace.root} v1" in message
    (problem,) = registry.problems()
    assert "is missing" in problem
    result = registry.rollback("v1")
    assert "is missing" in result["repaired"]
    assert registry.current() == "v1" and registry.problems() == []


def test_rollback_refuses_weights_that_cannot_serve(registry, workspace, tmp_path):
    registry.promote(registry.add_version(_fitting(registry, 1.0), {}), reason="gate")
    unfit = registry.add_version(_weights(2.0), {})  # another network's weights
    with pytest.raises(BadInputError, match="weights do not fit monai.UNet") as caught:
        registry.rollback(unfit)
    assert str(registry.checkpoint_path(unfit)) in str(caught.value)

    # A checkpoint that is not plain weights (it would run code when loaded), its manifest's
    # sha256 updated to match, and one with NaN weights stored by an older ASSFT.
    code = registry.add_version(_fitting(registry, 3.0), {})
    torch.save({"weights": _fitting(registry, 3.0), "extra": Path("x")}, tmp_path / "code.pt")
    nan = registry.add_version(_fitting(registry, 4.0), {})
    state = _fitting(registry, 4.0)
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = torch.full_like(state[first], float("nan"))
    torch.save(state, tmp_path / "nan.pt")
    for version, source in ((code, "code.pt"), (nan, "nan.pt")):
        checkpoint = registry.checkpoint_path(version)
        checkpoint.write_bytes((tmp_path / source).read_bytes())
        manifest = registry.manifest(version)
        manifest["checkpoint_sha256"] = sha256_file(checkpoint)
        (workspace.models_dir / version / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BadInputError, match="holds Python objects besides weights"):
        registry.rollback(code)
    with pytest.raises(BadInputError, match=f"non-finite values .* in {first}"):
        registry.rollback(nan)
    assert registry.current() == "v1"
    assert [row["detail"]["version"] for row in _audit(workspace, "rollback-model")] == []
    registry.rollback("v0")  # the preset loads
    assert registry.current() == "v0"


def test_a_current_version_that_cannot_be_used_is_flagged(registry, workspace):
    registry.promote(registry.add_version(_fitting(registry, 1.0), {}), reason="gate")
    registry.add_version(_fitting(registry, 2.0), {})
    checkpoint = registry.checkpoint_path("v1")
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    listed = registry.to_json()
    (problem,) = listed["problems"]
    assert problem.startswith("the current model version v1 cannot be used")
    assert "is damaged" in problem
    current = next(v for v in listed["versions"] if v["current"])
    assert current["version"] == "v1" and "is damaged" in current["error"]
    assert "error" not in listed["versions"][2]  # v2 is fine (and not hashed: not current)
    assert registry.problems() == [problem]

    (workspace.models_dir / "v1" / "manifest.json").write_text("{not json")
    listed = registry.to_json()
    current = next(v for v in listed["versions"] if v["current"])
    assert "cannot be read as a model manifest" in current["error"]
    assert "cannot be read as a model manifest" in listed["problems"][0]


_ROLLBACK_SCRIPT = """
import sys
from assft.workspace import Workspace
from assft.workspace.model_versions import ModelVersions
ModelVersions(Workspace.open(sys.argv[1])).rollback(sys.argv[2])
"""


def test_a_pointer_change_killed_before_its_commit_is_put_back(registry, workspace, tmp_path):
    registry.promote(registry.add_version(_fitting(registry, 1.0), {}), reason="gate")
    pause = tmp_path / "pause"
    process = subprocess.Popen(
        [sys.executable, "-c", _ROLLBACK_SCRIPT, str(workspace.root), "v0"],
        env={**os.environ, **pause_env("model-pointer-moved", pause)},
    )
    try:
        wait_until_paused(process, pause, "model-pointer-moved")
    finally:
        process.kill()  # SIGKILL: no handler, no finally, the transaction never commits
        process.wait()
    # The pointer moved, the registry never recorded it: reported, then put back.
    assert registry.current() == "v0" and registry.recorded_current() == "v1"
    (problem,) = registry.problems()
    assert "names v0, but the registry records v1" in problem
    repaired = registry.recover()
    assert repaired is not None and "put back to v1" in repaired
    assert registry.current() == "v1" and registry.problems() == []
    assert _audit(workspace, "rollback-model") == []
    assert _audit(workspace, "restore-model-pointer")[0]["detail"] == {
        "version": "v1",
        "found": "v0",
    }
    assert registry.recover() is None

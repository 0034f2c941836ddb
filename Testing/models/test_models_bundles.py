"""MONAI bundles as models (``--model bundle:PATH``) and as what ``assft export`` gives back.

The bundles are built here: the shipped demo model written as a bundle (its real pretrained
weights), then read back by MONAI's own ``ConfigParser``, run by ``python -m monai.bundle run``,
and compared with what the engine predicts.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from assft.errors import BadInputError
from assft.models import get_preset, load_model
from assft.models.bundles import METADATA, WEIGHTS, preset_from_bundle, write_bundle
from assft.models.checkpoints import load_checkpoint_state, locate_checkpoint
from assft_testing import run_cli, skip_without_template
from assft_testing.models import tiny_unet

pytest.importorskip("ignite", reason="python -m monai.bundle run needs pytorch-ignite")


def _demo_bundle(out: Path) -> Path:
    preset = get_preset("demo")
    assert preset.checkpoint is not None
    weights = locate_checkpoint(preset.checkpoint, preset.name)
    assert weights is not None
    return write_bundle(preset, preset.label_names, load_checkpoint_state(weights), out)


@pytest.fixture(scope="module")
def demo_bundle(tmp_path_factory) -> Path:
    return _demo_bundle(tmp_path_factory.mktemp("bundles") / "demo_bundle")


def test_a_bundle_reads_back_as_the_preset_it_was_written_from(demo_bundle) -> None:
    demo = get_preset("demo")
    bundle = preset_from_bundle(f"bundle:{demo_bundle}")
    different = {key for key, value in demo.to_dict().items() if bundle.to_dict().get(key) != value}
    # Everything the engine runs by is read back from MONAI's own configs.
    assert different == {"name", "description", "checkpoint"}
    assert bundle.name == f"bundle:{demo_bundle}"
    assert bundle.checkpoint is not None and bundle.checkpoint.path == str(demo_bundle / WEIGHTS)
    assert "UNet from network_def" in bundle.description
    loaded = load_model(bundle)
    shipped = load_model(demo)
    assert loaded.pretrained and loaded.has_head and not loaded.head_reinitialised
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.predict_logits(x), shipped.predict_logits(x))


def test_references_resolve_as_monai_resolves_them_and_expressions_never_run(tmp_path) -> None:
    preset = tiny_unet()
    bundle = write_bundle(
        preset, preset.label_names, load_model(preset).network.state_dict(), tmp_path / "b"
    )
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    channels = config["network_def"]["channels"]
    config["num_channels"] = channels
    config["network_def"]["channels"] = "@num_channels"
    config["network_def"]["out_channels"] = "@num_outputs"
    config["num_outputs"] = len(preset.label_names) + 1
    config["inferer"]["roi_size"] = "@patch"
    config["patch"] = list(preset.patch_size)
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    read = preset_from_bundle(f"bundle:{bundle}")
    assert read.arguments["channels"] == list(channels)
    assert read.patch_size == preset.patch_size
    assert read.label_values == preset.label_values
    # An expression is code: it is never evaluated, and says so in one line.
    marker = tmp_path / "ran"
    config["num_outputs"] = f"$open({str(marker)!r}, 'w').write('x') and 3"
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(BadInputError, match="network_def.out_channels is a Python expression"):
        preset_from_bundle(f"bundle:{bundle}")
    assert not marker.exists()


def _dice(a: np.ndarray, b: np.ndarray, value: int) -> float:
    x, y = a == value, b == value
    return 2.0 * float((x & y).sum()) / max(float(x.sum() + y.sum()), 1.0)


@skip_without_template()
def test_a_workspace_from_a_bundle_fine_tunes_and_exports_a_bundle_monai_runs(
    demo_bundle, tmp_path
) -> None:
    from assft.apps import sampledata

    data = tmp_path / "data"
    data.mkdir()
    for index in range(2):
        image, label = sampledata.make_case("t2", index, seed=0).to_images()
        sitk.WriteImage(image, str(data / f"t2_{index:03d}.nii.gz"))
        sitk.WriteImage(label, str(tmp_path / f"t2_{index:03d}-label.nii.gz"))
    ws = tmp_path / "ws"
    scans = [str(p) for p in sorted(data.glob("*.nii.gz"))]
    run_cli("init", str(ws), "--images", *scans, "--model", f"bundle:{demo_bundle}")
    assert json.loads((ws / "assft.json").read_text())["model"] == f"bundle:{demo_bundle}"
    run_cli("submit", str(ws), "t2_000", str(tmp_path / "t2_000-label.nii.gz"))
    run_cli("finetune", str(ws), "--iterations", "4", "--mode", "none", "--progress", "none")
    version = json.loads(run_cli("models", str(ws), "--json").stdout)
    newest = max(version["versions"], key=lambda v: int(v["version"][1:]))["version"]
    assert newest == "v1"

    out = tmp_path / "exported"
    result = json.loads(run_cli("export", str(ws), "v1", "--out", str(out), "--json").stdout)
    assert result["bundle_version"] == "0.1.1" and result["source"] == str(demo_bundle)
    metadata = json.loads((out / METADATA).read_text())
    assert metadata["version"] == "0.1.1"
    assert list(metadata["changelog"])[:2] == ["0.1.1", "0.1.0"]
    assert "ASSFT model version v1" in metadata["changelog"]["0.1.1"]
    assert "parent v0, 1 labeled case(s), mode none" in metadata["changelog"]["0.1.1"]
    stored = load_checkpoint_state(ws / "models" / "v1" / "model.pt")
    exported = torch.load(out / WEIGHTS, map_location="cpu", weights_only=True)
    assert stored.keys() == exported.keys()
    assert all(torch.equal(stored[k], exported[k]) for k in stored)
    assert not all(
        torch.equal(stored[k], load_checkpoint_state(demo_bundle / WEIGHTS)[k]) for k in stored
    )

    # MONAI's own runner on the exported bundle predicts what the engine predicts for v1.
    monai_out = tmp_path / "monai"
    subprocess.run(
        [
            sys.executable, "-m", "monai.bundle", "run",
            "--config_file", str(out / "configs" / "inference.json"),
            "--meta_file", str(out / METADATA),
            "--bundle_root", str(out),
            "--dataset_dir", str(data),
            "--output_dir", str(monai_out),
        ],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    ours = tmp_path / "ours"
    run_cli("predict", str(ws), "--all", "--version", "v1", "--views", "1", "--out", str(ours))
    for scan in scans:
        case = Path(scan).name.removesuffix(".nii.gz")
        theirs = sitk.ReadImage(str(monai_out / f"{case}_seg.nii.gz"))
        mine = sitk.ReadImage(str(ours / f"{case}.nii.gz"))
        assert theirs.GetSize() == mine.GetSize()
        assert np.allclose(theirs.GetOrigin(), mine.GetOrigin())
        a = sitk.GetArrayFromImage(theirs).squeeze()
        b = sitk.GetArrayFromImage(mine)
        for value in (1, 2, 3):
            assert (b == value).sum() > 100, f"{case}: no label {value} predicted"
            assert _dice(a, b, value) >= 0.99, f"{case} label {value}"


def _break(bundle: Path, what: str) -> Path:
    config = bundle / "configs" / "inference.json"
    data = json.loads(config.read_text())
    metadata = json.loads((bundle / METADATA).read_text())
    if what == "no metadata":
        (bundle / METADATA).unlink()
        return bundle / METADATA
    if what == "no network_def":
        del data["network_def"]
    elif what == "foreign network":
        data["network_def"] = {"_target_": "BasicUNet", "spatial_dims": 3, "out_channels": 4}
    elif what == "no weights":
        (bundle / WEIGHTS).unlink()
        return bundle / WEIGHTS
    elif what == "weights that do not fit":
        data["network_def"]["channels"] = [8, 16, 32, 64]
    elif what == "channels that do not fit":
        metadata["network_data_format"]["outputs"]["pred"]["channel_def"]["4"] = "lesion"
        (bundle / METADATA).write_text(json.dumps(metadata))
        return bundle / METADATA
    elif what == "broken reference":
        data["network_def"]["channels"] = "@nowhere"
    elif what == "not JSON":
        config.write_text("{ not json")
        return config
    config.write_text(json.dumps(data))
    return bundle / WEIGHTS if what == "weights that do not fit" else config


@pytest.mark.parametrize(
    "what, message",
    [
        ("no metadata", "is not a MONAI bundle: it has no configs/metadata.json"),
        ("no network_def", "MONAI bundle config without network_def"),
        ("foreign network", "network_def is 'BasicUNet'"),
        ("no weights", "MONAI bundle without weights: models/model.pt is missing"),
        ("weights that do not fit", ""),
        ("channels that do not fit", "channel_def names channels [1, 2, 3, 4]"),
        ("broken reference", "network_def.channels cannot be resolved"),
        ("not JSON", "cannot be read as a bundle config"),
    ],
)
def test_a_bad_bundle_is_refused_in_one_line_and_nothing_is_created(
    demo_bundle, tmp_path, what, message
) -> None:
    from assft.workspace.creation import create_workspace

    bundle = shutil.copytree(demo_bundle, tmp_path / "bundle")
    named = _break(bundle, what)
    image = tmp_path / "scan.nii.gz"
    sitk.WriteImage(sitk.Image(16, 16, 16, sitk.sitkFloat32), str(image))
    ws = tmp_path / "ws"
    with pytest.raises(BadInputError) as refused:
        create_workspace(ws, [image], model=f"bundle:{bundle}")
    line = str(refused.value)
    assert "\n" not in line
    folder_named = str(named) in line or (str(bundle) in line and what == "no weights")
    assert folder_named or (what == "no metadata" and str(bundle) in line), line
    assert message in line
    assert not ws.exists()


def test_the_command_line_refuses_a_bad_bundle_with_exit_2(demo_bundle, tmp_path) -> None:
    bundle = shutil.copytree(demo_bundle, tmp_path / "bundle")
    config = _break(bundle, "no network_def")
    image = tmp_path / "scan.nii.gz"
    sitk.WriteImage(sitk.Image(16, 16, 16, sitk.sitkFloat32), str(image))
    ws = tmp_path / "ws"
    result = run_cli("init", str(ws), "--images", str(image), "--model", f"bundle:{bundle}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"assft: error: {config}: MONAI bundle config without network_def"
    ]
    assert not ws.exists()


def test_export_refuses_a_folder_inside_the_workspace_or_one_that_exists(
    tiny_preset_file, synthetic_pool, tmp_path
) -> None:
    from assft.workspace.creation import create_workspace
    from assft.workspace.export import export_version

    folder, cases = synthetic_pool
    workspace = create_workspace(tmp_path / "ws", [cases[0].image], model=str(tiny_preset_file))
    with pytest.raises(BadInputError, match="lies inside the workspace"):
        export_version(workspace, None, workspace.root / "exported")
    # Nor into another workspace's folders (models/ would list a damaged version).
    other = create_workspace(tmp_path / "other", [cases[0].image], model=str(tiny_preset_file))
    for inside in (other.root / "models" / "v1", other.root / "labels" / "x", other.root / "x"):
        with pytest.raises(BadInputError, match=f"lies inside another workspace, {other.root}"):
            export_version(workspace, None, inside)
        assert not inside.exists()
    taken = tmp_path / "taken"
    taken.mkdir()
    with pytest.raises(BadInputError, match="already exists"):
        export_version(workspace, None, taken)
    # A preset that is not a bundle is written as a new bundle at version 0.1.0.
    result = export_version(workspace, None, tmp_path / "new")
    assert result["version"] == "v0" and result["bundle_version"] == "0.1.0"
    assert (
        preset_from_bundle(tmp_path / "new").label_names == get_preset(tiny_preset_file).label_names
    )
    assert not list(tmp_path.glob(".*partial"))


PERCENTILES = {
    "spacing": [2.0, 2.0, 3.0],
    "orientation": "LPS",
    "intensity": {
        "kind": "percentile",
        "lower": 1,
        "upper": 99,
        "b_min": 0,
        "b_max": 1,
        "clip": True,
    },
}


@pytest.mark.parametrize(
    "make, overrides",
    [
        ("tiny_unet", {}),
        ("tiny_unet", {"preprocessing": PERCENTILES}),
        ("tiny_segresnet", {}),
        ("tiny_swinunetr", {}),  # its intensity is a range (CT Hounsfield units to 0..1)
    ],
)
def test_each_monai_architecture_reads_back_with_the_layers_the_method_needs(
    make, overrides, tmp_path
) -> None:
    from assft_testing import models

    # Fresh weights: nothing to download.
    preset = getattr(models, make)(checkpoint=None, **overrides)
    names = preset.label_names or {1: "grey matter", 2: "white matter"}
    state = load_model(preset, label_values=sorted(names)).network.state_dict()
    bundle = write_bundle(preset, names, state, tmp_path / make)
    read = preset_from_bundle(bundle)
    assert read.architecture == preset.architecture
    assert (read.spacing, read.orientation) == (preset.spacing, preset.orientation)
    assert read.intensity == preset.intensity
    assert (read.patch_size, read.sw_batch_size, read.overlap) == (
        preset.patch_size,
        preset.sw_batch_size,
        preset.overlap,
    )
    assert read.embedding_layer == preset.embedding_layer
    assert read.head_layer == preset.head_layer
    assert set(read.encoder_prefixes) == set(preset.encoder_prefixes)
    loaded = load_model(read)  # the layers exist, the weights fit exactly
    assert loaded.pretrained and not loaded.head_reinitialised

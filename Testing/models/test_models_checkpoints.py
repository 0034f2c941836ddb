"""Reading, matching and writing weights: safe loading, clear refusals, new heads."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch

from assft.errors import BadInputError
from assft.models import (
    ModelPreset,
    build_network,
    get_preset,
    load_checkpoint_state,
    load_model,
    resolve_device,
    save_state_dict,
)
from assft_testing.models import tiny_swinunetr, tiny_unet, tiny_unet_dict


def _window(seed: int = 1, size: int = 16) -> torch.Tensor:
    return torch.randn((1, 1, size, size, size), generator=torch.Generator().manual_seed(seed))


def _with_checkpoint(tmp_path: Path, network: torch.nn.Module, **overrides: object) -> ModelPreset:
    path = save_state_dict(network, tmp_path / "weights.pt")
    return tiny_unet(checkpoint={"source": "path", "path": str(path)}, **overrides)


def test_round_trip(tmp_path: Path) -> None:
    preset = tiny_unet()
    network = build_network(preset, 3)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.01)
    path = save_state_dict(network, tmp_path / "models" / "v1" / "model.pt")
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    state = load_checkpoint_state(path)
    assert state.keys() == network.state_dict().keys()
    model = load_model(preset, checkpoint=path)
    assert model.pretrained and model.has_head and not model.head_reinitialised
    with torch.no_grad():
        assert torch.equal(model.predict_logits(_window()), network.eval()(_window()))


def test_wrappers_and_module_prefix(tmp_path: Path) -> None:
    network = build_network(tiny_unet(), 3)
    wrapped = {
        "epoch": 3,
        "state_dict": {f"module.{k}": v for k, v in network.state_dict().items()},
    }
    torch.save(wrapped, tmp_path / "wrapped.pt")
    torch.save({"model": network.state_dict(), "optimizer": {"lr": 1e-4}}, tmp_path / "model.pt")
    for name in ("wrapped.pt", "model.pt"):
        state = load_checkpoint_state(tmp_path / name)
        assert state.keys() == network.state_dict().keys()


def test_shape_mismatch_names_the_key(tmp_path: Path) -> None:
    small = build_network(
        tiny_unet(arguments={**tiny_unet_dict()["arguments"], "channels": [2, 8, 16]}), 3
    )
    path = save_state_dict(small, tmp_path / "small.pt")
    with pytest.raises(BadInputError) as error:
        load_model(tiny_unet(), checkpoint=path)
    message = str(error.value)
    assert message.startswith(
        f"{path}: weights do not fit monai.UNet: model.0.conv.unit0.conv.weight"
    )
    assert "has shape [4, 1, 3, 3, 3], checkpoint [2, 1, 3, 3, 3]" in message


def test_missing_key_is_named(tmp_path: Path) -> None:
    state = build_network(tiny_unet(), 3).state_dict()
    state.pop("model.2.1.conv.unit0.conv.bias")
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(BadInputError, match="model.2.1.conv.unit0.conv.bias is missing"):
        load_model(tiny_unet(), checkpoint=tmp_path / "partial.pt")


def test_truncated_and_foreign_files(tmp_path: Path) -> None:
    path = save_state_dict(build_network(tiny_unet(), 3), tmp_path / "full.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint", encoding="utf-8")
    for bad in (truncated, text, tmp_path / "empty.pt"):
        bad.touch()
        with pytest.raises(
            BadInputError, match=f"^{bad}: is truncated or not a PyTorch checkpoint$"
        ):
            load_checkpoint_state(bad)
    with pytest.raises(BadInputError, match="does not exist"):
        load_checkpoint_state(tmp_path / "absent.pt")
    torch.save({"epoch": 1}, tmp_path / "no-tensors.pt")
    with pytest.raises(BadInputError, match="holds no weights"):
        load_checkpoint_state(tmp_path / "no-tensors.pt")


class _Payload:
    """Unpickling this would create a file: the loader must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (os.makedirs, (str(self.marker), "0o755"))


def test_pickle_with_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"weight": torch.zeros(2), "payload": _Payload(marker)}, tmp_path / "evil.pt")
    with open(tmp_path / "evil.pkl", "wb") as stream:
        pickle.dump(_Payload(marker), stream, protocol=2)
    with open(tmp_path / "evil5.pkl", "wb") as stream:
        pickle.dump(_Payload(marker), stream, protocol=5)
    for name in ("evil.pt", "evil.pkl"):
        with pytest.raises(BadInputError, match="besides weights and was refused"):
            load_checkpoint_state(tmp_path / name)
    with pytest.raises(BadInputError):  # refused before the unpickler reaches the payload
        load_checkpoint_state(tmp_path / "evil5.pkl")
    assert not marker.exists()


def test_new_head_when_labels_differ(tmp_path: Path) -> None:
    source = build_network(tiny_unet(), 3)
    with torch.no_grad():
        for parameter in source.parameters():
            parameter.normal_()
    preset = _with_checkpoint(tmp_path, source)
    same = load_model(preset)
    assert same.has_head and same.pretrained and same.label_values == [1, 2]
    for labels in ([1, 2, 3], [2, 1]):
        model = load_model(preset, label_values=labels)
        assert model.label_values == labels and model.out_channels == len(labels) + 1
        assert model.pretrained and not model.has_head and model.head_reinitialised
        fresh = build_network(preset, len(labels) + 1).state_dict()
        state = model.network.state_dict()
        for key, value in source.state_dict().items():
            if preset.in_head(key):
                assert torch.equal(state[key], fresh[key]), key
                if key.endswith("weight") and value.shape == state[key].shape:
                    assert not torch.equal(state[key], value), key
            else:
                assert torch.equal(state[key], value), key
        with torch.no_grad():
            assert model.predict_logits(_window()).shape == (1, len(labels) + 1, 16, 16, 16)


def test_encoder_only_weights_with_key_renames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MONAI's self-supervised Swin weights: module.layers1... with mlp.fc1 for mlp.linear1."""
    preset = tiny_swinunetr()
    donor = build_network(preset, 3)
    with torch.no_grad():
        for parameter in donor.swinViT.parameters():
            parameter.add_(1.0)
    ssl_state = {
        "module." + key.replace("mlp.linear", "mlp.fc"): value
        for key, value in donor.swinViT.state_dict().items()
    }
    monkeypatch.setenv("ASSFT_MODELS_DIR", str(tmp_path))
    with pytest.raises(BadInputError, match=f"place the file at {tmp_path / 'model_swinvit.pt'}"):
        load_model(preset, label_values=[1, 2])
    torch.save({"epoch": 100, "state_dict": ssl_state}, tmp_path / "model_swinvit.pt")
    with pytest.raises(BadInputError, match="no segmentation head and no labels"):
        load_model(preset)
    model = load_model(preset, label_values=[1, 2])
    assert model.pretrained and not model.has_head and model.head_reinitialised
    assert model.summary.startswith(f"{len(donor.swinViT.state_dict())} of ")
    loaded = model.network.swinViT.state_dict()
    for key, value in donor.swinViT.state_dict().items():
        assert torch.equal(loaded[key], value), key


def test_url_checksum_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tiny_swinunetr().to_dict()
    data["checkpoint"]["sha256"] = "0" * 64
    monkeypatch.setenv("ASSFT_MODELS_DIR", str(tmp_path))
    (tmp_path / "model_swinvit.pt").write_bytes(b"partial download")
    with pytest.raises(BadInputError, match="has SHA-256"):
        load_model(ModelPreset.from_dict(data), label_values=[1])


def test_missing_shipped_checkpoint_runs_untrained() -> None:
    data = tiny_unet_dict(checkpoint={"source": "shipped", "file": "no-such-weights.pt"})
    with pytest.warns(UserWarning, match="no-such-weights.pt is missing"):
        first = load_model(ModelPreset.from_dict(data))
    assert not first.pretrained and first.has_head
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        second = load_model(ModelPreset.from_dict(data))
    for key, value in first.network.state_dict().items():
        assert torch.equal(value, second.network.state_dict()[key])


def test_demo_preset_loads() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(get_preset("demo"))
    assert model.label_values == [1, 2, 3] and model.has_batchnorm
    assert len(model.running_statistics()) == 4


def test_missing_package_is_explained() -> None:
    data = get_preset("deepbet").to_dict()
    data["checkpoint"]["package"] = "no-such-distribution-assft"
    with pytest.raises(BadInputError, match="pip install --no-deps no-such-distribution-assft"):
        load_model(ModelPreset.from_dict(data))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_archive_is_not_a_state_dict(tmp_path: Path) -> None:
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    scripted.save(str(tmp_path / "scripted.pt"))
    with pytest.raises(BadInputError, match="TorchScript archive"):
        load_checkpoint_state(tmp_path / "scripted.pt")


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(BadInputError, match="unknown device"):
        resolve_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(BadInputError, match="CUDA is not available"):
            resolve_device("cuda")

"""The real deepbet TorchScript net, found through the preset's package checkpoint source."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import pytest
import torch

from assft.errors import BadInputError
from assft.models import LinkNet3dAdapter, LoadedModel, get_preset, load_model, save_state_dict

try:
    importlib.metadata.distribution("deepbet")
except importlib.metadata.PackageNotFoundError:
    pytest.skip(
        "deepbet is not installed (pip install --no-deps deepbet): its wheel ships the weights",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def deepbet() -> LoadedModel:
    return load_model(get_preset("deepbet"))


def _scan(size: int = 32) -> torch.Tensor:
    """A bright ellipsoid on a dark background, normalised roughly as the preset says."""
    grid = torch.linspace(-1, 1, size)
    x, y, z = torch.meshgrid(grid, grid, grid, indexing="ij")
    inside = (x / 0.7) ** 2 + (y / 0.8) ** 2 + (z / 0.6) ** 2 < 1
    volume = inside.float() + 0.05 * torch.randn(
        (size,) * 3, generator=torch.Generator().manual_seed(0)
    )
    volume = (volume - volume.mean()) / volume.std()
    return (0.226 * volume + 0.449)[None, None]


def test_loads_from_the_package(deepbet: LoadedModel) -> None:
    assert deepbet.is_torchscript and deepbet.pretrained and deepbet.has_head
    assert isinstance(deepbet.adapter, LinkNet3dAdapter)
    assert deepbet.label_values == [1] and deepbet.out_channels == 2
    assert not deepbet.has_batchnorm and deepbet.running_statistics() == []
    assert "site-packages" in deepbet.summary or "data/models/model.pt" in deepbet.summary


def test_probabilities_and_embedding(deepbet: LoadedModel) -> None:
    x = _scan()
    with torch.no_grad(), deepbet.capture_features() as capture:
        logits = deepbet.predict_logits(x)
    with torch.no_grad():
        own = deepbet.network(x)  # the archive's forward ends in a softmax
        net = deepbet.network
        relu = getattr(net.conv, "2")
        deepest = net.down3(
            relu, net.down2(relu, net.down1(relu, net.down0(relu, net.init(relu, x))))
        )
    probabilities = deepbet.probabilities(logits)
    assert logits.shape == (1, 2, 32, 32, 32)
    torch.testing.assert_close(probabilities, own, rtol=1e-4, atol=1e-5)
    embedding = capture.embedding()
    pooled = deepest.mean(dim=(2, 3, 4))[0].double()
    assert embedding.shape == (128,) and np.linalg.norm(embedding) == pytest.approx(1.0)
    np.testing.assert_allclose(embedding, (pooled / pooled.norm()).numpy(), rtol=1e-5, atol=1e-6)
    assert capture.batchnorm_statistics() == []


def test_mc_dropout_is_injected(deepbet: LoadedModel) -> None:
    x = _scan()
    with torch.no_grad():
        before = deepbet.predict_logits(x)
        with deepbet.mc_dropout() as injected:
            first, second = deepbet.predict_logits(x), deepbet.predict_logits(x)
        after = deepbet.predict_logits(x)
    assert injected is True
    assert not torch.allclose(first, second)
    assert torch.equal(before, after)


def test_head_cannot_be_replaced() -> None:
    with pytest.raises(BadInputError, match="TorchScript head segments 1 label"):
        load_model(get_preset("deepbet"), label_values=[1, 2])


def test_fine_tuned_weights_round_trip(deepbet: LoadedModel, tmp_path: Path) -> None:
    state = {key: value.clone() for key, value in deepbet.network.state_dict().items()}
    state["tp_conv2.bias"] = state["tp_conv2.bias"] + torch.tensor([0.0, 1.0])
    path = tmp_path / "model.pt"
    torch.save(state, path)
    tuned = load_model(get_preset("deepbet"), checkpoint=path)
    x = _scan()
    with torch.no_grad():
        shift = tuned.predict_logits(x) - deepbet.predict_logits(x)
    torch.testing.assert_close(
        shift[:, 1] - shift[:, 0], torch.ones(1, 32, 32, 32), rtol=0, atol=1e-4
    )
    save_state_dict(tuned.network, tmp_path / "again.pt")
    assert torch.load(tmp_path / "again.pt", weights_only=True).keys() == state.keys()

"""Embeddings, BatchNorm input statistics, MC dropout and output conventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from assft.errors import BadInputError
from assft.models import LoadedModel, ModelPreset, load_model
from assft_testing.models import tiny_segresnet, tiny_swinunetr, tiny_unet, tiny_unet_dict


def _windows(batch: int = 1, size: int = 16, seed: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 2.0 + 3.0 * torch.randn((batch, 1, size, size, size), generator=generator)


@pytest.fixture(scope="module")
def unet() -> LoadedModel:
    return load_model(tiny_unet())


def test_embedding_matches_a_manual_hook(unet: LoadedModel) -> None:
    x = _windows(batch=3)
    seen: list[torch.Tensor] = []
    layer = dict(unet.network.named_modules())[unet.preset.embedding_layer]
    handle = layer.register_forward_hook(lambda module, args, output: seen.append(output))
    with torch.no_grad():
        reference = unet.network(x)
    handle.remove()
    manual = seen[0].mean(dim=(2, 3, 4)).double().mean(dim=0)
    manual = (manual / manual.norm()).numpy()

    with torch.no_grad(), unet.capture_features() as capture:
        logits = unet.predict_logits(x[:2])
        logits = torch.cat([logits, unet.predict_logits(x[2:])])
    embedding = capture.embedding()
    assert capture.windows == 3
    assert embedding.shape == (16,) and embedding.dtype == np.float64
    assert np.linalg.norm(embedding) == pytest.approx(1.0)
    np.testing.assert_allclose(embedding, manual, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits, reference)
    assert not unet.network._forward_hooks and not layer._forward_hooks  # hooks removed on exit
    capture.reset()
    with pytest.raises(RuntimeError, match="no window"):
        capture.embedding()


def test_batchnorm_statistics_of_one_window(unet: LoadedModel) -> None:
    x = _windows()
    inputs: list[torch.Tensor] = []
    modules = dict(unet.network.named_modules())
    handles = [
        modules[name].register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
        for name in unet.batchnorm_layers
    ]
    with torch.no_grad():
        unet.network(x)
    for handle in handles:
        handle.remove()
    with torch.no_grad(), unet.capture_features(embedding=False) as capture:
        unet.predict_logits(x)
    statistics = capture.batchnorm_statistics()
    running = unet.running_statistics()
    assert unet.has_batchnorm and len(statistics) == len(running) == len(inputs) == 3
    for (mean, variance), (run_mean, run_var), tensor in zip(
        statistics, running, inputs, strict=True
    ):
        values = tensor.double().transpose(0, 1).reshape(tensor.shape[1], -1)
        assert mean.shape == run_mean.shape == run_var.shape == (tensor.shape[1],)
        np.testing.assert_allclose(mean, values.mean(dim=1).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            variance, values.var(dim=1, correction=0).numpy(), rtol=1e-4, atol=1e-6
        )
    with pytest.raises(RuntimeError, match="embedding=False"):
        capture.embedding()


def test_batchnorm_statistics_merge_across_calls(unet: LoadedModel) -> None:
    a, b = _windows(seed=4), _windows(batch=2, seed=5)
    with torch.no_grad(), unet.capture_features() as together:
        unet.predict_logits(torch.cat([a, b]))
    with torch.no_grad(), unet.capture_features() as apart:
        unet.predict_logits(a)
        unet.predict_logits(b)
    for (m1, v1), (m2, v2) in zip(
        together.batchnorm_statistics(), apart.batchnorm_statistics(), strict=True
    ):
        np.testing.assert_allclose(m1, m2, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(v1, v2, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(together.embedding(), apart.embedding(), rtol=1e-5, atol=1e-6)


def test_injected_mc_dropout(unet: LoadedModel) -> None:
    x = _windows()
    with torch.no_grad():
        before = unet.predict_logits(x)
        torch.manual_seed(7)
        with unet.mc_dropout(0.3) as injected:
            first = unet.predict_logits(x)
            second = unet.predict_logits(x)
        torch.manual_seed(7)
        with unet.mc_dropout(0.3):
            repeat = unet.predict_logits(x)
        after = unet.predict_logits(x)
    assert injected is True
    assert not torch.allclose(first, second)
    assert torch.equal(first, repeat)
    assert torch.equal(before, after)
    assert not any(module.training for module in unet.network.modules())


def test_own_dropout_layers_are_used() -> None:
    model = load_model(tiny_segresnet())
    x = _windows()
    with torch.no_grad():
        before = model.predict_logits(x)
        with model.mc_dropout() as injected:
            samples = [model.predict_logits(x) for _ in range(2)]
            switched = [m for m in model.network.modules() if m.training]
        after = model.predict_logits(x)
    assert injected is False
    assert [type(m).__name__ for m in switched] == ["Dropout3d"]
    assert not torch.allclose(samples[0], samples[1])
    assert torch.equal(before, after) and not model.network.training
    assert not model.has_batchnorm and model.running_statistics() == []
    with torch.no_grad(), model.capture_features() as capture:
        model.predict_logits(x)
    assert capture.batchnorm_statistics() == [] and capture.embedding().shape == (32,)


def test_swin_list_output_and_injection() -> None:
    """SwinUNETR's swinViT returns a list of stages: the deepest is the embedding."""
    model = load_model(
        ModelPreset.from_dict({**tiny_swinunetr().to_dict(), "checkpoint": None}), label_values=[1]
    )
    assert not model.pretrained and not model.has_head
    x = torch.randn((1, 1, 64, 64, 64), generator=torch.Generator().manual_seed(0))
    stages: list[list[torch.Tensor]] = []
    handle = model.network.encoder10.register_forward_pre_hook(
        lambda module, args: stages.append(args[0])
    )
    with torch.no_grad(), model.capture_features() as capture, model.mc_dropout(0.5) as injected:
        logits = model.predict_logits(x)
    handle.remove()
    with torch.no_grad():
        clean = model.network.swinViT(x)[-1]
    assert injected and logits.shape == (1, 2, 64, 64, 64)
    assert capture.embedding().shape == (192,)
    assert not torch.allclose(stages[0], clean)  # the decoder saw the dropped-out features
    pooled = clean.mean(dim=(2, 3, 4))[0].double()
    np.testing.assert_allclose(
        capture.embedding(), (pooled / pooled.norm()).numpy(), rtol=1e-5, atol=1e-6
    )


def test_output_activations() -> None:
    sigmoid = load_model(
        ModelPreset.from_dict(
            tiny_unet_dict(label_names={"1": "lesion"}, output_activation="sigmoid")
        )
    )
    x = _windows()
    with torch.no_grad():
        raw = sigmoid.network(x)
        logits = sigmoid.predict_logits(x)
    assert logits.shape == (1, 2, 16, 16, 16)
    probabilities = sigmoid.probabilities(logits)
    torch.testing.assert_close(probabilities[:, 1:], torch.sigmoid(raw))
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(1, 16, 16, 16))
    relabelled = load_model(sigmoid.preset, label_values=[1, 2])
    assert relabelled.head_reinitialised and relabelled.output_activation == "softmax"
    with torch.no_grad():
        assert relabelled.predict_logits(x).shape == (1, 3, 16, 16, 16)


def test_bad_layer_names_are_refused() -> None:
    with pytest.raises(
        BadInputError, match="embedding_layer 'model.9' is not a module of monai.UNet"
    ):
        load_model(tiny_unet(embedding_layer="model.9"))
    with pytest.raises(BadInputError, match="arguments do not suit monai.UNet"):
        load_model(tiny_unet(arguments={"spatial_dims": 3, "in_channels": 1, "depth": 3}))
    model = load_model(tiny_unet())
    with pytest.raises(BadInputError, match="MC dropout probability"), model.mc_dropout(1.5):
        pass

"""SIGTERM in every phase of a ranking and of a fine-tune: exit 3 within seconds, and nothing
saved (no model version, no ranking, the labels and the cases as they were).

Each run is stopped at the start of one phase (``ASSFT_TEST_PAUSE_AT=phase:<name>``), receives
SIGTERM there and is let go: the phase must notice it at once. The training stages are signalled
in the middle instead, where only the checks inside the loop can notice it (the supervised stage
here; the semi-supervised stage runs the same loop, ``assft.training.ssft.run_stage``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from assft_testing import let_go, pause_env, wait_until_paused

PROMPT_S = 10.0
"""How soon a signalled command must have exited."""


@pytest.fixture
def workspace(tmp_path, synthetic_pool, tiny_preset_file):
    from assft.workspace.creation import create_workspace

    data, cases = synthetic_pool
    created = create_workspace(
        tmp_path / "ws",
        [data / "images"],
        model=str(tiny_preset_file),
        label_names={1: "s", 2: "c"},
    )
    for case in cases[:3]:
        created.submit_label(case.case_id, case.label, user="test")
    created.set_status(cases[2].case_id, "held-out")
    return created


def _state(workspace) -> dict:
    labels = {p.name: p.read_bytes() for p in sorted(workspace.labels_dir.glob("*.nii.gz"))}
    return {
        "labels": labels,
        "cases": workspace.registry.cases(),
        "rankings": sorted(p.name for p in (workspace.root / "rankings").glob("*.json")),
        "versions": sorted(p.name for p in workspace.models_dir.iterdir() if p.is_dir()),
        "current": [p.read_bytes() for p in workspace.models_dir.glob("current")],
    }


def _command(workspace, verb: str, tmp_path, **config) -> list[str]:
    if verb == "rank":
        return ["rank", str(workspace.root), "--budget", "1", "--views", "1"]
    path = tmp_path / "finetune.json"
    settings = {"iterations": 4, "semi_iterations": 4, "views": 1, "tau_c": 0.0, **config}
    path.write_text(json.dumps(settings))
    return ["finetune", str(workspace.root), "--config", str(path)]


def _stopped(process: subprocess.Popen) -> tuple[int, float, str]:
    """SIGTERM now; the exit code, the seconds it took and stderr."""
    process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    _, err = process.communicate(timeout=120)
    return process.returncode, time.monotonic() - started, err


@pytest.mark.parametrize(
    ("verb", "phase"),
    [
        ("rank", "ranking"),
        ("finetune", "preparing"),
        ("finetune", "anchor"),
        ("finetune", "pseudo-labels"),
        ("finetune", "validation"),
    ],
)
def test_sigterm_at_the_start_of_each_phase_exits_3_and_saves_nothing(
    workspace, tmp_path, verb, phase
):
    before = _state(workspace)
    folder = tmp_path / "pause"
    process = subprocess.Popen(
        [sys.executable, "-m", "assft", *_command(workspace, verb, tmp_path), "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **pause_env(f"phase:{phase}", folder)},
    )
    wait_until_paused(process, folder, f"phase:{phase}")
    process.send_signal(signal.SIGTERM)  # noted while it waits; the phase starts after
    time.sleep(0.2)
    let_go(folder, f"phase:{phase}")
    started = time.monotonic()
    _, err = process.communicate(timeout=120)
    assert process.returncode == 3, err
    assert time.monotonic() - started < PROMPT_S
    assert "assft: cancelled" in err and "Traceback" not in err
    assert _state(workspace) == before


def test_sigterm_in_the_middle_of_a_long_stage_is_answered_within_seconds(workspace, tmp_path):
    before = _state(workspace)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "assft",
            *_command(workspace, "finetune", tmp_path, iterations=100000),
            "--device",
            "cpu",
            "--progress",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:  # some steps of the supervised stage have run
        event = json.loads(line)
        if event.get("phase") == "supervised" and event.get("done", 0) >= 3:
            break
    code, seconds, err = _stopped(process)
    assert code == 3, err
    assert seconds < PROMPT_S, seconds
    assert _state(workspace) == before


@pytest.mark.parametrize("during", ["forward", "backward"])
def test_a_cancel_inside_a_training_step_stops_it_at_the_next_layer(tmp_path, during):
    """A training step of 64 patches of 64^3 takes about 20 s on a CPU: the checks of
    ``cancellation.check_inside_layers`` answer a cancel inside it, layer by layer, and the step
    never reaches the optimizer (the weights stay as they were; the job then saves nothing)."""
    import torch

    from assft.datasets.synthetic import TINY_PRESET
    from assft.errors import CancelledError
    from assft.models import load_model
    from assft.models.model_preset import ModelPreset
    from assft.runtime import cancellation
    from assft.training import FinetuneConfig
    from assft.training.ssft import Trainer

    model = load_model(ModelPreset.from_dict(TINY_PRESET), label_values=[1, 2])
    trainer = Trainer(model, FinetuneConfig(), (16, 16, 16))
    Trainer(model, FinetuneConfig(), (16, 16, 16))  # a second stage adds no second checks
    layers = [m for m in model.network.modules() if not list(m.children())]
    assert all(len(m._forward_pre_hooks) == 1 for m in layers)
    request = tmp_path / "cancel-request"
    middle = layers[len(layers) // 2]
    ran: list[object] = []
    for layer in layers:
        layer.register_forward_pre_hook(lambda module, _inputs: ran.append(module))
    if during == "forward":  # the cancel arrives while the middle layer runs
        middle.register_forward_hook(lambda *_: cancellation.request(request))
    else:  # ... or while its gradient is computed

        def request_in_backward(_m, _a, output):
            output.register_hook(lambda grad: (cancellation.request(request), grad)[1])

        middle.register_forward_hook(request_in_backward)
    batch = (torch.randn(2, 1, 16, 16, 16), torch.randint(0, 3, (2, 16, 16, 16)))
    weights = {k: v.clone() for k, v in model.network.named_parameters()}
    cancellation.watch(request)
    try:
        with pytest.raises(CancelledError, match="cancelled by request"):
            trainer.step(batch)
    finally:
        cancellation.unwatch(request)
    if during == "forward":  # the layers after the middle one never ran
        assert len(ran) == layers.index(middle) + 1
    else:
        assert len(ran) == len(layers)  # the whole forward pass, then stopped in the backward
    for key, value in model.network.named_parameters():  # (BatchNorm's running statistics
        assert torch.equal(value, weights[key]), key  # moved: nothing is saved after a cancel)

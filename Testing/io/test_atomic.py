"""Torch files the engine writes, read back without running code (assft.io.atomic)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from assft.errors import BadInputError
from assft.io.atomic import UnsafePickleError, load_torch_safely, save_torch_atomic
from assft_testing.pickles import write_malicious_pickle


def test_the_malicious_pickle_would_run_if_loaded_unsafely(tmp_path: Path) -> None:
    # Proves the payload is real: an unsafe load runs it (here, once, on purpose).
    marker = tmp_path / "ran"
    payload = torch.load(write_malicious_pickle(tmp_path / "bad.pt", marker), weights_only=False)[
        "payload"
    ]
    payload.close()
    assert marker.exists()


def test_a_pickle_holding_code_is_refused_in_one_line_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = write_malicious_pickle(tmp_path / "bad.pt", marker)
    with pytest.raises(UnsafePickleError) as caught:
        load_torch_safely(path)
    message = str(caught.value)
    assert message == (
        f"{path}: holds Python objects besides tensors and was refused unopened (opening it "
        "could run code)"
    )
    assert "weights_only" not in message and "\n" not in message
    assert caught.value.exit_code == 2
    assert not marker.exists()


def test_damaged_and_missing_torch_files_are_one_line_errors(tmp_path: Path) -> None:
    good = save_torch_atomic({"image": torch.arange(4)}, tmp_path / "good.pt")
    assert torch.equal(load_torch_safely(good)["image"], torch.arange(4))
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:40])
    for path, reason in (
        (cut, "is truncated or not a PyTorch file"),
        (tmp_path / "none.pt", "does not exist"),
    ):
        with pytest.raises(BadInputError) as caught:
            load_torch_safely(path)
        assert str(caught.value) == f"{path}: {reason}"
        assert not isinstance(caught.value, UnsafePickleError)

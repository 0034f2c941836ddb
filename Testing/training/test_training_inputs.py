"""What a fine-tuning job reads: the training cache heals, resume.pt is refused in one line, and
nothing of a malicious pickle ever runs (issue 11)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from assft.errors import BadInputError
from assft.io.atomic import save_torch_atomic
from assft.models import get_preset
from assft.training.data import PreparedCases
from assft.training.inputs import load_resume_point
from assft_testing.pickles import write_malicious_pickle


def test_a_refused_training_cache_file_is_discarded_and_rebuilt(
    tmp_path, synthetic_pool, tiny_preset_file
):
    _, cases = synthetic_pool
    case = cases[0]
    preset = get_preset(tiny_preset_file)
    prepared = PreparedCases(tmp_path / "cache" / "training", preset, [1, 2], preset.patch_size)
    expected = prepared.load(case.case_id, case.image, case.label)
    cached = tmp_path / "cache" / "training" / f"{case.case_id}-l.pt"
    assert cached.is_file()

    marker = tmp_path / "ran"
    for damage in ("malicious", "truncated", "foreign"):
        if damage == "malicious":
            write_malicious_pickle(cached, marker)
        elif damage == "truncated":
            cached.write_bytes(cached.read_bytes()[:50])
        else:
            save_torch_atomic([1, 2, 3], cached)
        with pytest.warns(UserWarning, match="discarded a training cache file") as caught:
            again = prepared.load(case.case_id, case.image, case.label)
        assert len(caught) == 1 and "weights_only" not in str(caught[0].message)
        assert str(cached) in str(caught[0].message)
        assert torch.equal(again.image, expected.image)
        assert again.target is not None and torch.equal(again.target, expected.target)
        # Rebuilt: the next load is a silent cache hit.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            prepared.load(case.case_id, case.image, case.label)
    assert not marker.exists()


@pytest.fixture
def resume_file(tmp_path) -> Path:
    return tmp_path / "jobs" / "finetune-20250101T000000-abcd" / "resume.pt"


def test_a_refused_resume_point_is_one_line_without_unsafe_advice(tmp_path, resume_file):
    resume_file.parent.mkdir(parents=True)
    marker = tmp_path / "ran"
    write_malicious_pickle(resume_file, marker)
    with pytest.raises(BadInputError) as caught:
        load_resume_point(resume_file, torch.device("cpu"), tmp_path / "ws")
    assert str(caught.value) == (
        f"{resume_file}: cannot be loaded safely (it holds Python objects besides tensors; it was "
        f"not opened): start the fine-tune afresh with 'assft finetune {tmp_path / 'ws'}' (this "
        "job will not be resumed)"
    )
    assert not marker.exists()

    resume_file.write_bytes(b"\x80\x02garbage")
    with pytest.raises(BadInputError, match=r"\(it is damaged; it was not opened\): start"):
        load_resume_point(resume_file, torch.device("cpu"), tmp_path / "ws")
    save_torch_atomic({"stage": 2, "step": 4, "model": {}}, resume_file)
    assert load_resume_point(resume_file, torch.device("cpu"), tmp_path / "ws")["step"] == 4

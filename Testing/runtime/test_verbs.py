"""What many verbs share (``assft/runtime/verbs.py``)."""

from __future__ import annotations

import pytest

from assft.errors import BadInputError
from assft.runtime.verbs import parse_label_names
from assft_testing import run_cli_in_process


def test_label_names_are_parsed_and_a_value_named_twice_is_refused(tmp_path):
    assert parse_label_names("1:grey matter, 2:white matter") == {
        1: "grey matter",
        2: "white matter",
    }
    assert parse_label_names(None) is None and parse_label_names("") is None
    with pytest.raises(BadInputError, match=r"names 1 twice \('a' and 'b'\)"):
        parse_label_names("1:a,1:b")
    with pytest.raises(BadInputError, match="0 is the background"):
        parse_label_names("0:x")
    with pytest.raises(BadInputError, match="is not VALUE:NAME"):
        parse_label_names("1=a")
    # Found by the attack of 2026-12-07: init took the second name in silence.
    result = run_cli_in_process(
        "init", str(tmp_path / "ws"), "--images", str(tmp_path), "--label-names", "1:a,1:b"
    )
    assert result.returncode == 2 and "names 1 twice" in result.stderr
    assert not (tmp_path / "ws").exists()

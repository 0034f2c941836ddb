"""Model version names: the one module that knows them, importable without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from assft.errors import BadInputError
from assft.workspace.version_names import (
    BASE_VERSION,
    check_version,
    parse_partial,
    parse_version,
    partial_name,
    version_name,
    version_number,
)


def test_names_and_numbers_round_trip():
    assert BASE_VERSION == version_name(0) == "v0"
    for number in (0, 1, 9, 10, 123):
        assert version_number(version_name(number)) == number
        assert parse_version(version_name(number)) == number
        assert check_version(version_name(number)) == version_name(number)
        assert parse_partial(partial_name(version_name(number))) == number
    assert partial_name("v3") == ".v3.partial"
    with pytest.raises(ValueError, match=">= 0"):
        version_name(-1)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("v01", r"^'v01' is not a model version name \(did you mean v1\?\)$"),
        ("v00", r"did you mean v0\?"),
        ("../v1", r"^'../v1' is not a model version name \(v0, v1, v2, \.\.\.\)$"),
        ("V1", "not a model version name"),
        ("v1 ", "not a model version name"),
        ("v", "not a model version name"),
        ("", "not a model version name"),
        ("latest", "not a model version name"),
        (None, "^None is not a model version name"),
        (3, "^3 is not a model version name"),
    ],
)
def test_malformed_names_are_refused_in_one_line(name, message):
    assert parse_version(name) is None
    for call in (version_number, check_version):
        with pytest.raises(BadInputError, match=message) as caught:
            call(name)
        assert "\n" not in str(caught.value)


@pytest.mark.parametrize("name", [".v3.partial", ".v03.partial", "v3.partial", ".v3", "v3"])
def test_partial_folder_names(name):
    assert parse_partial(name) == (3 if name == ".v3.partial" else None)


def test_importable_without_torch():
    code = (
        "import sys; import assft.workspace.version_names; "
        "print(sorted(m for m in ('torch', 'monai') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"

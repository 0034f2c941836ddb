"""The engine as the Slicer extension installs it: without ``assft/apps/`` (research tools).

The package is copied without ``apps/`` into a temporary folder that comes first on
``PYTHONPATH``; its own ``resources/`` are found and the commands that need the research tools
(``demo``, ``bench``, ``sample-data``, ``pretrain-demo``) say in one line that they need the pip
package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[2] / "ASSFTSlicer" / "assft"


@pytest.fixture(scope="module")
def stripped(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """``(folder holding the copied assft package, environment that imports it first)``."""
    root = tmp_path_factory.mktemp("slicer-install")
    shutil.copytree(ENGINE, root / "assft", ignore=shutil.ignore_patterns("apps", "__pycache__"))
    assert not (root / "assft" / "apps").exists()
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return root, env


def _python(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, cwd=root, timeout=120
    )


def test_the_copy_is_imported_and_finds_its_own_resources(stripped) -> None:
    root, env = stripped
    code = (
        "import json, assft; from assft.models import get_preset, resources_dir; "
        "print(json.dumps({'file': assft.__file__, 'resources': str(resources_dir()), "
        "'demo': get_preset('demo').name}))"
    )
    result = _python(root, env, "-c", code)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert Path(found["file"]).resolve() == (root / "assft" / "__init__.py").resolve()
    assert Path(found["resources"]).resolve() == (root / "assft" / "resources").resolve()
    assert found["demo"] == "demo"


@pytest.mark.parametrize(
    ("args", "command"),
    [
        (("demo", "--out", "demo-out", "--quick"), "assft demo"),
        (("bench", "speed", "--out", "bench-out", "--markdown", ""), "assft bench"),
        (("pretrain-demo", "--out", "weights"), "assft pretrain-demo"),
        (("sample-data", "--out", "sample"), "assft sample-data"),
    ],
)
def test_research_commands_say_they_need_the_pip_package(stripped, args, command) -> None:
    root, env = stripped
    result = _python(root, env, "-m", "assft", *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"assft: error: {command} needs the full engine package: pip install 'assft[demo]'"
    ], result.stderr
    assert not (root / args[2]).exists()  # nothing was started

"""The built wheel works on its own: package data inside, no file of the checkout needed.

A wheel is built (``pip wheel --no-build-isolation``: this environment's setuptools, no network)
from a copy of the project's packaging files, installed without dependencies and without an
index into a fresh virtual environment outside the checkout, and used there: ``assft init`` with
the ``demo`` preset (whose presets file and pretrained weights come from the wheel) and
``assft rank``. The fresh environment sees this environment's third-party packages (torch,
MONAI, SimpleITK, ...) through a ``.pth`` file holding the site-packages path: a path line
does not process that folder's own ``.pth`` files, so the checkout's editable install of
``assft`` stays invisible, which the test checks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DATA = (
    "Models.json",
    "Models.schema.json",
    "demo_unet.pt",
    "demo_unet.json",
    "foundation_unet.pt",
    "foundation_unet.json",
    "SampleData.md",
)
POOL_SIZE = 3

# Run inside the fresh environment: where assft comes from, its data, its runtime requirements.
PROBE = """
import importlib.metadata, json, re, assft
from assft.models import get_preset, load_model, resources_dir
missing = []
for requirement in importlib.metadata.requires("assft") or []:
    if "extra ==" in requirement:
        continue
    name = re.split(r"[<>=!~;\\[ (]", requirement, maxsplit=1)[0]
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        missing.append(requirement)
print(json.dumps({
    "file": assft.__file__,
    "resources": str(resources_dir()),
    "pretrained": load_model(get_preset("demo")).pretrained,
    "missing": missing,
}))
"""


def _run(command: list[str], cwd: Path, env: dict[str, str], timeout: float = 300):
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{' '.join(command)}: exit {result.returncode}: {result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """``(bin folder of a fresh venv holding the wheel, environment to run it in)``."""
    tmp = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(
        OMP_NUM_THREADS="1",
        PIP_NO_INDEX="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PYTHONUNBUFFERED="1",
    )

    # Build from a copy so that the checkout gets no build/ or egg-info from this test.
    source = tmp / "source"
    (source / "ASSFTSlicer").mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "ASSFTSlicer" / "assft",
        source / "ASSFTSlicer" / "assft",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(source),
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(tmp / "dist"),
        ],
        cwd=tmp,
        env=env,
    )
    wheels = sorted((tmp / "dist").glob("assft-*.whl"))
    assert len(wheels) == 1, wheels
    names = set(zipfile.ZipFile(wheels[0]).namelist())
    for name in PACKAGE_DATA:
        assert f"assft/resources/{name}" in names, f"the wheel lacks assft/resources/{name}"
    assert "assft/py.typed" in names and "assft/apps/demo.py" in names

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp, env=env)
    python = venv / "bin" / "python"
    purelib = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        cwd=tmp,
        env=env,
    ).stdout.strip()
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    Path(purelib, "assft-test-third-party.pth").write_text("\n".join(ours) + "\n", encoding="utf-8")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            "-q",
            str(wheels[0]),
        ],
        cwd=tmp,
        env=env,
    )
    return venv / "bin", env


def test_the_installed_wheel_is_self_contained(installed, tmp_path) -> None:
    bin_dir, env = installed
    probe = json.loads(_run([str(bin_dir / "python"), "-c", PROBE], cwd=tmp_path, env=env).stdout)
    venv = bin_dir.parent.resolve()
    assert Path(probe["file"]).resolve().is_relative_to(venv), f"assft came from {probe['file']}"
    assert not Path(probe["file"]).resolve().is_relative_to(ROOT)
    assert Path(probe["resources"]).resolve().is_relative_to(venv)
    assert probe["pretrained"], "the demo preset's shipped weights were not found in the wheel"
    assert probe["missing"] == [], f"runtime requirements not installed: {probe['missing']}"


def test_init_and_rank_with_the_installed_wheel(installed, tmp_path) -> None:
    from assft.datasets.synthetic import write_synthetic_pool

    bin_dir, env = installed
    cases = write_synthetic_pool(tmp_path / "pool", POOL_SIZE, seed=1, size=24)
    ws = tmp_path / "ws"
    images = tmp_path / "pool" / "images"
    created = _run(
        [
            str(bin_dir / "assft"),
            "init",
            str(ws),
            "--images",
            str(images),
            "--model",
            "demo",
            "--json",
        ],
        cwd=tmp_path,
        env=env,
    )
    assert json.loads(created.stdout)["counts"]["unlabeled"] == POOL_SIZE
    ranked = _run(
        [
            str(bin_dir / "assft"),
            "rank",
            str(ws),
            "--budget",
            "1",
            "--views",
            "1",
            "--device",
            "cpu",
            "--json",
        ],
        cwd=tmp_path,
        env=env,
    )
    document = json.loads(ranked.stdout)
    assert document["model_version"] == "v0" and document["strategy"] == "attsq"
    assert sorted(row["case"] for row in document["cases"]) == sorted(c.case_id for c in cases)
    assert [row["rank"] for row in document["cases"]] == list(range(1, POOL_SIZE + 1))
    assert document["selected"] == [document["cases"][0]["case"]]
    for row in document["cases"]:
        assert re.fullmatch(r"case_\d{3}", row["case"]) and isinstance(row["score"], float)

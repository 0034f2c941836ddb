"""Helpers shared by the tests (a uniquely named module: several conftest.py files exist)."""

from __future__ import annotations

import os
import subprocess
import sys


def run_cli(*args: str, check: bool = False, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m assft`` in a real subprocess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    result = subprocess.run(
        [sys.executable, "-m", "assft", *args], capture_output=True, text=True, env=full_env, timeout=300
    )
    if check and result.returncode != 0:
        raise AssertionError(f"assft {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result

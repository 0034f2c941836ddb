"""Helpers for the browser tests: ``assft web`` as a real server process, and a real Chromium
driven by Playwright.

Both are skipped with a message where they cannot run: without the ``web`` extra
(trame-slicer), without Playwright, or without a Chromium (Debian's package; ``.ci/run``
installs it). ``pytest -ra`` prints the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from assft_testing import stop_process

URL_LINE = re.compile(r"ASSFT web: (http://\S+)")


def chromium_path() -> str:
    """The system's Chromium, or a skip that says how to get one."""
    for name in (os.environ.get("ASSFT_CHROMIUM", ""), "chromium", "chromium-browser"):
        if name and (found := shutil.which(name)):
            return found
    pytest.skip("no Chromium on this machine: apt-get install chromium (.ci/run does)")


def require_web(browser: bool = True) -> None:
    """Skip without the web extra, or (``browser``) without Playwright."""
    pytest.importorskip("trame_slicer", reason="needs the web extra: pip install -e '.[web]'")
    if browser:
        pytest.importorskip("playwright", reason="needs Playwright: pip install -e '.[browser]'")


class WebServer:
    """``assft web`` running in its own process; ``url`` carries the token."""

    def __init__(self, process: subprocess.Popen, url: str, output: list[str]) -> None:
        self.process = process
        self.url = url
        self.output = output  # what it printed (stdout and stderr), growing while it runs

    @property
    def base(self) -> str:
        return self.url.split("?")[0]


@contextmanager
def web_server(workspace: Path, *arguments: str, timeout: float = 120.0) -> Iterator[WebServer]:
    """Start ``assft web WORKSPACE --port 0`` and wait for the URL it prints; stop it after."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "assft", "web", str(workspace), "--port", "0", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environment,
    )
    output: list[str] = []
    found = threading.Event()
    url: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            match = URL_LINE.search(line)
            if match and not url:
                url.append(match.group(1))
                found.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while not found.wait(0.2):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError("assft web did not start:\n" + "".join(output[-40:]))
    try:
        yield WebServer(process, url[0], output)
    finally:
        stop_process(process, timeout=20)

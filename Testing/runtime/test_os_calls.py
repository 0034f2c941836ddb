"""Operating-system-specific calls live in one module: assft/runtime/portable.py.

Everything else, engine and Slicer side alike, goes through it, so that the engine and the module
run on Windows, macOS and Linux.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

MODULE = Path(__file__).resolve().parents[2] / "ASSFTSlicer"
PORTABLE = MODULE / "assft" / "runtime" / "portable.py"

# POSIX-only (or Windows-only) names, and Linux's /proc.
FORBIDDEN = {
    "fcntl": re.compile(r"\bfcntl\b"),
    "msvcrt": re.compile(r"\bmsvcrt\b"),
    "os.killpg": re.compile(r"\bos\.killpg\b"),
    "os.setsid": re.compile(r"\bos\.setsid\b"),
    "os.getpgid": re.compile(r"\bos\.getpgid\b"),
    "signal.SIGKILL": re.compile(r"\bsignal\.SIGKILL\b"),
    "start_new_session": re.compile(r"\bstart_new_session\b"),
    "creationflags": re.compile(r"\bcreationflags\b"),
    "/proc": re.compile(r"/proc\b"),
    "sys.platform": re.compile(r"\bsys\.platform\b"),  # an OS branch
    "platform.system": re.compile(r"\bplatform\.system\b"),
}


def test_os_specific_calls_are_only_in_the_portable_module():
    sources = sorted(path for path in MODULE.rglob("*.py") if path != PORTABLE)
    assert len(sources) > 20 and MODULE / "ASSFTSlicerLib" / "process.py" in sources
    found = []
    for path in sources:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            found += [
                f"{path.relative_to(MODULE)}:{number}: {name}"
                for name, pattern in FORBIDDEN.items()
                if pattern.search(line)
            ]
    assert not found, "OS-specific calls outside runtime/portable.py:\n" + "\n".join(found)


def test_the_portable_module_imports_only_the_standard_library_psutil_and_portalocker():
    allowed = set(sys.stdlib_module_names) | {"psutil", "portalocker", "__future__"}
    imported = set()
    for node in ast.walk(ast.parse(PORTABLE.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported and imported <= allowed, imported - allowed
    # and so the Slicer side can import it before PyTorch is installed
    code = (
        "import sys, assft.runtime.portable; "
        "print(sorted({'torch', 'numpy', 'monai'} & set(sys.modules)))"
    )
    command = [sys.executable, "-c", code]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

"""Say which versions the pinned environment holds, and fail unless each is the pinned one
(a constraint pip silently could not apply would make the run prove nothing)."""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def pinned(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, wanted = line.partition("==")
            pins[name.strip()] = wanted.strip()
    return pins


def main(path: str) -> int:
    wrong = []
    for name, wanted in pinned(Path(path)).items():
        try:
            found = version(name)
        except PackageNotFoundError:
            found = "missing"
        print(f"{name} {found}" + ("" if found == wanted else f" (pinned {wanted})"))
        if found != wanted:
            wrong.append(name)
    print(f"Python {sys.version.split()[0]}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

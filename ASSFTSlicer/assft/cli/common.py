"""What the engine's verbs share: opening the workspace a verb names, the model flags, and
the config defaults and precedence their help shows."""

from __future__ import annotations

import argparse
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from assft.runtime.verbs import device_flag

if TYPE_CHECKING:
    from assft.workspace import Workspace


def open_workspace(path: str) -> Workspace:
    from assft.workspace import Workspace

    return Workspace.open(Path(path))


def model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", help="model version (default: the current one)")
    p.add_argument(
        "--views",
        type=int,
        default=4,
        help="test-time views, 1 to 8: the identity, flips of x, y, z, then of two and three axes "
        "(8: every mirroring, as nnU-Net predicts)",
    )
    device_flag(p)


def default_of(kind: type, name: str) -> str:
    """A config dataclass's default for a help text (the one place defaults are written).

    A dataclass keeps a field's plain default as a class attribute.
    """
    value = getattr(kind, name)
    return str(value.value if isinstance(value, Enum) else value)


PRECEDENCE = (
    "A flag overrides --config, which overrides the workspace's settings (assft.json), "
    "which override the defaults shown."
)

"""A malicious-looking pickle: a torch file that would create a marker file if loaded unsafely."""

from __future__ import annotations

from pathlib import Path

import torch


class TouchOnLoad:
    """Unpickled by an unsafe loader, this object creates the file ``marker``.

    The weights-only unpickler refuses it: it names ``builtins.open``, not a tensor type.
    """

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.marker), "w")


def write_malicious_pickle(path: Path, marker: Path) -> Path:
    """A torch file that, loaded unsafely, would create ``marker`` (which must never exist).

    It looks like a cache or resume file (tensors under the usual keys) with the payload beside.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"key": "x", "image": torch.zeros(2), "stage": 1, "step": 2}
    torch.save({**payload, "payload": TouchOnLoad(marker)}, path)
    return path

"""Named points where a test can stop the engine on its way: the one test hook of the engine.

Tests of "nothing is lost, nothing escapes" must stop a real process between two writes that
belong together (a new model version stored, its promotion recorded, the job's state written)
and then either kill it outright or let it go on. The engine calls :func:`reach` at such points;
it does nothing unless the environment names the point:

``ASSFT_TEST_PAUSE_AT=<point>`` and ``ASSFT_TEST_PAUSE_DIR=<folder>``
    On reaching ``<point>`` the process creates ``<folder>/<point>.reached`` and waits until
    ``<folder>/<point>.continue`` exists (at most 10 minutes), then goes on. The test may kill
    it (SIGKILL) instead.

The points, in the order a fine-tune reaches them (see :mod:`assft.workspace.version_pointer`
and :mod:`assft.training.finetune`):

- ``model-version-stored``: the new version is stored, its promotion not decided yet;
- ``model-pointer-moved``: inside a pointer change's registry transaction (a promotion, a
  rollback, a repair), ``models/current`` moved, the transaction not committed yet;
- ``promotion-committed``: the promotion is committed, the job's state not yet written;
- ``prediction-written``: a prediction of ``assft predict`` is in its folder, the next case not
  predicted yet (a test swaps the folder for a link there).

And ``phase:<name>`` at the start of each phase of a ranking or a fine-tune
(:data:`PHASES`, from :meth:`assft.runtime.progress.Progress.phase`), before its first step:
a test stops the process there and sends it SIGTERM in that phase.

Used only by tests; an engine run without these variables is not affected.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["PAUSE_AT_ENV", "PAUSE_DIR_ENV", "PHASES", "POINTS", "reach"]

PAUSE_AT_ENV = "ASSFT_TEST_PAUSE_AT"
PAUSE_DIR_ENV = "ASSFT_TEST_PAUSE_DIR"
PHASES = (
    "ranking",
    "preparing",
    "completing",
    "anchor",
    "supervised",
    "pseudo-labels",
    "semi-supervised",
    "validation",
)
POINTS = (
    "model-version-stored",
    "model-pointer-moved",
    "promotion-committed",
    "prediction-written",
    *(f"phase:{name}" for name in PHASES),
)
_WAIT_S = 600.0


def reach(point: str) -> None:
    """Pause here when a test asked for ``point`` (see the module's description)."""
    if point not in POINTS:
        raise ValueError(f"unknown synchronisation point {point!r}; known: {', '.join(POINTS)}")
    if os.environ.get(PAUSE_AT_ENV) != point or not os.environ.get(PAUSE_DIR_ENV):
        return
    folder = Path(os.environ[PAUSE_DIR_ENV])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{point}.reached").write_text(f"{os.getpid()}\n", encoding="utf-8")
    deadline = time.monotonic() + _WAIT_S
    while not (folder / f"{point}.continue").exists() and time.monotonic() < deadline:
        time.sleep(0.05)

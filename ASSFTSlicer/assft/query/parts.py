"""The parts of a lab's archive: groups of scans that share an acquisition.

They are found from the pretrained model's acquisition descriptors a0
(:mod:`assft.metrics.acquisition`) by k-means, with k chosen by the silhouette
(:func:`assft.metrics.clustering.choose_parts`), and serve three ends:

- held-out scans are proposed one per part, the largest part first, each the scan nearest its
  part's centre (:func:`propose_held_out`), so that the promotion gate sees the whole archive;
- a warning when the held-out set misses a part that labeled scans come from
  (:func:`coverage_notes`): a version could then forget that part unseen;
- the gate's change per part, and the part a refused version made worse.

A coherent site is one part; an archive that mixes scanners is several.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from assft.metrics.clustering import choose_parts

MOST_PARTS = 6
"""The largest number of parts looked for."""


@dataclass
class ArchiveParts:
    """Which part each case belongs to.

    Attributes:
        of_case: case -> part (0 is the largest part).
        by_closeness: per part, its cases, nearest to the part's centre first.
    """

    of_case: dict[str, int]
    by_closeness: list[list[str]]

    @property
    def count(self) -> int:
        return len(self.by_closeness)

    @property
    def sizes(self) -> list[int]:
        return [len(cases) for cases in self.by_closeness]

    @property
    def representatives(self) -> list[str]:
        """Per part, the case nearest its centre."""
        return [cases[0] for cases in self.by_closeness]

    def name(self, part: int) -> str:
        """``part 2 (6 scans, like case_004)``: how the user interfaces name a part."""
        return (
            f"part {part + 1} ({self.sizes[part]} scan{'s' * (self.sizes[part] != 1)}, "
            f"like {self.representatives[part]})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "sizes": self.sizes,
            "representatives": self.representatives,
            "of_case": dict(self.of_case),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchiveParts:
        """The parts a ranking document recorded (``by_closeness`` keeps only the
        representatives first; the rest follow in case order)."""
        of_case = {str(k): int(v) for k, v in dict(data["of_case"]).items()}
        representatives = [str(c) for c in data["representatives"]]
        by_closeness = [
            [representative]
            + [c for c, part in of_case.items() if part == index and c != representative]
            for index, representative in enumerate(representatives)
        ]
        return cls(of_case=of_case, by_closeness=by_closeness)


def find_parts(case_ids: Sequence[str], descriptors: np.ndarray, *, seed: int = 0) -> ArchiveParts:
    """The parts of the cases ``case_ids`` from their acquisition descriptors ``(N, D)``."""
    descriptors = np.atleast_2d(np.asarray(descriptors, dtype=np.float64))
    clusters = choose_parts(descriptors, most=MOST_PARTS, seed=seed)
    distance = ((descriptors[:, None, :] - clusters.centres[None]) ** 2).sum(-1)
    by_closeness = []
    for part in range(clusters.k):
        members = np.flatnonzero(clusters.labels == part)
        order = members[np.argsort(distance[members, part], kind="stable")]
        by_closeness.append([case_ids[int(i)] for i in order])
    return ArchiveParts(
        of_case={case_ids[i]: int(clusters.labels[i]) for i in range(len(case_ids))},
        by_closeness=by_closeness,
    )


def propose_held_out(
    parts: ArchiveParts, count: int, *, exclude: Iterable[str] = (), keep: Iterable[str] = ()
) -> list[str]:
    """``count`` held-out scans that cover the archive: one per part in turn, the largest part
    first, each part's scans nearest its centre first.

    ``keep`` are held out already (they count, and their parts are served); ``exclude`` may not
    be proposed (scans labeled for training).
    """
    chosen = [c for c in keep if c in parts.of_case]
    banned = set(exclude) | set(chosen)
    queues = [[c for c in cases if c not in banned] for cases in parts.by_closeness]
    served = [sum(parts.of_case[c] == part for c in chosen) for part in range(parts.count)]
    while len(chosen) < count and any(queues):
        # The part with the fewest held-out scans so far, the largest first on a tie.
        part = min(
            (p for p in range(parts.count) if queues[p]),
            key=lambda p: (served[p], -parts.sizes[p], p),
        )
        chosen.append(queues[part].pop(0))
        served[part] += 1
    return chosen


def coverage_notes(
    parts: ArchiveParts, labeled: Iterable[str], held_out: Iterable[str]
) -> list[str]:
    """One sentence per part that labeled scans come from and no held-out scan covers."""
    held = {parts.of_case[c] for c in held_out if c in parts.of_case}
    trained: dict[int, list[str]] = {}
    for case in labeled:
        if case in parts.of_case:
            trained.setdefault(parts.of_case[case], []).append(case)
    notes = []
    for part, cases in sorted(trained.items()):
        if part not in held:
            notes.append(
                f"no held-out scan comes from {parts.name(part)}, which labeled scan"
                f"{'s' * (len(cases) != 1)} {', '.join(sorted(cases))} come"
                f"{'s' * (len(cases) == 1)} from: the gate cannot see whether a new version "
                f"gets worse there (hold out one of its scans, e.g. "
                f"{parts.representatives[part]}, with assft hold-out)"
            )
    untouched = [p for p in range(parts.count) if p not in held and p not in trained]
    if untouched and held:
        names = ", ".join(parts.name(p) for p in untouched)
        notes.append(
            f"no held-out scan comes from {names}: the gate cannot see whether a new version "
            "forgets it (assft hold-out --propose lists scans that cover every part)"
        )
    return notes

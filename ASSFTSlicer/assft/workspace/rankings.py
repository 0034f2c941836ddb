"""A workspace's rankings: ``rankings/ranking-NNNN.json``, their scores in the registry, and the
next case to label from the latest one. :class:`Workspace` is the façade (``save_ranking``,
``latest_ranking``, ``next_case``)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from assft.errors import BadInputError
from assft.workspace.files import create_text_exclusive, default_user, read_json_document

if TYPE_CHECKING:
    from assft.workspace.registry import CaseRegistry

_RANKING_FILE = re.compile(r"^ranking-(\d+)\.json$")


class RankingsOwner(Protocol):
    """What :class:`Rankings` needs of its workspace (:class:`Workspace` is one)."""

    root: Path
    registry: CaseRegistry

    @property
    def rankings_dir(self) -> Path: ...

    def check_case_id(self, case_id: str) -> str: ...

    def image_path(self, case_id: str) -> Path: ...

    def current_model_version(self) -> str: ...


class Rankings:
    """The rankings of one workspace."""

    def __init__(self, workspace: RankingsOwner) -> None:
        self.workspace = workspace

    def __repr__(self) -> str:
        return f"Rankings({str(self.workspace.root)!r})"

    def save(self, document: dict[str, Any]) -> Path:
        """Store a ranking as ``rankings/ranking-NNNN.json`` and register its scores.

        Args:
            document: The ranking; ``document["cases"]`` lists dicts with at least ``case``,
                ``rank`` and ``score``. ``model_version`` (default: the current one),
                ``strategy`` and ``created_at`` are read when present.

        Returns:
            The new file's path (numbers only grow; two processes never clash).

        Raises:
            BadInputError: the document is malformed or names unknown or repeated cases.
        """
        entries = document.get("cases") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise BadInputError("a ranking document needs a 'cases' list")
        seen: set[str] = set()
        for entry in entries:
            if not isinstance(entry, dict) or not {"case", "rank", "score"} <= entry.keys():
                raise BadInputError(
                    f"each ranking entry needs 'case', 'rank' and 'score', got {entry!r}"
                )
            case_id = self.workspace.check_case_id(entry["case"])
            if case_id in seen:
                raise BadInputError(f"case {case_id!r} appears twice in the ranking")
            seen.add(case_id)
        text = json.dumps(document, indent=2) + "\n"
        self.workspace.rankings_dir.mkdir(exist_ok=True)
        number = self._last_number() + 1
        while True:
            path = self.workspace.rankings_dir / f"ranking-{number:04d}.json"
            try:
                create_text_exclusive(path, text)
                break
            except FileExistsError:
                number += 1
        self.workspace.registry.add_ranking(
            path.name,
            model_version=str(
                document.get("model_version") or self.workspace.current_model_version()
            ),
            strategy=None if document.get("strategy") is None else str(document["strategy"]),
            scores=entries,
            created_at=document.get("created_at"),
            user=default_user(),
        )
        return path

    def _last_number(self) -> int:
        names = [row["file_name"] for row in self.workspace.registry.rankings()]
        if self.workspace.rankings_dir.is_dir():
            names += [path.name for path in self.workspace.rankings_dir.iterdir()]
        numbers = [int(m.group(1)) for name in names if (m := _RANKING_FILE.match(name))]
        return max(numbers, default=0)

    def latest(self) -> dict[str, Any] | None:
        """The newest registered ranking document, parsed, or None.

        Raises:
            BadInputError: its file is missing or not valid JSON (the file is named).
        """
        row = self.workspace.registry.latest_ranking()
        if row is None:
            return None
        path = self.workspace.rankings_dir / row["file_name"]
        return read_json_document(path, "ranking", missing="is registered but missing")

    def next_case(self) -> dict[str, Any]:
        """The best-ranked case of the latest ranking that is still unlabeled (``assft next``).

        Statuses are read now, not from the ranking, so a case labeled, skipped or held out
        since the ranking was made is passed over.

        Returns:
            ``case`` (None when every ranked case is done), ``ranking`` (its file) and
            ``remaining`` (unlabeled ranked cases, this one included); with a case also
            ``image``, ``rank``, ``selected``, ``score``, ``reason``, ``hardest_structure``
            and ``model_version`` (the version that ranked it).

        Raises:
            BadInputError: there is no ranking yet, or it cannot be read (named).
        """
        ranking = self.latest()
        if ranking is None:
            raise BadInputError("no ranking yet: run 'assft rank' first", self.workspace.root)
        statuses = {row["case_id"]: row["status"] for row in self.workspace.registry.cases()}
        remaining = [row for row in ranking["cases"] if statuses.get(row["case"]) == "unlabeled"]
        if not remaining:
            return {"case": None, "ranking": ranking.get("file"), "remaining": 0}
        row = remaining[0]
        return {
            "case": row["case"],
            "image": str(self.workspace.image_path(row["case"])),
            "rank": row["rank"],
            "selected": row["selected"],
            "score": row["score"],
            "reason": row["reason"],
            "hardest_structure": row.get("hardest_structure"),
            "model_version": ranking["model_version"],
            "ranking": ranking.get("file"),
            "remaining": len(remaining),
        }

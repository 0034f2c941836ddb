"""The case registry: one SQLite file shared by the GUI, the CLI and background jobs.

Its rows: the cases and their statuses, the submits under way, and the rankings with their
per-case scores. How the file is opened, locked, upgraded and audited is
:mod:`assft.workspace.registry_database`; its tables are :mod:`assft.workspace.registry_schema`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from assft.errors import BadInputError
from assft.workspace.files import utc_now
from assft.workspace.registry_database import RegistryDatabase
from assft.workspace.registry_schema import CASE_STATUSES, check_status

__all__ = ["CaseRegistry"]

_KEEP = object()


class CaseRegistry(RegistryDatabase):
    """The SQLite case registry of a workspace.

    Opened as a :class:`~assft.workspace.registry_database.RegistryDatabase` (``path``,
    ``create``), which also gives its transactions and its audit trail.
    """

    def __repr__(self) -> str:
        return f"CaseRegistry({str(self.path)!r})"

    # cases -------------------------------------------------------------------------------

    def add_case(
        self,
        case_id: str,
        image_path: str | Path,
        status: str = "unlabeled",
        *,
        user: str | None = None,
        label_sha256: str | None = None,
    ) -> None:
        """Register one case (see :meth:`add_cases`)."""
        self.add_cases([(case_id, image_path)], status=status, user=user, label_sha256=label_sha256)

    def add_cases(
        self,
        cases: Iterable[tuple[str, str | Path]],
        status: str = "unlabeled",
        *,
        user: str | None = None,
        label_sha256: str | None = None,
    ) -> None:
        """Register cases in one transaction.

        Args:
            cases: ``(case_id, image_path)`` pairs.
            status: Their initial status.
            user: Who added them.
            label_sha256: Hash of the stored label, for a case added as labeled.

        Raises:
            BadInputError: a case id is already registered (nothing is added).
        """
        check_status(status)
        now = utc_now()
        with self._connect(write=True) as connection:
            for case_id, image_path in cases:
                try:
                    connection.execute(
                        "INSERT INTO cases (case_id, image_path, status, updated_by, updated_at,"
                        " label_sha256) VALUES (?, ?, ?, ?, ?, ?)",
                        (case_id, str(image_path), status, user, now, label_sha256),
                    )
                except sqlite3.IntegrityError:
                    raise BadInputError(
                        f"case id {case_id!r} is already registered", self.path
                    ) from None

    def cases(self, status: str | None = None) -> list[dict[str, Any]]:
        """Cases ordered by case id, all or those with one status."""
        with self._connect() as connection:
            if status is None:
                rows = connection.execute("SELECT * FROM cases ORDER BY case_id").fetchall()
            else:
                rows = connection.execute(
                    "SELECT * FROM cases WHERE status = ? ORDER BY case_id", (check_status(status),)
                ).fetchall()
        return [dict(row) for row in rows]

    def case(self, case_id: str) -> dict[str, Any] | None:
        """One case's row, or None if unknown."""
        with self._connect() as connection:
            row = connection.execute("SELECT * FROM cases WHERE case_id = ?", (case_id,)).fetchone()
        return None if row is None else dict(row)

    def case_count(self) -> int:
        """Number of registered cases."""
        with self._connect() as connection:
            return int(connection.execute("SELECT COUNT(*) FROM cases").fetchone()[0])

    def counts(self) -> dict[str, int]:
        """Number of cases per status, with every status present."""
        with self._connect() as connection:
            rows = connection.execute(
                "SELECT status, COUNT(*) FROM cases GROUP BY status"
            ).fetchall()
        found = {row[0]: int(row[1]) for row in rows}
        return {status: found.get(status, 0) for status in CASE_STATUSES}

    def set_status(
        self,
        case_id: str,
        status: str,
        *,
        user: str | None = None,
        label_sha256: Any = _KEEP,
        action: str = "set-status",
        detail: Mapping[str, Any] | None = None,
        require: Collection[str] | None = None,
        require_label: bool = False,
    ) -> None:
        """Change a case's status and write the matching audit row, in one transaction.

        Args:
            case_id: A registered case.
            status: One of :data:`CASE_STATUSES`.
            user: Who did it.
            label_sha256: New label hash (None clears it); unchanged when not given.
            action: Audit action name.
            detail: Extra audit detail (``from`` and ``to`` statuses are added).
            require: Statuses the case must have now, checked in the same transaction.
            require_label: The case must have a stored label hash (be or have been labeled).

        Raises:
            BadInputError: unknown status or case, or a case that has not the required status
                or no stored label.
        """
        check_status(status)
        now = utc_now()
        with self._connect(write=True) as connection:
            row = connection.execute(
                "SELECT status, label_sha256 FROM cases WHERE case_id = ?", (case_id,)
            ).fetchone()
            if row is None:
                raise BadInputError(f"unknown case id {case_id!r}", self.path)
            if require is not None and row["status"] not in require:
                wanted = " or ".join(sorted(require))
                raise BadInputError(f"case {case_id!r} is {row['status']}, not {wanted}")
            if require_label and row["label_sha256"] is None:
                raise BadInputError(
                    f"case {case_id!r} has no stored label: submit one to mark it {status}"
                )
            self._update_case(connection, now, case_id, status, user, label_sha256)
            full_detail = {"from": row["status"], "to": status, **(detail or {})}
            self._insert_audit(connection, now, action, case_id, full_detail, user)

    @staticmethod
    def _update_case(
        connection: sqlite3.Connection,
        now: str,
        case_id: str,
        status: str,
        user: str | None,
        label_sha256: Any,
    ) -> None:
        if label_sha256 is _KEEP:
            connection.execute(
                "UPDATE cases SET status = ?, updated_by = ?, updated_at = ? WHERE case_id = ?",
                (status, user, now, case_id),
            )
        else:
            connection.execute(
                "UPDATE cases SET status = ?, updated_by = ?, updated_at = ?, label_sha256 = ?"
                " WHERE case_id = ?",
                (status, user, now, label_sha256, case_id),
            )

    # submits under way -------------------------------------------------------------------

    def begin_label(
        self,
        case_id: str,
        sha256: str,
        *,
        backup: str | None,
        source: str,
        user: str | None,
        pid: int,
    ) -> None:
        """Record that a submit is about to replace a case's label file (its intent).

        Args:
            case_id: A registered case.
            sha256: Hash of the label file about to be put in place.
            backup: File name in ``labels/backup/`` of the label it replaces, if any.
            source: The file the clinician submitted.
            user: Who submits it.
            pid: The submitting process.

        Raises:
            BadInputError: unknown case.
        """
        with self._connect(write=True) as connection:
            row = connection.execute(
                "SELECT label_sha256 FROM cases WHERE case_id = ?", (case_id,)
            ).fetchone()
            if row is None:
                raise BadInputError(f"unknown case id {case_id!r}", self.path)
            connection.execute(
                "INSERT OR REPLACE INTO pending_labels (case_id, sha256, previous_sha256, backup,"
                " source, user, pid, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (case_id, sha256, row["label_sha256"], backup, source, user, pid, utc_now()),
            )

    def commit_label(
        self,
        case_id: str,
        sha256: str,
        *,
        user: str | None,
        action: str,
        detail: Mapping[str, Any],
    ) -> None:
        """Mark a case labeled with its new label's hash, audit it and clear its intent.

        One transaction: the registry says ``labeled`` with this hash exactly when the intent
        recorded by :meth:`begin_label` is gone.
        """
        now = utc_now()
        with self._connect(write=True) as connection:
            row = connection.execute(
                "SELECT status FROM cases WHERE case_id = ?", (case_id,)
            ).fetchone()
            if row is None:
                raise BadInputError(f"unknown case id {case_id!r}", self.path)
            self._update_case(connection, now, case_id, "labeled", user, sha256)
            connection.execute("DELETE FROM pending_labels WHERE case_id = ?", (case_id,))
            full_detail = {"from": row["status"], "to": "labeled", **detail}
            self._insert_audit(connection, now, action, case_id, full_detail, user)

    def drop_pending_label(
        self,
        case_id: str,
        *,
        action: str | None = None,
        detail: Mapping[str, Any] | None = None,
        user: str | None = None,
    ) -> None:
        """Forget a case's submit intent (the label file was not replaced), with an audit row."""
        with self._connect(write=True) as connection:
            connection.execute("DELETE FROM pending_labels WHERE case_id = ?", (case_id,))
            if action is not None:
                self._insert_audit(connection, utc_now(), action, case_id, detail, user)

    def pending_labels(self, case_id: str | None = None) -> list[dict[str, Any]]:
        """Submits under way or interrupted (:meth:`begin_label` rows), by case id."""
        with self._connect() as connection:
            try:
                rows = connection.execute(
                    "SELECT * FROM pending_labels"
                    + ("" if case_id is None else " WHERE case_id = ?")
                    + " ORDER BY case_id",
                    () if case_id is None else (case_id,),
                ).fetchall()
            except sqlite3.OperationalError:
                if self._has_table(connection, "pending_labels"):
                    raise
                return []  # schema 1 on a read-only disk: no submit can have been under way
        return [dict(row) for row in rows]

    # rankings ----------------------------------------------------------------------------

    def add_ranking(
        self,
        file_name: str,
        *,
        model_version: str | None,
        strategy: str | None,
        scores: Iterable[Mapping[str, Any]],
        created_at: str | None = None,
        user: str | None = None,
    ) -> int:
        """Register a ranking file and its per-case scores in one transaction.

        Args:
            file_name: The ranking's file name inside ``rankings/``.
            model_version: Model version that produced it.
            strategy: Query strategy name.
            scores: One mapping per case with at least ``case``, ``rank`` and ``score``;
                the whole mapping is kept as JSON.
            created_at: UTC ISO time; now when None.
            user: Who ran it (audit).

        Returns:
            The new ranking id.
        """
        created_at = created_at or utc_now()
        with self._connect(write=True) as connection:
            cursor = connection.execute(
                "INSERT INTO rankings (created_at, model_version, strategy, file_name)"
                " VALUES (?, ?, ?, ?)",
                (created_at, model_version, strategy, file_name),
            )
            ranking_id = int(cursor.lastrowid or 0)
            rows = [
                (
                    ranking_id,
                    str(entry["case"]),
                    None if entry.get("rank") is None else int(entry["rank"]),
                    None if entry.get("score") is None else float(entry["score"]),
                    json.dumps(dict(entry)),
                )
                for entry in scores
            ]
            connection.executemany(
                "INSERT INTO ranking_scores (ranking_id, case_id, rank, score, data)"
                " VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            self._insert_audit(
                connection,
                utc_now(),
                "ranking",
                None,
                {"ranking_id": ranking_id, "file": file_name, "cases": len(rows)},
                user,
            )
        return ranking_id

    def rankings(self) -> list[dict[str, Any]]:
        """Registered rankings, oldest first."""
        with self._connect() as connection:
            rows = connection.execute("SELECT * FROM rankings ORDER BY ranking_id").fetchall()
        return [dict(row) for row in rows]

    def latest_ranking(self) -> dict[str, Any] | None:
        """The newest ranking's row, or None when there is none."""
        with self._connect() as connection:
            row = connection.execute(
                "SELECT * FROM rankings ORDER BY ranking_id DESC LIMIT 1"
            ).fetchone()
        return None if row is None else dict(row)

    def scores(self, ranking_id: int) -> list[dict[str, Any]]:
        """Per-case scores of a ranking, best rank first.

        Returns:
            Dicts with ``case_id``, ``rank``, ``score`` and ``data`` (the stored mapping).
        """
        with self._connect() as connection:
            rows = connection.execute(
                "SELECT case_id, rank, score, data FROM ranking_scores WHERE ranking_id = ?"
                " ORDER BY rank IS NULL, rank, case_id",
                (ranking_id,),
            ).fetchall()
        return [
            {
                "case_id": row["case_id"],
                "rank": row["rank"],
                "score": row["score"],
                "data": json.loads(row["data"]),
            }
            for row in rows
        ]

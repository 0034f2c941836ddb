"""The case registry: one SQLite file shared by the GUI, the CLI and background jobs.

SQLite in WAL mode lets readers work while one process writes; every write takes the write
lock up front (``BEGIN IMMEDIATE``) and waits up to 30 s for it, so two processes updating
the registry at once queue instead of failing with "database is locked". A connection is
opened per operation, which makes a :class:`Registry` safe to share between threads and to
pass to a forked process.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from assft.errors import BadInputError
from assft.workspace.files import utc_now

__all__ = ["CASE_STATUSES", "REGISTRY_FILE_NAME", "SCHEMA_VERSION", "Registry"]

CASE_STATUSES = ("unlabeled", "labeled", "skipped", "held-out")
"""Every status a case can have."""

REGISTRY_FILE_NAME = "registry.sqlite"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 30.0

_SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS cases (
        case_id TEXT PRIMARY KEY,
        image_path TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'unlabeled'
            CHECK (status IN ({", ".join(repr(s) for s in CASE_STATUSES)})),
        updated_by TEXT,
        updated_at TEXT,
        label_sha256 TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS rankings (
        ranking_id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at TEXT NOT NULL,
        model_version TEXT,
        strategy TEXT,
        file_name TEXT NOT NULL UNIQUE
    )""",
    """CREATE TABLE IF NOT EXISTS ranking_scores (
        ranking_id INTEGER NOT NULL REFERENCES rankings (ranking_id) ON DELETE CASCADE,
        case_id TEXT NOT NULL,
        rank INTEGER,
        score REAL,
        data TEXT NOT NULL,
        PRIMARY KEY (ranking_id, case_id)
    )""",
    """CREATE TABLE IF NOT EXISTS audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time TEXT NOT NULL,
        user TEXT,
        action TEXT NOT NULL,
        case_id TEXT,
        detail TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS audit_case ON audit (case_id)",
    "CREATE INDEX IF NOT EXISTS cases_status ON cases (status)",
)

_KEEP = object()


def check_status(status: str) -> str:
    """Return ``status`` if it is one of :data:`CASE_STATUSES`.

    Raises:
        BadInputError: it is not.
    """
    if status not in CASE_STATUSES:
        raise BadInputError(
            f"unknown case status {status!r}; use one of {', '.join(CASE_STATUSES)}"
        )
    return status


class Registry:
    """The SQLite case registry of a workspace.

    Args:
        path: The database file (``<workspace>/registry.sqlite``); created with its schema
            when missing.

    Raises:
        BadInputError: the file is not an SQLite database, or was written by a newer ASSFT.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._create_schema()

    def __repr__(self) -> str:
        return f"Registry({str(self.path)!r})"

    @contextlib.contextmanager
    def _connect(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """Open a connection; with ``write`` run the block as one immediate transaction."""
        try:
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as error:
            raise BadInputError(f"cannot be opened as a database ({error})", self.path) from None
        try:
            connection.row_factory = sqlite3.Row
            connection.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            connection.execute("PRAGMA foreign_keys = ON")
            if not write:
                yield connection
                return
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
        except sqlite3.DatabaseError as error:
            if isinstance(error, sqlite3.OperationalError) and "locked" in str(error):
                raise
            raise BadInputError(f"is not a usable ASSFT registry ({error})", self.path) from None
        finally:
            connection.close()

    def _create_schema(self) -> None:
        """Switch to WAL and create the tables.

        An up-to-date registry is only read, so opening it never waits for a busy writer.
        """
        with self._connect() as connection:
            mode = str(connection.execute("PRAGMA journal_mode").fetchone()[0]).lower()
            version = int(connection.execute("PRAGMA user_version").fetchone()[0])
            if mode != "wal":
                mode = str(connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
                if mode != "wal":
                    raise BadInputError(
                        f"cannot use write-ahead logging (journal mode {mode})", self.path
                    )
        if version == SCHEMA_VERSION:
            return
        with self._connect(write=True) as connection:
            version = int(connection.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise BadInputError(
                    f"was written by a newer ASSFT (schema {version}, this one knows "
                    f"{SCHEMA_VERSION}); update ASSFT",
                    self.path,
                )
            for statement in _SCHEMA:
                connection.execute(statement)
            if version < SCHEMA_VERSION:
                connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

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

    def set_status(
        self,
        case_id: str,
        status: str,
        *,
        user: str | None = None,
        label_sha256: Any = _KEEP,
        action: str = "set-status",
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Change a case's status and write the matching audit row, in one transaction.

        Args:
            case_id: A registered case.
            status: One of :data:`CASE_STATUSES`.
            user: Who did it.
            label_sha256: New label hash (None clears it); unchanged when not given.
            action: Audit action name.
            detail: Extra audit detail (``from`` and ``to`` statuses are added).

        Raises:
            BadInputError: unknown status or case.
        """
        check_status(status)
        now = utc_now()
        with self._connect(write=True) as connection:
            row = connection.execute(
                "SELECT status FROM cases WHERE case_id = ?", (case_id,)
            ).fetchone()
            if row is None:
                raise BadInputError(f"unknown case id {case_id!r}", self.path)
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
            full_detail = {"from": row["status"], "to": status, **(detail or {})}
            self._insert_audit(connection, now, action, case_id, full_detail, user)

    def counts(self) -> dict[str, int]:
        """Number of cases per status, with every status present."""
        with self._connect() as connection:
            rows = connection.execute(
                "SELECT status, COUNT(*) FROM cases GROUP BY status"
            ).fetchall()
        found = {row[0]: int(row[1]) for row in rows}
        return {status: found.get(status, 0) for status in CASE_STATUSES}

    # audit -------------------------------------------------------------------------------

    @staticmethod
    def _insert_audit(
        connection: sqlite3.Connection,
        time: str,
        action: str,
        case_id: str | None,
        detail: Mapping[str, Any] | None,
        user: str | None,
    ) -> int:
        cursor = connection.execute(
            "INSERT INTO audit (time, user, action, case_id, detail) VALUES (?, ?, ?, ?, ?)",
            (time, user, action, case_id, None if detail is None else json.dumps(dict(detail))),
        )
        return int(cursor.lastrowid or 0)

    def audit(
        self,
        action: str,
        case_id: str | None = None,
        detail: Mapping[str, Any] | None = None,
        user: str | None = None,
    ) -> int:
        """Append an audit row and return its id."""
        with self._connect(write=True) as connection:
            return self._insert_audit(connection, utc_now(), action, case_id, detail, user)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction for work that must be recorded whole or not at all.

        ``BEGIN IMMEDIATE`` (so one such transaction runs at a time, across processes: the
        others wait up to 30 s), ``COMMIT`` when the block ends, ``ROLLBACK`` when it raises or
        the process dies first. Write rows in it with :meth:`insert_audit`; files the block
        changes are the caller's to put back when it raises.
        """
        with self._connect(write=True) as connection:
            yield connection

    def insert_audit(
        self,
        connection: sqlite3.Connection,
        action: str,
        detail: Mapping[str, Any] | None = None,
        *,
        user: str | None = None,
        case_id: str | None = None,
    ) -> int:
        """Append an audit row inside :meth:`transaction`; returns its id."""
        return self._insert_audit(connection, utc_now(), action, case_id, detail, user)

    def audit_actions(
        self, actions: Iterable[str], connection: sqlite3.Connection | None = None
    ) -> list[dict[str, Any]]:
        """Audit rows of the given actions in order (``detail`` parsed), read through
        ``connection`` when given (inside :meth:`transaction`)."""
        names = list(actions)
        query = f"SELECT * FROM audit WHERE action IN ({', '.join('?' * len(names))}) ORDER BY id"
        with contextlib.ExitStack() as stack:
            if connection is None:
                connection = stack.enter_context(self._connect())
            rows = connection.execute(query, names).fetchall()
        trail = []
        for row in rows:
            entry = dict(row)
            entry["detail"] = None if entry["detail"] is None else json.loads(entry["detail"])
            trail.append(entry)
        return trail

    def audit_trail(self, case_id: str | None = None) -> list[dict[str, Any]]:
        """Audit rows in order, all or those of one case; ``detail`` is parsed JSON."""
        with self._connect() as connection:
            if case_id is None:
                rows = connection.execute("SELECT * FROM audit ORDER BY id").fetchall()
            else:
                rows = connection.execute(
                    "SELECT * FROM audit WHERE case_id = ? ORDER BY id", (case_id,)
                ).fetchall()
        trail = []
        for row in rows:
            entry = dict(row)
            entry["detail"] = None if entry["detail"] is None else json.loads(entry["detail"])
            trail.append(entry)
        return trail

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

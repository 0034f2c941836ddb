"""The case registry: one SQLite file shared by the GUI, the CLI and background jobs.

SQLite in WAL mode lets readers work while one process writes; every write takes the write
lock up front (``BEGIN IMMEDIATE``) and waits up to 30 s for it, so two processes updating
the registry at once queue instead of failing with "database is locked". A connection is
opened per operation, which makes a :class:`CaseRegistry` safe to share between threads and to
pass to a forked process.

Only ``assft init`` creates a registry (``CaseRegistry(path, create=True)``): a workspace whose
registry is missing, empty or without tables is damaged, and opening it changes nothing. A full
disk and a read-only workspace are reported as such (:class:`assft.errors.StorageError`), not
as a damaged registry.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
from collections.abc import Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from assft.errors import BadInputError, StorageError, WorkspaceLockedError
from assft.workspace.files import utc_now

__all__ = ["CASE_STATUSES", "REGISTRY_FILE_NAME", "SCHEMA_VERSION", "CaseRegistry"]

CASE_STATUSES = ("unlabeled", "labeled", "skipped", "held-out")
"""Every status a case can have."""

REGISTRY_FILE_NAME = "registry.sqlite"
SCHEMA_VERSION = 2
"""1: cases, rankings, ranking_scores, audit; 2: pending_labels (submits under way)."""
BUSY_TIMEOUT_S = 30.0

# SQLite's primary result codes (https://sqlite.org/rescode.html).
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_FULL = 5, 6, 8, 10, 13
_SQLITE_CANTOPEN = 14
_NEARLY_FULL_BYTES = 1 << 20

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
    # A submit records its intent here before it replaces the label file and deletes the row in
    # the transaction that marks the case labeled: a row left behind is a submit that was
    # interrupted, which Workspace.open finishes or abandons (the label file decides).
    """CREATE TABLE IF NOT EXISTS pending_labels (
        case_id TEXT PRIMARY KEY,
        sha256 TEXT NOT NULL,
        previous_sha256 TEXT,
        backup TEXT,
        source TEXT,
        user TEXT,
        pid INTEGER,
        started_at TEXT NOT NULL
    )""",
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


class CaseRegistry:
    """The SQLite case registry of a workspace.

    Args:
        path: The database file (``<workspace>/registry.sqlite``).
        create: Create the file with its schema (``assft init`` only); without it a missing,
            empty or table-less file is refused, and left as it is.

    Raises:
        BadInputError: the file is missing, empty or not an ASSFT registry (unless
            ``create``), is not an SQLite database, or was written by a newer ASSFT.
    """

    def __init__(self, path: str | Path, *, create: bool = False) -> None:
        self.path = Path(path)
        if not create:
            self._check_exists()
        self._create_schema(create)

    def __repr__(self) -> str:
        return f"CaseRegistry({str(self.path)!r})"

    def _check_exists(self) -> None:
        damaged = (
            "the workspace is damaged: restore it from a backup (only 'assft init' creates one)"
        )
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            raise BadInputError(f"is missing; {damaged}", self.path) from None
        if not self.path.is_file():
            raise BadInputError(f"is not a file; {damaged}", self.path)
        if size == 0:
            raise BadInputError(f"is empty (0 bytes); {damaged}", self.path)

    def _database_error(self, error: sqlite3.Error) -> BadInputError:
        """The one-line error for what SQLite raised: full disk, read-only, busy, or damaged."""
        code = getattr(error, "sqlite_errorcode", 0) & 0xFF
        if code in (_SQLITE_BUSY, _SQLITE_LOCKED) or "locked" in str(error):
            return WorkspaceLockedError(
                f"is locked by another process for over {BUSY_TIMEOUT_S:g} s; try again",
                self.path,
            )
        if code == _SQLITE_FULL or (code == _SQLITE_IOERR and self._disk_nearly_full()):
            return StorageError("no space left on device; free some space and try again", self.path)
        if code == _SQLITE_READONLY or (code == _SQLITE_CANTOPEN and self._read_only()):
            return StorageError(
                "the workspace is read-only (the registry cannot be written)", self.path
            )
        return BadInputError(f"is not a usable ASSFT registry ({error})", self.path)

    def _read_only(self) -> bool:
        """Whether the registry's folder cannot be written (read-only file system, rights)."""
        return not os.access(self.path.parent, os.W_OK)

    def _disk_nearly_full(self) -> bool:
        try:
            return shutil.disk_usage(self.path.parent).free < _NEARLY_FULL_BYTES
        except OSError:
            return False

    def _open_connection(self, write: bool) -> sqlite3.Connection:
        """A connection; on a read-only disk, where SQLite cannot make the WAL's shared-memory
        file, a read falls back to opening the database as immutable (no one can write it)."""
        try:
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            connection.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            connection.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as error:
            code = getattr(error, "sqlite_errorcode", 0) & 0xFF
            if write or code != _SQLITE_CANTOPEN or not self._read_only():
                raise
            uri = f"{self.path.resolve().as_uri()}?mode=ro&immutable=1"
            connection = sqlite3.connect(uri, uri=True, isolation_level=None)
            connection.execute("PRAGMA query_only = 1")
        return connection

    @contextlib.contextmanager
    def _connect(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """Open a connection; with ``write`` run the block as one immediate transaction."""
        try:
            connection = self._open_connection(write)
        except sqlite3.DatabaseError as error:
            raise self._database_error(error) from None
        try:
            connection.row_factory = sqlite3.Row
            connection.execute("PRAGMA foreign_keys = ON")
            if not write:
                yield connection
                return
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                if connection.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
        except sqlite3.DatabaseError as error:
            raise self._database_error(error) from None
        finally:
            connection.close()

    def _create_schema(self, create: bool) -> None:
        """Check the schema, switch to WAL, and create or upgrade the tables.

        An up-to-date registry is only read, so opening it never waits for a busy writer.
        """
        with self._connect() as connection:
            version = int(connection.execute("PRAGMA user_version").fetchone()[0])
            if not create and not self._has_table(connection, "cases"):
                raise BadInputError(
                    "holds no ASSFT registry (no cases table): the workspace is damaged; "
                    "restore it from a backup (only 'assft init' creates one)",
                    self.path,
                )
            mode = str(connection.execute("PRAGMA journal_mode").fetchone()[0]).lower()
            read_only = bool(connection.execute("PRAGMA query_only").fetchone()[0])
            if mode != "wal" and not read_only:
                mode = str(connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
                if mode != "wal":
                    raise BadInputError(
                        f"cannot use write-ahead logging (journal mode {mode})", self.path
                    )
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise self._newer(version)
        try:
            with self._connect(write=True) as connection:
                version = int(connection.execute("PRAGMA user_version").fetchone()[0])
                if version > SCHEMA_VERSION:
                    raise self._newer(version)
                for statement in _SCHEMA:
                    connection.execute(statement)
                if version < SCHEMA_VERSION:
                    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except StorageError:
            if create:
                raise
            # A read-only workspace of an older schema can still be read: every table the
            # readers use exists since schema 1; the upgrade waits for a writable open.

    def _newer(self, version: int) -> BadInputError:
        return BadInputError(
            f"was written by a newer ASSFT (schema {version}, this one knows "
            f"{SCHEMA_VERSION}); update ASSFT",
            self.path,
        )

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

    @staticmethod
    def _has_table(connection: sqlite3.Connection, name: str) -> bool:
        return bool(
            connection.execute(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
            ).fetchone()[0]
        )

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

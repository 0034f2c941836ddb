"""The SQLite file under the case registry: connections, errors, schema, transactions, audit.

SQLite in WAL mode lets readers work while one process writes; every write takes the write
lock up front (``BEGIN IMMEDIATE``) and waits up to 30 s for it, so two processes updating
the registry at once queue instead of failing with "database is locked". A connection is
opened per operation, which makes a registry safe to share between threads and to pass to a
forked process.

Only ``assft init`` creates a registry (``CaseRegistry(path, create=True)``): a workspace whose
registry is missing, empty or without tables is damaged, and opening it changes nothing. A full
disk and a read-only workspace are reported as such (:class:`assft.errors.StorageError`), not
as a damaged registry.

Every change is recorded in the ``audit`` table, in the transaction that makes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from assft.errors import BadInputError, StorageError, WorkspaceLockedError
from assft.workspace.files import utc_now
from assft.workspace.registry_schema import SCHEMA, SCHEMA_VERSION

__all__ = ["BUSY_TIMEOUT_S", "RegistryDatabase"]

BUSY_TIMEOUT_S = 30.0

# SQLite's primary result codes (https://sqlite.org/rescode.html).
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_FULL = 5, 6, 8, 10, 13
_SQLITE_CANTOPEN = 14
_NEARLY_FULL_BYTES = 1 << 20


class RegistryDatabase:
    """The SQLite file of a workspace's registry, opened (and checked) once per operation.

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
                for statement in SCHEMA:
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

    @staticmethod
    def _has_table(connection: sqlite3.Connection, name: str) -> bool:
        return bool(
            connection.execute(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
            ).fetchone()[0]
        )

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
        return _audit_entries(rows)

    def audit_trail(self, case_id: str | None = None) -> list[dict[str, Any]]:
        """Audit rows in order, all or those of one case; ``detail`` is parsed JSON."""
        with self._connect() as connection:
            if case_id is None:
                rows = connection.execute("SELECT * FROM audit ORDER BY id").fetchall()
            else:
                rows = connection.execute(
                    "SELECT * FROM audit WHERE case_id = ? ORDER BY id", (case_id,)
                ).fetchall()
        return _audit_entries(rows)


def _audit_entries(rows: list[Any]) -> list[dict[str, Any]]:
    """Audit rows as dicts, their ``detail`` parsed from JSON."""
    entries = [dict(row) for row in rows]
    for entry in entries:
        entry["detail"] = None if entry["detail"] is None else json.loads(entry["detail"])
    return entries

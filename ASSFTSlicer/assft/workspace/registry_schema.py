"""What the case registry's SQLite file holds: its tables, their schema version, and the
statuses a case can have.

:mod:`assft.workspace.registry_database` creates the tables (``assft init``) and upgrades an
older registry when it is opened; :mod:`assft.workspace.registry` reads and writes their rows.
"""

from __future__ import annotations

from assft.errors import BadInputError

__all__ = ["CASE_STATUSES", "REGISTRY_FILE_NAME", "SCHEMA", "SCHEMA_VERSION", "check_status"]

CASE_STATUSES = ("unlabeled", "labeled", "skipped", "held-out")
"""Every status a case can have."""

REGISTRY_FILE_NAME = "registry.sqlite"
SCHEMA_VERSION = 2
"""1: cases, rankings, ranking_scores, audit; 2: pending_labels (submits under way)."""

SCHEMA = (
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
"""The statements that create the tables and indexes (each ``IF NOT EXISTS``)."""


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

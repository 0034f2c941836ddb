"""Tests of the SQLite case registry, including two processes writing at once."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from assft.errors import BadInputError
from assft.workspace import CASE_STATUSES, CaseRegistry
from assft.workspace.registry_schema import SCHEMA_VERSION

if TYPE_CHECKING:
    from multiprocessing.synchronize import Event

CASES = [f"case{i:02d}" for i in range(10)]
UPDATES_PER_WRITER = 50


def _writer(path: str, writer: int, start: Event) -> None:
    """Child process: status updates and audit rows, as fast as possible."""
    registry = CaseRegistry(path)
    start.wait(10)
    for i in range(UPDATES_PER_WRITER):
        case_id = CASES[i % len(CASES)]
        registry.set_status(case_id, CASE_STATUSES[(i + writer) % 4], user=f"writer{writer}")
        registry.audit("note", case_id, {"writer": writer, "i": i}, user=f"writer{writer}")


def test_cases_statuses_and_counts(tmp_path: Path) -> None:
    registry = CaseRegistry(tmp_path / "registry.sqlite", create=True)
    registry.add_cases([("b", "/data/b.nii.gz"), ("a", "/data/a.nii.gz")], user="me")
    registry.add_case("c", Path("/data/c.nrrd"))
    assert [case["case_id"] for case in registry.cases()] == ["a", "b", "c"]
    assert registry.case("a")["image_path"] == "/data/a.nii.gz"
    assert registry.case("zzz") is None
    assert registry.case_count() == 3

    registry.set_status("b", "skipped", user="me")
    registry.set_status("c", "labeled", user="you", label_sha256="abc", action="submit-label")
    assert registry.counts() == {"unlabeled": 1, "labeled": 1, "skipped": 1, "held-out": 0}
    assert [case["case_id"] for case in registry.cases("skipped")] == ["b"]
    case_c = registry.case("c")
    assert (case_c["status"], case_c["updated_by"], case_c["label_sha256"]) == (
        "labeled",
        "you",
        "abc",
    )
    registry.set_status("c", "held-out")
    assert registry.case("c")["label_sha256"] == "abc"

    trail = registry.audit_trail("c")
    assert [row["action"] for row in trail] == ["submit-label", "set-status"]
    assert trail[0]["detail"] == {"from": "unlabeled", "to": "labeled"}
    assert trail[0]["time"].endswith("+00:00")


def test_bad_statuses_and_duplicates_are_refused(tmp_path: Path) -> None:
    registry = CaseRegistry(tmp_path / "registry.sqlite", create=True)
    registry.add_case("a", "/a.nii")
    with pytest.raises(BadInputError, match="unknown case status 'done'"):
        registry.set_status("a", "done")
    with pytest.raises(BadInputError, match="unknown case id"):
        registry.set_status("nope", "skipped")
    with pytest.raises(BadInputError, match="already registered"):
        registry.add_cases([("b", "/b.nii"), ("a", "/a2.nii")])
    assert [case["case_id"] for case in registry.cases()] == ["a"]  # the batch was rolled back
    assert registry.audit_trail() == []


def test_rankings_and_scores(tmp_path: Path) -> None:
    registry = CaseRegistry(tmp_path / "registry.sqlite", create=True)
    scores = [
        {"case": "b", "rank": 2, "score": 0.5, "dkd": 0.1},
        {"case": "a", "rank": 1, "score": 0.9, "asd": 3.0},
    ]
    ranking_id = registry.add_ranking(
        "ranking-0001.json", model_version="v0", strategy="attsq", scores=scores
    )
    assert registry.latest_ranking()["file_name"] == "ranking-0001.json"
    stored = registry.scores(ranking_id)
    assert [row["case_id"] for row in stored] == ["a", "b"]
    assert stored[0]["data"] == scores[1]
    assert stored[1]["score"] == 0.5
    assert registry.audit_trail()[-1]["action"] == "ranking"


def test_schema_is_wal_and_versioned(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    CaseRegistry(path, create=True)
    CaseRegistry(path)  # idempotent
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        connection.execute("PRAGMA user_version = 99")
        connection.commit()
    finally:
        connection.close()
    with pytest.raises(BadInputError, match="newer ASSFT"):
        CaseRegistry(path)


def test_not_a_database_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(BadInputError) as caught:
        CaseRegistry(path)
    assert str(caught.value).startswith(str(path))


def test_two_processes_write_at_once(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    registry = CaseRegistry(path, create=True)
    registry.add_cases((case_id, f"/data/{case_id}.nii.gz") for case_id in CASES)
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    writers = [context.Process(target=_writer, args=(str(path), w, start)) for w in (0, 1)]
    for process in writers:
        process.start()
    start.set()
    for process in writers:
        process.join(60)
    assert [process.exitcode for process in writers] == [0, 0]

    trail = registry.audit_trail()
    for writer in (0, 1):
        rows = [row for row in trail if row["user"] == f"writer{writer}"]
        assert len([row for row in rows if row["action"] == "set-status"]) == UPDATES_PER_WRITER
        notes = [row["detail"]["i"] for row in rows if row["action"] == "note"]
        assert notes == list(range(UPDATES_PER_WRITER))
    assert sum(registry.counts().values()) == len(CASES)


def test_threads_share_one_registry(tmp_path: Path) -> None:
    registry = CaseRegistry(tmp_path / "registry.sqlite", create=True)
    registry.add_case("a", "/a.nii")
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(20):
                registry.audit("tick", "a", {"thread": n, "i": i})
                registry.counts()
        except BaseException as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(registry.audit_trail("a")) == 80


def test_only_create_makes_a_registry(tmp_path: Path) -> None:
    """A missing, empty or table-less registry is damaged: refused, and left as it was."""
    path = tmp_path / "registry.sqlite"
    with pytest.raises(BadInputError, match="is missing; the workspace is damaged"):
        CaseRegistry(path)
    assert not path.exists()
    path.write_bytes(b"")
    with pytest.raises(BadInputError, match=r"is empty \(0 bytes\); the workspace is damaged"):
        CaseRegistry(path)
    assert path.read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["registry.sqlite"]  # no -wal, -shm
    path.unlink()
    sqlite3.connect(path).close()  # an SQLite file (header only) with no tables
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE other (x)")
    connection.commit()
    connection.close()
    before = path.read_bytes()
    with pytest.raises(BadInputError, match="holds no ASSFT registry"):
        CaseRegistry(path)
    assert path.read_bytes() == before


def test_a_schema_1_registry_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    CaseRegistry(path, create=True).add_case("a", "/a.nii")
    connection = sqlite3.connect(path)
    connection.execute("DROP TABLE pending_labels")
    connection.execute("PRAGMA user_version = 1")
    connection.commit()
    connection.close()
    registry = CaseRegistry(path)
    assert registry.pending_labels() == []
    registry.begin_label("a", "f00", backup=None, source="/x.nii.gz", user="me", pid=1)
    assert [row["sha256"] for row in registry.pending_labels("a")] == ["f00"]
    registry.commit_label("a", "f00", user="me", action="submit-label", detail={"sha256": "f00"})
    assert registry.pending_labels() == []
    assert registry.case("a")["label_sha256"] == "f00"

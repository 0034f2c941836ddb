"""Nothing lost, nothing escapes: labels and the registry agree through kills, races, full disks,
read-only disks and planted files; nothing outside the workspace is read or written.

Real files, real SQLite, real processes: a full disk is a small ``tmpfs`` filled to the last
byte, a read-only workspace a ``tmpfs`` remounted read-only (both skipped where mounting is not
permitted), a kill is SIGKILL.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from assft.errors import BadInputError, StorageError
from assft.workspace import CaseRegistry, Workspace
from assft_testing import run_cli
from assft_testing.mounts import fill, remount_read_only, tmpfs
from assft_testing.workspaces import LABEL_NAMES, label_array, snapshot, write_volume

# helpers ---------------------------------------------------------------------------------------


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _labels(tmp_path: Path, count: int = 3) -> list[Path]:
    """Distinct valid labels for the pool's volumes."""
    choices = [(1,), (2,), (1, 2), (2, 1)]
    return [
        write_volume(tmp_path / f"drawn{i}.nii.gz", label_array(choices[i]), dtype=np.uint8)
        for i in range(count)
    ]


def _error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one error line of a CLI run (warnings aside)."""
    lines = [
        line for line in result.stderr.strip().splitlines() if not line.startswith("assft: warning")
    ]
    assert len(lines) == 1, result.stderr
    return lines[0]


def _assert_agree(workspace: Workspace, case_id: str) -> None:
    """The label file and the registry agree, with no submit left pending."""
    row = workspace.registry.case(case_id)
    path = workspace.labels_dir / f"{case_id}.nii.gz"
    assert workspace.registry.pending_labels() == []
    if row["label_sha256"] is None:
        assert not path.exists()
    else:
        assert _sha(path) == row["label_sha256"]
    assert not list(workspace.labels_dir.glob(".*.nii.gz"))  # no staged or temporary file


class _WriteLock:
    """Another process's view: hold the registry's SQLite write lock (``BEGIN IMMEDIATE``)."""

    def __init__(self, path: Path) -> None:
        self.connection = sqlite3.connect(path, isolation_level=None)
        self.connection.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        if self.connection.in_transaction:
            self.connection.execute("ROLLBACK")
        self.connection.close()


def _wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "assft", *args]


# item 3: one unit --------------------------------------------------------------------------------


def test_a_submit_killed_while_another_process_holds_the_registry_changes_nothing(
    tmp_path: Path, workspace: Workspace
) -> None:
    first, second = _labels(tmp_path, 2)
    stored = workspace.submit_label("case_a", first)
    before = snapshot(workspace)
    lock = _WriteLock(workspace.registry.path)
    try:
        submit = subprocess.Popen(
            _cli("submit", str(workspace.root), "case_a", str(second)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        staged = workspace.labels_dir / ".case_a.submitting.nii.gz"
        # It is waiting for the registry, with its new label staged (the old code had
        # already swapped the label file by then).
        _wait_for(lambda: staged.exists() or _sha(stored) != _sha(first), 60)
        time.sleep(0.5)
        submit.kill()  # SIGKILL: no clean-up runs
        submit.wait()
    finally:
        lock.release()
    reopened = Workspace.open(workspace.root)
    _assert_agree(reopened, "case_a")
    assert stored.read_bytes() == before["files"]["labels/case_a.nii.gz"]
    assert snapshot(reopened) == before  # not even a stray backup


def _submit_killed_at_commit(root: str, case_id: str, label: str) -> None:
    """Child process: submit, and die by SIGKILL the moment the registry would commit."""

    def killed(*args: Any, **kwargs: Any) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    CaseRegistry.commit_label = killed  # type: ignore[method-assign]
    Workspace.open(root).submit_label(case_id, label, user="killed")


def test_a_submit_killed_after_the_rename_is_finished_on_open(
    tmp_path: Path, workspace: Workspace
) -> None:
    first, second = _labels(tmp_path, 2)
    stored = workspace.submit_label("case_a", first)
    old_sha = _sha(stored)
    context = multiprocessing.get_context("spawn")
    child = context.Process(
        target=_submit_killed_at_commit, args=(str(workspace.root), "case_a", str(second))
    )
    child.start()
    child.join(120)
    assert child.exitcode == -signal.SIGKILL
    # The dangerous state: the new label in place, the registry still on the old one.
    assert _sha(stored) != old_sha
    assert workspace.registry.case("case_a")["label_sha256"] == old_sha
    assert len(workspace.registry.pending_labels()) == 1

    with pytest.warns(UserWarning, match="finished the interrupted submit of case case_a"):
        reopened = Workspace.open(workspace.root)
    _assert_agree(reopened, "case_a")
    trail = reopened.registry.audit_trail("case_a")
    assert trail[-1]["action"] == "recover-submit" and trail[-1]["user"] == "killed"
    assert reopened.notes and "case_a" in reopened.notes[0]
    backups = list(reopened.label_backup_dir.iterdir())
    assert [_sha(b) for b in backups] == [old_sha]  # the replaced label was kept


def test_a_submit_killed_before_the_rename_is_abandoned_on_open(
    tmp_path: Path, workspace: Workspace
) -> None:
    """A kill after the intent but before the rename: the old label stays, no backup is left."""
    first, second = _labels(tmp_path, 2)
    workspace.submit_label("case_a", first)
    before = snapshot(workspace)
    # What the killed process left: its intent, and a backup link it had just made.
    workspace.label_backup_dir.mkdir()
    backup = workspace.label_backup_dir / "case_a-20250101T000000.000000Z.nii.gz"
    os.link(workspace.labels_dir / "case_a.nii.gz", backup)
    workspace.registry.begin_label(
        "case_a", "0" * 64, backup=backup.name, source=str(second), user="killed", pid=1
    )
    with pytest.warns(UserWarning, match="abandoned the interrupted submit of case case_a"):
        reopened = Workspace.open(workspace.root)
    _assert_agree(reopened, "case_a")
    assert reopened.registry.audit_trail("case_a")[-1]["action"] == "abandon-submit"
    assert snapshot(reopened)["files"] == before["files"]


def test_concurrent_submits_of_one_case_leave_file_and_registry_agreeing(
    tmp_path: Path, workspace: Workspace
) -> None:
    labels = _labels(tmp_path, 3)
    lock = _WriteLock(workspace.registry.path)
    try:
        submits = [
            subprocess.Popen(
                _cli("submit", str(workspace.root), "case_b", str(label), "--user", f"u{i}"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i, label in enumerate(labels)
        ]
        # All three started and queued behind the registry's lock (one holding the case).
        staged = workspace.labels_dir / ".case_b.submitting.nii.gz"
        stored = workspace.labels_dir / "case_b.nii.gz"
        _wait_for(lambda: staged.exists() or stored.exists(), 60)
        time.sleep(3)
    finally:
        lock.release()
    said = []
    for process in submits:
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
        said.append(stdout)
    _assert_agree(workspace, "case_b")
    submitted = [
        row for row in workspace.registry.audit_trail("case_b") if row["action"] == "submit-label"
    ]
    assert len(submitted) == 3
    assert submitted[-1]["detail"]["sha256"] == workspace.registry.case("case_b")["label_sha256"]
    backups = sorted(workspace.label_backup_dir.iterdir())
    assert len(backups) == 2
    # The submits that came second and third say which label they replaced, and where it is.
    replaced = sorted(
        line.split("kept as ", 1)[1]
        for text in said
        for line in text.splitlines()
        if "kept as" in line
    )
    assert replaced == sorted(str(path) for path in backups)


def test_a_failed_commit_puts_the_old_label_back(
    tmp_path: Path, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry refuses the commit after the rename: the old label is back in place.

    A full disk at exactly that moment cannot be arranged; the registry's own error for it is
    raised in its place.
    """
    first, second = _labels(tmp_path, 2)
    workspace.submit_label("case_a", first)
    before = snapshot(workspace)

    def full(*args: Any, **kwargs: Any) -> None:
        raise StorageError("no space left on device", workspace.registry.path)

    monkeypatch.setattr(CaseRegistry, "commit_label", full)
    with pytest.raises(StorageError, match="no space left on device"):
        workspace.submit_label("case_a", second)
    monkeypatch.undo()
    assert snapshot(workspace) == before
    _assert_agree(workspace, "case_a")


# item 3: reconcile labels/ on open ----------------------------------------------------------------


def test_a_stray_label_file_is_quarantined_on_open(tmp_path: Path, workspace: Workspace) -> None:
    (label,) = _labels(tmp_path, 1)
    planted = workspace.labels_dir / "case_a.nii.gz"
    planted.write_bytes(label.read_bytes())
    (workspace.labels_dir / "notes.txt").write_text("not a label")
    with pytest.warns(UserWarning) as caught:
        reopened = Workspace.open(workspace.root)
    assert sorted(str(w.message).split(":")[0] for w in caught) == [
        "labels/case_a.nii.gz is not a label the registry knows (case case_a is unlabeled)",
        "labels/notes.txt is named after no case of the workspace",
    ]
    assert reopened.label_path("case_a") is None
    assert reopened.registry.case("case_a")["status"] == "unlabeled"
    quarantined = sorted(p.name for p in reopened.label_quarantine_dir.iterdir())
    assert [name.split("-", 1)[1] for name in quarantined] == ["case_a.nii.gz", "notes.txt"]
    actions = [
        row for row in reopened.registry.audit_trail() if row["action"] == "quarantine-label"
    ]
    assert [row["case_id"] for row in actions] == ["case_a", None]
    assert len(reopened.notes) == 2
    # Agreed now: opening again finds nothing.
    assert Workspace.open(workspace.root).notes == []


def test_hold_out_needs_a_labeled_case_not_just_a_file(
    tmp_path: Path, workspace: Workspace
) -> None:
    (label,) = _labels(tmp_path, 1)
    (workspace.labels_dir / "case_a.nii.gz").write_bytes(label.read_bytes())  # never submitted
    before = workspace.registry.cases()
    with pytest.raises(BadInputError, match="case case_a is unlabeled: only labeled cases"):
        workspace.hold_out(["case_a"])
    with pytest.raises(BadInputError, match="has no stored label"):
        workspace.set_status("case_a", "held-out")
    assert workspace.registry.cases() == before

    result = run_cli("hold-out", str(workspace.root), "case_a")
    assert result.returncode == 2
    assert "only labeled cases can be held out" in _error_line(result)
    assert "moved to labels/quarantine/" in result.stderr  # the open reconciled it first

    workspace.submit_label("case_b", label)
    assert workspace.hold_out(["case_b"]) == "held-out"
    assert workspace.hold_out(["case_b"], release=True) == "labeled"


# item 6: nothing escapes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "folder",
    [
        "labels",
        "labels/backup",
        "models",
        "jobs",
        "cache",
        "cache/training",
        "rankings",
        "predictions",
    ],
)
def test_a_folder_linked_out_of_the_workspace_is_refused(
    tmp_path: Path, workspace: Workspace, folder: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    inside = workspace.root / folder
    inside.parent.mkdir(exist_ok=True)
    if inside.exists():
        inside.rmdir()
    inside.symlink_to(outside, target_is_directory=True)
    with pytest.raises(BadInputError, match="which leaves the workspace") as caught:
        Workspace.open(workspace.root)
    assert str(caught.value).startswith(f"{inside}: leads to {outside}")
    result = run_cli("status", str(workspace.root))
    assert result.returncode == 2 and "which leaves the workspace" in _error_line(result)
    assert list(outside.iterdir()) == []


def test_submit_never_writes_through_a_linked_labels_folder(
    tmp_path: Path, workspace: Workspace
) -> None:
    """A workspace opened before ``labels/`` was replaced by a link does not follow it."""
    (label,) = _labels(tmp_path, 1)
    outside = tmp_path / "outside"
    outside.mkdir()
    workspace.labels_dir.rmdir()
    (workspace.root / "labels").symlink_to(outside, target_is_directory=True)
    with pytest.raises(BadInputError, match="which leaves the workspace"):
        workspace.submit_label("case_a", label)
    assert list(outside.iterdir()) == []
    assert workspace.registry.case("case_a")["status"] == "unlabeled"


def test_a_label_file_linked_out_of_the_workspace_is_never_used(
    tmp_path: Path, workspace: Workspace
) -> None:
    (label,) = _labels(tmp_path, 1)
    outside = tmp_path / "outside.nii.gz"
    outside.write_bytes(label.read_bytes())
    link = workspace.labels_dir / "case_a.nii.gz"
    link.symlink_to(outside)
    for call in (
        lambda: workspace.label_path("case_a"),
        lambda: workspace.set_status("case_a", "labeled"),
        lambda: workspace.submit_label("case_a", label),
    ):
        with pytest.raises(BadInputError, match="leaves the workspace"):
            call()
    with pytest.raises(BadInputError, match="only labeled cases can be held out"):
        workspace.hold_out(["case_a"])
    assert workspace.registry.case("case_a")["status"] == "unlabeled"

    with pytest.warns(UserWarning, match="labels/case_a.nii.gz leads out of the workspace"):
        reopened = Workspace.open(workspace.root)
    assert not os.path.lexists(link) and reopened.label_path("case_a") is None
    (moved,) = reopened.label_quarantine_dir.iterdir()
    assert moved.is_symlink()  # the link itself was moved; its target is untouched
    assert outside.read_bytes() == label.read_bytes()


# item 9: only init creates a registry ----------------------------------------------------------


@pytest.mark.parametrize("damage", ["empty", "missing"])
def test_a_damaged_registry_is_refused_and_not_recreated(
    tmp_path: Path, workspace: Workspace, damage: str
) -> None:
    path = workspace.registry.path
    for leftover in path.parent.glob("registry.sqlite*"):
        leftover.unlink()
    if damage == "empty":
        path.write_bytes(b"")
    current = (workspace.models_dir / "current").exists()
    for args in (("rollback", "v0"), ("status",), ("skip", "case_a")):
        result = run_cli(args[0], str(workspace.root), *args[1:])
        assert result.returncode == 2, result.stderr
        assert f"{path}: is {damage}" in _error_line(result)
        assert "the workspace is damaged" in result.stderr
    assert sorted(p.name for p in path.parent.glob("registry.sqlite*")) == (
        ["registry.sqlite"] if damage == "empty" else []
    )
    assert damage == "missing" or path.read_bytes() == b""
    assert (workspace.models_dir / "current").exists() == current


# item 2: a full disk -----------------------------------------------------------------------------


def _workspace_on(mount: Path, tmp_path: Path, pool: Path) -> Workspace:
    return Workspace.create(mount / "ws", [pool], label_names=LABEL_NAMES, user="tester")


def test_a_full_disk_under_the_registry_changes_nothing(tmp_path: Path, pool: Path) -> None:
    """The registry's disk is full while the Slicer GUI reads it; labels/ is on another disk.

    The old code renamed the new label into place, then failed to commit and said the
    registry was unusable.
    """
    first, second = _labels(tmp_path, 2)
    with tmpfs(tmp_path / "disk", "1m") as disk:
        workspace = _workspace_on(disk, tmp_path, pool)
        with tmpfs(workspace.root / "labels", "1m"):
            workspace.submit_label("case_a", first)
            before = snapshot(workspace)
            reader = sqlite3.connect(workspace.registry.path, isolation_level=None)
            reader.execute("BEGIN")  # an open read: SQLite can only grow its log now
            reader.execute("SELECT COUNT(*) FROM cases").fetchone()
            filler = fill(disk)
            result = run_cli("submit", str(workspace.root), "case_a", str(second))
            reader.execute("COMMIT")
            reader.close()
            filler.unlink()
            assert result.returncode == 2, result.stderr
            line = _error_line(result)
            assert f"{workspace.registry.path}: no space left on device" in line
            assert "not a usable" not in line
            assert snapshot(workspace) == before
            _assert_agree(workspace, "case_a")


def test_a_full_disk_under_labels_changes_nothing(tmp_path: Path, pool: Path) -> None:
    first, second = _labels(tmp_path, 2)
    with tmpfs(tmp_path / "disk", "4m") as disk:
        workspace = _workspace_on(disk, tmp_path, pool)
        with tmpfs(workspace.root / "labels", "64k") as labels:
            workspace.submit_label("case_a", first)
            before = snapshot(workspace)
            filler = fill(labels)
            result = run_cli("submit", str(workspace.root), "case_a", str(second))
            filler.unlink()
            assert result.returncode == 2, result.stderr
            line = _error_line(result)
            assert f"{workspace.labels_dir / 'case_a.nii.gz'}: no space left on device" in line
            assert snapshot(workspace) == before
            _assert_agree(workspace, "case_a")


# item 17: a read-only workspace ------------------------------------------------------------------


def test_a_read_only_workspace_says_so(tmp_path: Path, pool: Path) -> None:
    first, second = _labels(tmp_path, 2)
    with tmpfs(tmp_path / "disk", "4m") as disk:
        workspace = _workspace_on(disk, tmp_path, pool)
        workspace.submit_label("case_a", first)
        before = snapshot(workspace)
        remount_read_only(disk)
        for args in (
            ("submit", "case_b", str(second)),
            ("submit", "case_a", str(second)),
            ("skip", "case_b"),
            ("hold-out", "case_a"),
            ("rollback", "v0"),
        ):
            result = run_cli(args[0], str(workspace.root), *args[1:])
            assert result.returncode == 2, (args, result.stderr)
            assert "the workspace is read-only" in _error_line(result), args
        assert run_cli("status", str(workspace.root)).returncode == 0
        assert snapshot(workspace) == before


# item 16: long file names ----------------------------------------------------------------------


def test_a_case_id_too_long_for_derived_file_names_is_refused_at_init(tmp_path: Path) -> None:
    image = write_volume(tmp_path / "pool" / ("x" * 200 + ".nii.gz"))
    with pytest.raises(BadInputError, match="gives a case id of 200 characters; the limit is 128"):
        Workspace.create(tmp_path / "ws", [image.parent], label_names=LABEL_NAMES)
    assert not (tmp_path / "ws").exists()


def test_temporaries_left_by_a_killed_writer_are_swept_on_open(workspace: Workspace) -> None:
    """A write killed outright leaves its ``.tmp-<pid>-`` file; the next open removes it, and
    never one whose writer still runs, nor any other file."""
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    dead = int(gone.stdout)
    left = [
        workspace.labels_dir / f".tmp-{dead}-abc.nii.gz",
        workspace.models_dir / f".tmp-{dead}-def.pt",
        workspace.root / "predictions" / "v0" / f".tmp-{dead}-ghi.nii.gz",
    ]
    live = workspace.labels_dir / f".tmp-{os.getpid()}-jkl.nii.gz"
    others = [workspace.labels_dir / ".tmp-notapid.nii.gz", workspace.labels_dir / ".keep"]
    for path in [*left, live, *others]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    Workspace.open(workspace.root)
    assert [p for p in left if p.exists()] == []
    assert live.exists() and all(p.exists() for p in others)


def test_the_workspace_reads_nothing_through_its_own_files_leading_elsewhere(
    tmp_path: Path, workspace: Workspace
) -> None:
    """Found by the attack rerun: ``models/current`` linked to /etc/passwd showed its first
    line; a FIFO or /dev/zero there hung or exhausted memory; a registry linked out of the
    workspace was written; a file where ``labels/`` or ``jobs/`` belongs was an internal error."""
    from assft.workspace.model_versions import ModelVersions

    registry = ModelVersions(workspace)
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    pointer = workspace.models_dir / "current"
    workspace.models_dir.mkdir(exist_ok=True)
    for make in (
        lambda: pointer.symlink_to(secret),
        lambda: pointer.symlink_to("/dev/zero"),
        lambda: os.mkfifo(pointer),
    ):
        make()
        try:
            with pytest.raises(BadInputError) as caught:
                registry.current()
            assert "not a regular file" in str(caught.value) and "root:" not in str(caught.value)
        finally:
            pointer.unlink()
    # A version whose manifest or weights lead out of the workspace is not read.
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "manifest.json").write_text("{}")
    (workspace.models_dir / "v1").mkdir()
    (workspace.models_dir / "v1" / "manifest.json").symlink_to(outside / "manifest.json")
    with pytest.raises(BadInputError, match="is a link leading out of the workspace"):
        registry.manifest("v1")
    (workspace.models_dir / "v1" / "model.pt").symlink_to(outside / "model.pt")
    with pytest.raises(BadInputError, match="is a link leading out of the workspace"):
        registry.checkpoint_path("v1")
    # The registry and the folders: refused at open, in one line.
    real = workspace.registry.path
    moved = outside / "registry.sqlite"
    real.rename(moved)
    real.symlink_to(moved)
    with pytest.raises(BadInputError, match="is a link leading out of the workspace"):
        Workspace.open(workspace.root)
    real.unlink()
    moved.rename(real)
    jobs = workspace.root / "jobs"
    if jobs.exists():
        import shutil

        shutil.rmtree(jobs)
    jobs.write_text("not a folder")
    with pytest.raises(BadInputError, match="is not a folder: the workspace is damaged"):
        Workspace.open(workspace.root)

"""A workspace's stored labels: checking a clinician's label map against its image and the
declared labels, and storing it as one unit with the registry (:class:`LabelStore`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import SimpleITK as sitk

from assft.errors import BadInputError, StorageError, WorkspaceLockedError, storage_error
from assft.io.atomic import fsync_directory
from assft.io.imaging import read_image, read_label, write_image_atomic
from assft.io.voxel_grids import geometry_mismatch
from assft.runtime.portable import try_lock, unlock
from assft.workspace.files import compact_timestamp, default_user, sha256_file, storing
from assft.workspace.registry import CaseRegistry
from assft.workspace.registry_database import BUSY_TIMEOUT_S

if TYPE_CHECKING:
    from assft.workspace.config import WorkspaceConfig

LABEL_SUFFIX = ".nii.gz"
_STAGED = ".submitting"  # labels/.<case_id>.submitting.nii.gz: a submit's new label, staged
_LOCK_POLL_S = 0.05
_LABEL_SUBFOLDERS = ("backup", "quarantine")

__all__ = ["check_label_values", "load_label_for_image"]


def check_label_values(label: sitk.Image, label_names: dict[int, str], path: str | Path) -> None:
    """Refuse a label map holding values other than 0 and the declared label values.

    Args:
        label: The label map.
        label_names: Declared ``{value: name}`` (background 0 is always allowed).
        path: The label file, for the message.

    Raises:
        BadInputError: e.g. ``"holds undeclared label values [7, 9]; declared: 1 (grey
            matter), 2 (white matter)"``.
    """
    present = np.unique(sitk.GetArrayViewFromImage(label))
    undeclared = [int(v) for v in present if v != 0 and int(v) not in label_names]
    if undeclared:
        declared = ", ".join(f"{value} ({name})" for value, name in sorted(label_names.items()))
        raise BadInputError(
            f"holds undeclared label values {undeclared}; declared: {declared}", path
        )


def load_label_for_image(
    label_file: str | Path,
    image: sitk.Image | str | Path,
    label_names: dict[int, str],
    *,
    case_id: str | None = None,
) -> sitk.Image:
    """Read a label map, check it against its image and the declared labels, regrid exactly.

    Args:
        label_file: The label map file.
        image: The case's image, or its path.
        label_names: Declared ``{value: name}``.
        case_id: For the message.

    Returns:
        A uint16 label map whose size, spacing, origin and direction are the image's, bit for
        bit (the label's own geometry matched within tolerance).

    Raises:
        BadInputError: naming ``label_file``: unreadable, not an integer 3D map, another
            grid than the image's, or undeclared values.
    """
    label = read_label(label_file)
    if not isinstance(image, sitk.Image):
        image = read_image(image)
    mismatch = geometry_mismatch(label, image)
    if mismatch is not None:
        whose = f"case {case_id!r}" if case_id else "the image"
        raise BadInputError(f"does not fit the image of {whose}: {mismatch}", label_file)
    check_label_values(label, label_names, label_file)
    stored = sitk.GetImageFromArray(sitk.GetArrayFromImage(label).astype(np.uint16))
    stored.CopyInformation(image)
    return stored


class LabelOwner(Protocol):
    """What a :class:`LabelStore` needs of its workspace (:class:`Workspace` is one)."""

    root: Path
    config: WorkspaceConfig
    registry: CaseRegistry

    @property
    def labels_dir(self) -> Path: ...

    @property
    def label_backup_dir(self) -> Path: ...

    @property
    def label_quarantine_dir(self) -> Path: ...

    def resolve_inside(self, relative: str | Path) -> Path: ...

    def check_case_id(self, case_id: str) -> str: ...

    def image_path(self, case_id: str) -> Path: ...


class LabelStore:
    """The labels of one workspace (``labels/``) and their transaction with the registry.

    A submit is one unit under a per-case lock: the new label is staged (hidden) in ``labels/``,
    its intent recorded in the registry, the old label hard-linked into ``labels/backup/``, the
    new one renamed into place, and the registry commits ``labeled`` with its hash while deleting
    the intent. A failure puts the old label back; an interrupted submit (a killed process) is
    finished or abandoned by :meth:`reconcile` (the next :meth:`Workspace.open`), whichever the
    label file says. :meth:`reconcile` also moves label files the registry does not know into
    ``labels/quarantine/``. :class:`Workspace` is the façade: ``workspace.submit_label`` and the
    like call this.
    """

    def __init__(self, workspace: LabelOwner) -> None:
        self.workspace = workspace
        self.replaced: dict[str, Path] = {}
        """Case -> the backup of the label that this process's latest submit of the case
        replaced (absent when it replaced none): what a submit says it replaced."""

    def __repr__(self) -> str:
        return f"LabelStore({str(self.root)!r})"

    @property
    def root(self) -> Path:
        return self.workspace.root

    @property
    def registry(self) -> CaseRegistry:
        return self.workspace.registry

    @property
    def labels_dir(self) -> Path:
        return self.workspace.labels_dir

    @property
    def label_backup_dir(self) -> Path:
        return self.workspace.label_backup_dir

    @property
    def label_quarantine_dir(self) -> Path:
        return self.workspace.label_quarantine_dir

    def resolve_inside(self, relative: str | Path) -> Path:
        return self.workspace.resolve_inside(relative)

    def path(self, case_id: str) -> Path | None:
        """The stored label ``labels/<case_id>.nii.gz``, or None if there is none.

        Raises:
            BadInputError: unknown case, or the file is a symbolic link leading out of the
                workspace.
        """
        path = self.stored_path(self.workspace.check_case_id(case_id))
        return path if path.is_file() else None

    def stored_path(self, case_id: str) -> Path:
        """``labels/<case_id>.nii.gz``, refused if it is a link leading out of the workspace."""
        name = f"{case_id}{LABEL_SUFFIX}"
        self.resolve_inside(f"labels/{name}")
        return self.labels_dir / name

    def _staged_path(self, case_id: str) -> Path:
        return self.labels_dir / f".{case_id}{_STAGED}{LABEL_SUFFIX}"

    @contextlib.contextmanager
    def case_lock(self, case_id: str, *, timeout: float = BUSY_TIMEOUT_S) -> Iterator[bool]:
        """Hold the lock of one case's label (``labels/.locks/<case_id>.lock``).

        A submit holds it from staging the new label to the registry's commit, so two submits
        of one case never interleave and :meth:`reconcile` never touches a submit under way.
        The operating system drops it when its process ends, however it ends.

        Args:
            case_id: A well-formed case id.
            timeout: Seconds to wait for it; 0 tries once.

        Yields:
            True when held; False only when ``timeout`` is 0 and another process holds it.

        Raises:
            WorkspaceLockedError: another process held it for all of ``timeout`` (> 0).
            StorageError: the lock file cannot be created (full disk, read-only workspace).
        """
        folder = self.resolve_inside("labels/.locks")
        path = folder / f"{case_id}.lock"
        with storing(self.labels_dir):
            folder.mkdir(parents=True, exist_ok=True)
            deadline = time.monotonic() + timeout
            while (held := try_lock(path)) is None:
                if time.monotonic() >= deadline:
                    break
                time.sleep(_LOCK_POLL_S)
        if held is None and timeout > 0:
            raise WorkspaceLockedError(
                f"the label of case {case_id!r} is being stored by another process for over "
                f"{timeout:g} s; try again",
                self.root,
            )
        try:
            yield held is not None
        finally:
            if held is not None:
                unlock(held)

    def submit(self, case_id: str, label_file: str | Path, *, user: str | None = None) -> Path:
        """Store a clinician's label for a case and mark the case labeled.

        The label must have the image's grid (within tolerance) and hold only 0 and declared
        label values; it is stored at the image's exact geometry. A label it replaces is kept
        in ``labels/backup/``. The file is complete on disk before the registry says
        ``labeled``, and the two always agree: a failure leaves the old label and the registry
        as they were, and a submit interrupted by a kill is finished or abandoned by the next
        :meth:`Workspace.open`.

        Args:
            case_id: A registered case.
            label_file: The label map.
            user: Who labeled it (default :func:`default_user`).

        Returns:
            The stored label's path.

        Raises:
            BadInputError: unknown case, or a bad label (the label file is named); nothing is
                changed then.
            StorageError: the disk is full or the workspace read-only; nothing is changed.
            WorkspaceLockedError: another process keeps the case or the registry locked.
        """
        image_path = self.workspace.image_path(case_id)
        stored = load_label_for_image(
            label_file, image_path, self.workspace.config.label_names, case_id=case_id
        )
        return self.store(case_id, stored, label_file, user=user or default_user())

    def store(
        self,
        case_id: str,
        stored: sitk.Image,
        source: str | Path,
        *,
        user: str,
        action: str = "submit-label",
    ) -> Path:
        """Store a checked label as one unit (see the module's docstring); see submit_label.

        Under the case's lock: stage the new label (hidden), record the intent (its hash and
        the backup's name) in the registry, link the old label into ``labels/backup/``, rename
        the new one into place, commit. A failure before the rename changes nothing; a failure
        of the commit puts the old label back. A kill after the intent leaves a row that the
        next :meth:`Workspace.open` finishes or abandons, as the label file says.
        """
        destination = self.stored_path(case_id)
        with self.case_lock(case_id):
            self._finish_interrupted_submit(case_id)
            staged = self._staged_path(case_id)
            self._write_staged(stored, staged, destination)
            backup: Path | None = None
            try:
                digest = sha256_file(staged)
                if destination.is_file():
                    backup = self._free_backup_path(case_id)
                self.registry.begin_label(
                    case_id,
                    digest,
                    backup=None if backup is None else backup.name,
                    source=str(source),
                    user=user,
                    pid=os.getpid(),
                )
            except BaseException:
                staged.unlink(missing_ok=True)
                raise
            # From here the registry holds the intent: an interrupted submit is recoverable.
            try:
                with storing(destination):
                    if backup is not None:
                        self._link_backup(destination, backup)
                    os.replace(staged, destination)
                    fsync_directory(destination.parent)
            except BaseException:
                staged.unlink(missing_ok=True)
                if backup is not None and destination.is_file():
                    backup.unlink(missing_ok=True)
                with contextlib.suppress(Exception):
                    self.registry.drop_pending_label(case_id)
                raise
            try:
                self.registry.commit_label(
                    case_id,
                    digest,
                    user=user,
                    action=action,
                    detail={
                        "sha256": digest,
                        "source": str(source),
                        "backup": None if backup is None else backup.name,
                    },
                )
            except BaseException:
                if not self._committed(case_id, digest):
                    with contextlib.suppress(OSError):
                        self._put_back(destination, backup)
                        # The intent no longer matches the file; if it cannot be dropped now,
                        # the next open abandons it.
                        with contextlib.suppress(Exception):
                            self.registry.drop_pending_label(case_id)
                raise
        if backup is None:
            self.replaced.pop(case_id, None)
        else:
            self.replaced[case_id] = backup
        return destination

    def _write_staged(self, stored: sitk.Image, staged: Path, destination: Path) -> None:
        """Write the new label to its hidden staging file, read back whole (see
        :func:`assft.io.imaging.write_image_atomic`: ITK leaves a short file on a full disk).

        Raises:
            StorageError: the disk is full (or the workspace read-only); nothing is left.
        """
        try:
            with storing(destination):
                write_image_atomic(stored, staged)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise

    def _committed(self, case_id: str, digest: str) -> bool:
        """Whether the registry has a case's new label although committing it raised."""
        try:
            row = self.registry.case(case_id)
            return (
                row is not None
                and row["label_sha256"] == digest
                and not self.registry.pending_labels(case_id)
            )
        except Exception:  # noqa: BLE001 - unreadable now: assume it was not committed
            return False

    @staticmethod
    def _put_back(destination: Path, backup: Path | None) -> None:
        """Undo a label's replacement: the backup (a link to the old label) goes back in place.

        A rename needs no free space, so this works on a full disk too.
        """
        if backup is not None:
            os.replace(backup, destination)
        else:
            destination.unlink(missing_ok=True)
        fsync_directory(destination.parent)

    def _free_backup_path(self, case_id: str) -> Path:
        """A new name in ``labels/backup/`` for the label of ``case_id`` about to be replaced."""
        backup_dir = self.label_backup_dir
        with storing(backup_dir):
            backup_dir.mkdir(exist_ok=True)
        stamp = compact_timestamp()
        for number in range(1, 1000):
            suffix = "" if number == 1 else f"-{number}"
            backup = backup_dir / f"{case_id}-{stamp}{suffix}{LABEL_SUFFIX}"
            if not os.path.lexists(backup):
                return backup
        raise RuntimeError(f"cannot find a free backup name for case {case_id} in {backup_dir}")

    @staticmethod
    def _link_backup(label: Path, backup: Path) -> None:
        """Keep the label about to be replaced as ``backup`` (a hard link where possible)."""
        try:
            os.link(label, backup)
        except OSError as error:
            if storage_error(error) is not None or isinstance(error, FileExistsError):
                raise
            shutil.copy2(label, backup)  # no hard links on this file system
            with open(backup, "rb+") as stream:
                os.fsync(stream.fileno())

    def reconcile(self) -> list[str]:
        """Make ``labels/`` and the registry agree; :meth:`Workspace.open` calls it.

        * A submit that was interrupted (its process killed) is finished when the new label
          file is in place, else abandoned (the old label stays); audit ``recover-submit`` or
          ``abandon-submit``.
        * A file in ``labels/`` that the registry does not know (named after a case that has no
          stored label, or after no case, or a link leading out of the workspace) is moved to
          ``labels/quarantine/``; audit ``quarantine-label``. Submit it to use it.
        * A labeled case whose label file is missing is reported.

        Cases whose submit is under way in another process are left alone. When all agree
        nothing is written (a read-only workspace opens); when something must change and
        cannot, that is reported instead.

        Returns:
            One line per thing found (also kept in :attr:`notes`).
        """
        notes: list[str] = []
        labels = self.labels_dir
        if not labels.is_dir():
            return notes
        rows = {row["case_id"]: row for row in self.registry.cases()}
        pending = {row["case_id"] for row in self.registry.pending_labels()}
        work: set[str] = set(pending)
        strays: list[Path] = []
        for entry in sorted(labels.iterdir()):
            name = entry.name
            if name.startswith(".") and name.endswith(_STAGED + LABEL_SUFFIX):
                work.add(name[1 : -len(_STAGED + LABEL_SUFFIX)])
                continue
            if name.startswith(".") or name in _LABEL_SUBFOLDERS:
                continue  # temporary files, locks, backup/ and quarantine/ (checked at open)
            if entry.is_dir() and not entry.is_symlink():
                continue  # a folder of the user's own
            case_id = name[: -len(LABEL_SUFFIX)] if name.endswith(LABEL_SUFFIX) else None
            row = rows.get(case_id) if case_id else None
            if case_id is not None and row is not None:
                leaves = not entry.resolve().is_relative_to(self.root)
                if row["label_sha256"] is not None and not leaves:
                    continue
                work.add(case_id)  # under its case's lock: a submit may be under way
            else:
                strays.append(entry)
        for case_id in sorted(work):
            if case_id in rows:
                notes += self._reconcile_case(case_id, rows[case_id])
        for entry in strays:
            notes += self._quarantine(entry, None, "is named after no case of the workspace")
        for case_id, row in rows.items():
            if (
                row["status"] in ("labeled", "held-out")
                and not (labels / f"{case_id}{LABEL_SUFFIX}").exists()
            ):
                notes.append(
                    f"case {case_id} is {row['status']} but its label file "
                    f"labels/{case_id}{LABEL_SUFFIX} is missing: submit its label again"
                )
        return notes

    def _reconcile_case(self, case_id: str, row: dict[str, Any]) -> list[str]:
        try:
            with self.case_lock(case_id, timeout=0) as held:
                if not held:
                    return []  # a submit is under way in a live process
                notes = self._finish_interrupted_submit(case_id)
                destination = self.labels_dir / f"{case_id}{LABEL_SUFFIX}"
                row = self.registry.case(case_id) or row
                if os.path.lexists(destination) and (
                    row["label_sha256"] is None
                    or not destination.resolve().is_relative_to(self.root)
                ):
                    why = (
                        "leads out of the workspace"
                        if not destination.resolve().is_relative_to(self.root)
                        else f"is not a label the registry knows (case {case_id} is "
                        f"{row['status']})"
                    )
                    notes += self._quarantine(destination, case_id, why)
                return notes
        except (StorageError, WorkspaceLockedError) as error:
            return [f"cannot reconcile the label of case {case_id} now: {error}"]

    def _finish_interrupted_submit(self, case_id: str) -> list[str]:
        """Finish or abandon the interrupted submit of a case (its lock held); notes."""
        notes: list[str] = []
        staged = self._staged_path(case_id)
        for intent in self.registry.pending_labels(case_id):
            destination = self.labels_dir / f"{case_id}{LABEL_SUFFIX}"
            in_place = (
                destination.is_file()
                and not destination.is_symlink()
                and sha256_file(destination) == intent["sha256"]
            )
            detail = {
                "sha256": intent["sha256"],
                "source": intent["source"],
                "backup": intent["backup"],
                "pid": intent["pid"],
                "started_at": intent["started_at"],
            }
            if in_place:
                self.registry.commit_label(
                    case_id,
                    intent["sha256"],
                    user=intent["user"],
                    action="recover-submit",
                    detail=detail,
                )
                notes.append(
                    f"finished the interrupted submit of case {case_id} (by {intent['user']}, "
                    f"pid {intent['pid']}, {intent['started_at']}): its new label was in place"
                )
            else:
                self._remove_unused_backup(destination, intent["backup"])
                self.registry.drop_pending_label(
                    case_id, action="abandon-submit", detail=detail, user=default_user()
                )
                notes.append(
                    f"abandoned the interrupted submit of case {case_id} (by {intent['user']}, "
                    f"pid {intent['pid']}, {intent['started_at']}): its label is unchanged"
                )
        with storing(staged):
            staged.unlink(missing_ok=True)
        return notes

    def _remove_unused_backup(self, label: Path, name: str | None) -> None:
        """Remove the backup an abandoned submit made of ``label``, which is still in place."""
        if not name:
            return
        backup = self.label_backup_dir / name
        with contextlib.suppress(OSError):
            same = (
                backup.is_file()
                and label.is_file()
                and (os.path.samefile(backup, label) or sha256_file(backup) == sha256_file(label))
            )
            if same:
                backup.unlink()

    def _quarantine(self, entry: Path, case_id: str | None, why: str) -> list[str]:
        """Move a file the registry does not know from ``labels/`` to ``labels/quarantine/``."""
        folder = self.label_quarantine_dir
        target = folder / f"{compact_timestamp()}-{entry.name}"
        try:
            with storing(folder):
                folder.mkdir(parents=True, exist_ok=True)
                os.rename(entry, target)  # moves a symbolic link itself, never its target
                fsync_directory(entry.parent)
        except StorageError as error:
            return [f"labels/{entry.name} {why}, and cannot be moved aside: {error}"]
        moved = f"moved to labels/quarantine/{target.name} (submit it to use it)"
        try:
            self.registry.audit(
                "quarantine-label",
                case_id,
                {
                    "file": f"labels/{entry.name}",
                    "moved_to": f"labels/quarantine/{target.name}",
                    "reason": why,
                },
                user=default_user(),
            )
        except (StorageError, WorkspaceLockedError) as error:
            return [f"labels/{entry.name} {why}: {moved}; not in the audit trail: {error}"]
        return [f"labels/{entry.name} {why}: {moved}"]

"""The workspace: one folder holding everything about an annotation project (design.md).

::

    <root>/assft.json          labels, model preset, settings (WorkspaceConfig)
    <root>/registry.sqlite     cases, statuses, ranking scores, audit trail (Registry)
    <root>/labels/             <case_id>.nii.gz at the image's exact geometry; backup/
    <root>/rankings/           ranking-0001.json, ...
    <root>/models/             versioned checkpoints; ``current`` names the version in use
    <root>/jobs/               job locks and job folders
    <root>/cache/              anything that can be recomputed

Images stay where they are; the registry stores their absolute paths.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from assft.errors import BadInputError
from assft.io.atomic import process_umask
from assft.io.imaging import (
    case_id_from_path,
    image_suffix,
    is_dicom_series,
    read_image,
    write_image_atomic,
)
from assft.workspace import locks
from assft.workspace.config import CONFIG_FILE_NAME, WorkspaceConfig, make_labels
from assft.workspace.files import (
    compact_timestamp,
    create_text_exclusive,
    sha256_file,
    write_text_atomic,
)
from assft.workspace.labels import load_label_for_image
from assft.workspace.registry import REGISTRY_FILE_NAME, Registry, check_status
from assft.workspace.versions import check_version, read_pointer

__all__ = ["CASE_ID_PATTERN", "Workspace", "default_user", "find_images"]

CASE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
SUBFOLDERS = ("labels", "rankings", "models", "jobs", "cache")
_RANKING_FILE = re.compile(r"^ranking-(\d+)\.json$")


def default_user() -> str:
    """Who is acting: ``$ASSFT_USER``, else the login name, else ``"unknown"``."""
    user = os.environ.get("ASSFT_USER", "").strip()
    if user:
        return user
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (some containers)
        return "unknown"


def find_images(items: Sequence[str | Path]) -> list[Path]:
    """Expand image files, DICOM series folders and folders of images into image paths.

    A folder that holds a DICOM series is one image; any other folder contributes its image
    files and its DICOM series subfolders (one level, sorted, hidden entries skipped).

    Args:
        items: Paths as the user gave them.

    Returns:
        Absolute paths, in the order given, each once.

    Raises:
        BadInputError: a path does not exist.
    """
    found: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if not path.exists():
            raise BadInputError("does not exist", path)
        path = path.resolve()
        if path.is_file() or is_dicom_series(path):
            found.append(path)
            continue
        for child in sorted(path.iterdir()):
            if child.name.startswith("."):
                continue
            is_image = child.is_file() and bool(image_suffix(child))
            if is_image or (child.is_dir() and is_dicom_series(child)):
                found.append(child.resolve())
    return list(dict.fromkeys(found))


def _unique_case_ids(paths: Sequence[Path]) -> list[str]:
    """Case ids from file names; repeats become ``<id>_2``, ``<id>_3``..."""
    ids: list[str] = []
    taken: set[str] = set()
    for path in paths:
        base = case_id_from_path(path)
        case_id, number = base, 1
        while case_id in taken:
            number += 1
            case_id = f"{base}_{number}"
        taken.add(case_id)
        ids.append(case_id)
    return ids


class Workspace:
    """An open workspace. Build one with :meth:`create` or :meth:`open`.

    Attributes:
        root: The workspace folder (absolute, symlinks resolved).
        config: The content of ``assft.json``.
        registry: The SQLite case registry.
    """

    def __init__(self, root: Path, config: WorkspaceConfig, registry: Registry) -> None:
        self.root = root
        self.config = config
        self.registry = registry

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    # folders -----------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        """``assft.json``."""
        return self.root / CONFIG_FILE_NAME

    @property
    def labels_dir(self) -> Path:
        """Stored labels, ``<case_id>.nii.gz``."""
        return self.root / "labels"

    @property
    def label_backup_dir(self) -> Path:
        """Replaced labels, ``<case_id>-<UTC time>.nii.gz``."""
        return self.labels_dir / "backup"

    @property
    def rankings_dir(self) -> Path:
        """Ranking documents, ``ranking-NNNN.json``."""
        return self.root / "rankings"

    @property
    def models_dir(self) -> Path:
        """Model versions and the ``current`` pointer."""
        return self.root / "models"

    @property
    def jobs_dir(self) -> Path:
        """Job locks and job folders."""
        return self.root / "jobs"

    @property
    def cache_dir(self) -> Path:
        """Recomputable data (predictions, embeddings...)."""
        return self.root / "cache"

    # creation ----------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        root: str | Path,
        images: Sequence[str | Path],
        *,
        label_names: dict[int, str] | None = None,
        model: str = "demo",
        labels_dir: str | Path | None = None,
        user: str | None = None,
    ) -> Workspace:
        """Create a workspace for a pool of images; all or nothing.

        The workspace is assembled in a hidden folder next to ``root`` and renamed into place
        once complete, so a refused or failed creation leaves nothing behind.

        Args:
            root: New (or empty) folder for the workspace.
            images: Image files, DICOM series folders, or folders holding images.
            label_names: ``{value: name}`` of the foreground labels; ``{1: "foreground"}``
                when None.
            model: Model preset name, or the path of a preset JSON file (stored absolute).
            labels_dir: Optional folder of existing labels; a label whose file name gives a
                case id of the pool is checked as in :meth:`submit_label` and imported.
            user: Who creates it (default :func:`default_user`).

        Returns:
            The opened workspace.

        Raises:
            BadInputError: ``root`` already holds a workspace or is a non-empty folder; no
                images are found; an image or label is bad (the file is named).
        """
        user = user or default_user()
        if isinstance(images, (str, Path)):
            images = [images]
        root = Path(root).expanduser().resolve()
        if (root / CONFIG_FILE_NAME).exists():
            raise BadInputError("already holds an ASSFT workspace", root)
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise BadInputError("exists and is not an empty folder; choose a new folder", root)
        labels = make_labels(label_names)
        model_path = Path(model).expanduser()
        if model.lower().endswith(".json") and model_path.is_file():
            model = str(model_path.resolve())

        image_paths = find_images(images)
        if not image_paths:
            where = ", ".join(str(item) for item in images) or "(nothing given)"
            raise BadInputError(f"no images found in {where}")
        for path in image_paths:
            read_image(path)
        case_ids = _unique_case_ids(image_paths)
        label_files = cls._find_label_files(labels_dir, set(case_ids)) if labels_dir else {}

        created_parents = [p for p in reversed(root.parents) if not p.exists()]
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.creating-", dir=root.parent))
        try:
            os.chmod(staging, 0o777 & ~process_umask())
            config = WorkspaceConfig(labels=labels, model=model)
            for name in SUBFOLDERS:
                (staging / name).mkdir()
            config.save(staging / CONFIG_FILE_NAME)
            registry = Registry(staging / REGISTRY_FILE_NAME)
            registry.add_cases(zip(case_ids, image_paths, strict=True), user=user)
            registry.audit(
                "create",
                detail={"images": len(case_ids), "model": model, "labels": config.label_names},
                user=user,
            )
            staged = cls(staging, config, registry)
            for case_id, label_file in label_files.items():
                image_path = image_paths[case_ids.index(case_id)]
                stored = load_label_for_image(
                    label_file, image_path, config.label_names, case_id=case_id
                )
                staged._store_label(case_id, stored, label_file, user=user, action="import-label")
            try:
                os.rename(staging, root)
            except OSError:
                raise BadInputError("was created by someone else meanwhile", root) from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            for parent in reversed(created_parents):
                with contextlib.suppress(OSError):
                    parent.rmdir()
            raise
        return cls.open(root)

    @staticmethod
    def _find_label_files(labels_dir: str | Path, case_ids: set[str]) -> dict[str, Path]:
        """Label files of ``labels_dir`` whose names give one of ``case_ids``."""
        folder = Path(labels_dir).expanduser()
        if not folder.is_dir():
            raise BadInputError("is not a folder of labels", folder)
        matches: dict[str, Path] = {}
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or not path.is_file() or not image_suffix(path):
                continue
            case_id = case_id_from_path(path)
            if case_id in case_ids:
                if case_id in matches:
                    raise BadInputError(
                        f"gives case id {case_id!r}, like {matches[case_id].name}", path
                    )
                matches[case_id] = path.resolve()
        return matches

    @classmethod
    def open(cls, root: str | Path) -> Workspace:
        """Open an existing workspace.

        Raises:
            BadInputError: ``root`` is missing, not a workspace, or its ``assft.json`` or
                registry is malformed (the file is named).
        """
        root = Path(root).expanduser()
        if not root.is_dir():
            raise BadInputError("does not exist" if not root.exists() else "is not a folder", root)
        root = root.resolve()
        if not (root / CONFIG_FILE_NAME).is_file():
            raise BadInputError(f"is not an ASSFT workspace (no {CONFIG_FILE_NAME})", root)
        config = WorkspaceConfig.load(root / CONFIG_FILE_NAME)
        registry_path = root / REGISTRY_FILE_NAME
        if not registry_path.is_file():
            raise BadInputError("is missing: the workspace is incomplete", registry_path)
        return cls(root, config, Registry(registry_path))

    def save_config(self) -> Path:
        """Write :attr:`config` back to ``assft.json`` (atomically)."""
        return self.config.save(self.config_path)

    # paths and cases ---------------------------------------------------------------------

    def resolve_inside(self, relative: str | Path) -> Path:
        """Resolve a path given relative to the workspace, refusing any way out of it.

        Args:
            relative: e.g. ``"labels/case1.nii.gz"``.

        Returns:
            The absolute path (symlinks and ``..`` resolved).

        Raises:
            BadInputError: the path is absolute, or resolves outside the workspace.
        """
        relative = Path(relative)
        if relative.is_absolute():
            raise BadInputError("is absolute; give a path relative to the workspace", relative)
        resolved = (self.root / relative).resolve()
        if not resolved.is_relative_to(self.root):
            raise BadInputError(f"leaves the workspace {self.root}", relative)
        return resolved

    def check_case_id(self, case_id: str) -> str:
        """Return ``case_id`` if it is well formed and registered.

        Raises:
            BadInputError: malformed (e.g. ``../x``, ``a/b``) or unknown.
        """
        if not isinstance(case_id, str) or not CASE_ID_PATTERN.match(case_id):
            raise BadInputError(
                f"{case_id!r} is not a valid case id (letters, digits, '.', '_' and '-', "
                "starting with a letter or digit)"
            )
        if self.registry.case(case_id) is None:
            count = self.registry.case_count()
            raise BadInputError(
                f"unknown case id {case_id!r} ({count} cases in the workspace)", self.root
            )
        return case_id

    def cases(self, status: str | None = None) -> list[dict[str, Any]]:
        """Registered cases ordered by id (see :meth:`Registry.cases`)."""
        return self.registry.cases(status)

    def image_path(self, case_id: str) -> Path:
        """The image file or DICOM folder of a case."""
        case = self.registry.case(self.check_case_id(case_id))
        assert case is not None  # checked just above
        return Path(case["image_path"])

    def label_path(self, case_id: str) -> Path | None:
        """The stored label ``labels/<case_id>.nii.gz``, or None if there is none."""
        path = self._stored_label_path(self.check_case_id(case_id))
        return path if path.is_file() else None

    def _stored_label_path(self, case_id: str) -> Path:
        return self.labels_dir / f"{case_id}.nii.gz"

    # labels and statuses -----------------------------------------------------------------

    def submit_label(
        self, case_id: str, label_file: str | Path, *, user: str | None = None
    ) -> Path:
        """Store a clinician's label for a case and mark the case labeled.

        The label must have the image's grid (within tolerance) and hold only 0 and declared
        label values; it is stored at the image's exact geometry. A label it replaces is kept
        in ``labels/backup/``. The file is complete on disk before the registry says
        ``labeled``.

        Args:
            case_id: A registered case.
            label_file: The label map.
            user: Who labeled it (default :func:`default_user`).

        Returns:
            The stored label's path.

        Raises:
            BadInputError: unknown case, or a bad label (the label file is named); nothing is
                changed then.
        """
        image_path = self.image_path(case_id)
        stored = load_label_for_image(
            label_file, image_path, self.config.label_names, case_id=case_id
        )
        return self._store_label(case_id, stored, label_file, user=user or default_user())

    def _store_label(
        self,
        case_id: str,
        stored: sitk.Image,
        source: str | Path,
        *,
        user: str,
        action: str = "submit-label",
    ) -> Path:
        """Back up the old label, write the new one atomically, then update the registry."""
        self.labels_dir.mkdir(exist_ok=True)
        destination = self._stored_label_path(case_id)
        backup: Path | None = None
        if destination.is_file():
            backup = self._backup_label(case_id, destination)
        try:
            write_image_atomic(stored, destination)
        except BaseException:
            if backup is not None:
                backup.unlink(missing_ok=True)
            raise
        digest = sha256_file(destination)
        self.registry.set_status(
            case_id,
            "labeled",
            user=user,
            label_sha256=digest,
            action=action,
            detail={
                "sha256": digest,
                "source": str(source),
                "backup": None if backup is None else backup.name,
            },
        )
        return destination

    def _backup_label(self, case_id: str, label: Path) -> Path:
        """Keep a copy of ``label`` in ``labels/backup/`` (a hard link where possible)."""
        self.label_backup_dir.mkdir(exist_ok=True)
        stamp = compact_timestamp()
        for number in range(1, 1000):
            suffix = "" if number == 1 else f"-{number}"
            backup = self.label_backup_dir / f"{case_id}-{stamp}{suffix}.nii.gz"
            try:
                os.link(label, backup)
                return backup
            except FileExistsError:
                continue
            except OSError:  # no hard links on this file system
                if backup.exists():
                    continue
                shutil.copy2(label, backup)
                with open(backup, "rb+") as stream:
                    os.fsync(stream.fileno())
                return backup
        raise RuntimeError(f"cannot find a free backup name for {label}")

    def skip(self, case_id: str, *, user: str | None = None) -> None:
        """Mark a case skipped (not to be proposed again)."""
        self.set_status(case_id, "skipped", user=user)

    def set_status(self, case_id: str, status: str, *, user: str | None = None) -> None:
        """Set a case's status.

        Raises:
            BadInputError: unknown case or status, or ``labeled`` for a case with no stored
                label (use :meth:`submit_label`).
        """
        self.check_case_id(case_id)
        check_status(status)
        if status == "labeled" and self.label_path(case_id) is None:
            raise BadInputError(
                f"case {case_id!r} has no stored label: submit one to mark it labeled"
            )
        action = "skip" if status == "skipped" else "set-status"
        self.registry.set_status(case_id, status, user=user or default_user(), action=action)

    # model version -----------------------------------------------------------------------

    def current_model_version(self) -> str:
        """The model version in use: ``models/current``, or ``"v0"`` (the preset as shipped).

        Raises:
            BadInputError: a damaged pointer (see :func:`assft.workspace.versions.read_pointer`).
        """
        return read_pointer(self.models_dir / "current")

    def set_current_model_version(self, version: str) -> None:
        """Point ``models/current`` at ``version`` (atomically).

        Raises:
            BadInputError: ``version`` is not a model version name such as ``v3``.
        """
        check_version(version)
        self.models_dir.mkdir(exist_ok=True)
        write_text_atomic(self.models_dir / "current", version + "\n")

    # rankings ----------------------------------------------------------------------------

    def save_ranking(self, document: dict[str, Any]) -> Path:
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
            case_id = self.check_case_id(entry["case"])
            if case_id in seen:
                raise BadInputError(f"case {case_id!r} appears twice in the ranking")
            seen.add(case_id)
        text = json.dumps(document, indent=2) + "\n"
        self.rankings_dir.mkdir(exist_ok=True)
        number = self._last_ranking_number() + 1
        while True:
            path = self.rankings_dir / f"ranking-{number:04d}.json"
            try:
                create_text_exclusive(path, text)
                break
            except FileExistsError:
                number += 1
        self.registry.add_ranking(
            path.name,
            model_version=str(document.get("model_version") or self.current_model_version()),
            strategy=None if document.get("strategy") is None else str(document["strategy"]),
            scores=entries,
            created_at=document.get("created_at"),
            user=default_user(),
        )
        return path

    def _last_ranking_number(self) -> int:
        names = [row["file_name"] for row in self.registry.rankings()]
        if self.rankings_dir.is_dir():
            names += [path.name for path in self.rankings_dir.iterdir()]
        numbers = [int(m.group(1)) for name in names if (m := _RANKING_FILE.match(name))]
        return max(numbers, default=0)

    def latest_ranking(self) -> dict[str, Any] | None:
        """The newest registered ranking document, parsed, or None.

        Raises:
            BadInputError: its file is missing or not valid JSON (the file is named).
        """
        row = self.registry.latest_ranking()
        if row is None:
            return None
        path = self.rankings_dir / row["file_name"]
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BadInputError("is registered but missing", path) from None
        except (OSError, ValueError) as error:
            raise BadInputError(f"cannot be read as a ranking ({error})", path) from None
        if not isinstance(document, dict):
            raise BadInputError("is not a ranking document (not a JSON object)", path)
        return document

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
        ranking = self.latest_ranking()
        if ranking is None:
            raise BadInputError("no ranking yet: run 'assft rank' first", self.root)
        statuses = {row["case_id"]: row["status"] for row in self.registry.cases()}
        remaining = [row for row in ranking["cases"] if statuses.get(row["case"]) == "unlabeled"]
        if not remaining:
            return {"case": None, "ranking": ranking.get("file"), "remaining": 0}
        row = remaining[0]
        return {
            "case": row["case"],
            "image": str(self.image_path(row["case"])),
            "rank": row["rank"],
            "selected": row["selected"],
            "score": row["score"],
            "reason": row["reason"],
            "hardest_structure": row.get("hardest_structure"),
            "model_version": ranking["model_version"],
            "ranking": ranking.get("file"),
            "remaining": len(remaining),
        }

    # jobs --------------------------------------------------------------------------------

    def job_lock(
        self, name: str = "workspace", *, description: str = ""
    ) -> contextlib.AbstractContextManager[dict[str, Any]]:
        """Exclusive job lock ``jobs/<name>.lock`` (see :func:`assft.workspace.locks.job_lock`).

        Raises:
            WorkspaceLockedError: a running process holds it.
        """
        return locks.job_lock(self.jobs_dir, name, description=description, workspace=self.root)

    def running_job(self, name: str = "workspace") -> dict[str, Any] | None:
        """The job holding lock ``name``, or None when no live process holds it."""
        return locks.running_job(self.jobs_dir, name)

    def status_summary(self) -> dict[str, Any]:
        """Model version (None: the pointer is damaged), case counts per status, running job
        and latest ranking file."""
        counts = self.registry.counts()
        latest = self.registry.latest_ranking()
        try:
            version: str | None = self.current_model_version()
        except BadInputError:  # a damaged pointer: None here; ModelRegistry.problems() says why
            version = None
        return {
            "model_version": version,
            "counts": counts,
            "total": sum(counts.values()),
            "running_job": self.running_job(),
            "latest_ranking": None if latest is None else latest["file_name"],
        }

"""The workspace: one folder holding everything about an annotation project (design.md).

::

    <root>/assft.json          labels, model preset, settings (WorkspaceConfig)
    <root>/registry.sqlite     cases, statuses, ranking scores, audit trail (CaseRegistry)
    <root>/labels/             <case_id>.nii.gz at the image's exact geometry; backup/,
                               quarantine/ (files the registry did not know), .locks/
    <root>/rankings/           ranking-0001.json, ...
    <root>/models/             versioned checkpoints; ``current`` names the version in use
    <root>/jobs/               job locks and job folders
    <root>/cache/              anything that can be recomputed

Images stay where they are; the registry stores their absolute paths.

Nothing lost, nothing escapes:

* A submit is one unit under a per-case lock, and the label files and the registry always
  agree (:class:`assft.workspace.labels.LabelStore`, which :meth:`Workspace.open` reconciles).
* Every folder the workspace owns is reached through :meth:`Workspace.resolve_inside`: a
  symbolic link leading out of the workspace (a folder, or a label file) is refused.
* A full disk and a read-only workspace are reported as such (:class:`StorageError`).
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from assft.errors import BadInputError
from assft.io.atomic import sweep_temporaries
from assft.workspace import locks
from assft.workspace.assembly import SUBFOLDERS, assemble_workspace
from assft.workspace.config import CONFIG_FILE_NAME, WorkspaceConfig, check_labeled_structures
from assft.workspace.files import (
    default_user,
    own_regular_file,
    storing,
    write_text_atomic,
)
from assft.workspace.labels import LabelStore
from assft.workspace.rankings import Rankings
from assft.workspace.registry import CaseRegistry
from assft.workspace.registry_database import BUSY_TIMEOUT_S
from assft.workspace.registry_schema import REGISTRY_FILE_NAME, check_status
from assft.workspace.version_names import BASE_VERSION, POINTER_ACTIONS, check_version, read_pointer

__all__ = ["CASE_ID_PATTERN", "Workspace", "default_user"]

DICOMWEB_MANIFEST = Path("cache", "dicomweb", "manifest.json")
"""Where a workspace made from a DICOMweb server records its series' UIDs."""
CASE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
OWNED_FOLDERS = (
    *SUBFOLDERS,
    "labels/backup",
    "labels/quarantine",
    "labels/.locks",
    "cache/training",
    "cache/pretrained",
    "predictions",
)
"""Folders the workspace writes into; none may lead out of it (a symbolic link)."""


class Workspace:
    """An open workspace. Build one with :meth:`create` or :meth:`open`.

    Attributes:
        root: The workspace folder (absolute, symlinks resolved).
        config: The content of ``assft.json``.
        registry: The SQLite case registry.
        notes: What :meth:`reconcile` found and did when the workspace was opened (one line
            each; empty when label files and registry agreed).
    """

    def __init__(self, root: Path, config: WorkspaceConfig, registry: CaseRegistry) -> None:
        self.root = root
        self.config = config
        self.registry = registry
        self.notes: list[str] = []
        self.label_store = LabelStore(self)
        self.rankings = Rankings(self)

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    # folders -----------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        """``assft.json``."""
        return self.root / CONFIG_FILE_NAME

    # Each folder property resolves through resolve_inside, so a folder replaced by a symbolic
    # link leading out of the workspace is refused (BadInputError) wherever it is used.

    @property
    def labels_dir(self) -> Path:
        """Stored labels, ``<case_id>.nii.gz``."""
        return self.resolve_inside("labels")

    @property
    def label_backup_dir(self) -> Path:
        """Replaced labels, ``<case_id>-<UTC time>.nii.gz``."""
        return self.resolve_inside("labels/backup")

    @property
    def label_quarantine_dir(self) -> Path:
        """Files found in ``labels/`` that the registry did not know (see :meth:`reconcile`)."""
        return self.resolve_inside("labels/quarantine")

    @property
    def rankings_dir(self) -> Path:
        """Ranking documents, ``ranking-NNNN.json``."""
        return self.resolve_inside("rankings")

    @property
    def models_dir(self) -> Path:
        """Model versions and the ``current`` pointer."""
        return self.resolve_inside("models")

    @property
    def jobs_dir(self) -> Path:
        """Job locks and job folders."""
        return self.resolve_inside("jobs")

    @property
    def cache_dir(self) -> Path:
        """Recomputable data (predictions, embeddings...)."""
        return self.resolve_inside("cache")

    def cache_folder(self, name: str) -> Path:
        """``cache/<name>`` (e.g. ``training``), refused if it leads out of the workspace."""
        return self.resolve_inside(Path("cache") / name)

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
        labeled_structures: list[int] | None = None,
        adopt: tuple[Path, str] | None = None,
    ) -> Workspace:
        """Create a workspace for a pool of images, all or nothing, and open it
        (:func:`assembly.assemble_workspace`, where the arguments and raised errors are
        listed)."""
        folder = assemble_workspace(
            cls,
            root,
            images,
            label_names=label_names,
            model=model,
            labels_dir=labels_dir,
            user=user,
            labeled_structures=labeled_structures,
            adopt=adopt,
        )
        return cls.open(folder)

    @classmethod
    def open(cls, root: str | Path, *, reconcile: bool = True) -> Workspace:
        """Open an existing workspace.

        Its folders are checked (none may lead out of it), and with ``reconcile`` the label
        files are reconciled with the registry (:meth:`reconcile`); what that did is in
        :attr:`notes` and each note is issued as a warning.

        Args:
            root: The workspace folder.
            reconcile: Reconcile ``labels/`` with the registry.

        Raises:
            BadInputError: ``root`` is missing, not a workspace, or its ``assft.json`` or
                registry is missing, empty or malformed (the file is named; nothing is changed,
                the registry is never re-created), or one of its folders is a symbolic link
                leading out of it.
        """
        root = Path(root).expanduser()
        if not root.is_dir():
            raise BadInputError("does not exist" if not root.exists() else "is not a folder", root)
        root = root.resolve()
        if not (root / CONFIG_FILE_NAME).is_file():
            raise BadInputError(f"is not an ASSFT workspace (no {CONFIG_FILE_NAME})", root)
        own_regular_file(root / CONFIG_FILE_NAME, root)
        own_regular_file(root / REGISTRY_FILE_NAME, root)
        config = WorkspaceConfig.load(root / CONFIG_FILE_NAME)
        registry = CaseRegistry(root / REGISTRY_FILE_NAME)
        workspace = cls(root, config, registry)
        for folder in OWNED_FOLDERS:
            owned = workspace.resolve_inside(folder)
            if owned.exists() and not owned.is_dir():
                raise BadInputError(
                    "is not a folder: the workspace is damaged (it holds a file where its "
                    f"{folder}/ folder belongs)",
                    owned,
                )
        if reconcile:
            for note in workspace.reconcile():
                warnings.warn(note, stacklevel=2)
            workspace.sweep_temporaries()
        return workspace

    def sweep_temporaries(self) -> int:
        """Remove what atomic writes killed outright left behind (``.tmp-<pid>-*`` files of
        writers no longer running) in the folders the workspace writes, and in each folder of
        predictions; returns how many. A live writer's file is never touched."""
        folders = [self.root / folder for folder in OWNED_FOLDERS]
        predictions = self.root / "predictions"
        if predictions.is_dir() and not predictions.is_symlink():
            folders += [p for p in predictions.iterdir() if p.is_dir() and not p.is_symlink()]
        return sum(len(sweep_temporaries(folder)) for folder in folders)

    def save_config(self) -> Path:
        """Write :attr:`config` back to ``assft.json`` (atomically)."""
        return self.config.save(self.config_path)

    def set_labeled_structures(
        self, values: list[int] | None, *, labels_complete: bool = False, user: str | None = None
    ) -> list[int]:
        """Change which structures clinicians label (:attr:`WorkspaceConfig.labeled_structures`;
        None or every value: all of them), under the workspace lock, recorded in the audit.

        Narrowing is always safe: a fine-tune then takes the structures no longer labeled from
        the model. Widening is not when labels exist: they were drawn without the added
        structures, which a fine-tune would learn as background from them; it is refused unless
        ``labels_complete`` says those labels hold them all the same.

        Returns:
            The labeled values now.

        Raises:
            BadInputError: a value the workspace lacks, or a widening over existing labels.
            WorkspaceLockedError: a job (a fine-tune, a ranking) holds the workspace.
        """
        label_values = self.config.label_values
        wanted = label_values if values is None else check_labeled_structures(values, label_values)
        before = self.config.labeled_values
        names = self.config.label_names
        added = [v for v in wanted if v not in before]
        with self.job_lock(description="structures"):
            drawn = [
                row["case_id"]
                for row in self.registry.cases()
                if row["status"] in ("labeled", "held-out")
            ]
            if added and drawn and not labels_complete:
                raise BadInputError(
                    f"{len(drawn)} label(s) were drawn while only "
                    f"{', '.join(names[v] for v in before)} were labeled: they hold no "
                    f"{', '.join(names[v] for v in added)}, which a fine-tune would learn as "
                    "background from them; draw it in those labels and pass "
                    "--labels-complete, or keep the setting",
                    self.config_path,
                )
            self.config.labeled_structures = None if wanted == label_values else wanted
            with storing(self.config_path):
                self.save_config()
                self.registry.audit(
                    "set-labeled-structures",
                    detail={"before": before, "after": wanted, "labels_complete": labels_complete},
                    user=user,
                )
        return self.config.labeled_values

    # paths and cases ---------------------------------------------------------------------

    def resolve_inside(self, relative: str | Path) -> Path:
        """Resolve a path given relative to the workspace, refusing any way out of it.

        Args:
            relative: e.g. ``"labels/case1.nii.gz"``.

        Every folder and file the workspace owns is reached through here, so that no symbolic
        link (a folder such as ``labels/``, or a file such as ``labels/<case>.nii.gz``) can make
        the engine read or write outside the workspace. Links that stay inside are followed.

        Returns:
            The absolute path (symlinks and ``..`` resolved).

        Raises:
            BadInputError: the path is absolute, or resolves outside the workspace (a link is
                named with where it leads).
        """
        relative = Path(relative)
        if relative.is_absolute():
            raise BadInputError("is absolute; give a path relative to the workspace", relative)
        resolved = (self.root / relative).resolve()
        if not resolved.is_relative_to(self.root):
            if ".." in relative.parts:
                raise BadInputError(f"leaves the workspace {self.root}", relative)
            raise BadInputError(
                f"leads to {resolved}, which leaves the workspace {self.root} (a symbolic "
                "link): ASSFT reads and writes only inside its workspace; replace the link by "
                "a folder or file",
                self.root / relative,
            )
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
        """Registered cases ordered by id (see :meth:`CaseRegistry.cases`)."""
        return self.registry.cases(status)

    def image_path(self, case_id: str) -> Path:
        """The image file or DICOM folder of a case."""
        case = self.registry.case(self.check_case_id(case_id))
        assert case is not None  # checked just above
        return Path(case["image_path"])

    def label_path(self, case_id: str) -> Path | None:
        """The stored label ``labels/<case_id>.nii.gz``, or None (:meth:`LabelStore.path`)."""
        return self.label_store.path(case_id)

    def case_lock(
        self, case_id: str, *, timeout: float = BUSY_TIMEOUT_S
    ) -> contextlib.AbstractContextManager[bool]:
        """Hold the lock of one case's label (:meth:`LabelStore.case_lock`)."""
        return self.label_store.case_lock(case_id, timeout=timeout)

    def submit_label(
        self, case_id: str, label_file: str | Path, *, user: str | None = None
    ) -> Path:
        """Store a clinician's label for a case and mark the case labeled, as one unit that
        never leaves a half-written label or a registry that disagrees with it
        (:meth:`LabelStore.submit`, where the raised errors are listed)."""
        return self.label_store.submit(case_id, label_file, user=user)

    def reconcile(self) -> list[str]:
        """Make ``labels/`` and the registry agree (:meth:`LabelStore.reconcile`); :meth:`open`
        calls it. Returns one line per thing found, also kept in :attr:`notes`."""
        notes = self.label_store.reconcile()
        self.notes += notes
        return notes

    # statuses ----------------------------------------------------------------------------

    def skip(self, case_id: str, *, user: str | None = None) -> None:
        """Mark a case skipped (not to be proposed again)."""
        self.set_status(case_id, "skipped", user=user)

    def hold_out(
        self, case_ids: Sequence[str], *, release: bool = False, user: str | None = None
    ) -> str:
        """Keep labeled cases out of training, for validation (or release them again).

        Every case is checked before any changes: it must be labeled in the registry (a stored
        label hash, not merely a file in ``labels/``), or held out to be released.

        Returns:
            The cases' new status, ``held-out`` or ``labeled``.

        Raises:
            BadInputError: unknown case, or one that is not labeled (held out, for ``release``);
                nothing is changed then.
        """
        status, allowed = ("labeled", "held-out") if release else ("held-out", "labeled")
        for case_id in case_ids:
            row = self.registry.case(self.check_case_id(case_id))
            assert row is not None  # checked just above
            if row["status"] not in (allowed, status) or row["label_sha256"] is None:
                raise BadInputError(
                    f"case {case_id} is {row['status']}, not held out"
                    if release
                    else f"case {case_id} is {row['status']}: only labeled cases can be held out"
                )
            if self.label_path(case_id) is None:
                raise BadInputError(
                    f"case {case_id} is {row['status']} but its label file is missing: "
                    "submit its label again"
                )
        for case_id in case_ids:
            self.set_status(case_id, status, user=user, require=(allowed, status))
        return status

    def set_status(
        self,
        case_id: str,
        status: str,
        *,
        user: str | None = None,
        require: Sequence[str] | None = None,
    ) -> None:
        """Set a case's status.

        Args:
            case_id: A registered case.
            status: One of the case statuses.
            user: Who did it (default :func:`default_user`).
            require: Statuses the case must have now (checked in the registry's transaction).

        Raises:
            BadInputError: unknown case or status, a case without a required status, or
                ``labeled`` or ``held-out`` for a case the registry has no label for or whose
                label file is missing (use :meth:`submit_label`).
            StorageError: the disk is full or the workspace read-only.
        """
        self.check_case_id(case_id)
        check_status(status)
        needs_label = status in ("labeled", "held-out")
        if needs_label and self.label_path(case_id) is None:
            raise BadInputError(
                f"case {case_id!r} has no stored label: submit one to mark it {status}"
            )
        action = "skip" if status == "skipped" else "set-status"
        self.registry.set_status(
            case_id,
            status,
            user=user or default_user(),
            action=action,
            require=require,
            require_label=needs_label,
        )

    # model version -----------------------------------------------------------------------

    def current_model_version(self) -> str:
        """The model version in use: ``models/current``, or ``"v0"`` (the preset as shipped).

        Raises:
            BadInputError: a damaged pointer (:func:`version_names.read_pointer`).
        """
        pointer = self.models_dir / "current"
        version = read_pointer(pointer)
        if version == BASE_VERSION and not pointer.exists():
            # No pointer is v0 only while nothing was ever made current: a deleted pointer must
            # not make every verb use the pretrained model in silence.
            recorded = [
                (row.get("detail") or {}).get("version")
                for row in self.registry.audit_actions(POINTER_ACTIONS)
            ]
            if recorded and recorded[-1] != BASE_VERSION:
                raise BadInputError(
                    f"is missing, but {recorded[-1]} was made current; repair it with "
                    f"'assft rollback {self.root} {recorded[-1]}'",
                    pointer,
                )
        return version

    def set_current_model_version(self, version: str) -> None:
        """Point ``models/current`` at ``version`` (atomically).

        Raises:
            BadInputError: ``version`` is not a model version name such as ``v3``.
            StorageError: the disk is full or the workspace read-only; the pointer is unchanged.
        """
        check_version(version)
        models = self.models_dir
        with storing(models / "current"):
            models.mkdir(exist_ok=True)
            write_text_atomic(models / "current", version + "\n")

    # rankings ----------------------------------------------------------------------------

    def save_ranking(self, document: dict[str, Any]) -> Path:
        """Store a ranking as ``rankings/ranking-NNNN.json`` and register its scores
        (:meth:`Rankings.save`)."""
        return self.rankings.save(document)

    def latest_ranking(self) -> dict[str, Any] | None:
        """The newest registered ranking document, parsed, or None (:meth:`Rankings.latest`)."""
        return self.rankings.latest()

    def next_case(self) -> dict[str, Any]:
        """The best-ranked case of the latest ranking that is still unlabeled (``assft next``;
        :meth:`Rankings.next_case`)."""
        return self.rankings.next_case()

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
        """Model version (None: the pointer is damaged), case counts per status, running job,
        latest ranking file, and whether the scans came from a DICOMweb server."""
        counts = self.registry.counts()
        latest = self.registry.latest_ranking()
        try:
            version: str | None = self.current_model_version()
        except BadInputError:  # a damaged pointer: None here; ModelVersions.problems() says why
            version = None
        names = self.config.label_names
        return {
            "model_version": version,
            "counts": counts,
            "total": sum(counts.values()),
            "running_job": self.running_job(),
            "latest_ranking": None if latest is None else latest["file_name"],
            "latest_ranking_model": None if latest is None else latest["model_version"],
            # The structures clinicians label (all of the labels, unless they label only some).
            "labeled_structures": [names[v] for v in self.config.labeled_values],
            # made by `assft init --dicomweb` (assft.dicom.dicomweb_pool): labels can go back
            "dicomweb": (self.root / DICOMWEB_MANIFEST).is_file(),
        }

"""Assembling a new workspace folder for a pool of images, all or nothing (what
:meth:`Workspace.create <assft.workspace.workspace.Workspace.create>` does): the images found
(:func:`find_images`) and given case ids, labels already drawn imported, the folder staged next
to its place and renamed into it once complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from assft.errors import BadInputError, storage_error
from assft.io.atomic import process_umask
from assft.io.image_names import case_id_from_path, scanned_image_file
from assft.io.imaging import is_dicom_series, read_image
from assft.workspace.config import (
    CONFIG_FILE_NAME,
    WorkspaceConfig,
    check_labeled_structures,
    enclosing_workspace,
    make_labels,
)
from assft.workspace.files import default_user
from assft.workspace.labels import load_label_for_image
from assft.workspace.registry import CaseRegistry
from assft.workspace.registry_schema import REGISTRY_FILE_NAME

if TYPE_CHECKING:
    from assft.workspace.workspace import Workspace

__all__ = [
    "MAX_CASE_ID_LENGTH",
    "SUBFOLDERS",
    "assemble_workspace",
    "check_new_root",
    "find_images",
]

MAX_CASE_ID_LENGTH = 128
"""Longest case id: the longest name derived from one (a backup,
``<id>-<UTC time>-<n>.nii.gz``) must fit the usual 255-byte limit on a file name."""
SUBFOLDERS = ("labels", "rankings", "models", "jobs", "cache")
"""The folders a new workspace starts with."""


def find_images(items: Sequence[str | Path]) -> list[Path]:
    """Expand image files, DICOM series folders and folders of images into image paths.

    A folder that holds a DICOM series is one image; any other folder contributes its image
    files and its DICOM series subfolders (one level, sorted, hidden entries skipped).

    Args:
        items: Paths as the user gave them.

    Returns:
        Absolute paths, in the order given, each once.

    Raises:
        BadInputError: a path does not exist, or is neither a file nor a folder.
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
        if not path.is_dir():
            raise BadInputError("is neither an image file nor a folder (a pipe or a device?)", path)
        for child in sorted(path.iterdir()):
            if child.name.startswith("."):
                continue
            is_image = scanned_image_file(child)
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


def _find_label_files(labels_dir: str | Path, case_ids: set[str]) -> dict[str, Path]:
    """Label files of ``labels_dir`` whose names give one of ``case_ids``."""
    folder = Path(labels_dir).expanduser()
    if not folder.is_dir():
        raise BadInputError("is not a folder of labels", folder)
    matches: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not scanned_image_file(path):
            continue
        case_id = case_id_from_path(path)
        if case_id in case_ids:
            if case_id in matches:
                raise BadInputError(
                    f"gives case id {case_id!r}, like {matches[case_id].name}", path
                )
            matches[case_id] = path.resolve()
    return matches


def check_new_root(root: str | Path) -> Path:
    """``root`` resolved, checked to be a place a new workspace can be made: not a workspace,
    not inside one, a missing or empty folder under a folder.

    Raises:
        BadInputError: one line naming ``root`` and the problem.
    """
    root = Path(root).expanduser().resolve()
    if (root / CONFIG_FILE_NAME).exists():
        raise BadInputError("already holds an ASSFT workspace", root)
    other = enclosing_workspace(root.parent)
    if other is not None:
        raise BadInputError(
            f"lies inside the workspace {other}: a workspace is made outside every other one",
            root,
        )
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise BadInputError("exists and is not an empty folder; choose a new folder", root)
    existing = next(p for p in root.parents if p.exists())
    if not existing.is_dir():
        raise BadInputError(f"cannot be created: {existing} is a file, not a folder", root)
    return root


def assemble_workspace(
    workspace_type: type[Workspace],
    root: str | Path,
    images: Sequence[str | Path],
    *,
    label_names: dict[int, str] | None = None,
    model: str = "demo",
    labels_dir: str | Path | None = None,
    user: str | None = None,
    labeled_structures: list[int] | None = None,
    adopt: tuple[Path, str] | None = None,
) -> Path:
    """Assemble a new workspace folder for a pool of images; all or nothing.

    The workspace is assembled in a hidden folder next to ``root`` and renamed into place
    once complete, so a refused or failed creation leaves nothing behind.

    Args:
        workspace_type: The class whose instance imports the labels into the staged folder.
        root: New (or empty) folder for the workspace.
        images: Image files, DICOM series folders, or folders holding images.
        label_names: ``{value: name}`` of the foreground labels; ``{1: "foreground"}``
            when None.
        model: Model preset name, or the path of a preset JSON file (stored absolute).
        labels_dir: Optional folder of existing labels; a label whose file name gives a
            case id of the pool is checked as in :meth:`Workspace.submit_label` and imported.
        user: Who creates it (default :func:`default_user`).
        labeled_structures: The label values clinicians label, when they label only some
            of the structures (:attr:`WorkspaceConfig.labeled_structures`); None: all.
        adopt: ``(folder, name)``: a folder outside the workspace that holds every image
            (scans fetched for it, e.g. from a DICOMweb server), moved into the workspace as
            ``cache/<name>`` once everything else is in place; the cases are registered at
            the images' places there. A failed creation moves it back.

    Returns:
        The workspace folder (absolute, symlinks resolved), ready to open.

    Raises:
        BadInputError: ``root`` already holds a workspace or is a non-empty folder; no
            images are found; an image or label is bad (the file is named).
    """
    user = user or default_user()
    if isinstance(images, (str, Path)):
        images = [images]
    root = check_new_root(root)  # before any scan is read
    labels = make_labels(label_names)
    if labeled_structures is not None:
        try:
            labeled_structures = check_labeled_structures(
                labeled_structures, [label.value for label in labels]
            )
        except ValueError as error:
            raise BadInputError(str(error)) from None
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
    for path, case_id in zip(image_paths, case_ids, strict=True):
        if len(case_id) > MAX_CASE_ID_LENGTH:
            raise BadInputError(
                f"gives a case id of {len(case_id)} characters; the limit is "
                f"{MAX_CASE_ID_LENGTH}, so that the file names made from it fit the file "
                "system: give the image a shorter name",
                path,
            )
    label_files = _find_label_files(labels_dir, set(case_ids)) if labels_dir else {}

    created_parents = [p for p in reversed(root.parents) if not p.exists()]
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.creating-", dir=root.parent))
    except OSError as error:
        for parent in reversed(created_parents):
            with contextlib.suppress(OSError):
                parent.rmdir()
        known = storage_error(error, root, in_workspace=False)  # not writable, full
        if known is not None:
            raise known from None
        raise BadInputError(f"cannot be created ({error.strerror or error})", root) from None
    try:
        os.chmod(staging, 0o777 & ~process_umask())
        config = WorkspaceConfig(labels=labels, model=model, labeled_structures=labeled_structures)
        for name in SUBFOLDERS:
            (staging / name).mkdir()
        config.save(staging / CONFIG_FILE_NAME)
        registry = CaseRegistry(staging / REGISTRY_FILE_NAME, create=True)
        registered = image_paths
        if adopt is not None:
            adopted = root / "cache" / adopt[1]
            registered = [adopted / path.relative_to(adopt[0]) for path in image_paths]
        registry.add_cases(zip(case_ids, registered, strict=True), user=user)
        registry.audit(
            "create",
            detail={"images": len(case_ids), "model": model, "labels": config.label_names},
            user=user,
        )
        staged = workspace_type(staging, config, registry)
        for case_id, label_file in label_files.items():
            image_path = image_paths[case_ids.index(case_id)]
            stored = load_label_for_image(
                label_file, image_path, config.label_names, case_id=case_id
            )
            staged.label_store.store(case_id, stored, label_file, user=user, action="import-label")
        if adopt is not None:
            os.rename(adopt[0], staging / "cache" / adopt[1])
        try:
            os.rename(staging, root)
        except OSError:
            raise BadInputError("was created by someone else meanwhile", root) from None
    except BaseException:
        if adopt is not None and (staging / "cache" / adopt[1]).is_dir():
            os.rename(staging / "cache" / adopt[1], adopt[0])  # the fetched scans are kept
        shutil.rmtree(staging, ignore_errors=True)
        for parent in reversed(created_parents):
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise
    return root

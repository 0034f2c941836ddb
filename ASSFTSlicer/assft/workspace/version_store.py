"""The stored model versions of a workspace (design.md, "models/"): folders, manifests, weights.

::

    models/current             one line: the version in use (absent: ``v0``)
    models/v1/model.pt         the fine-tuned weights (a plain state dict)
    models/v1/manifest.json    parent, label-set hash, mode, seed, metrics, gate, sha256...
    models/.v2.partial/        a version being written (renamed to ``v2`` once complete)

``v0`` is the model preset as configured in ``assft.json``; it has no folder. A new version is
written completely into a hidden folder and renamed into place, so a reader sees it whole or
not at all; adding a version never moves the pointer (and refuses weights that are not finite).
Moving it is :class:`assft.workspace.model_versions.ModelVersions`'s.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from assft.errors import BadInputError, DivergedError, StorageError
from assft.io.atomic import fsync_directory, save_torch_atomic
from assft.workspace.files import (
    own_regular_file,
    read_json_document,
    sha256_file,
    sha256_file_known,
    utc_now,
    write_json_atomic,
)
from assft.workspace.version_names import (
    BASE_VERSION,
    parse_partial,
    parse_version,
    partial_name,
    version_name,
    version_number,
)

# The Slicer module lists and promotes versions in its own process, before PyTorch may be
# installed: torch and assft.models (torch) are imported only inside the methods that use weights.
if TYPE_CHECKING:
    import torch

    from assft.workspace import Workspace

__all__ = ["CHECKPOINT_NAME", "MANIFEST_NAME", "ModelStorageError", "VersionStore"]

CHECKPOINT_NAME = "model.pt"
MANIFEST_NAME = "manifest.json"
_MAX_MANIFEST_BYTES = 16 << 20  # a manifest is a few kB (its learning curve included)
POINTER_NAME = "current"


class ModelStorageError(StorageError):
    """A model version could not be written (disk full, permissions...); nothing was changed
    (exit 2, as every full disk or read-only workspace)."""


def _non_finite(weights: Mapping[str, torch.Tensor]) -> str | None:
    """The first weight holding a NaN or an infinity, or None when every one is finite."""
    import torch

    for key, value in weights.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            if not bool(torch.isfinite(value.detach()).all()):
                return str(key)
    return None


class VersionStore:
    """The stored versions of one workspace: what their folders hold, read and written.

    Args:
        workspace: The open workspace (its ``models_dir``, ``config.model``, registry).
    """

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace

    @property
    def models_dir(self) -> Path:
        """``<workspace>/models``."""
        return self.workspace.models_dir

    # reading -----------------------------------------------------------------------------

    @property
    def pointer_path(self) -> Path:
        """``models/current``."""
        return self.models_dir / POINTER_NAME

    def current(self) -> str:
        """The version ``models/current`` points to (``v0`` when it points nowhere yet).

        Raises:
            BadInputError: the pointer is damaged (repair it with :meth:`rollback`).
        """
        return self.workspace.current_model_version()

    def versions_by_job(self) -> dict[str, str]:
        """``{job id: version}`` of the stored versions that record the job that made them."""
        found: dict[str, str] = {}
        for number in self._stored_numbers():
            version = version_name(number)
            try:
                job = self._read_manifest(version).get("job")
            except BadInputError:
                continue
            if isinstance(job, str):
                found.setdefault(job, version)
        return found

    def _stored_numbers(self) -> list[int]:
        """Numbers of the complete version folders ``models/vN``."""
        if not self.models_dir.is_dir():
            return []
        numbers = []
        for path in self.models_dir.iterdir():
            number = parse_version(path.name)
            if number is not None and path.is_dir():
                numbers.append(number)
        return sorted(n for n in numbers if n > 0)

    def _read_manifest(self, version: str) -> dict[str, Any]:
        """The manifest of a stored version (not ``v0``), as written."""
        path = self.models_dir / version / MANIFEST_NAME
        if not (self.models_dir / version).is_dir():
            known = ", ".join([BASE_VERSION] + [version_name(n) for n in self._stored_numbers()])
            raise BadInputError(
                f"unknown model version {version!r} (versions: {known})", self.models_dir
            )
        own_regular_file(path, self.models_dir)
        return read_json_document(
            path,
            "model manifest",
            missing="is missing: the model version is incomplete",
            max_bytes=_MAX_MANIFEST_BYTES,
        )

    def _base_manifest(self) -> dict[str, Any]:
        return {
            "version": BASE_VERSION,
            "parent": None,
            "created_at": None,
            "metrics": {},
            "promoted": True,
            "preset": self.workspace.config.model,
        }

    def manifest(self, version: str) -> dict[str, Any]:
        """A version's manifest (``v0``: synthesized from the preset).

        Raises:
            BadInputError: a malformed or unknown version, or an unreadable manifest (named).
        """
        if version_number(version) == 0:
            return self._base_manifest()
        return self._read_manifest(version)

    def next_version(self) -> str:
        """The name the next version gets: one above every version ever started.

        Left-over ``.vN.partial`` folders (a writer that was killed) count too, so a number
        is never given twice.
        """
        numbers = self._stored_numbers()
        if self.models_dir.is_dir():
            for path in self.models_dir.iterdir():
                number = parse_partial(path.name)
                if number is not None:
                    numbers.append(number)
        return version_name(max(numbers, default=0) + 1)

    def checkpoint_path(self, version: str) -> Path | None:
        """``models/vN/model.pt``; None for ``v0`` (the preset's own checkpoint).

        Raises:
            BadInputError: a malformed version name.
        """
        if version_number(version) == 0:
            return None
        return own_regular_file(self.models_dir / version / CHECKPOINT_NAME, self.models_dir)

    # integrity ---------------------------------------------------------------------------

    def verify(self, version: str, *, remembered: bool = False) -> None:
        """Check that a version's checkpoint is complete (its sha256 is the manifest's).

        ``v0`` is not checked here: the preset's checkpoint is checked when it is loaded.
        ``remembered``: a hash made before of the same unchanged file will do
        (:func:`~assft.workspace.files.sha256_file_known`), for what lists the versions again
        and again (a panel's refresh); loading always hashes afresh.

        Raises:
            BadInputError: unknown version, missing manifest or checkpoint, or a checkpoint
                whose bytes differ from those recorded (the file is named).
        """
        manifest = self.manifest(version)
        path = self.checkpoint_path(version)
        if path is None:
            return
        if not path.is_file():
            raise BadInputError(f"is missing: model version {version} has no weights", path)
        expected = manifest.get("checkpoint_sha256")
        if not isinstance(expected, str):
            raise BadInputError(
                f"records no checkpoint_sha256: model version {version} cannot be verified",
                self.models_dir / version / MANIFEST_NAME,
            )
        digest = sha256_file_known(path) if remembered else sha256_file(path)
        if digest != expected:
            raise BadInputError("is damaged: sha256 differs from its manifest (truncated?)", path)

    def load_state(self, version: str) -> dict[str, torch.Tensor] | None:
        """Verify a version and read its weights (``torch.load(weights_only=True)``).

        Returns:
            The state dict, or None for ``v0`` (load the preset with ``load_model``).

        Raises:
            BadInputError: see :meth:`verify` and ``load_checkpoint_state``.
        """
        from assft.models.checkpoints import load_checkpoint_state

        self.verify(version)
        path = self.checkpoint_path(version)
        return None if path is None else load_checkpoint_state(path)

    def latest_usable(self, start: str) -> str:
        """The first version that verifies, from ``start`` up its parent chain (else ``v0``)."""
        version: object = start
        seen: set[str] = set()
        while isinstance(version, str) and version not in seen:
            seen.add(version)
            try:
                self.verify(version)
                return version
            except BadInputError:
                try:
                    version = self._read_manifest(version).get("parent")
                except BadInputError:
                    break
        return BASE_VERSION

    def current_or_fallback(self) -> tuple[str, str | None]:
        """The current version if it loads, else the nearest ancestor that does.

        Returns:
            (version to use, a warning naming what is damaged and what is used instead, or
            None when the current version is fine).
        """
        current = self.current()
        try:
            self.verify(current)
            return current, None
        except BadInputError as error:
            problem = str(error)
        fallback = self.latest_usable(current)
        return fallback, f"model version {current} cannot be used ({problem}); using {fallback}"

    # writing -----------------------------------------------------------------------------

    def _reserve(self) -> tuple[str, Path]:
        """Create ``models/.vN.partial`` for a number no other writer holds."""
        self.models_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(1000):
            version = self.next_version()
            partial = self.models_dir / partial_name(version)
            try:
                partial.mkdir()
            except FileExistsError:
                continue
            if (self.models_dir / version).exists():  # finished by another writer meanwhile
                partial.rmdir()
                continue
            return version, partial
        raise ModelStorageError(f"cannot find a free model version number in {self.models_dir}")

    @staticmethod
    def _save_weights(state_dict: Mapping[str, torch.Tensor], path: Path) -> None:
        """``torch.save`` to a temporary file, fsync, rename."""
        state = {str(key): value.detach().cpu() for key, value in state_dict.items()}
        save_torch_atomic(state, path)

    def add_version(
        self, state_dict: Mapping[str, torch.Tensor] | torch.nn.Module, manifest: Mapping[str, Any]
    ) -> str:
        """Store new weights as the next version; the current pointer does not move.

        Args:
            state_dict: The weights (a network is accepted too: its state dict is stored).
            manifest: What to record: ``parent`` (default: the current version),
                ``label_set_hash``, ``mode``, ``seed``, ``config``, ``metrics``, ``gate``...
                ``version``, ``created_at`` and ``checkpoint_sha256`` are set here;
                ``promoted`` defaults to False.

        Returns:
            The new version's name, e.g. ``"v3"``.

        Raises:
            DivergedError: a weight holds a NaN or an infinity (a diverged training); nothing
                is stored.
            ModelStorageError: the files could not be written (e.g. the disk is full);
                nothing is left behind and every existing version is intact.
        """
        # A mapping is the weights themselves; a network gives its state dict.
        weights = state_dict if isinstance(state_dict, Mapping) else state_dict.state_dict()
        bad = _non_finite(weights)
        if bad is not None:
            raise DivergedError(
                f"the weights hold non-finite values (NaN or infinity) in {bad}: a diverged "
                f"model is never stored as a version (nothing was written to {self.models_dir})"
            )
        parent = manifest["parent"] if "parent" in manifest else self.current()
        version, partial = self._reserve()
        try:
            checkpoint = partial / CHECKPOINT_NAME
            self._save_weights(weights, checkpoint)
            document = {
                "parent": parent,
                "metrics": {},
                "promoted": False,
                **dict(manifest),
                "version": version,
                "created_at": utc_now(),
                "checkpoint_sha256": sha256_file(checkpoint),
            }
            write_json_atomic(partial / MANIFEST_NAME, document)
            fsync_directory(partial)
            os.rename(partial, self.models_dir / version)
        except BaseException as error:
            shutil.rmtree(partial, ignore_errors=True)
            if isinstance(error, OSError):
                reason = os.strerror(error.errno) if error.errno else str(error)
                hint = " (free some disk space)" if error.errno == errno.ENOSPC else ""
                raise ModelStorageError(
                    f"cannot store model version {version} in {self.models_dir}: {reason}{hint}; "
                    f"the current version is unchanged"
                ) from error
            raise
        fsync_directory(self.models_dir)
        return version

    # helpers -----------------------------------------------------------------------------

    @staticmethod
    def label_set_hash(labels: Mapping[str, str]) -> str:
        """Hash of a label snapshot: sha256 over sorted ``case:sha256`` lines.

        Args:
            labels: ``{case_id: sha256 of its stored label}``.
        """
        text = "".join(f"{case}:{digest}\n" for case, digest in sorted(labels.items()))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

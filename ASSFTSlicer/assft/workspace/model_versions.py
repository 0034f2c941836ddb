"""Versioned model checkpoints of a workspace (design.md, "models/").

::

    models/current             one line: the version in use (absent: ``v0``)
    models/v1/model.pt         the fine-tuned weights (a plain state dict)
    models/v1/manifest.json    parent, label-set hash, mode, seed, metrics, gate, sha256...
    models/.v2.partial/        a version being written (renamed to ``v2`` once complete)

``v0`` is the model preset as configured in ``assft.json``; it has no folder. A new version is
written completely into a hidden folder and renamed into place, so a reader sees it whole or
not at all; adding a version never moves the pointer: :meth:`ModelRegistry.promote` does, once
a validation gate has passed, and :meth:`ModelRegistry.rollback` moves it back.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from assft.errors import AssftError, BadInputError
from assft.io.atomic import fsync_directory, save_torch_atomic
from assft.workspace.files import sha256_file, utc_now, write_json_atomic
from assft.workspace.versions import (
    BASE_VERSION,
    VERSION_PATTERN,
    check_version,
    parse_partial,
    parse_version,
    partial_name,
    version_name,
    version_number,
)
from assft.workspace.workspace import default_user

# The Slicer module lists and promotes versions in its own process, before PyTorch may be
# installed: torch and assft.models (torch) are imported only inside the methods that load weights.
if TYPE_CHECKING:
    import torch

    from assft.models import LoadedModel
    from assft.workspace import Workspace

__all__ = [
    "BASE_VERSION",
    "CHECKPOINT_NAME",
    "MANIFEST_NAME",
    "ModelRegistry",
    "ModelStorageError",
    "VERSION_PATTERN",
]

CHECKPOINT_NAME = "model.pt"
MANIFEST_NAME = "manifest.json"


class ModelStorageError(AssftError):
    """A model version could not be written (disk full, permissions...); nothing was changed."""


class ModelRegistry:
    """The model versions of one workspace.

    Args:
        workspace: The open workspace (its ``models_dir``, ``config.model``, registry).
    """

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace

    @property
    def models_dir(self) -> Path:
        """``<workspace>/models``."""
        return self.workspace.models_dir

    def __repr__(self) -> str:
        return f"ModelRegistry({str(self.models_dir)!r})"

    # reading -----------------------------------------------------------------------------

    def current(self) -> str:
        """The version ``models/current`` points to (``v0`` when it points nowhere yet)."""
        return self.workspace.current_model_version()

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
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BadInputError("is missing: the model version is incomplete", path) from None
        except (OSError, ValueError) as error:
            raise BadInputError(f"cannot be read as a model manifest ({error})", path) from None
        if not isinstance(document, dict):
            raise BadInputError("is not a model manifest (not a JSON object)", path)
        return document

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

    def versions(self) -> list[dict[str, Any]]:
        """Every version by number, ``v0`` first: its manifest plus ``current`` (bool).

        A version whose manifest cannot be read is listed with an ``error`` message rather
        than hiding the others.
        """
        current = self.current()
        entries = [self._base_manifest()]
        for number in self._stored_numbers():
            version = version_name(number)
            try:
                entries.append(self._read_manifest(version))
            except BadInputError as error:
                entries.append({"version": version, "error": str(error)})
        for entry in entries:
            entry["current"] = entry["version"] == current
        return entries

    def to_json(self) -> dict[str, Any]:
        """``{"current": ..., "versions": [...]}`` for ``assft models --json``."""
        return {"current": self.current(), "versions": self.versions()}

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
        return self.models_dir / version / CHECKPOINT_NAME

    def checkpoint(self, version: str | None = None) -> Path | None:
        """The verified checkpoint of a version; None for ``v0`` (the preset's own weights).

        Every reader of a version's weights (ranking, fine-tuning, prediction) comes here, so
        a damaged or unknown version is refused the same way everywhere.

        Args:
            version: ``v0``, ``v1``...; None: the current version.

        Raises:
            BadInputError: a malformed or unknown version, or a checkpoint that is missing or
                damaged (see :meth:`verify`).
        """
        version = self.current() if version is None else check_version(version)
        path = self.checkpoint_path(version)
        if path is not None:
            self.verify(version)
        return path

    def load(
        self, version: str | None = None, *, device: str | torch.device = "cpu"
    ) -> LoadedModel:
        """Load a version's model: the workspace's preset with the version's verified weights.

        Args:
            version: ``v0`` (the preset as configured), ``v1``...; None: the current version.
            device: ``auto``, ``cpu``, ``cuda``... or a torch device.

        Returns:
            The model, with the workspace's label values as its output channels.

        Raises:
            BadInputError: a malformed, unknown or damaged version, or weights that do not
                fit the preset and labels (see ``assft.models.load_model``).
        """
        from assft.models import get_preset, load_model

        checkpoint = self.checkpoint(version)
        return load_model(
            get_preset(self.workspace.config.model),
            label_values=[int(v) for v in self.workspace.config.label_values],
            checkpoint=checkpoint,
            device=device,
        )

    # integrity ---------------------------------------------------------------------------

    def verify(self, version: str) -> None:
        """Check that a version's checkpoint is complete (its sha256 is the manifest's).

        ``v0`` is not checked here: the preset's checkpoint is checked when it is loaded.

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
        if sha256_file(path) != expected:
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
            ModelStorageError: the files could not be written (e.g. the disk is full);
                nothing is left behind and every existing version is intact.
        """
        # A mapping is the weights themselves; a network gives its state dict.
        weights = state_dict if isinstance(state_dict, Mapping) else state_dict.state_dict()
        version, partial = self._reserve()
        try:
            checkpoint = partial / CHECKPOINT_NAME
            self._save_weights(weights, checkpoint)
            document = {
                "parent": self.current(),
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
                    f"the current version {self.current()} is unchanged"
                ) from error
            raise
        fsync_directory(self.models_dir)
        return version

    def _audit(self, action: str, detail: dict[str, Any]) -> None:
        self.workspace.registry.audit(action, detail=detail, user=default_user())

    def promote(self, version: str, *, reason: str) -> dict[str, Any]:
        """Make a version current because it passed the validation gate.

        Its manifest records ``promoted: true`` (with time and reason), then the pointer moves.

        Args:
            version: A stored version (or ``v0``).
            reason: Why, e.g. the gate's verdict; kept in the manifest and the audit trail.

        Returns:
            The version's manifest as now stored (with ``current``).

        Raises:
            BadInputError: unknown or damaged version; the pointer is unchanged.
        """
        self.verify(version)
        previous = self.current()
        manifest = self.manifest(version)
        if version != BASE_VERSION:
            manifest.update(promoted=True, promoted_at=utc_now(), promote_reason=reason)
            write_json_atomic(self.models_dir / version / MANIFEST_NAME, manifest)
        self.workspace.set_current_model_version(version)
        self._audit("promote-model", {"version": version, "previous": previous, "reason": reason})
        return {**manifest, "current": True}

    def rollback(self, version: str) -> dict[str, Any]:
        """Make an existing version current again (older or newer), e.g. ``assft rollback``.

        ``promoted`` stays as it is; the audit trail records ``rolled_back_from``.

        Returns:
            The version's manifest with ``current`` and ``rolled_back_from``.

        Raises:
            BadInputError: unknown or damaged version; the pointer is unchanged.
        """
        self.verify(version)
        previous = self.current()
        self.workspace.set_current_model_version(version)
        self._audit("rollback-model", {"version": version, "rolled_back_from": previous})
        return {**self.manifest(version), "current": True, "rolled_back_from": previous}

    # helpers -----------------------------------------------------------------------------

    @staticmethod
    def label_set_hash(labels: Mapping[str, str]) -> str:
        """Hash of a label snapshot: sha256 over sorted ``case:sha256`` lines.

        Args:
            labels: ``{case_id: sha256 of its stored label}``.
        """
        text = "".join(f"{case}:{digest}\n" for case, digest in sorted(labels.items()))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

"""Versioned model checkpoints of a workspace (design.md, "models/").

::

    models/current             one line: the version in use (absent: ``v0``)
    models/v1/model.pt         the fine-tuned weights (a plain state dict)
    models/v1/manifest.json    parent, label-set hash, mode, seed, metrics, gate, sha256...
    models/.v2.partial/        a version being written (renamed to ``v2`` once complete)

``v0`` is the model preset as configured in ``assft.json``; it has no folder. A new version is
written completely into a hidden folder and renamed into place, so a reader sees it whole or
not at all; adding a version never moves the pointer (and refuses weights that are not finite):
:meth:`ModelVersions.promote` does, once a validation gate has passed, and
:meth:`ModelVersions.rollback` moves it back (or forward) after checking that the weights load.

Moving the pointer is one step. The audit row (naming the job that promoted, if any), the
manifest and ``models/current`` change inside one registry transaction and the pointer moves
last, just before the commit: an error anywhere (a locked or read-only registry, a full disk)
rolls the transaction back and puts the files back, so nothing changed. Only a process killed
between the pointer's move and the commit leaves a pointer that the registry does not record;
the next pointer change (a fine-tune, a rollback) puts it back to the recorded version
(:meth:`ModelVersions.recover`), and ``assft status`` and ``assft models`` report it meanwhile.
Every pointer change takes the registry's write lock first, so a rollback and a fine-tune's
promotion never interleave; a promotion is made only if the current version is still the one
the job was validated against (``expect_current``), else the version is kept unpromoted, with
the reason in its manifest.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import shutil
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from assft.errors import BadInputError, DivergedError, StorageError
from assft.io.atomic import atomic_path, fsync_directory, save_torch_atomic
from assft.runtime import syncpoints
from assft.workspace.files import (
    own_regular_file,
    read_json_document,
    sha256_file,
    sha256_file_known,
    utc_now,
    write_json_atomic,
)
from assft.workspace.registry import CaseRegistry
from assft.workspace.version_names import (
    BASE_VERSION,
    POINTER_ACTIONS,
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
    "ModelVersions",
    "ModelStorageError",
    "VERSION_PATTERN",
]

CHECKPOINT_NAME = "model.pt"
MANIFEST_NAME = "manifest.json"
_MAX_MANIFEST_BYTES = 16 << 20  # a manifest is a few kB (its learning curve included)
POINTER_NAME = "current"
DECISION_ACTIONS = ("promote-model", "register-model")
"""Audit actions that record a fine-tune's decision about its version (promoted or kept)."""


@functools.lru_cache(maxsize=32)
def _preset_segments(model: str, labels: tuple[int, ...]) -> bool:
    """Whether preset ``model`` has a head for exactly ``labels``: read once per process (the
    panels ask on every refresh; an nnU-Net or bundle reference is parsed from its files)."""
    from assft.models import get_preset

    preset = get_preset(model)
    return bool(preset.has_head and tuple(preset.label_values) == labels)


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


class _PointerChange:
    """The files one pointer transaction changed, to put back when it does not commit.

    Args:
        registry: The workspace's case registry (for the audit rows).
        connection: The open transaction (:meth:`CaseRegistry.transaction`).
    """

    def __init__(self, registry: CaseRegistry, connection: sqlite3.Connection) -> None:
        self.registry = registry
        self.connection = connection
        self.saved: list[tuple[Path, bytes | None]] = []
        self.recovered: str | None = None
        """What :meth:`ModelVersions._recover` put back first, if anything."""

    def audit(self, action: str, detail: dict[str, Any]) -> None:
        self.registry.insert_audit(self.connection, action, detail, user=default_user())

    def _save(self, path: Path) -> None:
        try:
            self.saved.append((path, path.read_bytes()))
        except FileNotFoundError:
            self.saved.append((path, None))

    def write_json(self, path: Path, document: dict[str, Any]) -> None:
        self._save(path)
        write_json_atomic(path, document)

    def write_pointer(self, path: Path, version: str) -> None:
        check_version(version)
        self._save(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temporary:
            temporary.write_text(version + "\n", encoding="utf-8")

    def undo(self) -> None:
        """Put every changed file back as it was (best effort: the original error matters)."""
        for path, content in reversed(self.saved):
            with contextlib.suppress(OSError):
                if content is None:
                    path.unlink(missing_ok=True)
                else:
                    with atomic_path(path) as temporary:
                        temporary.write_bytes(content)


class ModelVersions:
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
        return f"ModelVersions({str(self.models_dir)!r})"

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

    def _pointer(self) -> tuple[str | None, str | None]:
        """(the current version, None), or (None, why the pointer is damaged)."""
        try:
            return self.current(), None
        except BadInputError as error:
            return None, str(error)

    def recorded_current(self, connection: sqlite3.Connection | None = None) -> str:
        """The version the registry's last pointer change made current (``v0``: none yet).

        Every workspace starts at ``v0``; only a recorded change moves it.
        """
        rows = self.workspace.registry.audit_actions(POINTER_ACTIONS, connection)
        for row in reversed(rows):
            version = (row.get("detail") or {}).get("version")
            if parse_version(version) is not None:
                return str(version)
        return BASE_VERSION

    def decision(
        self, version: str, connection: sqlite3.Connection | None = None
    ) -> dict[str, Any] | None:
        """The audit row recording whether ``version`` was promoted by its job, or None."""
        rows = self.workspace.registry.audit_actions(DECISION_ACTIONS, connection)
        for row in reversed(rows):
            if (row.get("detail") or {}).get("version") == version:
                return row
        return None

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

    def _pointer_problems(self) -> tuple[str | None, list[str]]:
        """(the current version or None, what is wrong with the pointer)."""
        pointer, problem = self._pointer()
        if problem is not None:
            return None, [problem]
        recorded = self.recorded_current()
        if recorded != pointer:
            return pointer, [
                f"{self.pointer_path}: names {pointer}, but the registry records {recorded} as "
                f"current (a change of the current version was interrupted before it was "
                f"recorded); the next fine-tune or rollback puts back {recorded}"
            ]
        return pointer, []

    def problems(self) -> list[str]:
        """What makes the current model unusable or uncertain, one line each (empty: none).

        A damaged pointer, a pointer the registry does not record, a current version whose
        manifest cannot be read or whose weights are missing or damaged.
        """
        pointer, problems = self._pointer_problems()
        if pointer is not None:
            try:
                self.verify(pointer, remembered=True)
            except BadInputError as error:
                problems.append(f"the current model version {pointer} cannot be used: {error}")
        return problems

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

    def versions(self) -> list[dict[str, Any]]:
        """Every version by number, ``v0`` first: its manifest plus ``current`` (bool).

        A version whose manifest cannot be read is listed with an ``error`` message rather
        than hiding the others; so is the current version when its weights are missing or
        damaged (only the current one is checked: hashing every checkpoint would be slow).
        """
        current, _ = self._pointer()
        entries = [self._base_manifest()]
        for number in self._stored_numbers():
            version = version_name(number)
            try:
                entries.append(self._read_manifest(version))
            except BadInputError as error:
                entries.append({"version": version, "error": str(error)})
        for entry in entries:
            entry["current"] = entry["version"] == current
            if entry["current"] and "error" not in entry:
                try:
                    self.verify(entry["version"], remembered=True)
                except BadInputError as error:
                    entry["error"] = str(error)
        return entries

    def to_json(self) -> dict[str, Any]:
        """``{"current": ..., "versions": [...], "problems": [...]}`` for ``assft models``.

        ``current`` is None when the pointer is damaged; ``problems`` says what is wrong with
        the current model, one line each (see :meth:`problems`).
        """
        current, problems = self._pointer_problems()
        versions = self.versions()
        for entry in versions:
            if entry["current"] and "error" in entry:
                problems.append(
                    f"the current model version {entry['version']} cannot be used: {entry['error']}"
                )
        return {"current": current, "versions": versions, "problems": problems}

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

    def has_head(self, version: str | None = None) -> bool:
        """Whether a version (None: the current one) segments the workspace's labels without a
        fine-tune: a fine-tuned version always does; ``v0`` when its preset has a head for
        exactly these labels. An encoder without a head (``foundation-demo``), or a preset of
        other labels, gets a new head on the first fine-tune; until then its prediction is noise
        (as :func:`assft.models.load_model` decides, without loading the weights)."""
        if version_number(check_version(version or self.current())) > 0:
            return True
        labels = tuple(int(v) for v in self.workspace.config.label_values)
        return _preset_segments(self.workspace.config.model, labels)

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

    def check_loads(self, version: str) -> None:
        """Check that a version can serve: complete, loadable, fitting and finite weights.

        The checkpoint's sha256 is the manifest's, it loads with ``weights_only=True``, it fits
        the workspace's preset and labels exactly, and no weight is NaN or infinite. ``v0``
        loads the preset's own weights.

        Raises:
            BadInputError: the first problem, naming the file.
        """
        model = self.load(check_version(version), device="cpu")
        bad = _non_finite(model.network.state_dict())
        if bad is not None:
            raise BadInputError(
                f"holds non-finite values (NaN or infinity) in {bad}: model version {version} "
                "diverged and cannot be used",
                self.checkpoint_path(version) or self.models_dir,
            )

    @contextlib.contextmanager
    def _pointer_change(self) -> Iterator[_PointerChange]:
        """One registry transaction for a pointer change: all of it happens, or none of it.

        Inside, a pointer left behind by a killed change is put back first (:meth:`recover`).
        The block writes its audit rows, manifests and finally the pointer; the commit
        follows. When anything raises, the transaction is rolled back and the files the block
        wrote are put back.
        """
        registry = self.workspace.registry
        change: _PointerChange | None = None
        try:
            with registry.transaction() as connection:
                change = _PointerChange(registry, connection)
                change.recovered = self._recover(change)
                yield change
                if any(path == self.pointer_path for path, _ in change.saved):
                    syncpoints.reach("model-pointer-moved")
        except BaseException:
            if change is not None:
                change.undo()
            raise

    def _recover(self, change: _PointerChange) -> str | None:
        """Put back what a pointer change killed before its commit left: a pointer the
        registry does not record, and manifests marked promoted without a recorded promotion.

        Returns:
            What was repaired, or None. A damaged pointer is left for :meth:`rollback`.
        """
        promoted = {
            (row.get("detail") or {}).get("version")
            for row in self.workspace.registry.audit_actions(("promote-model",), change.connection)
        }
        for number in self._stored_numbers():  # manifests of promotions never committed
            version = version_name(number)
            try:
                manifest = self._read_manifest(version)
            except BadInputError:
                continue
            if manifest.get("promoted") and "promoted_at" in manifest and version not in promoted:
                for key in ("promoted_at", "promote_reason"):
                    manifest.pop(key, None)
                manifest["promoted"] = False
                change.write_json(self.models_dir / version / MANIFEST_NAME, manifest)
        recorded = self.recorded_current(change.connection)
        pointer, problem = self._pointer()
        if problem is not None or pointer == recorded:
            return None
        note = (
            f"models/current named {pointer}, which no committed change made current (the "
            f"process was killed before its commit): put back to {recorded}"
        )
        change.audit("restore-model-pointer", {"version": recorded, "found": pointer})
        change.write_pointer(self.pointer_path, recorded)
        return note

    def recover(self) -> str | None:
        """Put back a pointer left by a pointer change that was killed before its commit.

        Returns:
            What was repaired (one line), or None when the pointer is as recorded.

        Raises:
            BadInputError: the registry cannot be written.
        """
        with self._pointer_change() as change:
            return change.recovered

    def promote(
        self,
        version: str,
        *,
        reason: str,
        expect_current: str | None = None,
        job: str | None = None,
    ) -> dict[str, Any]:
        """Make a version current because it passed the validation gate.

        In one registry transaction (see the module's description): the audit row
        ``promote-model`` (with the job), the manifest's ``promoted: true`` (with time and
        reason), then the pointer. With ``expect_current`` (the version the job started from
        and validated against) the version is promoted only when that version is still
        current; otherwise it is kept unpromoted: the audit row is ``register-model`` and the
        manifest's ``not_promoted_reason`` says why (e.g. someone rolled back meanwhile).

        Args:
            version: A stored version (or ``v0``).
            reason: Why, e.g. the gate's verdict; kept in the manifest and the audit trail.
            expect_current: Promote only if this version is still current.
            job: The fine-tuning job promoting it (recorded with the audit row).

        Returns:
            The version's manifest as now stored, with ``current``.

        Raises:
            BadInputError: unknown or damaged version, or a registry that cannot be written;
                nothing changed then.
        """
        self.verify(version)
        with self._pointer_change() as change:
            previous, problem = self._pointer()
            manifest = self.manifest(version)
            if expect_current is not None and previous != expect_current:
                why = (
                    f"the current model version pointer is damaged ({problem})"
                    if problem is not None
                    else f"the current version is {previous}, not {expect_current} that it was "
                    f"validated against (changed while it trained, e.g. by a rollback)"
                )
                note = f"not promoted: {why}; make it current with 'assft rollback' if wanted"
                change.audit(
                    "register-model",
                    {"version": version, "promoted": False, "reason": note, "job": job},
                )
                if version != BASE_VERSION:
                    manifest.update(promoted=False, not_promoted_reason=note)
                    change.write_json(self.models_dir / version / MANIFEST_NAME, manifest)
                return {**manifest, "current": False}
            change.audit(
                "promote-model",
                {"version": version, "previous": previous, "reason": reason, "job": job},
            )
            if version != BASE_VERSION:
                manifest.update(promoted=True, promoted_at=utc_now(), promote_reason=reason)
                manifest.pop("not_promoted_reason", None)
                change.write_json(self.models_dir / version / MANIFEST_NAME, manifest)
            change.write_pointer(self.pointer_path, version)
        return {**manifest, "current": True}

    def keep_unpromoted(self, version: str, *, reason: str, job: str | None = None) -> None:
        """Record that a job's version stays unpromoted (its gate failed): audit
        ``register-model``, so a resumed job does not decide again.

        Raises:
            BadInputError: the registry cannot be written.
        """
        with self._pointer_change() as change:
            change.audit(
                "register-model",
                {"version": version, "promoted": False, "reason": reason, "job": job},
            )

    def rollback(self, version: str) -> dict[str, Any]:
        """Make an existing version current again (older or newer), e.g. ``assft rollback``.

        The version must load (:meth:`check_loads`: complete, loadable with
        ``weights_only=True``, fitting the preset and labels, finite). A damaged pointer is
        repaired this way: the audit row then records what was wrong (``repaired``).
        ``promoted`` stays as it is; the audit trail records ``rolled_back_from``.

        Returns:
            The version's manifest with ``current``, ``rolled_back_from`` (None when the
            pointer was damaged) and ``repaired`` (the pointer's problem, or None).

        Raises:
            BadInputError: unknown or unusable version, or a registry that cannot be written;
                the pointer is unchanged.
        """
        self.check_loads(version)
        with self._pointer_change() as change:
            previous, problem = self._pointer()
            detail: dict[str, Any] = {"version": version, "rolled_back_from": previous}
            if problem is not None:
                detail["repaired"] = problem
            change.audit("rollback-model", detail)
            change.write_pointer(self.pointer_path, version)
        return {
            **self.manifest(version),
            "current": True,
            "rolled_back_from": previous,
            "repaired": problem,
        }

    # helpers -----------------------------------------------------------------------------

    @staticmethod
    def label_set_hash(labels: Mapping[str, str]) -> str:
        """Hash of a label snapshot: sha256 over sorted ``case:sha256`` lines.

        Args:
            labels: ``{case_id: sha256 of its stored label}``.
        """
        text = "".join(f"{case}:{digest}\n" for case, digest in sorted(labels.items()))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

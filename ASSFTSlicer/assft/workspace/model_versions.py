"""Versioned model checkpoints of a workspace (design.md, "models/"): which one is current.

:class:`ModelVersions` is a workspace's model versions: the stored ones
(:mod:`assft.workspace.version_store`: the folders, manifests, weights, and writing a new
version), the one ``models/current`` names, loading a version's model, and moving the pointer:
:meth:`ModelVersions.promote` does, once a validation gate has passed, and
:meth:`ModelVersions.rollback` moves it back (or forward) after checking that the weights load.

Moving the pointer is one step (:mod:`assft.workspace.version_pointer`). The audit row (naming
the job that promoted, if any), the manifest and ``models/current`` change inside one registry
transaction and the pointer moves last, just before the commit, so an error anywhere changes
nothing. Only a process killed between the pointer's move and the commit leaves a pointer that
the registry does not record; the next pointer change (a fine-tune, a rollback) puts it back to
the recorded version (:meth:`ModelVersions.recover`), and ``assft status`` and ``assft models``
report it meanwhile. Every pointer change takes the registry's write lock first, so a rollback
and a fine-tune's promotion never interleave; a promotion is made only if the current version is
still the one the job was validated against (``expect_current``), else the version is kept
unpromoted, with the reason in its manifest.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from typing import TYPE_CHECKING, Any

from assft.errors import BadInputError
from assft.workspace.files import utc_now
from assft.workspace.version_names import (
    BASE_VERSION,
    POINTER_ACTIONS,
    VERSION_PATTERN,
    check_version,
    parse_version,
    version_name,
    version_number,
)
from assft.workspace.version_pointer import PointerChange, pointer_transaction
from assft.workspace.version_store import MANIFEST_NAME, VersionStore, _non_finite

# The Slicer module lists and promotes versions in its own process, before PyTorch may be
# installed: torch and assft.models (torch) are imported only inside the methods that load weights.
if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from assft.models import LoadedModel

__all__ = ["BASE_VERSION", "VERSION_PATTERN", "ModelVersions"]

DECISION_ACTIONS = ("promote-model", "register-model")
"""Audit actions that record a fine-tune's decision about its version (promoted or kept)."""


@functools.lru_cache(maxsize=32)
def _preset_segments(model: str, labels: tuple[int, ...]) -> bool:
    """Whether preset ``model`` has a head for exactly ``labels``: read once per process (the
    panels ask on every refresh; an nnU-Net or bundle reference is parsed from its files)."""
    from assft.models import get_preset

    preset = get_preset(model)
    return bool(preset.has_head and tuple(preset.label_values) == labels)


class ModelVersions(VersionStore):
    """The model versions of one workspace: the stored ones, the current one, moving it.

    Args:
        workspace: The open workspace (its ``models_dir``, ``config.model``, registry).
    """

    def __repr__(self) -> str:
        return f"ModelVersions({str(self.models_dir)!r})"

    # the current version -----------------------------------------------------------------

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

    # loading -----------------------------------------------------------------------------

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

    # moving the pointer ------------------------------------------------------------------

    def _pointer_change(self) -> contextlib.AbstractContextManager[PointerChange]:
        """One registry transaction for a pointer change: all of it happens, or none of it.

        Inside, a pointer left behind by a killed change is put back first (:meth:`recover`).
        The block writes its audit rows, manifests and finally the pointer; the commit
        follows. When anything raises, the transaction is rolled back and the files the block
        wrote are put back (:func:`~assft.workspace.version_pointer.pointer_transaction`).
        """
        return pointer_transaction(self.workspace.registry, self.pointer_path, self._recover)

    def _recover(self, change: PointerChange) -> str | None:
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

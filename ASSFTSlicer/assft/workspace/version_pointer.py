"""The pointer transaction: ``models/current``, its manifests and its audit rows move together.

The audit rows, the manifests and ``models/current`` change inside one registry transaction
and the pointer moves last, just before the commit: an error anywhere (a locked or read-only
registry, a full disk) rolls the transaction back and puts the files back, so nothing changed.
What each change writes (a promotion, a rollback, a repair) is
:class:`assft.workspace.model_versions.ModelVersions`'s.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from assft.io.atomic import atomic_path
from assft.runtime import syncpoints
from assft.workspace.files import default_user, write_json_atomic
from assft.workspace.registry import CaseRegistry
from assft.workspace.version_names import check_version

__all__ = ["PointerChange", "pointer_transaction"]


class PointerChange:
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
        """What ``recover`` (:func:`pointer_transaction`) put back first, if anything."""

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


@contextlib.contextmanager
def pointer_transaction(
    registry: CaseRegistry, pointer_path: Path, recover: Callable[[PointerChange], str | None]
) -> Iterator[PointerChange]:
    """One registry transaction for a pointer change: all of it happens, or none of it.

    Inside, ``recover`` first puts back what a killed change left (its note is kept as
    :attr:`PointerChange.recovered`). The block writes its audit rows, manifests and finally
    the pointer (``pointer_path``); the commit follows. When anything raises, the transaction is
    rolled back and the files the block wrote are put back.
    """
    change: PointerChange | None = None
    try:
        with registry.transaction() as connection:
            change = PointerChange(registry, connection)
            change.recovered = recover(change)
            yield change
            if any(path == pointer_path for path, _ in change.saved):
                syncpoints.reach("model-pointer-moved")
    except BaseException:
        if change is not None:
            change.undo()
        raise

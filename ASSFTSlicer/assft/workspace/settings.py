"""Which value each setting of a ranking or a fine-tuning job takes: one resolver for all.

Precedence, highest first:

1. command-line flags (a flag left out is None and falls through);
2. a config file (``--config FILE``, or the JSON text of ``--config-json``; not both);
3. the workspace's settings (``assft.json``), through the dataclass's ``WORKSPACE_SETTINGS``;
4. the defaults of the config dataclass (:class:`~assft.query.config.QueryConfig`,
   :class:`~assft.training.config.FinetuneConfig`), the only place defaults are written.

Only the keys a layer sets take part: a config file that names ``weight`` leaves the workspace's
``budget`` in force. Nested sections (``dkd``, ``asd``) merge key by key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

from assft.errors import BadInputError

__all__ = ["read_config_file", "resolve_config"]


class _ConfigClass(Protocol):
    """A config dataclass: built from a dict by ``from_dict`` (unknown keys refused)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self: ...


C = TypeVar("C", bound=_ConfigClass)

COMMAND_LINE = "command line"


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The JSON object of a config file: only the keys it sets.

    Raises:
        BadInputError: the file is missing, unreadable, not JSON or not an object (names it).
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadInputError(f"cannot read the configuration: {error}", path) from None
    if not isinstance(data, dict):
        raise BadInputError("the configuration must be a JSON object", path)
    return data


def _given(values: Mapping[str, Any]) -> dict[str, Any]:
    """The values that were given: None (a flag left out) and empty sections dropped."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            value = _given(value)
            if not value:
                continue
        if value is not None:
            out[key] = value
    return out


def _merge(low: dict[str, Any], high: Mapping[str, Any]) -> dict[str, Any]:
    """``low`` overridden by ``high``, sections (dicts) merged key by key."""
    out = dict(low)
    for key, value in high.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _check_types(kind: type, data: Mapping[str, Any], origin: Mapping[str, str]) -> None:
    """Refuse a number or switch of the wrong JSON type, naming where it came from.

    The dataclasses compare and compute with their fields, so ``"budget": "ten"`` would
    otherwise fail later as an internal error rather than as bad input.
    """
    for f in fields(kind):
        if f.name not in data or f.default is MISSING or f.default is None:
            continue
        value, expected = data[f.name], type(f.default)
        if expected is bool:
            ok = isinstance(value, bool)
        elif expected is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif expected is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            continue
        if not ok:
            where = origin.get(f.name, COMMAND_LINE)
            raise BadInputError(
                f"{f.name} must be {'true or false' if expected is bool else 'a number'}, "
                f"got {value!r}",
                None if where == COMMAND_LINE else where,
            )


def resolve_config(
    kind: type[C],
    *,
    flags: Mapping[str, Any] | None = None,
    config_file: str | Path | None = None,
    config_json: str | None = None,
    settings: Mapping[str, Any] | None = None,
    settings_file: str | Path | None = None,
) -> C:
    """Build a config from every layer, flags first (see the module docstring).

    Args:
        kind: the config dataclass (its ``WORKSPACE_SETTINGS`` maps settings keys to fields).
        flags: field -> value of the command line; None where a flag was left out. Sections
            are dicts (``{"dkd": {"gap": "bn"}}``).
        config_file: a JSON file of fields (``--config``).
        config_json: the same as JSON text (``--config-json``, the detached job's relaunch).
        settings: the workspace's settings (``assft.json``'s ``settings``).
        settings_file: the file ``settings`` came from, named in errors.

    Raises:
        BadInputError: both a config file and config JSON, an unreadable file, an unknown field,
            or a bad value (naming the file it came from, where it came from a file).
    """
    if config_file and config_json:
        raise BadInputError(
            "--config and --config-json cannot be given together: pass one configuration"
        )
    layers: list[tuple[Mapping[str, Any], str]] = []
    keys: Mapping[str, str] = getattr(kind, "WORKSPACE_SETTINGS", {})
    settings = settings or {}
    layers.append(
        (
            {field: settings[key] for key, field in keys.items() if key in settings},
            str(settings_file) if settings_file else "the workspace settings",
        )
    )
    if config_file:
        layers.append((read_config_file(config_file), str(config_file)))
    elif config_json:
        try:
            data = json.loads(config_json)
        except json.JSONDecodeError as error:
            raise BadInputError(f"--config-json is not valid JSON: {error}") from None
        if not isinstance(data, dict):
            raise BadInputError("--config-json must be a JSON object")
        layers.append((data, "--config-json"))
    layers.append((_given(flags or {}), COMMAND_LINE))

    known = {f.name for f in fields(kind)} if is_dataclass(kind) else None
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for values, source in layers:
        unknown: list[str] = sorted(set(values) - known) if known is not None else []
        if unknown:
            raise BadInputError(
                f"unknown {kind.__name__} field(s) {unknown}; known: {sorted(known or ())}",
                None if source == COMMAND_LINE else source,
            )
        merged = _merge(merged, values)
        origin.update(dict.fromkeys(values, source))
    if is_dataclass(kind):
        _check_types(kind, merged, origin)
    try:
        return kind.from_dict(merged)
    except BadInputError as error:
        if error.path is None:
            # Name the file that set the field the message is about: the dataclasses' messages
            # begin with the field ("budget must be ...") or "unknown <section> field(s)".
            for key, source in origin.items():
                pattern = rf"({re.escape(key)}\b|unknown {re.escape(key)} field)"
                if source != COMMAND_LINE and re.match(pattern, str(error)):
                    raise BadInputError(str(error), source) from None
        raise

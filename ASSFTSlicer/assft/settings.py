"""Which value each setting of a ranking or a fine-tuning job takes: one resolver for all.

Precedence, highest first:

1. command-line flags (a flag left out is None and falls through);
2. a config file (``--config FILE``, or the JSON text of ``--config-json``; not both);
3. the workspace's settings (``assft.json``), through the dataclass's ``WORKSPACE_SETTINGS``;
4. the defaults of the config dataclass (:class:`~assft.query.config.QueryConfig`,
   :class:`~assft.training.config.FinetuneConfig`), the only place defaults are written.

Only the keys a layer sets take part: a config file that names ``weight`` leaves the workspace's
``budget`` in force. Nested sections (``dkd``, ``asd``) merge key by key.

The merged values are checked once, by the config class (types, ranges and finiteness declared on
its fields, :mod:`assft.validation`), before anything is created; a refusal names the file or
the flag the value came from, and the field. Unknown keys are refused layer by layer (a typo
would otherwise be ignored), with the closest known key suggested: a config file's fields, and
the workspace's ``settings`` keys (those of every config class's ``WORKSPACE_SETTINGS``).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

from assft.errors import BadInputError
from assft.query.config import QueryConfig
from assft.training.config import FinetuneConfig
from assft.validation import ConfigFieldError, refuse_unknown

__all__ = ["flag_of", "read_config_file", "resolve_config", "settings_keys"]


class _ConfigClass(Protocol):
    """A config dataclass: built from a dict by ``from_dict`` (unknown keys refused)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self: ...


C = TypeVar("C", bound=_ConfigClass)

COMMAND_LINE = "command line"


MAX_CONFIG_BYTES = 1 << 20
"""A configuration file larger than this is refused unread (one setting is a few bytes)."""


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The JSON object of a config file: only the keys it sets.

    Raises:
        BadInputError: the file is missing, unreadable, not JSON or not an object (names it).
    """
    file = Path(path)
    if file.exists() and not file.is_file():
        raise BadInputError("is not a regular file: the configuration must be a JSON file", path)
    try:
        if file.stat().st_size > MAX_CONFIG_BYTES:
            raise BadInputError(
                f"holds {file.stat().st_size} bytes, more than a configuration's "
                f"{MAX_CONFIG_BYTES} (MAX_CONFIG_BYTES)",
                path,
            )
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadInputError(f"cannot read the configuration: {error}", path) from None
    except RecursionError:
        raise BadInputError("is nested too deeply to be a configuration", path) from None
    except ValueError as error:  # e.g. an integer of more digits than Python converts
        raise BadInputError(f"holds a value no setting can take ({error})", path) from None
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


def _flatten(values: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted paths a layer sets: ``{"dkd": {"gap": "bn"}}`` -> ``["dkd", "dkd.gap"]``."""
    paths = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        paths.append(path)
        if isinstance(value, Mapping):
            paths += _flatten(value, f"{path}.")
    return paths


def settings_keys() -> dict[str, tuple[type, str]]:
    """Every key the workspace's ``settings`` may hold: key -> (config class, its field)."""
    keys: dict[str, tuple[type, str]] = {}
    for kind in (QueryConfig, FinetuneConfig):
        for key, name in kind.WORKSPACE_SETTINGS.items():
            keys[key] = (kind, name)
    return keys


def _settings_layer(
    kind: type, settings: Mapping[str, Any], source: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """The fields ``settings`` sets on ``kind``, and how the file spells each (its key).

    Raises:
        BadInputError: an unknown key (a typo), naming the file and the known keys.
    """
    known = settings_keys()
    unknown = sorted(str(key) for key in settings if key not in known)
    if unknown:
        guesses = [m for key in unknown for m in difflib.get_close_matches(key, list(known), n=1)]
        hint = f" (did you mean {', '.join(guesses)}?)" if guesses else ""
        raise BadInputError(
            f"unknown setting(s) {unknown} in settings{hint}; known: {', '.join(sorted(known))}",
            source,
        )
    values: dict[str, Any] = {}
    labels: dict[str, str] = {}
    for key, name in getattr(kind, "WORKSPACE_SETTINGS", {}).items():
        if key in settings:
            values[name] = settings[key]
            labels[name] = f"settings.{key}"
    return values, labels


def flag_of(path: str) -> str:
    """The command-line flag of a field: ``lambda_div`` -> ``--lambda-div``, ``dkd.gap`` ->
    ``--gap`` (the flags of a section's fields are named after the field alone)."""
    return "--" + path.rsplit(".", 1)[-1].replace("_", "-")


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

    Every value is checked by the config class (its declared types and ranges, finiteness,
    unknown keys): the checks run before anything is created, and a refusal names where the
    value came from, as ``<file>: <field> <problem>`` (``assft.json: settings.budget must be an
    integer, got true``), or ``<flag>: <field> <problem>`` for a flag.

    Args:
        kind: the config dataclass (its ``WORKSPACE_SETTINGS`` maps settings keys to fields).
        flags: field -> value of the command line; None where a flag was left out. Sections
            are dicts (``{"dkd": {"gap": "bn"}}``).
        config_file: a JSON file of fields (``--config``).
        config_json: the same as JSON text (``--config-json``: a job's recorded command, the
            speed benchmark).
        settings: the workspace's settings (``assft.json``'s ``settings``).
        settings_file: the file ``settings`` came from, named in errors.

    Raises:
        BadInputError: both a config file and config JSON, an unreadable file, an unknown field
            or setting, or a bad value (naming the file or flag it came from).
    """
    if config_file and config_json:
        raise BadInputError(
            "--config and --config-json cannot be given together: pass one configuration"
        )
    settings_source = str(settings_file) if settings_file else "the workspace settings"
    settings_values, settings_labels = _settings_layer(kind, settings or {}, settings_source)
    layers: list[tuple[Mapping[str, Any], str]] = [(settings_values, settings_source)]
    if config_file:
        layers.append((read_config_file(config_file), str(config_file)))
    elif config_json:
        try:
            data = json.loads(config_json)
        except json.JSONDecodeError as error:
            raise BadInputError(f"--config-json is not valid JSON: {error}") from None
        except RecursionError:
            raise BadInputError(
                "--config-json is nested too deeply to be a configuration"
            ) from None
        if not isinstance(data, dict):
            raise BadInputError("--config-json must be a JSON object")
        layers.append((data, "--config-json"))
    layers.append((_given(flags or {}), COMMAND_LINE))

    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}  # dotted path -> the source that set it last
    for values, source in layers:
        try:
            refuse_unknown(kind, values)
        except ConfigFieldError as error:
            raise _named(error, source) from None
        merged = _merge(merged, values)
        origin.update(dict.fromkeys(_flatten(values), source))
    try:
        return kind.from_dict(merged)
    except ConfigFieldError as error:
        # Name the source of the field (or of the section holding it) the refusal is about.
        path = error.field
        while path not in origin and "." in path:
            path = path.rsplit(".", 1)[0]
        came_from = origin.get(path)
        if came_from is None:
            raise
        label = settings_labels.get(error.field) if came_from == settings_source else None
        raise _named(error, came_from, label) from None


def _named(error: ConfigFieldError, source: str, label: str | None = None) -> ConfigFieldError:
    """``error`` naming its source: the file, or for the command line the field's flag."""
    return error.named(flag_of(error.field) if source == COMMAND_LINE else source, label)

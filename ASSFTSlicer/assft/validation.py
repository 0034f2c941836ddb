"""Config fields declared once: each field's type, range and finiteness, checked by one function.

A config dataclass (:class:`~assft.query.config.QueryConfig`,
:class:`~assft.training.config.FinetuneConfig`...) writes each field as::

    budget: int = setting(5, ge=1)
    weight: float = setting(0.5, ge=0.0, le=1.0)
    patch_size: tuple[int, int, int] | None = setting(None, ge=1)

and calls :func:`validate` in ``__post_init__``. The *type* is the annotation, the *range* the
bounds given to :func:`setting`; every ``float`` must also be finite (NaN and infinities are
refused, as JSON's ``NaN`` and ``Infinity`` or ``--lambda-div nan`` would give them). The types
understood:

- ``bool``: ``true`` or ``false`` only;
- ``int``: an integer, never a bool (``true`` is not 1) nor a float (``2.0``);
- ``float``: an integer or a float (not a bool), finite; stored as a float;
- a ``str`` enum: one of its values;
- ``tuple[int, int, int]``: a list or tuple of that many values, each checked (and bounded);
- a nested config dataclass (a section, e.g. ``dkd``): an object of its fields, built by
  :func:`from_dict` (unknown keys refused);
- ``X | None``: None, or an ``X``.

A refusal is a :class:`ConfigFieldError`: a :class:`~assft.errors.BadInputError` (exit code 2)
that names the field (dotted inside a section: ``dkd.prototypes``), so that
:func:`assft.settings.resolve_config` can also name the file or flag it came from.
The module is pure Python: the Slicer module imports the configs without torch or pydantic.
"""

from __future__ import annotations

import difflib
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import Field, asdict, dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Self, TypeVar

from assft.errors import BadInputError

__all__ = [
    "JsonConfig",
    "MAX_RADIUS",
    "MAX_SEED",
    "Bounds",
    "ConfigFieldError",
    "check_value",
    "config_keys",
    "from_dict",
    "refuse_unknown",
    "setting",
    "show",
    "validate",
]

T = TypeVar("T")

MAX_SEED = 2**32 - 1
"""Largest seed: 32 bits (numpy's legacy generators and MONAI's transforms take no more)."""
MAX_RADIUS = 64
"""Largest ROI dilation radius in voxels (a wider one covers any patch, and costs for nothing)."""

# Upper bounds of the work-size settings: checked before anything is created, so that a value in
# the millions is refused in one line rather than hanging a job that holds the workspace lock.
MAX_STEPS = 1_000_000
"""Most optimisation steps a stage may take (at 1 s a step on a CPU: eleven days)."""
MAX_EPOCHS = 10_000
"""Most passes over the labeled patches that set a stage's steps."""
MAX_BATCH = 256
"""Most patches a step may take."""
MAX_PATCH = 512
"""Largest patch edge in voxels (the model grid itself is at most 512^3)."""
MAX_BATCH_VOXELS = 2**27
"""Most voxels one step may hold, patches times their size (128^3 x 64: far beyond any GPU)."""
MAX_RATE = 1e6
"""Largest learning rate, rate scale or weight decay: the optimisers compute in float32, where
1e39 is out of range; any rate near this bound already diverges at the first step."""
MAX_WEIGHT = 1e6
"""Largest weight of a loss term (distillation): far above any that trains."""
MAX_MC_SAMPLES = 100
"""Most MC-dropout passes a case may get (the epistemic baseline)."""
MAX_PROTOTYPES = 10_000
"""Most pool prototypes the knowledge gap's prototype estimator may use."""

_METADATA_KEY = "assft.bounds"


@dataclass(frozen=True)
class Bounds:
    """The range of a number (or of each number of a tuple); None: no bound on that side."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    cap: float | None = None

    def contains(self, value: float) -> bool:
        return not (
            (self.cap is not None and value > self.cap)
            or (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
            or (self.lt is not None and value >= self.lt)
        )

    def above_cap(self, value: Any) -> bool:
        """Whether a number (or any number of a list) exceeds the safety cap."""
        if self.cap is None:
            return False
        values = value if isinstance(value, (list, tuple)) else [value]
        return any(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > self.cap for v in values
        )

    def describe(self) -> str:
        """``at least 1``, ``between 0 and 1``, ``above 0``, ``at least 0 and below 1``..."""
        if self.ge is not None and self.le is not None:
            return f"between {_number(self.ge)} and {_number(self.le)}"
        parts = []
        if self.ge is not None:
            parts.append(f"at least {_number(self.ge)}")
        elif self.gt is not None:
            parts.append(f"above {_number(self.gt)}")
        if self.le is not None:
            parts.append(f"at most {_number(self.le)}")
        elif self.lt is not None:
            parts.append(f"below {_number(self.lt)}")
        return " and ".join(parts)


def setting(
    default: T,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    cap: float | None = None,
) -> T:
    """A config field with its default and its range (the type is the field's annotation).

    Args:
        default: the default value (immutable: a number, a bool, an enum member, a tuple, None).
        ge, gt, le, lt: the value (each value of a tuple) must be >=, >, <=, < these.
        cap: a safety limit on a work size (steps, batch, patch): not part of the field's
            meaning, so the usual message leaves it out; a value above it is refused with
            ``must be at most CAP``.
    """
    bounds = Bounds(ge=ge, gt=gt, le=le, lt=lt, cap=cap)
    made: T = field(default=default, metadata={_METADATA_KEY: bounds})
    return made


class ConfigFieldError(BadInputError):
    """A config value refused: names the field (``dkd.gap``) and the problem, in one line.

    Attributes:
        field: the field's dotted name, as the config class spells it.
        problem: what is wrong, e.g. ``must be at least 1, got 0``.
        label: how the message names the field (the field, or e.g. ``settings.finetune_mode``
            where the value came from a key of another name).
    """

    def __init__(
        self,
        field: str,
        problem: str,
        path: str | None = None,
        *,
        label: str | None = None,
        message: str | None = None,
    ) -> None:
        self.field = field
        self.problem = problem
        self.label = label or field
        self.custom_message = message
        super().__init__(message or f"{self.label} {problem}", path)

    def named(self, path: str | None, label: str | None = None) -> ConfigFieldError:
        """The same refusal, naming the file (or flag) ``path`` and the field as ``label``."""
        return ConfigFieldError(
            self.field,
            self.problem,
            path,
            label=label or self.label,
            message=self.custom_message,
        )

    def within(self, section: str) -> ConfigFieldError:
        """The same refusal inside ``section`` (``prototypes`` -> ``dkd.prototypes``)."""
        return ConfigFieldError(
            f"{section}.{self.field}",
            self.problem,
            self.path,
            label=f"{section}.{self.label}",
            message=self.custom_message,  # an unknown key's message names its section itself
        )


def show(value: Any) -> str:
    """A value as its JSON text (``true``, ``null``, ``"ten"``, ``[0, 0, 0]``); floats as Python
    writes them (``nan``, ``inf``: what ``--lambda-div nan`` was given)."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Enum):
        return show(value.value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(item) for item in value) + "]"
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(kind: type) -> dict[str, Any]:
    """The resolved annotations of a config class (computed once per class)."""
    if kind not in _HINTS:
        _HINTS[kind] = typing.get_type_hints(kind)
    return _HINTS[kind]


def _bounds(f: Field[Any]) -> Bounds:
    bounds = f.metadata.get(_METADATA_KEY)
    return bounds if isinstance(bounds, Bounds) else Bounds()


def _optional(hint: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (hint, False)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
    return hint, False


def _fail(name: str, problem: str) -> typing.NoReturn:
    raise ConfigFieldError(name, problem)


def _check_number(value: Any, kind: type, name: str, bounds: Bounds) -> Any:
    numbers = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, numbers):
        _fail(name, f"must be {'an integer' if kind is int else 'a number'}, got {show(value)}")
    if kind is float:
        try:
            value = float(value)
        except OverflowError:  # an integer beyond any float
            value = math.inf
        if not math.isfinite(value):
            _fail(name, f"must be a finite number, got {show(value)}")
    if bounds.above_cap(value):
        _fail(
            name, f"must be at most {_number(bounds.cap or 0)} (a safety limit), got {show(value)}"
        )
    if not bounds.contains(value):
        _fail(name, f"must be {bounds.describe()}, got {show(value)}")
    return value


def check_value(value: Any, hint: Any, name: str, bounds: Bounds | None = None) -> Any:
    """``value`` checked against the type ``hint`` and ``bounds``, converted where needed
    (a float field's integer to a float, an enum's string to its member, a list to a tuple, a
    section's object to its dataclass).

    Raises:
        ConfigFieldError: the value does not fit (names ``name``).
    """
    bounds = bounds or Bounds()
    hint, optional = _optional(hint)
    if value is None:
        if optional:
            return None
        # The message says what is expected, as for any other wrong value.
    if hint is bool:
        if not isinstance(value, bool):
            _fail(name, f"must be true or false, got {show(value)}")
        return value
    if hint is int or hint is float:
        return _check_number(value, hint, name, bounds)
    if hint is str:
        if not isinstance(value, str):
            _fail(name, f"must be a string, got {show(value)}")
        return value
    if isinstance(hint, type) and issubclass(hint, Enum):
        choices = ", ".join(str(member.value) for member in hint)
        if isinstance(value, hint):
            return value
        try:
            if not isinstance(value, str):
                raise ValueError(value)
            return hint(value)
        except ValueError:
            _fail(name, f"must be one of {choices}, got {show(value)}")
    if typing.get_origin(hint) is tuple:
        kinds = typing.get_args(hint)
        count = {1: "one", 2: "two", 3: "three"}.get(len(kinds), str(len(kinds)))
        item = "integers" if all(k is int for k in kinds) else "numbers"
        range_text = bounds.describe()
        if bounds.above_cap(value):
            range_text += f"{' and ' if range_text else ''}at most {_number(bounds.cap or 0)}"
        what = f"{count} {item}" + (f" each {range_text}" if range_text else "")
        if not isinstance(value, (list, tuple)) or len(value) != len(kinds):
            _fail(name, f"must be {what}, got {show(value)}")
        try:
            return tuple(
                check_value(item, kind, name, bounds)
                for item, kind in zip(value, kinds, strict=True)
            )
        except ConfigFieldError:
            _fail(name, f"must be {what}, got {show(value)}")
    if isinstance(hint, type) and is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            _fail(name, f"must be an object of {', '.join(config_keys(hint))}, got {show(value)}")
        try:
            refuse_unknown(hint, value, name)
            return hint(**value)
        except ConfigFieldError as error:
            raise error.within(name) from None
    raise TypeError(f"config field {name}: unsupported annotation {hint!r}")


def validate(config: Any) -> None:
    """Check and convert every field of the dataclass instance ``config`` in place.

    Call it first in ``__post_init__``; checks across fields follow it there.

    Raises:
        ConfigFieldError: the first field whose value does not fit its declaration.
    """
    hints = _hints(type(config))
    for f in fields(config):
        value = check_value(getattr(config, f.name), hints[f.name], f.name, _bounds(f))
        object.__setattr__(config, f.name, value)


def config_keys(kind: type) -> list[str]:
    """The field names of a config dataclass, sorted."""
    return sorted(f.name for f in fields(kind))


def _suggest(unknown: list[str], known: list[str]) -> str:
    guesses = [match for key in unknown for match in difflib.get_close_matches(key, known, n=1)]
    return f" (did you mean {', '.join(guesses)}?)" if guesses else ""


def refuse_unknown(kind: type, data: Mapping[str, Any], title: str | None = None) -> None:
    """Refuse keys of ``data`` (sections included) that are not fields of ``kind``.

    Raises:
        ConfigFieldError: names the unknown key(s), the closest known keys and all known ones.
    """
    known = config_keys(kind)
    unknown = sorted(str(key) for key in data if key not in known)
    if unknown:
        name = title or kind.__name__
        raise ConfigFieldError(
            unknown[0],
            "is unknown",
            message=f"unknown {name} field(s) {unknown}{_suggest(unknown, known)}; "
            f"known: {', '.join(known)}",
        )
    hints = _hints(kind)
    for key, value in data.items():
        section, _ = _optional(hints[key])
        if isinstance(value, Mapping) and isinstance(section, type) and is_dataclass(section):
            try:
                refuse_unknown(section, value, key)
            except ConfigFieldError as error:
                raise ConfigFieldError(
                    f"{key}.{error.field}", error.problem, message=error.custom_message
                ) from None


def from_dict(kind: type[T], data: Any) -> T:
    """A config dataclass from a JSON object: unknown keys refused, every value checked.

    Raises:
        ConfigFieldError: not an object, an unknown key, or a value that does not fit.
    """
    if not isinstance(data, Mapping):
        raise BadInputError(f"a {kind.__name__} must be a JSON object, got {show(data)}")
    refuse_unknown(kind, data)
    made: T = kind(**data)
    return made


class JsonConfig:
    """JSON in and out for a config dataclass whose ``__post_init__`` calls :func:`validate`.

    A config file is a JSON object of fields (``to_dict``'s form); enums are written as their
    values. A refusal names the file and the field.
    """

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (enums as their string values)."""
        if not is_dataclass(self):
            raise TypeError(f"{type(self).__name__} is not a dataclass")
        return json.loads(json.dumps(asdict(self), default=lambda v: v.value))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Build from a dict such as :meth:`to_dict` gives; unknown keys are refused."""
        return from_dict(cls, data)

    @classmethod
    def from_file(cls, path: str | Path) -> Self:
        """Read a JSON file written by :meth:`to_dict`.

        Raises:
            BadInputError: the file cannot be read, is not JSON, or holds a bad field (named).
        """
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise BadInputError(f"cannot read the configuration: {error}", path) from error
        except RecursionError:
            raise BadInputError("is nested too deeply to be a configuration", path) from None
        try:
            return cls.from_dict(data)
        except ConfigFieldError as error:
            raise error.named(str(path)) from None

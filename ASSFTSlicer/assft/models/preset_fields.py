"""Typed access to a preset's JSON objects (:class:`Fields`): each field checked for its kind,
and a missing or malformed one refused with a message naming the preset and the field."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar, overload

from assft.errors import BadInputError

__all__ = ["Fields", "enum_field"]


_Number = TypeVar("_Number", int, float)
_Enum = TypeVar("_Enum", bound=StrEnum)


class Fields:
    """Typed access to a JSON object, with messages naming the preset and the field."""

    def __init__(self, data: Any, source: Path | None, where: str) -> None:
        self.source = source
        self.where = where
        if not isinstance(data, dict):
            self.fail("", "must be a JSON object")
        self.data: dict[str, Any] = data

    def fail(self, key: str, problem: str) -> NoReturn:
        place = f"{self.where}.{key}" if key else self.where
        raise BadInputError(f"{place} {problem}", self.source)

    def get(
        self, key: str, kinds: type | tuple[type, ...], *, default: Any = ..., none: bool = False
    ) -> Any:
        if key not in self.data:
            if default is ...:
                self.fail(key, "is missing")
            return default
        value = self.data[key]
        if value is None and none:
            return None
        if isinstance(value, bool) and bool not in _as_tuple(kinds):
            self.fail(key, f"must be {_kind_names(kinds)}, not {value!r}")
        if not isinstance(value, kinds):
            self.fail(key, f"must be {_kind_names(kinds)}, not {value!r}")
        return value

    @overload
    def triple(
        self, key: str, kind: type[_Number], *, none: Literal[False] = False
    ) -> tuple[_Number, _Number, _Number]: ...

    @overload
    def triple(
        self, key: str, kind: type[_Number], *, none: bool
    ) -> tuple[_Number, _Number, _Number] | None: ...

    def triple(
        self, key: str, kind: type[_Number], *, none: bool = False
    ) -> tuple[_Number, _Number, _Number] | None:
        value = self.get(key, list, none=none)
        if value is None:
            return None
        numbers = (int,) if kind is int else (int, float)
        if len(value) != 3 or not all(
            isinstance(v, numbers) and not isinstance(v, bool) and v > 0 for v in value
        ):
            self.fail(key, f"must be three positive {'integers' if kind is int else 'numbers'}")
        return (kind(value[0]), kind(value[1]), kind(value[2]))


def _as_tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _kind_names(kinds: type | tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list",
        dict: "an object",
    }
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kinds))


def enum_field(fields: Fields, key: str, enum: type[_Enum], default: str | None = None) -> _Enum:
    value = fields.get(key, str, default=default)
    try:
        return enum(value)
    except ValueError:
        choices = ", ".join(member.value for member in enum)
        fields.fail(key, f"is {value!r}; expected one of {choices}")

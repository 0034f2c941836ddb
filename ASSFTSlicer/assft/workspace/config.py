"""The workspace configuration (``assft.json``): label names, values and colors, model, settings."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assft.errors import BadInputError
from assft.workspace.files import write_text_atomic

__all__ = [
    "CONFIG_FILE_NAME",
    "CONFIG_VERSION",
    "DEFAULT_LABEL_NAMES",
    "DEFAULT_SETTINGS",
    "LABEL_PALETTE",
    "LabelInfo",
    "WorkspaceConfig",
    "check_labeled_structures",
    "make_labels",
    "parse_structures",
]

CONFIG_FILE_NAME = "assft.json"


def enclosing_workspace(path: str | Path) -> Path | None:
    """The workspace folder that holds ``path`` (``path`` itself or a folder above it with an
    ``assft.json``), or None. Nothing is written into another workspace's folders."""
    resolved = Path(path).expanduser().resolve()
    for folder in (resolved, *resolved.parents):
        if (folder / CONFIG_FILE_NAME).is_file():
            return folder
    return None


CONFIG_VERSION = 1
MAX_LABEL_VALUE = 65535

DEFAULT_LABEL_NAMES: dict[int, str] = {1: "foreground"}
"""Labels of a workspace created without label names."""

DEFAULT_SETTINGS: dict[str, Any] = {}
"""Settings of a new workspace: none. The defaults live in the config dataclasses (QueryConfig,
FinetuneConfig), so a value written here overrides them for this workspace (e.g. ``"budget": 8``,
``"strategy": "dkd"``, ``"finetune_mode": "all"``; each dataclass's ``WORKSPACE_SETTINGS`` names
the keys it reads) and flags or a config file override it
(``assft.settings.resolve_config``)."""

LABEL_PALETTE: tuple[tuple[float, float, float], ...] = (
    (0.90, 0.30, 0.24),
    (0.20, 0.60, 0.86),
    (0.18, 0.80, 0.44),
    (0.95, 0.77, 0.06),
    (0.61, 0.35, 0.71),
    (0.90, 0.49, 0.13),
    (0.10, 0.74, 0.61),
    (0.91, 0.12, 0.55),
    (0.58, 0.65, 0.65),
    (0.55, 0.27, 0.07),
)
"""Colors (RGB in 0..1) given to labels in value order when none is set."""


@dataclass
class LabelInfo:
    """One foreground label of the workspace (background 0 is implicit).

    Attributes:
        value: Voxel value in the label maps, 1..65535.
        name: Structure name shown to the clinician.
        color: RGB in 0..1.
    """

    value: int
    name: str
    color: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form ``{"value", "name", "color"}``."""
        return {"value": self.value, "name": self.name, "color": list(self.color)}

    @classmethod
    def from_dict(cls, data: Any) -> LabelInfo:
        """Build from the JSON form, checking every field.

        Raises:
            ValueError: a field is missing or has the wrong type or range.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a label must be an object, got {data!r}")
        value, name, color = data.get("value"), data.get("name"), data.get("color")
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"label value {value!r} is not an integer")
        if not 1 <= value <= MAX_LABEL_VALUE:
            raise ValueError(f"label value {value} is outside 1..{MAX_LABEL_VALUE}")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"label {value} has no name")
        if (
            not isinstance(color, (list, tuple))
            or len(color) != 3
            or not all(isinstance(c, (int, float)) and 0 <= c <= 1 for c in color)
        ):
            raise ValueError(f"label {value} color {color!r} is not three numbers in 0..1")
        return cls(value, name, (float(color[0]), float(color[1]), float(color[2])))


def make_labels(
    label_names: dict[int, str] | None = None,
    colors: dict[int, tuple[float, float, float]] | None = None,
) -> list[LabelInfo]:
    """Build the label list from names, with palette colors where none is given.

    Args:
        label_names: ``{value: name}``; :data:`DEFAULT_LABEL_NAMES` when None.
        colors: Optional ``{value: (r, g, b)}``.

    Returns:
        Labels sorted by value.

    Raises:
        BadInputError: a value is 0, negative or above 65535, a name is empty or repeated.
    """
    label_names = dict(DEFAULT_LABEL_NAMES if label_names is None else label_names)
    colors = colors or {}
    if not label_names:
        raise BadInputError("no label names given: at least one foreground label is needed")
    labels: list[LabelInfo] = []
    for index, value in enumerate(sorted(label_names)):
        name = label_names[value]
        color = colors.get(value, LABEL_PALETTE[index % len(LABEL_PALETTE)])
        try:
            labels.append(LabelInfo.from_dict({"value": value, "name": name, "color": color}))
        except ValueError as error:
            raise BadInputError(f"bad label names: {error} (background 0 is implicit)") from None
    names = [label.name for label in labels]
    if len(set(names)) != len(names):
        raise BadInputError(f"label names must differ, got {names}")
    return labels


def check_labeled_structures(values: Any, label_values: list[int]) -> list[int]:
    """The labeled structures, sorted, or a ValueError that says what is wrong with them."""
    if not isinstance(values, list) or not values:
        raise ValueError(f"'labeled_structures' must be a non-empty list, got {values!r}")
    if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise ValueError(f"'labeled_structures' must list label values, got {values!r}")
    unknown = sorted(set(values) - set(label_values))
    if unknown:
        raise ValueError(
            f"'labeled_structures' names {unknown}, which are not label values of this "
            f"workspace ({label_values})"
        )
    return sorted(set(values))


def parse_structures(
    text: str, label_names: dict[int, str], flag: str = "--labeled-structures"
) -> list[int]:
    """``"liver,2"`` -> label values: each item a structure's name or its value (``flag``
    names the option in the error).

    Raises:
        BadInputError: an item names no structure (the known ones are listed).
    """
    by_name = {name.lower(): value for value, name in label_names.items()}
    values: list[int] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item.isdigit() and int(item) in label_names:
            values.append(int(item))
        elif item.lower() in by_name:
            values.append(by_name[item.lower()])
        else:
            known = ", ".join(f"{v} ({n})" for v, n in sorted(label_names.items()))
            raise BadInputError(f"{flag}: {item!r} is not a structure of the model; known: {known}")
    if not values:
        raise BadInputError(f"{flag}: name at least one structure")
    return sorted(set(values))


@dataclass
class WorkspaceConfig:
    """Everything ``assft.json`` holds.

    Attributes:
        labels: Foreground labels (background 0 is never listed).
        model: Model preset name, or the path of a preset JSON file.
        settings: This workspace's overrides of the config dataclasses' defaults (budget,
            strategy, finetune_mode; see :data:`DEFAULT_SETTINGS`).
        version: Format version of the file.
        labeled_structures: The label values the clinicians label and correct, when they label
            only some of the model's structures (a lab that corrects only the liver of a
            117-structure model); None: all of them. A fine-tune learns the others from the
            version it starts from (:mod:`assft.training.partial_labels`).
    """

    labels: list[LabelInfo]
    model: str = "demo"
    settings: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SETTINGS))
    version: int = CONFIG_VERSION
    labeled_structures: list[int] | None = None

    def __post_init__(self) -> None:
        if self.labeled_structures is not None:
            self.labeled_structures = check_labeled_structures(
                self.labeled_structures, [label.value for label in self.labels]
            )

    @property
    def label_values(self) -> list[int]:
        """Foreground label values, sorted."""
        return sorted(label.value for label in self.labels)

    @property
    def labeled_values(self) -> list[int]:
        """The label values clinicians label: :attr:`labeled_structures`, or every one."""
        return list(self.labeled_structures or self.label_values)

    @property
    def partially_labeled(self) -> bool:
        """Clinicians label only some of the structures (see :attr:`labeled_structures`)."""
        return self.labeled_values != self.label_values

    @property
    def label_names(self) -> dict[int, str]:
        """``{value: name}`` of the foreground labels, by value."""
        return {label.value: label.name for label in sorted(self.labels, key=lambda x: x.value)}

    def describe_labels(self) -> str:
        """Human list of the labels, e.g. ``"1 (grey matter), 2 (white matter)"``."""
        return ", ".join(f"{value} ({name})" for value, name in self.label_names.items())

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form."""
        document: dict[str, Any] = {
            "version": self.version,
            "labels": [label.to_dict() for label in sorted(self.labels, key=lambda x: x.value)],
            "model": self.model,
            "settings": self.settings,
        }
        if self.labeled_structures is not None:
            document["labeled_structures"] = list(self.labeled_structures)
        return document

    def to_json(self) -> str:
        """Return the file content (indented JSON, trailing newline)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any) -> WorkspaceConfig:
        """Build from the JSON form, checking it.

        Raises:
            ValueError: the document is not a valid configuration (says which part).
        """
        if not isinstance(data, dict):
            raise ValueError("the document is not a JSON object")
        version = data.get("version", CONFIG_VERSION)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"version {version!r} is not a positive integer")
        if version > CONFIG_VERSION:
            raise ValueError(
                f"version {version} is newer than this ASSFT understands ({CONFIG_VERSION}); "
                "update ASSFT"
            )
        raw_labels = data.get("labels")
        if not isinstance(raw_labels, list) or not raw_labels:
            raise ValueError("'labels' must be a non-empty list")
        labels = [LabelInfo.from_dict(item) for item in raw_labels]
        values = [label.value for label in labels]
        if len(set(values)) != len(values):
            raise ValueError(f"label values repeat: {sorted(values)}")
        model = data.get("model", "demo")
        if not isinstance(model, str) or not model:
            raise ValueError(f"'model' must be a non-empty string, got {model!r}")
        settings = data.get("settings", {})
        if not isinstance(settings, dict):
            raise ValueError("'settings' must be an object")
        labeled = data.get("labeled_structures")
        return cls(
            labels=labels,
            model=model,
            settings=settings,
            version=version,
            labeled_structures=labeled,
        )

    @classmethod
    def from_json(cls, text: str) -> WorkspaceConfig:
        """Parse the file content.

        Raises:
            ValueError: not JSON, or not a valid configuration.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"not valid JSON ({error})") from None
        except RecursionError:
            raise ValueError("nested too deeply to be a workspace configuration") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> WorkspaceConfig:
        """Read ``assft.json``.

        Raises:
            BadInputError: the file is missing, unreadable or malformed (names the file).
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise BadInputError("does not exist", path) from None
        except (OSError, UnicodeDecodeError) as error:
            raise BadInputError(f"cannot be read ({error})", path) from None
        try:
            return cls.from_json(text)
        except ValueError as error:
            raise BadInputError(f"is not a valid ASSFT configuration: {error}", path) from None

    def save(self, path: str | Path) -> Path:
        """Write ``assft.json`` atomically and return its path."""
        return write_text_atomic(Path(path), self.to_json())

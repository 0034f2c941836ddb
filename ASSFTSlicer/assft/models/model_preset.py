"""One model preset as data (:class:`ModelPreset`, with where its weights come from,
:class:`CheckpointSource`), and its JSON object parsed and checked (:func:`parse_preset`).

A preset names the architecture and its arguments, where its weights come from, how a scan is
preprocessed for it, how it is run (patch size, overlap), its labels and the layers the method
needs: the embedding layer (the encoder's deepest feature map), the encoder (lower learning
rate, BatchNorm statistics) and the segmentation head (replaced when the workspace's labels
differ). Where presets are found is :mod:`assft.models.presets`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from assft.models.architectures import ARCHITECTURES, get_architecture, window_problem
from assft.models.preset_fields import Fields, enum_field
from assft.validation import MAX_PATCH

__all__ = [
    "INTENSITY_KINDS",
    "MAX_OVERLAP",
    "MAX_WINDOW_BATCH",
    "SYMMETRIC_AXES",
    "CheckpointKind",
    "CheckpointSource",
    "ModelPreset",
    "OutputActivation",
    "parse_preset",
]


MAX_WINDOW_BATCH = 64
"""Most windows a preset runs at once (``sw_batch_size``)."""
MAX_OVERLAP = 0.9
"""Largest overlap of neighbouring windows (a step of a tenth of the window)."""


class OutputActivation(StrEnum):
    """What the network's forward returns.

    ``softmax``: one logit per class (background first). ``sigmoid``: a single foreground
    logit (probabilities are [1 - p, p]). ``probabilities``: the forward already ends in a
    softmax (e.g. deepbet's TorchScript net).
    """

    SOFTMAX = "softmax"
    SIGMOID = "sigmoid"
    PROBABILITIES = "probabilities"


class CheckpointKind(StrEnum):
    """Where a preset's weights come from."""

    SHIPPED = "shipped"
    PATH = "path"
    URL = "url"
    PACKAGE = "package"


INTENSITY_KINDS = ("zscore", "range", "percentile")


@dataclass(frozen=True)
class CheckpointSource:
    """Where the pretrained weights of a preset are found.

    Attributes:
        source: shipped (a file in ``assft/resources/``), path (a file on this machine), url (a
            file the user downloads once: never fetched automatically) or package (a file
            installed with a Python distribution, e.g. deepbet).
        file: the file name under ``assft/resources/`` (shipped) or the path inside the
            distribution (package).
        path: absolute path (path source; relative paths are resolved against the JSON file).
        url: where the user downloads the file (url source).
        sha256: expected SHA-256 of the file, when known (url source).
        package: the distribution name (package source).
        key_renames: ``(regex, replacement)`` pairs applied in order to the checkpoint's keys
            before they are matched with the network's (e.g. MONAI's self-supervised Swin
            weights name ``layers1...`` what SwinUNETR calls ``swinViT.layers1...``).
        more: further weights files (path source), each ``(key prefix, path)``: their keys join
            the state dict under the prefix (an nnU-Net fold ensemble: fold 1's weights under
            ``network.folds.1.``).
    """

    source: CheckpointKind
    file: str | None = None
    path: str | None = None
    url: str | None = None
    sha256: str | None = None
    package: str | None = None
    key_renames: tuple[tuple[str, str], ...] = ()
    more: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        """A short human-readable origin, for messages."""
        if self.source is CheckpointKind.SHIPPED:
            return f"shipped file {self.file}"
        if self.source is CheckpointKind.PATH:
            return f"file {self.path}"
        if self.source is CheckpointKind.URL:
            return f"download {self.url}"
        return f"{self.file} of the {self.package} package"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of the checkpoint source."""
        data: dict[str, Any] = {"source": str(self.source)}
        if self.source is CheckpointKind.SHIPPED:
            data["file"] = self.file
        elif self.source is CheckpointKind.PATH:
            data["path"] = self.path
        elif self.source is CheckpointKind.URL:
            data["url"] = self.url
            data["sha256"] = self.sha256
        else:
            data["package"] = self.package
            data["file"] = self.file
        if self.key_renames:
            data["key_renames"] = [list(pair) for pair in self.key_renames]
        if self.more:
            data["more"] = [list(pair) for pair in self.more]
        return data


@dataclass
class ModelPreset:
    """One model preset (see ``assft/resources/Models.json``).

    Attributes:
        name: the preset's name (what ``--model`` takes).
        description: one paragraph for people.
        architecture: network family; ``arguments`` are its constructor's keyword arguments
            without ``out_channels`` (the engine sets it from the labels).
        arguments: constructor keyword arguments (empty for TorchScript).
        checkpoint: pretrained weights, or None for a randomly initialised network.
        spacing: voxel spacing (x, y, z) in mm the network runs at; None keeps the scan's.
        orientation: axis orientation code (e.g. ``RAS``: the direction each array axis
            points to, nibabel's convention), None keeps the scan's.
        intensity: intensity normalisation, ``{"kind": "zscore" | "range" | "percentile", ...}``.
        patch_size: sliding-window size (x, y, z) in voxels.
        sw_batch_size: windows per forward pass.
        overlap: sliding-window overlap in [0, 1).
        label_names: output channel label value -> name (empty for encoder-only weights).
        embedding_layer: dotted module name of the encoder's deepest feature map.
        encoder_prefixes: module name prefixes that form the (pretrained) encoder.
        head_layer: module name of the final segmentation layer(s).
        has_head: False for encoder-only (self-supervised) weights.
        output_activation: what the forward returns (see :class:`OutputActivation`).
        symmetric_axes: the anatomical axes the anatomy is mirror-symmetric along
            (``left-right`` for a brain), the only ones training mirrors patches along; needs
            ``orientation``.
    """

    name: str
    description: str
    architecture: str
    arguments: dict[str, Any]
    checkpoint: CheckpointSource | None
    spacing: tuple[float, float, float] | None
    orientation: str | None
    intensity: dict[str, Any]
    patch_size: tuple[int, int, int]
    sw_batch_size: int
    overlap: float
    label_names: dict[int, str]
    embedding_layer: str
    encoder_prefixes: tuple[str, ...]
    head_layer: str
    has_head: bool
    output_activation: OutputActivation = OutputActivation.SOFTMAX
    symmetric_axes: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def mirror_axes(self) -> tuple[int, ...]:
        """The model grid's array axes (0..2) along ``symmetric_axes``."""
        if self.orientation is None:
            return ()
        letters = {axis: set(axis.replace("-", " ").upper().split()) for axis in SYMMETRIC_AXES}
        return tuple(
            index
            for index, code in enumerate(self.orientation)
            if any(_AXIS_LETTERS[code] in letters[a] for a in self.symmetric_axes)
        )

    @property
    def label_values(self) -> list[int]:
        """The preset's label values in output channel order (channel c > 0 ↦ value c - 1)."""
        return sorted(self.label_names)

    @property
    def in_channels(self) -> int:
        """Number of input channels (image modalities) the network takes."""
        return int(self.arguments.get("in_channels", 1))

    @property
    def is_torchscript(self) -> bool:
        """Whether the network is a TorchScript archive rather than a MONAI class."""
        return not get_architecture(self.architecture).takes_arguments

    def in_encoder(self, module_name: str) -> bool:
        """Whether a module (or parameter) name lies in the encoder."""
        return any(_under(module_name, prefix) for prefix in self.encoder_prefixes)

    def in_head(self, module_name: str) -> bool:
        """Whether a module (or parameter) name lies in the segmentation head."""
        return _under(module_name, self.head_layer)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of the preset (what ``Models.json`` holds)."""
        data: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "architecture": str(self.architecture),
            "arguments": dict(self.arguments),
            "checkpoint": None if self.checkpoint is None else self.checkpoint.to_dict(),
            "preprocessing": {
                "spacing": None if self.spacing is None else list(self.spacing),
                "orientation": self.orientation,
                "intensity": dict(self.intensity),
            },
            "patch_size": list(self.patch_size),
            "sw_batch_size": self.sw_batch_size,
            "overlap": self.overlap,
            "label_names": {str(k): v for k, v in sorted(self.label_names.items())},
            "embedding_layer": self.embedding_layer,
            "encoder_prefixes": list(self.encoder_prefixes),
            "head_layer": self.head_layer,
            "has_head": self.has_head,
            "output_activation": str(self.output_activation),
        }
        if self.symmetric_axes:
            data["symmetric_axes"] = list(self.symmetric_axes)
        data.update(self.extra)
        return data

    @classmethod
    def from_dict(cls, data: Any, *, source: Path | None = None) -> ModelPreset:
        """Parse and check one preset.

        Args:
            data: the preset's JSON object.
            source: the file it came from (named in messages; relative checkpoint paths are
                resolved against its folder).

        Raises:
            BadInputError: a missing or malformed field (the message names it).
        """
        return parse_preset(data, source)


def _under(name: str, prefix: str) -> bool:
    return bool(prefix) and (name == prefix or name.startswith(prefix + "."))


def parse_preset(data: Any, source: Path | None, where: str | None = None) -> ModelPreset:
    name_hint = data.get("name") if isinstance(data, dict) else None
    fields = Fields(data, source, where or (f"preset {name_hint!r}" if name_hint else "preset"))
    name = fields.get("name", str)
    if not name.strip():
        fields.fail("name", "must not be empty")
    fields.where = f"preset {name!r}"
    architecture = fields.get("architecture", str)
    if architecture not in ARCHITECTURES:
        fields.fail(
            "architecture", f"is {architecture!r}; expected one of {', '.join(ARCHITECTURES)}"
        )
    built = get_architecture(architecture).takes_arguments
    arguments = fields.get("arguments", dict, default={})
    if "out_channels" in arguments:
        fields.fail("arguments", "must not set out_channels: it follows from the labels")
    if not built and arguments:
        fields.fail("arguments", "must be empty for a TorchScript network")

    checkpoint = _parse_checkpoint(fields.get("checkpoint", dict, none=True), source, fields.where)
    if not built and checkpoint is None:
        fields.fail("checkpoint", "is required for a TorchScript network (the archive)")

    pre = Fields(fields.get("preprocessing", dict), source, f"{fields.where}.preprocessing")
    spacing = pre.triple("spacing", float, none=True)
    orientation = pre.get("orientation", str, none=True)
    if orientation is not None and (
        len(orientation) != 3
        or sorted(orientation.upper().translate(str.maketrans("LPI", "RAS"))) != ["A", "R", "S"]
    ):
        pre.fail("orientation", f"is {orientation!r}; expected a code such as RAS or LPS")
    intensity = _parse_intensity(pre.get("intensity", dict), source, f"{pre.where}.intensity")

    patch_size = fields.triple("patch_size", int)
    if max(patch_size) > MAX_PATCH:
        fields.fail("patch_size", f"has an edge over {MAX_PATCH} voxels (a safety limit)")
    problem = window_problem(architecture, arguments, patch_size)
    if problem:
        fields.fail("patch_size", problem)
    sw_batch_size = fields.get("sw_batch_size", int, default=1)
    if not 1 <= sw_batch_size <= MAX_WINDOW_BATCH:
        fields.fail("sw_batch_size", f"must be from 1 to {MAX_WINDOW_BATCH}")
    overlap = float(fields.get("overlap", (int, float), default=0.25))
    if not 0.0 <= overlap <= MAX_OVERLAP:
        # Nearly 1, a window steps by a voxel: millions of windows for one case.
        fields.fail("overlap", f"must lie in [0, {MAX_OVERLAP}]")

    label_names: dict[int, str] = {}
    for key, value in fields.get("label_names", dict).items():
        if not (isinstance(key, str) and key.isdigit() and int(key) > 0):
            fields.fail("label_names", f"has key {key!r}; keys are label values 1, 2, ...")
        if not isinstance(value, str) or not value.strip():
            fields.fail("label_names", f"names label {key} with {value!r}; expected a name")
        label_names[int(key)] = value
    has_head = fields.get("has_head", bool)
    if has_head and not label_names:
        fields.fail("label_names", "is empty but has_head is true")
    activation = enum_field(fields, "output_activation", OutputActivation, default="softmax")
    if activation is OutputActivation.SIGMOID and len(label_names) != 1:
        fields.fail("output_activation", "sigmoid needs exactly one label")

    encoder_prefixes = fields.get("encoder_prefixes", list)
    if not encoder_prefixes or not all(isinstance(p, str) and p for p in encoder_prefixes):
        fields.fail("encoder_prefixes", "must be a non-empty list of module names")
    symmetric_axes = fields.get("symmetric_axes", list, default=[])
    for axis in symmetric_axes:
        if axis not in SYMMETRIC_AXES:
            fields.fail("symmetric_axes", f"has {axis!r}; expected {', '.join(SYMMETRIC_AXES)}")
    if symmetric_axes and orientation is None:
        fields.fail("symmetric_axes", "needs preprocessing.orientation (which axis is which)")
    unknown = [k for k in fields.data if k not in _PRESET_KEYS and not k.startswith("x-")]
    if unknown:
        fields.fail(unknown[0], "is not a preset field (custom fields start with x-)")
    return ModelPreset(
        name=name,
        description=fields.get("description", str, default=""),
        architecture=architecture,
        arguments=dict(arguments),
        checkpoint=checkpoint,
        spacing=spacing,
        orientation=None if orientation is None else orientation.upper(),
        intensity=intensity,
        patch_size=patch_size,
        sw_batch_size=sw_batch_size,
        overlap=overlap,
        label_names=dict(sorted(label_names.items())),
        embedding_layer=fields.get("embedding_layer", str),
        encoder_prefixes=tuple(encoder_prefixes),
        head_layer=fields.get("head_layer", str),
        has_head=has_head,
        output_activation=activation,
        symmetric_axes=tuple(symmetric_axes),
        extra={k: v for k, v in fields.data.items() if k.startswith("x-")},
    )


SYMMETRIC_AXES = ("left-right", "anterior-posterior", "superior-inferior")
"""The anatomical axes a preset may declare symmetric."""
_AXIS_LETTERS = {"R": "RIGHT", "L": "LEFT", "A": "ANTERIOR", "P": "POSTERIOR", "S": "SUPERIOR"}
_AXIS_LETTERS["I"] = "INFERIOR"

_PRESET_KEYS = (
    "symmetric_axes",
    "name",
    "description",
    "architecture",
    "arguments",
    "checkpoint",
    "preprocessing",
    "patch_size",
    "sw_batch_size",
    "overlap",
    "label_names",
    "embedding_layer",
    "encoder_prefixes",
    "head_layer",
    "has_head",
    "output_activation",
)


def _parse_checkpoint(
    data: dict[str, Any] | None, source: Path | None, where: str
) -> CheckpointSource | None:
    if data is None:
        return None
    fields = Fields(data, source, f"{where}.checkpoint")
    kind = enum_field(fields, "source", CheckpointKind)
    renames: list[tuple[str, str]] = []
    for pair in fields.get("key_renames", list, default=[]):
        if not (
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
        ):
            fields.fail("key_renames", "must be a list of [regex, replacement] pairs")
        renames.append((pair[0], pair[1]))
    key_renames = tuple(renames)
    if kind is CheckpointKind.SHIPPED:
        return CheckpointSource(kind, file=fields.get("file", str), key_renames=key_renames)
    if kind is CheckpointKind.PATH:

        def resolved(text: str) -> str:
            path = Path(text).expanduser()
            if not path.is_absolute() and source is not None:
                path = source.parent.resolve() / path
            return str(path)

        more = []
        for pair in fields.get("more", list, default=[]):
            if not (
                isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
            ):
                fields.fail("more", "must be a list of [key prefix, path] pairs")
            more.append((pair[0], resolved(pair[1])))
        return CheckpointSource(
            kind,
            path=resolved(fields.get("path", str)),
            key_renames=key_renames,
            more=tuple(more),
        )
    if kind is CheckpointKind.URL:
        sha256 = fields.get("sha256", str, none=True, default=None)
        if sha256 is not None and (
            len(sha256) != 64 or any(c not in "0123456789abcdefABCDEF" for c in sha256)
        ):
            fields.fail("sha256", "must be 64 hexadecimal digits or null")
        return CheckpointSource(
            kind,
            url=fields.get("url", str),
            sha256=sha256 and sha256.lower(),
            key_renames=key_renames,
        )
    return CheckpointSource(
        kind,
        package=fields.get("package", str),
        file=fields.get("file", str),
        key_renames=key_renames,
    )


def _parse_intensity(data: dict[str, Any], source: Path | None, where: str) -> dict[str, Any]:
    fields = Fields(data, source, where)
    kind = fields.get("kind", str)
    number = (int, float)
    if kind == "zscore":
        fields.get("nonzero", bool, default=False)
    elif kind == "range":
        for key in ("a_min", "a_max", "b_min", "b_max"):
            fields.get(key, number)
        fields.get("clip", bool, default=True)
        if data["a_max"] <= data["a_min"]:
            fields.fail("a_max", "must exceed a_min")
    elif kind == "percentile":
        for key in ("lower", "upper", "b_min", "b_max"):
            fields.get(key, number)
        fields.get("clip", bool, default=True)
        if not 0 <= data["lower"] < data["upper"] <= 100:
            fields.fail("upper", "must satisfy 0 <= lower < upper <= 100")
    else:
        fields.fail("kind", f"is {kind!r}; expected one of {', '.join(INTENSITY_KINDS)}")
    standardize = fields.get("standardize", dict, default=None, none=True)
    if standardize is not None:
        inner = Fields(standardize, source, f"{where}.standardize")
        inner.get("mean", number)
        if inner.get("std", number) <= 0:
            inner.fail("std", "must be positive")
    return dict(data)

"""Where model presets are found: the package's ``resources/Models.json`` (schema:
``resources/Models.schema.json``, read through :mod:`importlib.resources`) or the file
``$ASSFT_MODELS_JSON`` names, a JSON file holding one preset, and ``bundle:PATH`` and
``nnunet:PATH`` references (:func:`get_preset`). A user can copy one preset into its own JSON
file, edit it and pass the file instead of a name. What a preset holds is
:mod:`assft.models.model_preset`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from assft.errors import BadInputError
from assft.models.model_preset import ModelPreset, parse_preset
from assft.models.resources import resources_dir

__all__ = ["MODELS_JSON_ENV", "default_presets_file", "get_preset", "load_presets"]


MODELS_JSON_ENV = "ASSFT_MODELS_JSON"
"""Environment variable naming another presets file than ``assft/resources/Models.json``."""


def default_presets_file() -> Path:
    """``$ASSFT_MODELS_JSON`` when set, else the shipped ``resources/Models.json``."""
    override = os.environ.get(MODELS_JSON_ENV)
    return Path(override) if override else resources_dir() / "Models.json"


def load_presets(path: Path | None = None) -> dict[str, ModelPreset]:
    """Read a presets file (``{"presets": [...]}``).

    Args:
        path: the file; default :func:`default_presets_file`.

    Returns:
        The presets by name, in file order.

    Raises:
        BadInputError: unreadable file, bad JSON, a bad preset or a duplicate name.
    """
    path = Path(path) if path is not None else default_presets_file()
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("presets"), list):
        raise BadInputError('is not a presets file: expected {"presets": [...]}', path)
    presets: dict[str, ModelPreset] = {}
    for index, item in enumerate(data["presets"]):
        preset = parse_preset(item, path, where=f"presets[{index}]")
        if preset.name in presets:
            raise BadInputError(f"preset name {preset.name!r} appears twice", path)
        presets[preset.name] = preset
    return presets


def get_preset(name_or_file: str | Path) -> ModelPreset:
    """A preset by name, or the single preset held in a JSON file.

    Args:
        name_or_file: a name from the presets file, a path to a JSON file holding one
            preset object (e.g. an edited copy of a preset), ``bundle:PATH`` naming a MONAI
            bundle folder (:mod:`assft.models.bundles`), or ``nnunet:PATH`` naming an nnU-Net v2
            results folder (:mod:`assft.models.nnunet`).

    Raises:
        BadInputError: neither a known name nor a readable preset file; the message lists
            the known names.
    """
    text = str(name_or_file)
    if not isinstance(name_or_file, Path) and text.startswith("bundle:"):
        from assft.models.bundles import preset_from_bundle

        return preset_from_bundle(text)
    if not isinstance(name_or_file, Path) and text.startswith("nnunet:"):
        from assft.models.nnunet import preset_from_nnunet

        return preset_from_nnunet(text)
    presets: dict[str, ModelPreset] = {}
    if not isinstance(name_or_file, Path):
        presets = load_presets()
        if text in presets:
            return presets[text]
    path = Path(text).expanduser()
    if path.is_file():
        data = _read_json(path)
        if isinstance(data, dict) and isinstance(data.get("presets"), list):
            inner = load_presets(path)
            if len(inner) != 1:
                raise BadInputError(
                    f"holds {len(inner)} presets ({', '.join(inner)}); a preset file holds one",
                    path,
                )
            return next(iter(inner.values()))
        return parse_preset(data, path)
    if isinstance(name_or_file, Path) or text.endswith(".json"):
        raise BadInputError("preset file does not exist", path)
    known = ", ".join(presets)
    raise BadInputError(
        f"unknown model {text!r}: give a preset name ({known}), a JSON file holding one preset "
        "bundle:PATH (a MONAI bundle folder) or nnunet:PATH (an nnU-Net v2 results folder)"
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInputError("file does not exist", path) from None
    except (OSError, UnicodeDecodeError) as error:
        raise BadInputError(f"cannot be read ({error})", path) from None
    except json.JSONDecodeError as error:
        raise BadInputError(
            f"is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})", path
        ) from None
    except RecursionError:
        raise BadInputError("is nested too deeply to be a model preset", path) from None
    except ValueError as error:  # e.g. an integer of more digits than Python converts
        raise BadInputError(f"holds a value no preset can take ({error})", path) from None

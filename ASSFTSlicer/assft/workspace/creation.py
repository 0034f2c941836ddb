"""Creating a workspace for a model: the labels default to the preset's, and the model must load."""

from __future__ import annotations

from pathlib import Path

from assft.errors import BadInputError
from assft.workspace.workspace import Workspace

# assft.models (torch) is imported inside create_workspace: workspace/ is the layer the Slicer
# module uses in its own process, and each of its modules loads without PyTorch.


def create_workspace(
    root: str | Path,
    images: list[str | Path],
    *,
    model: str = "demo",
    label_names: dict[int, str] | None = None,
    labels_dir: str | Path | None = None,
    user: str | None = None,
    labeled_structures: str | list[int] | None = None,
    adopt: tuple[Path, str] | None = None,
) -> Workspace:
    """Create a workspace whose labels default to the model preset's.

    ``labeled_structures``: the structures clinicians label when they label only some (names
    or values, ``"liver,spleen"`` or a list of values); None: all of them. ``adopt``: a folder
    of fetched scans moved into the workspace (:func:`assembly.assemble_workspace`).

    The model is loaded once first, so a preset or checkpoint that cannot work is refused
    before anything is written.

    Raises:
        BadInputError: bad images, an unknown preset, weights that do not fit, an existing
            workspace.
    """
    from assft.models import get_preset, load_model
    from assft.models.bundles import is_bundle_reference
    from assft.models.nnunet import is_nnunet_reference
    from assft.workspace.config import parse_structures

    preset = get_preset(model)
    if not label_names and not preset.label_names and not preset.has_head:
        raise BadInputError(
            f"{preset.name} has no structures of its own (an encoder without a head): name "
            "those you will label, e.g. --label-names 1:liver,2:spleen"
        )
    names = dict(label_names or preset.label_names or {1: "foreground"})
    if isinstance(labeled_structures, str):
        labeled_structures = parse_structures(labeled_structures, names)
    load_model(preset, label_values=sorted(names))
    if is_bundle_reference(str(model)) or is_nnunet_reference(str(model)):
        stored_model = preset.name  # bundle:ABSOLUTE_PATH, nnunet:ABSOLUTE_PATH
    else:
        stored_model = str(Path(model).resolve()) if Path(model).is_file() else model
    return Workspace.create(
        Path(root),
        [Path(p) for p in images],
        label_names=names,
        model=stored_model,
        labels_dir=Path(labels_dir) if labels_dir else None,
        user=user,
        labeled_structures=labeled_structures,
        adopt=adopt,
    )

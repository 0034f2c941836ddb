"""Handing a model version back in a format other tools run: ``assft export``.

``bundle``: a MONAI bundle that ``python -m monai.bundle run`` accepts. A workspace made from
a bundle (``--model bundle:PATH``) gets a new version of that bundle (its configs, the version's
weights, the metadata's version bumped with a changelog line); any other MONAI network gets a
new bundle written from its preset.

``nnunet``: an nnU-Net v2 results folder that nnU-Net's ``nnUNetPredictor`` runs, for a workspace
made from one (``--model nnunet:PATH``) that kept its labels: the source folder's plans and
dataset.json, and the version's weights in nnU-Net's checkpoint layout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from assft.errors import BadInputError
from assft.workspace.config import enclosing_workspace
from assft.workspace.model_versions import ModelVersions
from assft.workspace.workspace import Workspace

FORMATS = ("bundle", "nnunet")


def _summary(version: str, manifest: dict[str, Any]) -> str:
    if version == "v0":
        return "the model as the workspace received it (v0)"
    labels = manifest.get("labels") or {}  # case -> sha256 of the label it trained on
    parts = [f"parent {manifest.get('parent')}"]
    if labels:
        parts.append(f"{len(labels)} labeled case(s)")
    if manifest.get("mode"):
        parts.append(f"mode {manifest['mode']}")
    parts.append("promoted" if manifest.get("promoted") else "not promoted")
    return ", ".join(parts)


def export_version(
    workspace: Workspace, version: str | None, out: str | Path, *, format: str = "bundle"
) -> dict[str, Any]:
    """Write a model version (default: the current one) as a new folder ``out``: a MONAI
    bundle (``format`` bundle) or an nnU-Net results folder (``format`` nnunet).

    Returns:
        What was written: ``format``, ``version``, ``out``, ``source``, and for a bundle its
        ``bundle_version``.

    Raises:
        BadInputError: an unknown format or version, a damaged checkpoint, ``out`` inside the
            workspace or already there, a network with no bundle form (TorchScript), or an
            nnU-Net export of a workspace not made from an nnU-Net folder or whose labels
            differ from it.
    """
    from assft.models.bundles import (
        METADATA,
        bundle_folder,
        export_bundle,
        is_bundle_reference,
        write_bundle,
    )

    if format not in FORMATS:
        raise BadInputError(f"unknown export format {format!r} (formats: {', '.join(FORMATS)})")
    target = Path(out).expanduser().resolve()
    root = workspace.root.resolve()
    if target == root or target.is_relative_to(root):
        raise BadInputError("lies inside the workspace: export to a folder outside it", target)
    other = enclosing_workspace(target)
    if other is not None:
        raise BadInputError(
            f"lies inside another workspace, {other}: export to a folder outside every workspace",
            target,
        )
    if target.exists():
        raise BadInputError("already exists: the export writes a new folder", target)
    versions = ModelVersions(workspace)
    version = versions.current() if version is None else version
    if not versions.has_head(version):
        raise BadInputError(
            f"model {version} has no segmentation head for this workspace's labels (its head "
            "would be random): fine-tune first, then export the version it makes",
            workspace.root,
        )
    manifest = versions.manifest(version)
    model = versions.load(version)
    state = {key: value.detach().cpu() for key, value in model.network.state_dict().items()}
    reference = workspace.config.model
    if format == "nnunet":
        return _export_nnunet(model, state, target, version, reference, manifest)
    # The bundle's own network when the workspace kept its labels (else the head is new and its
    # output channels differ from the bundle's network_def).
    if is_bundle_reference(reference) and not model.head_reinitialised:
        source = bundle_folder(reference)
        export_bundle(
            source, state, target, model_version=version, summary=_summary(version, manifest)
        )
    else:
        source = None
        write_bundle(model.preset, workspace.config.label_names, state, target)
    written = json.loads((target / METADATA).read_text(encoding="utf-8"))
    return {
        "format": format,
        "version": version,
        "out": str(target),
        "bundle_version": written.get("version"),
        "source": str(source) if source else reference,
    }


def _export_nnunet(
    model: Any,
    state: dict[str, Any],
    target: Path,
    version: str,
    reference: str,
    manifest: dict[str, Any],
) -> dict[str, Any]:
    from assft.models.nnunet import export_nnunet, is_nnunet_reference

    if not is_nnunet_reference(reference):
        raise BadInputError(
            f"the workspace's model {reference!r} is not an nnU-Net folder: export it as a "
            "bundle (--format bundle)"
        )
    if model.head_reinitialised:
        raise BadInputError(
            "the workspace's labels differ from the nnU-Net model's, so its head is new: "
            "export it as a bundle (--format bundle)"
        )
    export_nnunet(model.preset, state, target, summary=_summary(version, manifest))
    return {"format": "nnunet", "version": version, "out": str(target), "source": reference}

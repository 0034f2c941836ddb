"""What a fine-tuning job reads, checked before it starts and loaded without running code.

:func:`check_inputs` runs before any job folder exists, so a case whose scan is gone is refused
in one line instead of failing a job halfway; :func:`load_resume_point` reads a killed job's
``resume.pt`` with the weights-only unpickler and refuses it in one line, without PyTorch's
advice to load it unsafely.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from assft.errors import BadInputError
from assft.io.atomic import UnsafePickleError, load_torch_safely
from assft.workspace import Workspace
from assft.workspace.files import sha256_file

__all__ = ["check_inputs", "load_resume_point"]


def check_inputs(
    workspace: Workspace, labeled: list[dict[str, Any]], unlabeled: list[dict[str, Any]]
) -> None:
    """Refuse, before any job folder exists, a case whose scan or label file is gone, or whose
    label file is not the one submitted (its sha256 is not the registry's).

    Args:
        workspace: the open workspace.
        labeled: the labeled and held-out cases (scan and label needed).
        unlabeled: the unlabeled cases the semi-supervised stage reads (scan needed).
    """
    for row in labeled + unlabeled:
        image = Path(row["image_path"])
        if not image.exists():
            raise BadInputError(
                f"the scan of {row['status']} case {row['case_id']} does not exist: restore it "
                "(nothing was started)",
                image,
            )
    for row in labeled:
        path = workspace.label_path(row["case_id"])
        if path is None:
            raise BadInputError(
                f"case {row['case_id']} is {row['status']} but has no label file "
                "(nothing was started)",
                workspace.labels_dir / f"{row['case_id']}.nii.gz",
            )
        recorded = row.get("label_sha256")
        if recorded and sha256_file(path) != recorded:
            # Written over outside assft (by hand, or a tool writing through a link): training
            # on it would teach the model what nobody submitted.
            raise BadInputError(
                f"is not the label submitted for case {row['case_id']} (its sha256 differs from "
                "the one recorded at submit: it was changed outside assft); submit the intended "
                "label again with 'assft submit' (nothing was started)",
                path,
            )


def load_resume_point(path: Path, device: torch.device, workspace: Path) -> dict[str, Any]:
    """A killed job's ``resume.pt``, or a one-line refusal that says how to start afresh.

    The refused job is marked failed, so the next ``assft finetune`` starts a new one.
    """
    try:
        state = load_torch_safely(path, map_location=device)
    except BadInputError as error:
        why = (
            "it holds Python objects besides tensors"
            if isinstance(error, UnsafePickleError)
            else "it is damaged"
        )
        raise BadInputError(
            f"cannot be loaded safely ({why}; it was not opened): start the fine-tune afresh "
            f"with 'assft finetune {workspace}' (this job will not be resumed)",
            path,
        ) from None
    if not isinstance(state, dict) or "stage" not in state or "step" not in state:
        raise BadInputError(
            f"is not a resume point: start the fine-tune afresh with 'assft finetune "
            f"{workspace}' (this job will not be resumed)",
            path,
        )
    return state

"""The workspace: the datastore shared by the Slicer module, the CLI and background jobs.

See :mod:`assft.workspace.workspace` for the folder layout.
"""

from __future__ import annotations

from assft.workspace.assembly import find_images
from assft.workspace.config import (
    CONFIG_FILE_NAME,
    DEFAULT_LABEL_NAMES,
    DEFAULT_SETTINGS,
    LABEL_PALETTE,
    LabelInfo,
    WorkspaceConfig,
    make_labels,
)
from assft.workspace.files import sha256_file, utc_now, write_json_atomic, write_text_atomic
from assft.workspace.locks import job_lock, running_job
from assft.workspace.registry import CaseRegistry
from assft.workspace.registry_schema import CASE_STATUSES, REGISTRY_FILE_NAME
from assft.workspace.workspace import CASE_ID_PATTERN, Workspace, default_user

__all__ = [
    "CASE_ID_PATTERN",
    "CASE_STATUSES",
    "CONFIG_FILE_NAME",
    "DEFAULT_LABEL_NAMES",
    "DEFAULT_SETTINGS",
    "LABEL_PALETTE",
    "LabelInfo",
    "REGISTRY_FILE_NAME",
    "CaseRegistry",
    "Workspace",
    "WorkspaceConfig",
    "default_user",
    "find_images",
    "job_lock",
    "make_labels",
    "running_job",
    "sha256_file",
    "utc_now",
    "write_json_atomic",
    "write_text_atomic",
]

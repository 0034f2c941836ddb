"""ASSFT engine: active test-time sample query (DKD + ASD) and selective semi-supervised
fine-tuning of pretrained 3D segmentation models.

The engine never imports Slicer, Qt or VTK; the Slicer module calls it, mostly through
``python -m assft ...`` background processes.
"""

from __future__ import annotations

__version__ = "0.1.0"

from assft.errors import AssftError, BadInputError, CancelledError, WorkspaceLockedError

__all__ = ["AssftError", "BadInputError", "CancelledError", "WorkspaceLockedError", "__version__"]

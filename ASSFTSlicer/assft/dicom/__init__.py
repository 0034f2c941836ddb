"""Where a lab's scans live: a pool fetched from a DICOMweb server (QIDO-RS and WADO-RS), and
labels handed back as DICOM Segmentations (highdicom), written to files or stored (STOW-RS).

- :mod:`assft.dicom.dicomweb_auth`: the credentials (environment or file, never the command
  line) and the HTTP session, TLS verified;
- :mod:`assft.dicom.dicomweb`: one server: series search, resumable series fetch, store;
- :mod:`assft.dicom.dicomweb_pool`: a workspace created from the series that match a query;
- :mod:`assft.dicom.segment_codes`: the coded concepts of structure names (SNOMED CT);
- :mod:`assft.dicom.dicom_seg`: a stored label as a DICOM Segmentation of its source series.

Each module imports ``requests``, ``dicomweb-client`` and ``highdicom`` only where it uses them
(``pip install "assft[dicom]"``).
"""

from __future__ import annotations

import importlib

from assft.errors import BadInputError

__all__ = ["require"]


def require(module: str, package: str) -> None:
    """Import ``module`` or say in one line which package to install.

    Raises:
        BadInputError: the package is not installed.
    """
    try:
        importlib.import_module(module)
    except ImportError:
        raise BadInputError(
            f'DICOMweb and DICOM SEG need the {package} package: pip install "assft[dicom]"'
        ) from None

"""A workspace whose pool is the series of a DICOMweb server that match a search.

``assft init WS --dicomweb URL [--query ...] [--series-filter ...]``: the series are found
(QIDO-RS), each is fetched once (WADO-RS) into a hidden folder beside the new workspace,
``.<name>.dicomweb``, checked as a scan, and the folder is then moved into the workspace as
``cache/dicomweb``, with ``manifest.json`` recording each case's server, Study, Series and SOP
Instance UIDs. A fetch that fails or is stopped leaves that hidden folder and no workspace: the
same command again fetches only what is missing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from assft.dicom.dicomweb import DicomwebServer, SeriesRef
from assft.dicom.dicomweb_auth import read_auth
from assft.errors import BadInputError
from assft.io.imaging import read_image
from assft.runtime.progress import Progress
from assft.workspace.files import read_json_document, write_json_atomic
from assft.workspace.workspace import DICOMWEB_MANIFEST

if TYPE_CHECKING:
    from assft.workspace import Workspace

__all__ = [
    "ADOPTED_FOLDER",
    "MANIFEST_NAME",
    "case_names",
    "create_workspace_from_dicomweb",
    "dicomweb_manifest",
    "fetch_folder",
]

ADOPTED_FOLDER = DICOMWEB_MANIFEST.parent.name
"""The workspace's ``cache/dicomweb``: the fetched series, one folder a case."""
MANIFEST_NAME = DICOMWEB_MANIFEST.name
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def fetch_folder(root: str | Path) -> Path:
    """The hidden folder beside workspace ``root`` that a fetch fills before it exists."""
    root = Path(root).expanduser().resolve()
    return root.parent / f".{root.name}.dicomweb"


def case_names(refs: list[SeriesRef]) -> dict[str, str]:
    """A case id for each series (by series UID): ``<patient id>-s<series number>`` with only
    letters, digits, ``_`` and ``-``, else ``series-<end of the UID>``; made unique with
    ``-2``, ``-3``..."""
    names: dict[str, str] = {}
    used: set[str] = set()
    for ref in refs:
        patient = _UNSAFE.sub("_", ref.patient_id).strip("_-")[:40]
        number = _UNSAFE.sub("_", ref.series_number).strip("_-")[:8]
        base = f"{patient}-s{number}" if patient and number else ""
        base = base or f"series-{ref.series_uid.replace('.', '_')[-24:]}"
        name, count = base, 1
        while name.lower() in used:  # case-insensitive file systems
            count += 1
            name = f"{base}-{count}"
        used.add(name.lower())
        names[ref.series_uid] = name
    return names


def _fetch(
    server: DicomwebServer, refs: list[SeriesRef], folder: Path, progress: Progress
) -> list[dict[str, Any]]:
    """Fetch every series into ``folder/<case>``, checked as a scan; the manifest's entries."""
    names = case_names(refs)
    entries = []
    progress.phase("dicomweb-fetch", len(refs))
    for index, ref in enumerate(refs):
        case = names[ref.series_uid]
        uids = server.fetch_series(ref, folder / case)
        try:
            read_image(folder / case)
        except BadInputError as error:
            raise BadInputError(
                f"DICOMweb server {server.url}: series {ref.series_uid} is not a usable scan "
                f"({error})"
            ) from None
        entries.append(
            {
                "case": case,
                "study_uid": ref.study_uid,
                "series_uid": ref.series_uid,
                "sop_instance_uids": uids,
                "patient_id": ref.patient_id,
                "series_number": ref.series_number,
                "modality": ref.modality,
                "description": ref.description,
            }
        )
        progress.update(index + 1, case=case, series=ref.series_uid, instances=len(uids))
    return entries


def create_workspace_from_dicomweb(
    root: str | Path,
    url: str,
    *,
    query: dict[str, str] | None = None,
    series_filter: str | None = None,
    auth_file: str | Path | None = None,
    progress: Progress | None = None,
    **create: Any,
) -> Workspace:
    """Create workspace ``root`` from the image series of a DICOMweb server that match.

    Args:
        url: the DICOMweb service root.
        query: QIDO-RS search filters (:func:`assft.dicom.dicomweb.parse_query`).
        series_filter: a regular expression the series description must match.
        auth_file: a JSON credentials file (:mod:`assft.dicom.dicomweb_auth`); without one,
            the environment's credentials, if any.
        create: the other arguments of :func:`assft.workspace.creation.create_workspace`.

    Raises:
        BadInputError: the server fails or refuses, no series matches, a series is not a
            usable scan (missing or uneven slices...), or the workspace cannot be created;
            the fetched series stay in :func:`fetch_folder` for the next try.
    """
    from assft.workspace.config import enclosing_workspace
    from assft.workspace.creation import create_workspace

    progress = progress or Progress("none")
    root = Path(root).expanduser().resolve()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise BadInputError("exists and is not an empty folder; choose a new folder", root)
    if enclosing_workspace(root.parent) is not None:
        raise BadInputError("lies inside another workspace", root)
    server = DicomwebServer(url, read_auth(auth_file))
    refs = server.search_series(query, series_filter)
    if not refs:
        raise BadInputError(f"DICOMweb server {server.url}: no image series matches the search")
    folder = fetch_folder(root)
    folder.mkdir(parents=True, exist_ok=True)
    entries = _fetch(server, refs, folder, progress)
    write_json_atomic(
        folder / MANIFEST_NAME,
        {
            "server": server.url,
            "query": dict(query or {}),
            "series_filter": series_filter,
            "cases": entries,
        },
    )
    return create_workspace(
        root,
        [folder / entry["case"] for entry in entries],
        adopt=(folder, ADOPTED_FOLDER),
        **create,
    )


def dicomweb_manifest(workspace: Workspace) -> dict[str, Any] | None:
    """The manifest of a workspace made from a DICOMweb server, or None."""
    path = workspace.root / DICOMWEB_MANIFEST
    if not path.is_file():
        return None
    return read_json_document(path, what="DICOMweb manifest")

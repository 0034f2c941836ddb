"""A workspace whose pool is the series of a DICOMweb server that match a search.

``assft init WS --dicomweb URL [--query ...] [--series-filter ...]``: the series are found
(QIDO-RS), each is fetched once (WADO-RS) into a hidden folder beside the new workspace,
``.<name>.dicomweb``, checked as a scan, and the folder is then moved into the workspace as
``cache/dicomweb``, with ``manifest.json`` recording each case's server, Study, Series and SOP
Instance UIDs. A fetch that fails or is stopped leaves that hidden folder and no workspace: the
same command again fetches only what is missing.

On a large archive ``--fetch-first N`` creates the workspace from the first N series only, and
records the others as pending: ``assft fetch WS`` (in the background, with progress) fetches
them one by one into ``cache/dicomweb/`` and registers each case as it arrives, so ranking can
start at once and ranks what has arrived. A series that cannot be a case (missing slices...) is
recorded as refused with its reason, and the fetch goes on with the others.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from assft.dicom.dicomweb import DicomwebServer, SeriesRef, check_uid
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
    "UnusableSeriesError",
    "case_names",
    "create_workspace_from_dicomweb",
    "dicomweb_manifest",
    "fetch_folder",
    "fetch_pending",
]

ADOPTED_FOLDER = DICOMWEB_MANIFEST.parent.name
"""The workspace's ``cache/dicomweb``: the fetched series, one folder a case."""
MANIFEST_NAME = DICOMWEB_MANIFEST.name
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_CASE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


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


class UnusableSeriesError(BadInputError):
    """A series fetched whole that cannot be a case (missing or uneven slices...)."""


def _entry(ref: SeriesRef, case: str) -> dict[str, Any]:
    return {
        "case": case,
        "status": "pending",
        "study_uid": ref.study_uid,
        "series_uid": ref.series_uid,
        "sop_instance_uids": [],
        "patient_id": ref.patient_id,
        "series_number": ref.series_number,
        "modality": ref.modality,
        "description": ref.description,
    }


def _ref(entry: dict[str, Any]) -> SeriesRef:
    return SeriesRef(
        study_uid=entry["study_uid"],
        series_uid=entry["series_uid"],
        patient_id=entry.get("patient_id", ""),
        series_number=entry.get("series_number", ""),
        modality=entry.get("modality", ""),
        description=entry.get("description", ""),
    )


def _fetch_one(server: DicomwebServer, entry: dict[str, Any], folder: Path) -> None:
    """Fetch one series into ``folder``, checked as a scan; its entry marked fetched."""
    entry["sop_instance_uids"] = server.fetch_series(_ref(entry), folder)
    try:
        read_image(folder)
    except BadInputError as error:
        raise UnusableSeriesError(
            f"DICOMweb server {server.url}: series {entry['series_uid']} is not a usable scan "
            f"({error})"
        ) from None
    entry["status"] = "fetched"


def _fetch_or_refuse(server: DicomwebServer, entry: dict[str, Any], folder: Path) -> str | None:
    """Fetch one series; None, or the reason it cannot be a case (recorded in its entry, whose
    status becomes "refused"). A failing server raises."""
    try:
        _fetch_one(server, entry, folder)
    except UnusableSeriesError as error:
        entry["status"], entry["reason"] = "refused", str(error)
        return str(error)
    return None


def create_workspace_from_dicomweb(
    root: str | Path,
    url: str,
    *,
    query: dict[str, str] | None = None,
    series_filter: str | None = None,
    auth_file: str | Path | None = None,
    fetch_first: int | None = None,
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
        fetch_first: fetch only the first N series now; the others stay pending for
            :func:`fetch_pending` (None: all of them).
        create: the other arguments of :func:`assft.workspace.creation.create_workspace`.

    Raises:
        BadInputError: the server fails or refuses, no series matches, no series is a usable
            scan (missing or uneven slices...: such a series is recorded as refused, and the
            others go on), or the workspace cannot be created; the fetched series stay in
            :func:`fetch_folder` for the next try.
    """
    from assft.workspace.assembly import check_new_root
    from assft.workspace.creation import create_workspace

    progress = progress or Progress("none")
    root = check_new_root(root)  # before anything is fetched
    if fetch_first is not None and fetch_first < 1:
        raise BadInputError(f"--fetch-first must be at least 1, got {fetch_first}")
    server = DicomwebServer(url, read_auth(auth_file))
    refs = server.search_series(query, series_filter)
    if not refs:
        raise BadInputError(f"DICOMweb server {server.url}: no image series matches the search")
    names = case_names(refs)
    entries = [_entry(ref, names[ref.series_uid]) for ref in refs]
    wanted = fetch_first or len(entries)
    folder = fetch_folder(root)
    folder.mkdir(parents=True, exist_ok=True)
    progress.phase("dicomweb-fetch", min(wanted, len(entries)))
    now: list[dict[str, Any]] = []
    refusals: list[str] = []
    for entry in entries:
        if len(now) == wanted:
            break
        refusal = _fetch_or_refuse(server, entry, folder / entry["case"])
        if refusal is None:
            now.append(entry)
            progress.update(len(now), case=entry["case"], series=entry["series_uid"])
        else:
            refusals.append(refusal)
    if not now:
        raise BadInputError(
            f"none of the {len(refusals)} series found is a usable scan; the first: {refusals[0]}"
        )
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
        [folder / entry["case"] for entry in now],
        adopt=(folder, ADOPTED_FOLDER),
        **create,
    )


def fetch_pending(
    workspace: Workspace,
    *,
    auth_file: str | Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Fetch the pending series of a workspace made with ``fetch_first``, registering each case
    as it arrives (ranking sees it from then on); a series that cannot be a case is recorded as
    refused, with its reason, and the others go on. Holds the ``dicomweb`` job lock.

    Returns:
        ``{"fetched": [...], "refused": {case: reason}, "pending": 0}``.

    Raises:
        BadInputError: the workspace was not made from a DICOMweb server, another fetch runs,
            the server fails or refuses (what arrived stays registered; run it again).
    """
    from assft.workspace.files import default_user

    progress = progress or Progress("none")
    manifest = dicomweb_manifest(workspace)
    if manifest is None:
        raise BadInputError(
            "was not made from a DICOMweb server (assft init --dicomweb)", workspace.root
        )
    result: dict[str, Any] = {"fetched": [], "refused": {}}
    with workspace.job_lock("dicomweb", description="fetching series from a DICOMweb server"):
        manifest = dicomweb_manifest(workspace) or manifest  # as it is now that the lock is held
        pending = [entry for entry in manifest["cases"] if entry.get("status") == "pending"]
        server = DicomwebServer(str(manifest["server"]), read_auth(auth_file))
        folder = workspace.cache_folder(ADOPTED_FOLDER)
        progress.phase("dicomweb-fetch", len(pending))
        for index, entry in enumerate(pending):
            case = str(entry["case"])
            try:
                refusal = _fetch_or_refuse(server, entry, folder / case)
                if refusal is not None:
                    result["refused"][case] = refusal
                else:
                    if workspace.registry.case(case) is None:  # not registered by a killed run
                        workspace.registry.add_cases([(case, folder / case)], user=default_user())
                    result["fetched"].append(case)
            finally:
                write_json_atomic(workspace.root / DICOMWEB_MANIFEST, manifest)
            progress.update(index + 1, case=case, series=entry["series_uid"])
    result["pending"] = sum(1 for e in manifest["cases"] if e.get("status") == "pending")
    return result


def dicomweb_manifest(workspace: Workspace) -> dict[str, Any] | None:
    """The manifest of a workspace made from a DICOMweb server, checked (every case name a
    plain folder name, every UID a UID: nothing in it can lead out of the workspace), or None.

    Raises:
        BadInputError: the manifest is damaged; one line naming it.
    """
    path = workspace.root / DICOMWEB_MANIFEST
    if not path.is_file():
        return None
    manifest = read_json_document(path, what="DICOMweb manifest")
    cases = manifest.get("cases")
    if not isinstance(manifest.get("server"), str) or not isinstance(cases, list):
        raise BadInputError("is not a DICOMweb manifest (no server or no cases)", path)
    for entry in cases:
        try:
            if not isinstance(entry, dict) or not _CASE_NAME.match(str(entry.get("case", ""))):
                name = entry.get("case") if isinstance(entry, dict) else entry
                raise ValueError(f"case name {name!r} is not a plain folder name")
            check_uid(entry.get("study_uid"), "study UID", str(manifest["server"]))
            check_uid(entry.get("series_uid"), "series UID", str(manifest["server"]))
        except (ValueError, BadInputError) as error:
            raise BadInputError(f"is damaged ({error})", path) from None
    return manifest

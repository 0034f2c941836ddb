"""One DICOMweb server: the series that match a search (QIDO-RS), a series fetched into a
folder one instance at a time so that a broken fetch resumes where it stopped (WADO-RS), and
instances stored (STOW-RS). Every failure is one line naming the server, the UID and the problem.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from assft.dicom import require
from assft.dicom.dicomweb_auth import TIMEOUT_S, DicomwebAuth, check_server_url, make_session
from assft.errors import BadInputError
from assft.io.atomic import atomic_path, sweep_temporaries

if TYPE_CHECKING:
    import pydicom

__all__ = [
    "NOT_IMAGES",
    "DicomwebServer",
    "SeriesRef",
    "check_uid",
    "parse_query",
]

UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
"""A DICOM UID: digits and dots, at most 64 characters. Series folders and instance files are
named by UIDs, so a UID checked against this can never name a path outside its folder."""

NOT_IMAGES = frozenset({"SEG", "SR", "PR", "KO", "RTSTRUCT", "RTPLAN", "REG", "DOC", "OT"})
"""Modalities that are not scans: a search never makes a case of them (a Segmentation stored
back by ``assft export --dicom-seg --store`` included)."""

_STUDY, _SERIES, _SOP = "0020000D", "0020000E", "00080018"
RETRIES = 3
"""Tries of one request when the server cannot be reached or says it is busy."""


def check_uid(value: Any, what: str, server: str) -> str:
    """``value`` if it is a DICOM UID, else a one-line error naming the server."""
    if not isinstance(value, str) or len(value) > 64 or not UID_PATTERN.match(value):
        raise BadInputError(f"DICOMweb server {server}: {what} {value!r} is not a DICOM UID")
    return value


def parse_query(text: str | None) -> dict[str, str]:
    """``'Modality=MR&StudyDescription=brain*'`` -> QIDO-RS search filters.

    Raises:
        BadInputError: an item is not ``Keyword=value`` with a DICOM keyword.
    """
    if not text:
        return {}
    from pydicom.datadict import tag_for_keyword

    filters: dict[str, str] = {}
    for item in text.split("&"):
        pairs = parse_qsl(item, keep_blank_values=True)
        if len(pairs) != 1 or not pairs[0][1]:
            raise BadInputError(f"--query item {item!r} is not Keyword=value (e.g. Modality=MR)")
        key, value = pairs[0]
        if tag_for_keyword(key) is None:
            raise BadInputError(f"--query item {item!r}: {key!r} is not a DICOM keyword")
        filters[key] = value
    return filters


@dataclass(frozen=True)
class SeriesRef:
    """A series found by a search: its UIDs and what a person recognises it by."""

    study_uid: str
    series_uid: str
    patient_id: str = ""
    series_number: str = ""
    modality: str = ""
    description: str = ""


def _value(record: dict[str, Any], tag: str) -> str:
    values = (record.get(tag) or {}).get("Value") or []
    if not values:
        return ""
    value = values[0]
    if isinstance(value, dict):  # a person name: {"Alphabetic": ...}
        value = value.get("Alphabetic", "")
    return str(value)


class DicomwebServer:
    """A DICOMweb service root (``https://pacs.example.org/dicom-web``) reached with ``auth``.

    Raises (constructor):
        BadInputError: the URL is not usable (see :func:`check_server_url`).
    """

    def __init__(self, url: str, auth: DicomwebAuth | None = None) -> None:
        require("dicomweb_client", "dicomweb-client")
        from dicomweb_client.api import DICOMwebClient

        auth = auth or DicomwebAuth()
        self.url = check_server_url(url, auth)
        self._client = DICOMwebClient(self.url, session=make_session(auth))
        # Each request is tried up to 3 times (waits of 1 and 2 s) when the server cannot be
        # reached or answers "busy" (429, 503, 504): a blip does not stop a long fetch, and a
        # server that is down is named within seconds (the library's default waits 30 s).
        self._client.set_http_retry_params(
            retry=True, max_attempts=RETRIES, wait_exponential_multiplier=500
        )

    def __repr__(self) -> str:
        return f"DicomwebServer({self.url})"

    @contextlib.contextmanager
    def _answering(self, what: str) -> Iterator[None]:
        """Turn a failed request into one line naming the server and ``what`` was asked."""
        import requests

        try:
            yield
        except BadInputError:
            raise
        except requests.HTTPError as error:
            status = error.response.status_code if error.response is not None else None
            if status in (401, 403):
                raise BadInputError(
                    f"DICOMweb server {self.url} refused the credentials (HTTP {status}) for {what}"
                ) from None
            raise BadInputError(
                f"DICOMweb server {self.url} answered HTTP {status} to {what}"
            ) from None
        except requests.Timeout:
            raise BadInputError(
                f"DICOMweb server {self.url} did not answer {what} within {TIMEOUT_S:.0f} s"
            ) from None
        except requests.ConnectionError as error:
            found = re.search(r"\[Errno -?\d+\] [^'\")\]]+", str(error))
            reason = found.group(0).strip() if found else "no connection"
            raise BadInputError(
                f"DICOMweb server {self.url} does not answer {what} after {RETRIES} tries "
                f"({reason})"
            ) from None
        except requests.RequestException as error:
            raise BadInputError(f"DICOMweb server {self.url}: {what} failed ({error})") from None
        except (ValueError, KeyError, TypeError) as error:  # not DICOM JSON, not DICOM
            raise BadInputError(
                f"DICOMweb server {self.url} sent an answer to {what} that is not valid "
                f"DICOMweb ({type(error).__name__}: {error})"
            ) from None

    def search_series(
        self, filters: dict[str, str] | None = None, series_filter: str | None = None
    ) -> list[SeriesRef]:
        """The image series that match ``filters`` (QIDO-RS, every page), those whose
        description matches the regular expression ``series_filter`` (case-insensitive) when
        one is given; ordered by study, then series UID."""
        pattern = None
        if series_filter:
            try:
                pattern = re.compile(series_filter, re.IGNORECASE)
            except re.error as error:
                raise BadInputError(
                    f"--series-filter {series_filter!r} is not a regular expression ({error})"
                ) from None
        with self._answering("the series search"):
            records = self._client.search_for_series(
                search_filters=dict(filters or {}),
                fields=["SeriesDescription", "SeriesNumber", "PatientID", "Modality"],
                get_remaining=True,
            )
            found = []
            for record in records:
                ref = SeriesRef(
                    study_uid=check_uid(_value(record, _STUDY), "study UID", self.url),
                    series_uid=check_uid(_value(record, _SERIES), "series UID", self.url),
                    patient_id=_value(record, "00100020"),
                    series_number=_value(record, "00200011"),
                    modality=_value(record, "00080060").upper(),
                    description=_value(record, "0008103E"),
                )
                if ref.modality in NOT_IMAGES:
                    continue
                if pattern is not None and not pattern.search(ref.description):
                    continue
                found.append(ref)
        return sorted(found, key=lambda ref: (ref.study_uid, ref.series_uid))

    def instance_uids(self, ref: SeriesRef) -> list[str]:
        """The SOP Instance UIDs of a series (QIDO-RS), sorted."""
        with self._answering(f"the instance search of series {ref.series_uid}"):
            records = self._client.search_for_instances(
                study_instance_uid=ref.study_uid,
                series_instance_uid=ref.series_uid,
                get_remaining=True,
            )
            uids = {
                check_uid(_value(record, _SOP), "SOP instance UID", self.url) for record in records
            }
        if not uids:
            raise BadInputError(
                f"DICOMweb server {self.url}: series {ref.series_uid} has no instances"
            )
        return sorted(uids)

    def fetch_series(
        self,
        ref: SeriesRef,
        folder: Path,
        on_instance: Callable[[int, int], None] | None = None,
    ) -> list[str]:
        """Fetch every instance of a series into ``folder`` as ``<SOP Instance UID>.dcm``.

        Each file is written whole or not at all; instances already in the folder are not
        fetched again, so an interrupted fetch resumes. Each instance is checked to be of the
        series it was asked for.

        Args:
            on_instance: called with (instances present, instances in the series).

        Returns:
            The series' SOP Instance UIDs, sorted.

        Raises:
            BadInputError: the server fails, or sends an instance of another series.
        """
        uids = self.instance_uids(ref)
        folder.mkdir(parents=True, exist_ok=True)
        sweep_temporaries(folder)
        missing = [uid for uid in uids if not (folder / f"{uid}.dcm").is_file()]
        done = len(uids) - len(missing)
        if on_instance is not None:
            on_instance(done, len(uids))
        for uid in missing:
            dataset = self.retrieve_instance(ref.study_uid, ref.series_uid, uid)
            got = (
                str(dataset.get("SeriesInstanceUID", "")),
                str(dataset.get("SOPInstanceUID", "")),
            )
            if got != (ref.series_uid, uid):
                raise BadInputError(
                    f"DICOMweb server {self.url} sent instance {got[1] or '?'} of series "
                    f"{got[0] or '?'} when asked for instance {uid} of series {ref.series_uid}"
                )
            with atomic_path(folder / f"{uid}.dcm") as temporary:
                dataset.save_as(temporary, enforce_file_format=True)
            done += 1
            if on_instance is not None:
                on_instance(done, len(uids))
        return uids

    def retrieve_instance(
        self, study_uid: str, series_uid: str, sop_instance_uid: str
    ) -> pydicom.Dataset:
        """One instance (WADO-RS)."""
        with self._answering(
            f"the retrieval of instance {sop_instance_uid} of series {series_uid}"
        ):
            return self._client.retrieve_instance(
                study_instance_uid=study_uid,
                series_instance_uid=series_uid,
                sop_instance_uid=sop_instance_uid,
            )

    def store(self, datasets: Sequence[pydicom.Dataset], what: str) -> None:
        """Store instances on the server (STOW-RS)."""
        with self._answering(f"storing {what}"):
            self._client.store_instances(list(datasets))

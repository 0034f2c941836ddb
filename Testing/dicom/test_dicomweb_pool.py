"""A pool from a real DICOMweb server (Orthanc): series found by a query, fetched once into the
workspace with their UIDs recorded, a broken fetch resumed; and every way the server can fail
reported in one line, with nothing created."""

from __future__ import annotations

import json
import re
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk

from assft.dicom.dicomweb import DicomwebServer, parse_query
from assft.dicom.dicomweb_auth import DicomwebAuth, check_server_url, read_auth
from assft.dicom.dicomweb_pool import create_workspace_from_dicomweb, fetch_folder, fetch_pending
from assft.errors import BadInputError
from assft.io.imaging import read_image
from assft.workspace import Workspace
from assft_testing import run_cli
from assft_testing.dicom_server import BROKEN, PASSWORD, SERIES, UID, USER, free_port


def test_search_finds_the_series_that_match(pacs) -> None:
    server, _ = pacs
    dicomweb = DicomwebServer(server.url, DicomwebAuth(user=USER, password=PASSWORD))
    every = dicomweb.search_series()
    assert {ref.series_uid for ref in every} == {*SERIES, BROKEN}
    found = dicomweb.search_series(parse_query("PatientID=P1"), series_filter="flair")
    assert [(ref.series_uid, ref.patient_id, ref.series_number) for ref in found] == [
        (f"{UID}.2", "P1", "2")
    ]


def test_init_from_dicomweb_fetches_each_series_into_the_workspace(
    pacs, credentials, tmp_path, tiny_preset_file
) -> None:
    server, cases = pacs
    root = tmp_path / "ws"
    workspace = create_workspace_from_dicomweb(
        root,
        server.url,
        series_filter="MPRAGE|FLAIR",
        model=str(tiny_preset_file),
        label_names={1: "shell", 2: "core"},
    )
    assert [case["case_id"] for case in workspace.cases()] == ["P1-s1", "P1-s2", "P2-s1"]
    manifest = json.loads((root / "cache/dicomweb/manifest.json").read_text())
    assert manifest["server"] == server.url
    by_case = {entry["case"]: entry for entry in manifest["cases"]}
    for series_uid, (patient, number, _, index) in SERIES.items():
        entry = by_case[f"{patient}-s{number}"]
        assert (entry["study_uid"], entry["series_uid"]) == (f"{UID}.9{patient[1:]}", series_uid)
        assert len(entry["sop_instance_uids"]) == 24
        path = workspace.image_path(entry["case"])
        assert path.parent == root.resolve() / "cache" / "dicomweb"
        fetched, original = read_image(path), read_image(cases[index].image)
        assert fetched.GetSize() == original.GetSize()
        np.testing.assert_allclose(fetched.GetOrigin(), original.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(fetched.GetSpacing(), original.GetSpacing(), atol=1e-4)
        np.testing.assert_array_equal(
            sitk.GetArrayFromImage(fetched),
            np.rint(sitk.GetArrayFromImage(original) * 100),
        )
    assert not fetch_folder(root).exists()  # moved into the workspace


def test_a_broken_fetch_resumes_where_it_stopped(pacs, tmp_path) -> None:
    server, _ = pacs
    dicomweb = DicomwebServer(server.url, DicomwebAuth(user=USER, password=PASSWORD))
    ref = next(ref for ref in dicomweb.search_series() if ref.series_uid == f"{UID}.1")
    folder = tmp_path / "series"

    def stop_after_five(done: int, total: int) -> None:
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dicomweb.fetch_series(ref, folder, on_instance=stop_after_five)
    assert sorted(path.name for path in folder.iterdir()) == sorted(
        f"{UID}.1.{i}.dcm"
        for i in (1, 10, 11, 12, 13)  # whole files only, in UID order
    )
    reports: list[int] = []
    uids = dicomweb.fetch_series(ref, folder, on_instance=lambda done, total: reports.append(done))
    assert reports[0] == 5 and reports[-1] == 24  # the five fetched before are not fetched again
    assert len(uids) == 24 and len(list(folder.iterdir())) == 24


def test_a_series_with_a_missing_slice_is_named_and_nothing_is_created(
    pacs, credentials, tmp_path, tiny_preset_file
) -> None:
    server, _ = pacs
    root = tmp_path / "ws"
    with pytest.raises(BadInputError) as error:
        create_workspace_from_dicomweb(
            root,
            server.url,
            series_filter="BROKEN",
            model=str(tiny_preset_file),
            label_names={1: "shell", 2: "core"},
        )
    message = str(error.value)
    assert "\n" not in message
    assert server.url in message and BROKEN in message and "missing slice" in message
    assert not root.exists()


def test_refused_credentials_and_a_silent_server_are_one_line(pacs, tmp_path, monkeypatch) -> None:
    server, _ = pacs
    monkeypatch.setenv("ASSFT_DICOMWEB_TOKEN", "not-the-token")
    refused = run_cli("init", str(tmp_path / "ws"), "--dicomweb", server.url)
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0
    assert f"DICOMweb server {server.url} refused the credentials (HTTP 401)" in refused.stderr
    assert not (tmp_path / "ws").exists() and not fetch_folder(tmp_path / "ws").exists()
    closed = f"http://127.0.0.1:{free_port()}/dicom-web"
    started = time.monotonic()
    with pytest.raises(BadInputError) as error:
        DicomwebServer(closed).search_series()
    assert re.fullmatch(
        rf"DICOMweb server {re.escape(closed)} does not answer the series search after 3 tries "
        r"\(\[Errno \d+\] [^)]*refused[^)]*\)",
        str(error.value),
    )
    assert time.monotonic() - started < 10  # named within seconds, not after the library's 30


def test_credentials_never_travel_in_the_url_or_in_clear(tmp_path, monkeypatch) -> None:
    with pytest.raises(BadInputError, match="credentials in the URL are refused"):
        check_server_url("https://lab:pw@pacs.example.org/dicom-web")
    with pytest.raises(BadInputError, match="unencrypted over http to pacs.example.org"):
        check_server_url("http://pacs.example.org/dicom-web", DicomwebAuth(token="t"))
    assert check_server_url("http://localhost:8042/dicom-web/", DicomwebAuth(token="t")) == (
        "http://localhost:8042/dicom-web"
    )
    for name in ("ASSFT_DICOMWEB_TOKEN", "ASSFT_DICOMWEB_USER", "ASSFT_DICOMWEB_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    file = tmp_path / "auth.json"
    file.write_text('{"user": "lab"}')
    with pytest.raises(BadInputError, match="auth.json: password must be"):
        read_auth(file)
    file.write_text('{"token": "abc"}')
    auth = read_auth(file)
    assert auth.token == "abc" and "abc" not in repr(auth)
    monkeypatch.setenv("ASSFT_DICOMWEB_USER", "lab")
    with pytest.raises(BadInputError, match="ASSFT_DICOMWEB_PASSWORD is not"):
        read_auth()
    with pytest.raises(BadInputError, match="not a DICOM keyword"):
        parse_query("Modalty=MR")


def test_without_the_dicom_extra_the_error_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "dicomweb_client", None)  # as if not installed
    with pytest.raises(
        BadInputError, match=r'dicomweb-client package: pip install "assft\[dicom\]"'
    ):
        DicomwebServer("https://pacs.example.org/dicom-web")


def test_a_large_archive_starts_with_a_few_series_and_fetches_the_rest_as_it_goes(
    pacs, credentials, tmp_path, tiny_preset_file
) -> None:
    """--fetch-first: the workspace exists after one series; `assft fetch` registers each other
    case as it arrives, records the broken series as refused and goes on; a second fetch has
    nothing left to do; a manifest that would lead out of the workspace is refused."""
    server, _ = pacs
    root = tmp_path / "ws"
    created = run_cli(
        "init",
        str(root),
        "--dicomweb",
        server.url,
        "--fetch-first",
        "1",
        "--model",
        str(tiny_preset_file),
        "--label-names",
        "1:shell,2:core",
    )
    assert created.returncode == 0, created.stderr
    assert "2 series wait on the server" in created.stdout
    workspace = Workspace.open(root)
    # the broken series, first in UID order, is recorded as refused; the first usable one is a case
    assert [case["case_id"] for case in workspace.cases()] == ["P1-s1"]

    fetched = run_cli("fetch", str(root), "--progress", "json")
    assert fetched.returncode == 0, fetched.stderr
    events = [json.loads(line) for line in fetched.stdout.splitlines()]
    arrived = [e["case"] for e in events if e.get("phase") == "dicomweb-fetch" and e["done"]]
    assert arrived == ["P1-s2", "P2-s1"]  # in the manifest's order, one at a time
    assert events[-1]["fetched"] == ["P1-s2", "P2-s1"] and events[-1]["pending"] == 0
    assert [case["case_id"] for case in workspace.cases()] == ["P1-s1", "P1-s2", "P2-s1"]
    manifest = json.loads((root / "cache/dicomweb/manifest.json").read_text())
    assert [(e["case"], e["status"]) for e in manifest["cases"]] == [
        ("P3-s1", "refused"),
        ("P1-s1", "fetched"),
        ("P1-s2", "fetched"),
        ("P2-s1", "fetched"),
    ]
    reason = manifest["cases"][0]["reason"]
    assert BROKEN in reason and "missing slice" in reason

    again = fetch_pending(workspace)
    assert again == {"fetched": [], "refused": {}, "pending": 0}

    manifest["cases"][2]["status"] = "pending"
    manifest["cases"][2]["case"] = "../../outside"
    (root / "cache/dicomweb/manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BadInputError, match="manifest.json: is damaged .*not a plain folder name"):
        fetch_pending(workspace)
    assert not (tmp_path / "outside").exists()

"""Tests of assft.io.imaging on tiny synthetic volumes written to tmp_path."""

from __future__ import annotations

import gzip
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from assft.errors import BadInputError
from assft.io.image_names import IMAGE_SUFFIXES, case_id_from_path
from assft.io.imaging import (
    MAX_EXTENT_MM,
    MAX_IMAGE_VOXELS,
    read_image,
    read_label,
    write_image_atomic,
)
from assft.io.voxel_grids import geometry_mismatch, image_geometry
from assft_testing.workspaces import write_dicom_series as write_series

SIZE_XYZ = (8, 9, 10)
SPACING = (0.8, 0.9, 2.5)
ORIGIN = (-10.0, 5.0, 3.25)
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def make_volume(array: np.ndarray | None = None, dtype: type = np.float32) -> sitk.Image:
    """A small volume with a non-trivial geometry (array is z, y, x)."""
    if array is None:
        rng = np.random.default_rng(0)
        array = rng.normal(100, 20, SIZE_XYZ[::-1])
    image = sitk.GetImageFromArray(np.asarray(array).astype(dtype))
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    return image


def write_dicom_series(
    image: sitk.Image, folder: Path, series_uid: str = "1.2.826.0.1.3680043.2.1125.1"
) -> Path:
    """Write ``image`` as one DICOM file per slice, with the tags GDCM needs to restack it."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.Cast(image, sitk.sitkInt16)
    direction = image.GetDirection()
    orientation = "\\".join(str(v) for v in (*direction[0:7:3], *direction[1:8:3]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for index in range(image.GetDepth()):
        slice_ = image[:, :, index]
        for tag, value in (
            ("0008|0060", "CT"),
            ("0008|0008", "DERIVED\\SECONDARY"),
            ("0020|000d", "1.2.826.0.1.3680043.2.1125.100"),
            ("0020|000e", series_uid),
            ("0020|0037", orientation),
            ("0020|0013", str(index + 1)),
            ("0008|0018", f"{series_uid}.{index + 1}"),
            (
                "0020|0032",
                "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, index))),
            ),
        ):
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{index:03d}.dcm"))
        writer.Execute(slice_)
    return folder


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_read_image_formats_keep_geometry(tmp_path: Path, suffix: str) -> None:
    image = make_volume()
    path = tmp_path / f"scan{suffix}"
    sitk.WriteImage(image, str(path))
    result = read_image(path)
    assert result.GetPixelID() == sitk.sitkFloat32
    assert result.GetSize() == SIZE_XYZ
    assert geometry_mismatch(result, image) is None
    np.testing.assert_allclose(sitk.GetArrayFromImage(result), sitk.GetArrayFromImage(image))


def test_read_image_casts_integer_pixels(tmp_path: Path) -> None:
    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(make_volume(np.full(SIZE_XYZ[::-1], -1000), np.int16), str(path))
    result = read_image(path)
    assert result.GetPixelID() == sitk.sitkFloat32
    assert float(sitk.GetArrayViewFromImage(result).max()) == -1000.0


def test_read_image_dicom_series(tmp_path: Path) -> None:
    array = np.arange(np.prod(SIZE_XYZ)).reshape(SIZE_XYZ[::-1]) % 500
    image = make_volume(array, np.int16)
    folder = write_dicom_series(image, tmp_path / "patient one")
    result = read_image(folder)
    assert result.GetSize() == SIZE_XYZ
    np.testing.assert_allclose(result.GetSpacing(), SPACING, atol=1e-4)
    np.testing.assert_allclose(result.GetOrigin(), ORIGIN, atol=1e-4)
    np.testing.assert_allclose(result.GetDirection(), DIRECTION, atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result), array)
    assert case_id_from_path(folder) == "patient_one"


def test_read_image_folder_without_dicom(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(BadInputError, match="without a DICOM series") as caught:
        read_image(tmp_path)
    assert str(tmp_path) in str(caught.value)


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _bad_files(tmp_path: Path) -> list[tuple[Path, str]]:
    """(file, expected message part) for every kind of bad image."""
    good = tmp_path / "good.nii"
    sitk.WriteImage(make_volume(), str(good))
    content = good.read_bytes()
    good_gz = tmp_path / "good.nii.gz"
    sitk.WriteImage(make_volume(), str(good_gz))
    gz_content = good_gz.read_bytes()
    nrrd = tmp_path / "good.nrrd"
    sitk.WriteImage(make_volume(), str(nrrd), True)
    nrrd_content = nrrd.read_bytes()

    cases = [
        (tmp_path / "missing.nii.gz", "does not exist"),
        (_write_bytes(tmp_path / "garbage.nii.gz", b"not an image at all" * 20), "not an image"),
        (_write_bytes(tmp_path / "cut.nii", content[: len(content) // 2]), "truncated"),
        (_write_bytes(tmp_path / "cut.nii.gz", gz_content[: len(gz_content) // 2]), "truncated"),
        (_write_bytes(tmp_path / "cut.nrrd", nrrd_content[:-200]), "truncated"),
        (_write_bytes(tmp_path / "header-only.nii", content[:348]), "truncated"),
    ]
    flat = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((9, 8), np.float32)), str(flat))
    cases.append((flat, "is 2D"))
    single_slice = tmp_path / "single-slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((1, 9, 8), np.float32)), str(single_slice))
    cases.append((single_slice, "is 2D"))
    four_d = tmp_path / "fmri.nii.gz"
    sitk.WriteImage(
        sitk.GetImageFromArray(np.zeros((3, 4, 5, 6), np.float32), isVector=False), str(four_d)
    )
    cases.append((four_d, "is 4D"))
    vector = tmp_path / "rgb.mha"
    sitk.WriteImage(
        sitk.GetImageFromArray(np.zeros((4, 5, 6, 3), np.float32), isVector=True), str(vector)
    )
    cases.append((vector, "3 components"))
    nan = np.zeros(SIZE_XYZ[::-1], np.float32)
    nan[0, 0, :3] = np.nan
    nan[1, 1, 1] = np.inf
    nan_path = tmp_path / "nan.nii.gz"
    sitk.WriteImage(make_volume(nan), str(nan_path))
    cases.append((nan_path, "contains 3 NaN voxels and 1 infinite voxels"))
    for suffix in (".nii", ".nrrd", ".mha"):
        other = tmp_path / f"nan{suffix}"
        sitk.WriteImage(make_volume(nan), str(other))
        cases.append((other, "contains 3 NaN voxels and 1 infinite voxels"))
    double_nan = tmp_path / "nan-float64.nii"
    sitk.WriteImage(make_volume(nan, np.float64), str(double_nan))
    cases.append((double_nan, "contains 3 NaN voxels"))
    # Finite but absurd: a NIfTI whose scale factor (scl_slope 3e38) makes every voxel huge;
    # normalising it would overflow to NaN scores in the ranking.
    scaled = tmp_path / "scl-slope.nii"
    sitk.WriteImage(make_volume(np.ones(SIZE_XYZ[::-1], np.int16)), str(scaled))
    header = bytearray(scaled.read_bytes())
    struct.pack_into("<f", header, 112, 3e38)  # scl_slope
    scaled.write_bytes(bytes(header))
    cases.append((scaled, "holds voxel values up to 3e+38, beyond the 1e+12 no scanner writes"))
    return cases


def test_bad_images_are_refused_naming_the_file(tmp_path: Path) -> None:
    for path, message in _bad_files(tmp_path):
        before = path.read_bytes() if path.exists() else None
        with pytest.raises(BadInputError) as caught:
            read_image(path)
        text = str(caught.value)
        assert text.startswith(f"{path}: "), text
        assert message in text, text
        assert "\n" not in text
        assert caught.value.exit_code == 2
        assert (path.read_bytes() if path.exists() else None) == before


def test_4d_image_with_one_volume_is_read_as_3d(tmp_path: Path) -> None:
    path = tmp_path / "one-volume.nii.gz"
    sitk.WriteImage(
        sitk.GetImageFromArray(np.ones((1, 10, 9, 8), np.float32), isVector=False), str(path)
    )
    assert read_image(path).GetSize() == SIZE_XYZ


def test_read_label_checks_values(tmp_path: Path) -> None:
    labels = np.zeros(SIZE_XYZ[::-1])
    labels[2:4, 2:5, 1:6] = 2
    path = tmp_path / "label.nii.gz"
    sitk.WriteImage(make_volume(labels, np.float32), str(path))
    result = read_label(path)
    assert result.GetPixelID() == sitk.sitkUInt16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result), labels)

    fractional = labels.copy()
    fractional[0, 0, 0] = 0.5
    bad = tmp_path / "soft.nii.gz"
    sitk.WriteImage(make_volume(fractional), str(bad))
    with pytest.raises(BadInputError, match="non-integer values") as caught:
        read_label(bad)
    assert str(bad) in str(caught.value)

    negative = tmp_path / "negative.nrrd"
    sitk.WriteImage(make_volume(labels - 3, np.int16), str(negative))
    with pytest.raises(BadInputError, match="negative label values"):
        read_label(negative)


def test_image_geometry_is_plain_lists() -> None:
    geometry = image_geometry(make_volume())
    assert geometry == {
        "size": list(SIZE_XYZ),
        "spacing": list(SPACING),
        "origin": list(ORIGIN),
        "direction": list(DIRECTION),
    }


def test_geometry_mismatch_describes_the_first_difference() -> None:
    reference = make_volume()
    assert geometry_mismatch(make_volume(), reference) is None

    nearly = make_volume()
    nearly.SetSpacing((0.8 + 1e-6, 0.9, 2.5))
    assert geometry_mismatch(nearly, reference) is None

    spacing = make_volume()
    spacing.SetSpacing((0.8, 0.9, 5.0))
    assert geometry_mismatch(spacing, reference) == (
        "spacing (0.8, 0.9, 5.0) differs from the image's (0.8, 0.9, 2.5)"
    )
    origin = make_volume()
    origin.SetOrigin((-10.0, 5.0, 4.0))
    assert geometry_mismatch(origin, reference).startswith("origin (-10.0, 5.0, 4.0)")
    direction = make_volume()
    direction.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert geometry_mismatch(direction, reference).startswith("direction")
    size = make_volume(np.zeros((10, 9, 7)))
    assert (
        geometry_mismatch(size, reference) == "size (7, 9, 10) differs from the image's (8, 9, 10)"
    )


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_write_image_atomic_round_trip(tmp_path: Path, suffix: str) -> None:
    image = make_volume()
    path = write_image_atomic(image, tmp_path / f"out{suffix}")
    assert path == tmp_path / f"out{suffix}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"out{suffix}"]
    exact = 0.0 if suffix != ".nii.gz" else 1e-6  # NIfTI keeps spacing and origin as float32
    assert geometry_mismatch(read_image(path), image, tolerance=exact) is None


def test_write_image_atomic_failure_keeps_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "label.nii.gz"
    write_image_atomic(make_volume(np.zeros(SIZE_XYZ[::-1])), path)
    before = path.read_bytes()

    def broken_replace(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_image_atomic(make_volume(np.ones(SIZE_XYZ[::-1])), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["label.nii.gz"]


def test_write_image_atomic_refuses_detached_headers(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="atomically"):
        write_image_atomic(make_volume(), tmp_path / "scan.mhd")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("/data/sub-01_T1w.nii.gz", "sub-01_T1w"),
        ("/data/Case 7 (ax).NII.GZ", "Case_7__ax_"),
        ("/data/.hidden.nrrd", "hidden"),
        ("/data/brain.v2.mha", "brain.v2"),
        ("/data/scan.mhd", "scan"),
        ("/data/dicom/Séries 3/", "S_ries_3"),
        ("/data/__.nrrd", "case"),
    ],
)
def test_case_id_from_path(name: str, expected: str) -> None:
    assert case_id_from_path(name) == expected


def test_image_suffixes_are_lower_case_and_complete() -> None:
    assert IMAGE_SUFFIXES == (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


# Limits checked from the header, before any pixel is read (issue 11) ---------------------------

_NRRD_HEADER = (
    "NRRD0004\ntype: float\ndimension: 3\nsizes: {sizes}\nspacings: 1 1 1\nencoding: {encoding}\n"
    "endian: little\n\n"
)
_MHA_HEADER = (
    "ObjectType = Image\nNDims = 3\nDimSize = {sizes}\nElementType = MET_FLOAT\n"
    "ElementSpacing = 1 1 1\n{extra}ElementDataFile = LOCAL\n"
)


def _crafted_headers(folder: Path) -> list[tuple[Path, str]]:
    """Tiny files (about 1 KB) whose header declares 1000^3 float voxels (4 GB), or more."""
    billion = "1000 1000 1000"
    files = {
        "raw.nrrd": (_NRRD_HEADER.format(sizes=billion, encoding="raw"), b"\0" * 1000),
        "gzip.nrrd": (
            _NRRD_HEADER.format(sizes=billion, encoding="gzip"),
            gzip.compress(b"\0" * 100_000),
        ),
        "text.nrrd": (_NRRD_HEADER.format(sizes=billion, encoding="ascii"), b"0 " * 500),
        "raw.mha": (_MHA_HEADER.format(sizes=billion, extra=""), b"\0" * 1000),
        "compressed.mha": (
            _MHA_HEADER.format(sizes=billion, extra="CompressedData = True\n"),
            zlib.compress(b"\0" * 100_000),
        ),
        "too-many.mha": (
            _MHA_HEADER.format(sizes="2000 2000 2000", extra="CompressedData = True\n"),
            zlib.compress(b"\0" * 100_000),
        ),
    }
    expected = {
        "raw.nrrd": "announces 1000x1000x1000 voxels in 4000000000 bytes, the file holds 1000",
        "gzip.nrrd": "compressed bytes can hold",
        "text.nrrd": "voxels as text, the file holds 1000 bytes",
        "raw.mha": "announces 1000x1000x1000 voxels in 4000000000 bytes, the file holds 1000",
        "compressed.mha": "compressed bytes can hold",
        "too-many.mha": f"more than the {MAX_IMAGE_VOXELS} an image may have (MAX_IMAGE_VOXELS)",
    }
    found = []
    for name, (header, data) in files.items():
        path = folder / name
        path.write_bytes(header.encode("ascii") + data)
        assert path.stat().st_size < 2000
        found.append((path, expected[name]))
    # Issue 21, item 7: detached headers whose data file is a device (directly, through a link,
    # or a pipe beside the header), a list of files, and a header longer than 64 KB.
    detached = (
        "NRRD0004\ntype: float\ndimension: 3\nsizes: 1000 1000 1000\nencoding: raw\n"
        "endian: little\n"
    )
    (folder / "zero.raw").symlink_to("/dev/zero")
    os.mkfifo(folder / "pipe.raw")
    for name, data_file, message in (
        ("device.nhdr", "/dev/zero", "outside the header's own folder"),
        ("random.nhdr", "/dev/urandom", "outside the header's own folder"),
        ("link.nhdr", "zero.raw", "outside the header's own folder"),
        ("pipe.nhdr", "pipe.raw", "which is not a regular file"),
        ("list.nhdr", "LIST", "names several data files"),
        ("escape.nhdr", "../../../../dev/zero", "outside the header's own folder"),
    ):
        path = folder / name
        path.write_text(detached + f"data file: {data_file}\n", encoding="ascii")
        found.append((path, message))
    # Other line endings, which ITK's NRRD reader takes too: CR only, and CR LF.
    for ending, name in (("\r", "cr.nhdr"), ("\r\n", "crlf.nhdr")):
        text = (detached + "data file: /dev/zero\n").replace("\n", ending)
        (folder / name).write_bytes(text.encode("ascii"))
        found.append((folder / name, "outside the header's own folder"))
    long = folder / "long-header.nrrd"
    comment = "# " + "x" * (70 * 1024) + "\n"
    header = _NRRD_HEADER.format(sizes="1000 1000 1000", encoding="raw")
    long.write_bytes((header[:-1] + comment + "\n").encode("ascii") + b"\0" * 1000)
    found.append((long, "announces 1000x1000x1000 voxels in 4000000000 bytes, the file holds 1000"))
    return found


_READ_IN_A_FRESH_PROCESS = """
import json, sys
from assft.errors import BadInputError
from assft.io.imaging import read_image
from assft.runtime.portable import peak_memory_mb

messages = []
for name in sys.argv[1:]:
    try:
        read_image(name)
        messages.append(None)
    except BadInputError as error:
        messages.append(str(error))
print(json.dumps({"messages": messages, "peak_mb": peak_memory_mb()}))
"""


def test_tiny_files_declaring_huge_images_are_refused_without_allocating(tmp_path: Path) -> None:
    crafted = _crafted_headers(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", _READ_IN_A_FRESH_PROCESS, *(str(path) for path, _ in crafted)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # neither ITK nor MetaIO printed anything
    document = json.loads(result.stdout)
    for (path, expected), message in zip(crafted, document["messages"], strict=True):
        assert message is not None, path
        assert message.startswith(f"{path}: ") and expected in message, message
        assert "\n" not in message
    # Reading one of them would take 4 GB (the old peak was 4.3 GB); Python, numpy and
    # SimpleITK alone take about 150 MB.
    assert document["peak_mb"] < 400, document


def test_an_extent_beyond_the_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "wide.nii.gz"
    wide = make_volume(np.zeros((8, 8, 8), np.float32))
    wide.SetSpacing((400.0, 400.0, 400.0))
    sitk.WriteImage(wide, str(path))
    with pytest.raises(BadInputError) as caught:
        read_image(path)
    assert str(caught.value) == (
        f"{path}: spans 3200 mm along axis x (8 voxels of 400 mm), more than the "
        f"{MAX_EXTENT_MM:g} mm a scan may span (MAX_EXTENT_MM): is the voxel spacing in its "
        "header right?"
    )
    ordinary = tmp_path / "ordinary.nrrd"
    body = make_volume(np.zeros((8, 8, 8), np.float32))
    body.SetSpacing((2.0, 2.0, MAX_EXTENT_MM / 8))
    sitk.WriteImage(body, str(ordinary))
    assert read_image(ordinary).GetSize() == (8, 8, 8)


def _one_folder_two_series(folder: Path) -> Path:
    both = folder / "both"
    both.mkdir()
    for seed in (0, 1):
        series = write_series(folder / f"series{seed}", seed=seed)
        for file in series.iterdir():
            shutil.copyfile(file, both / f"{seed}-{file.name}")
    return both


def test_a_folder_with_two_dicom_series_is_refused_naming_them(tmp_path: Path) -> None:
    both = _one_folder_two_series(tmp_path)
    with pytest.raises(BadInputError) as caught:
        read_image(both)
    assert str(caught.value) == (
        f"{both}: holds 2 DICOM series (1.2.826.0.1.3680043.2.1125.1 (10 files), "
        "1.2.826.0.1.3680043.2.1125.2 (10 files)); a case is one series: put each series in its "
        "own folder"
    )


def test_a_dicom_series_with_a_missing_slice_is_refused(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    series = write_series(tmp_path / "gap")
    (series / "IM0004").unlink()
    with pytest.raises(BadInputError) as caught:
        read_image(series)
    assert str(caught.value) == (
        f"{series}: DICOM series 1.2.826.0.1.3680043.2.1125.1 (9 files) has a missing slice or "
        "uneven slice spacing (slices 4 and 5 lie 5 mm apart, the others 2.5 mm); it is "
        "refused rather than read with a wrong spacing"
    )
    assert capfd.readouterr().err == ""  # ITK's own warning stays off the terminal
    assert read_image(write_series(tmp_path / "whole")).GetSize() == (8, 9, 10)


def test_what_metaio_prints_about_a_truncated_file_stays_off_the_terminal(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    whole = tmp_path / "whole.mha"
    sitk.WriteImage(make_volume(), str(whole), True)
    data = whole.read_bytes()
    cut = _write_bytes(tmp_path / "cut.mha", data[: len(data) // 2])
    with pytest.raises(BadInputError) as caught:
        read_image(cut)
    assert str(caught.value).startswith(f"{cut}: is corrupted, truncated or not an image")
    assert "data not read completely" in str(caught.value)  # MetaIO's words, in our line
    assert capfd.readouterr().err == ""
    print("stderr works again", file=sys.stderr)
    assert capfd.readouterr().err == "stderr works again\n"


def test_an_image_written_to_a_full_disk_is_refused_and_the_old_file_kept(tmp_path):
    """ITK leaves an empty or short file on a full disk without an error: the atomic write reads
    the new file back and refuses it, so the destination keeps its old contents."""
    import errno

    from assft_testing.mounts import fill, tmpfs

    old = sitk.GetImageFromArray(np.zeros((10, 9, 8), dtype=np.uint8))
    new = sitk.GetImageFromArray(
        np.random.default_rng(0).integers(0, 3, (10, 9, 8), dtype=np.uint8)
    )
    with tmpfs(tmp_path / "disk", "64k") as disk:
        destination = write_image_atomic(old, disk / "label.nii.gz")
        before = destination.read_bytes()
        filler = fill(disk)
        with pytest.raises(OSError) as refused:
            write_image_atomic(new, destination)
        filler.unlink()
        assert refused.value.errno == errno.ENOSPC
        assert destination.read_bytes() == before
        assert sorted(p.name for p in disk.iterdir()) == ["label.nii.gz"]


def _nrrd_with(path: Path, **fields: str) -> Path:
    """A NRRD file of :func:`make_volume` with header fields replaced (``space_origin=...``)."""
    sitk.WriteImage(make_volume(), str(path))
    head, _, body = path.read_bytes().partition(b"\n\n")
    lines = []
    for line in head.decode().split("\n"):
        key = line.partition(":")[0].strip().replace(" ", "_")
        lines.append(f"{key.replace('_', ' ')}: {fields[key]}" if key in fields else line)
    path.write_bytes("\n".join(lines).encode() + b"\n\n" + body)
    return path


def _nifti_with(
    path: Path, *, pixdim_x: float | None = None, codes=None, srow_x=None, floats=None
) -> Path:
    """An uncompressed NIfTI-1 file of :func:`make_volume` with raw header fields patched
    (``floats``: ``{byte offset: value}``, e.g. 256 quatern_b, 276 qoffset_z)."""
    import struct

    sitk.WriteImage(make_volume(), str(path))
    data = bytearray(path.read_bytes())
    if pixdim_x is not None:
        struct.pack_into("<f", data, 80, pixdim_x)
    if codes is not None:
        struct.pack_into("<hh", data, 252, *codes)
    if srow_x is not None:
        struct.pack_into("<4f", data, 280, *srow_x)
    for offset, value in (floats or {}).items():
        struct.pack_into("<f", data, offset, value)
    path.write_bytes(bytes(data))
    return path


def _sform_scaled(path: Path, factor: float) -> Path:
    """The NIfTI-1 file at ``path`` with its sform's rotation and scale multiplied by
    ``factor`` (its voxel sizes then differ from pixdim's)."""
    data = bytearray(path.read_bytes())
    for offset in (280, 296, 312):  # srow_x, srow_y, srow_z
        row = struct.unpack_from("<4f", data, offset)
        struct.pack_into("<4f", data, offset, *(v * factor for v in row[:3]), row[3])
    path.write_bytes(bytes(data))
    return path


def test_crafted_geometry_is_refused_in_one_line_or_read_as_simpleitk_defines_it(tmp_path):
    refused = [
        (
            _nrrd_with(tmp_path / "zero.nrrd", space_directions="(0,0,0) (0,0.9,0) (0,0,2.5)"),
            "Zero-valued spacing",
        ),
        (
            _nrrd_with(tmp_path / "nan-origin.nrrd", space_origin="(nan,5,3.25)"),
            "is corrupted, truncated or not an image",
        ),
        (
            _nrrd_with(tmp_path / "nan-axis.nrrd", space_directions="(nan,0,0) (0,1,0) (0,0,1)"),
            "is corrupted, truncated or not an image",
        ),
        (
            _nrrd_with(tmp_path / "sheared.nrrd", space_directions="(1,0,0) (1,1,0) (0,0,1)"),
            "has axes that are not perpendicular unit vectors",
        ),
        (
            _nifti_with(tmp_path / "no-size.nii", pixdim_x=0.0, codes=(0, 0)),
            "declares the voxel size (0.0, 0.9, 2.5) (pixdim) and no sform",
        ),
        (
            _nifti_with(tmp_path / "negative-size.nii", pixdim_x=-0.8, codes=(1, 0)),
            "declares the voxel size (-0.8, 0.9, 2.5) (pixdim) and no sform",
        ),
        (
            _nifti_with(tmp_path / "two-transforms.nii", srow_x=(0.0, 1.8, 0.0, 40.0)),
            "has a qform and an sform that disagree",
        ),
        (
            _nifti_with(tmp_path / "nan-qoffset.nii", codes=(1, 0), floats={276: math.nan}),
            "has NaN or infinite values in the transform it uses (qoffset_z)",
        ),
        (
            _nifti_with(tmp_path / "nan-quatern.nii", codes=(1, 0), floats={256: math.nan}),
            "has NaN or infinite values in the transform it uses (quatern_b)",
        ),
        (
            _nifti_with(tmp_path / "inf-srow.nii", codes=(0, 1), srow_x=(math.inf, 0, 0, 0)),
            "is corrupted, truncated or not an image",  # ITK refuses this one itself
        ),
        # Found by the attack of 2026-12-07: ITK read each of these one way, nibabel (and so
        # FSL) another, or not at all.
        (
            _sform_scaled(_nifti_with(tmp_path / "sform-scale.nii", codes=(0, 1)), 2.0),
            "has an sform whose voxel sizes (1.6, 1.8, 5.0) disagree with its pixdim "
            "(0.8, 0.9, 2.5)",
        ),
        (
            _nifti_with(tmp_path / "sform-code.nii", codes=(0, 99)),
            "has sform_code 99, which NIfTI does not define (0 to 5)",
        ),
        (
            _nifti_with(
                tmp_path / "quaternion.nii", codes=(1, 0), floats={256: 5.0, 260: 5.0, 264: 5.0}
            ),
            "has a qform quaternion (quatern_b, c, d) of squared length 75, above 1",
        ),
    ]
    for path, message in refused:
        with pytest.raises(BadInputError) as caught:
            read_image(path)
        text = str(caught.value)
        assert text.startswith(f"{path}: ") and message in text and "\n" not in text, text
    # A negative step along an axis is a flipped axis, as SimpleITK reads it.
    flipped = read_image(
        _nrrd_with(tmp_path / "flip.nrrd", space_directions=("(0,-0.8,0) (-0.9,0,0) (0,0,2.5)"))
    )
    assert flipped.GetSpacing() == pytest.approx((0.8, 0.9, 2.5))
    assert flipped.GetDirection() == pytest.approx((0, -1, 0, -1, 0, 0, 0, 0, 1))
    # qform and sform that agree within the tolerance (float rounding) are read.
    close = _nifti_with(tmp_path / "close.nii", srow_x=None)
    assert read_image(close).GetSpacing() == pytest.approx(SPACING)
    # A label value a hair above 1 is said with its digits, not rounded to "1".
    label = np.zeros(SIZE_XYZ[::-1])
    label[1:3, 1:3, 1:3] = 1.0000001
    path = tmp_path / "almost-one.nii.gz"
    sitk.WriteImage(make_volume(label, np.float64), str(path))
    with pytest.raises(BadInputError, match=r"holds 8 non-integer values \(e\.g\. 1\.0000001\)"):
        read_label(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
@pytest.mark.parametrize("name", ["label.nii.gz", "label.nii", "label.nrrd", "label.mha"])
def test_a_pipe_named_like_an_image_is_refused_not_waited_on(tmp_path: Path, name: str) -> None:
    """Reading a pipe blocks until something writes to it: refused before ITK opens it."""
    pipe = tmp_path / name
    os.mkfifo(pipe)
    with pytest.raises(BadInputError, match="is not a regular file"):
        read_label(pipe)
    with pytest.raises(BadInputError, match="is not a regular file"):
        read_image(pipe)

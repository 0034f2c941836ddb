"""Reading, checking and writing 3D images and label maps (SimpleITK).

Every reader returns a 3D scalar image or raises :class:`~assft.errors.BadInputError` with a
one-line message that names the file and says what is wrong with it, so that a bad scan in a
pool of hundreds is reported as such and not as a stack trace from deep inside ITK.

Before any pixel is read, the header is checked against the limits below: the voxel count it
declares (:data:`MAX_IMAGE_VOXELS`), the bytes it declares against the bytes the file holds
(uncompressed data), or against what its compressed bytes can hold at most (deflate), and the
physical extent (:data:`MAX_EXTENT_MM`). A 1 KB file declaring a billion voxels is refused
without allocating them. What ITK, MetaIO or GDCM print on their own while probing a file is
kept off the terminal: the user sees the one-line error only.

The voxel grid is checked in :mod:`assft.io.voxel_grids`; which file names are images, and
the case id a name gives, is :mod:`assft.io.image_names`.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from assft.errors import BadInputError
from assft.io.atomic import PinnedFolder, atomic_path, short_write_error
from assft.io.declared_size import (
    MAX_EXTENT_MM,
    MAX_IMAGE_VOXELS,
    check_declared,
    check_extent,
    dicom_layout,
    file_layout,
    raise_non_finite,
    scan_nifti,
)
from assft.io.image_names import image_suffix
from assft.io.voxel_grids import check_geometry

__all__ = [
    "MAX_EXTENT_MM",
    "MAX_ABS_INTENSITY",
    "MAX_IMAGE_VOXELS",
    "dicom_series_files",
    "is_dicom_series",
    "itk_file_name",
    "read_header",
    "read_image",
    "read_label",
    "write_image_atomic",
]

MAX_ABS_INTENSITY = 1e12
"""Largest voxel magnitude an image may hold. CT, MRI and PET values stay many orders below it;
beyond it the intensity normalisation's float32 arithmetic overflows (a wrong ``scl_slope``
makes such values from an ordinary scan)."""

_SINGLE_FILE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
_MAX_LABEL_VALUE = int(np.iinfo(np.uint16).max)


_STDERR_LOCK = threading.RLock()  # file descriptor 2 is the process's: one redirection at a time


@contextlib.contextmanager
def _native_stderr_to(captured: list[str]) -> Iterator[None]:
    """Send what native code writes to file descriptor 2 into ``captured`` (lines) meanwhile.

    MetaIO and GDCM print to ``std::cerr`` themselves, past ITK's warning switch. The descriptor
    is pointed at a temporary file and restored afterwards (``os.dup2`` works on POSIX and on
    Windows); where there is no descriptor 2 to redirect (e.g. ``pythonw``) nothing is captured.
    """
    with _STDERR_LOCK, tempfile.TemporaryFile() as sink:
        try:
            if sys.stderr is not None:
                sys.stderr.flush()
            saved: int | None = os.dup(2)
        except (OSError, ValueError):
            saved = None
        if saved is not None:
            os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            if saved is not None:
                os.dup2(saved, 2)
                os.close(saved)
                sink.seek(0)
                text = sink.read().decode("utf-8", errors="replace")
                captured.extend(line.strip() for line in text.splitlines() if line.strip())


@contextlib.contextmanager
def _quiet_itk(captured: list[str] | None = None) -> Iterator[None]:
    """Silence ITK for a moment: its warnings and what MetaIO or GDCM print to stderr.

    Args:
        captured: receives the lines native code printed, once the block is left (e.g. to name
            the reason of a failed read); None: they are dropped.
    """
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        with _native_stderr_to([] if captured is None else captured):
            yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def _itk_reason(error: RuntimeError, path: Path, printed: Sequence[str] = ()) -> str:
    """Turn SimpleITK's multi-line exception text (and what ITK printed) into a short reason."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    lines += [line for line in printed if not line.startswith(("WARNING", "ERROR"))][:1]
    reasons: list[str] = []
    for line in lines:
        if line.startswith("Exception thrown in SimpleITK"):
            continue
        line = re.sub(r"^.*?ERROR:\s*", "", line)
        line = re.sub(r"^\w+\(0x[0-9a-fA-F]+\):\s*", "", line)
        line = re.sub(r"^\[\w+\]\s*\w+:\s*", "", line)
        line = line.replace(f'"{path}"', "the file").replace(str(path), "the file")
        if line.startswith("Reason: No such file"):
            continue  # the file exists: ITK says this about files it cannot parse
        if line and line not in reasons and not line.lower().startswith("trouble"):
            reasons.append(line)
    reason = "; ".join(reasons[:1] + reasons[-1:] if len(reasons) > 1 else reasons)
    reason = " ".join(reason.split())
    return reason[:200] if reason else "unknown SimpleITK error"


def is_dicom_series(folder: str | Path) -> bool:
    """Tell whether a folder directly holds at least one DICOM series.

    Args:
        folder: A directory.

    Returns:
        True if GDCM finds a series in it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return False
    with _quiet_itk():
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(itk_file_name(folder)))


def itk_file_name(path: str | Path) -> str:
    """``path`` as SimpleITK takes it: UTF-8 text. A Linux file name may hold bytes that are not
    UTF-8, and SimpleITK's C++ code aborts the whole process on one (no message, exit 134):
    such a name is refused here, in one line.

    Raises:
        BadInputError: the name is not valid UTF-8.
    """
    name = str(path)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise BadInputError(
            "its name is not valid UTF-8, which SimpleITK cannot open: rename it", path
        ) from None
    return name


def _read_file(path: Path) -> sitk.Image:
    """Read an image file after checking its header (no pixel is read before).

    Raises:
        BadInputError: not a regular file (a pipe, a device, a socket: reading one would block,
            or never end).
    """
    if not path.is_file():
        raise BadInputError("is not a regular file (a pipe, a device or a socket)", path)
    # Our own reading of the header first: ITK opens a detached data file already to read the
    # image information, and a pipe named there would block it.
    layout = file_layout(path, image_suffix(path))
    reader = sitk.ImageFileReader()
    reader.SetFileName(itk_file_name(path))
    reader.ReadImageInformation()
    size = reader.GetSize()
    check_declared(path, size, reader.GetNumberOfComponents(), reader.GetPixelID(), layout)
    check_extent(size, reader.GetSpacing(), path)
    if image_suffix(path) in (".nii", ".nii.gz"):
        scan_nifti(path)
    return reader.Execute()


def read_header(path: str | Path) -> sitk.ImageFileReader | None:
    """The reader of a single 3D image file after ``ReadImageInformation()`` (the header alone,
    no pixel read), or None where the header does not tell (a folder, another dimension, a
    header ITK cannot read: the full read names the problem).

    The data file a detached header names is checked first, as for a full read.

    Raises:
        BadInputError: a detached header whose data file is a device, a pipe, a list, or
            outside its folder; a header longer than allowed.
    """
    path = Path(path)
    if not path.is_file():
        return None
    file_layout(path, image_suffix(path))
    reader = sitk.ImageFileReader()
    reader.SetFileName(itk_file_name(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return reader if reader.GetDimension() == 3 else None


def dicom_series_files(path: str | Path) -> list[str]:
    """The files of the one DICOM series of a folder, in the order of the image's slices
    (:func:`read_image` reads them in this order: slice ``k`` of the image is file ``k``).

    Raises:
        BadInputError: the folder holds no DICOM series, or several.
    """
    return _series_files(Path(path))[1]


def _series_files(path: Path) -> tuple[str, list[str]]:
    """The series UID and ordered files of the one DICOM series of a folder."""
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(itk_file_name(path))
    if not series:
        raise BadInputError("is a folder without a DICOM series", path)
    if len(series) > 1:
        found = ", ".join(
            f"{uid} ({len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), uid))} files)"
            for uid in series
        )
        raise BadInputError(
            f"holds {len(series)} DICOM series ({found}); a case is one series: put each "
            "series in its own folder",
            path,
        )
    return series[0], list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0]))


def _read_dicom_folder(path: Path) -> sitk.Image:
    """Read the one DICOM series of a folder, checked before and after its pixels are read."""
    series_uid, files = _series_files(path)
    first = sitk.ImageFileReader()
    first.SetFileName(files[0])
    first.ReadImageInformation()
    size = [*first.GetSize()[:-1], first.GetSize()[-1] * len(files)]
    layout = dicom_layout(files)
    check_declared(path, size, first.GetNumberOfComponents(), first.GetPixelID(), layout)
    check_extent(size[:2], first.GetSpacing()[:2], path)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()  # the slice positions, for the message below
    image = reader.Execute()
    if image.HasMetaDataKey("ITK_non_uniform_sampling_deviation"):
        raise BadInputError(
            f"DICOM series {series_uid} ({len(files)} files) has a missing slice or uneven slice "
            f"spacing ({_slice_gap(reader, image)}); it is refused rather than read with a "
            "wrong spacing",
            path,
        )
    return image


def _slice_gap(reader: sitk.ImageSeriesReader, image: sitk.Image) -> str:
    """Describe the most irregular gap between the slices of a series just read."""
    normal = np.array(image.GetDirection(), dtype=float).reshape(3, 3)[:, 2]
    try:
        points = [
            [float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")]
            for i in range(len(reader.GetFileNames()))
        ]
    except (RuntimeError, ValueError):
        return "slice positions unreadable"
    positions = [float(np.dot(point, normal)) for point in points]
    gaps = np.abs(np.diff(positions))
    if not gaps.size:
        return "one slice"
    usual = float(np.median(gaps))
    worst = int(np.argmax(np.abs(gaps - usual)))
    return (
        f"slices {worst + 1} and {worst + 2} lie {gaps[worst]:.4g} mm apart, the others "
        f"{usual:.4g} mm"
    )


def _read_any(path: str | Path) -> tuple[sitk.Image, Path]:
    """Read an image file or the DICOM series of a folder, checked to be 3D scalar."""
    path = Path(path).expanduser()
    if not path.exists():
        raise BadInputError("does not exist", path)
    printed: list[str] = []
    try:
        with _quiet_itk(printed):
            image = _read_dicom_folder(path) if path.is_dir() else _read_file(path)
    except RuntimeError as error:
        raise BadInputError(
            "is corrupted, truncated or not an image "
            f"(SimpleITK: {_itk_reason(error, path, printed)})",
            path,
        ) from None
    except OSError as error:
        raise BadInputError(f"cannot be read ({error.strerror or error})", path) from None

    check_extent(image.GetSize(), image.GetSpacing(), path)
    dimension = image.GetDimension()
    size = image.GetSize()
    if dimension == 4 and size[3] == 1:
        image = sitk.Extract(image, [*size[:3], 0], [0, 0, 0, 0])
        dimension, size = 3, image.GetSize()
    if dimension == 2 or (dimension == 3 and size[2] == 1):
        raise BadInputError(f"is 2D (size {tuple(size)}); a 3D volume is needed", path)
    if dimension != 3:
        raise BadInputError(f"is {dimension}D (size {tuple(size)}); a 3D volume is needed", path)
    components = image.GetNumberOfComponentsPerPixel()
    if components != 1 or "complex" in image.GetPixelIDTypeAsString():
        raise BadInputError(
            f"has {image.GetPixelIDTypeAsString()} pixels ({components} components); "
            "a scalar image is needed",
            path,
        )
    check_geometry(image, path)
    return image, path


def _check_finite(array: np.ndarray, path: Path) -> None:
    """Refuse NaN and infinite voxels in an array read from ``path``."""
    if not np.issubdtype(array.dtype, np.floating):
        return
    finite = np.isfinite(array)
    if not finite.all():
        nan = int(np.isnan(array).sum())
        raise_non_finite(nan, int(array.size - finite.sum()) - nan, path)


def _check_magnitude(array: np.ndarray, path: Path) -> None:
    """Refuse voxel values beyond :data:`MAX_ABS_INTENSITY` (finite ones: checked first)."""
    if array.size:
        peak = max(abs(float(array.min())), abs(float(array.max())))
        if peak > MAX_ABS_INTENSITY:
            raise BadInputError(
                f"holds voxel values up to {peak:.3g}, beyond the {MAX_ABS_INTENSITY:g} no "
                "scanner writes (MAX_ABS_INTENSITY; a wrong scale factor in its header?)",
                path,
            )


def read_image(path: str | Path) -> sitk.Image:
    """Read a 3D scalar image as float32.

    Args:
        path: A NIfTI, NRRD or MetaImage file, or a folder holding one DICOM series.

    Returns:
        The image, cast to ``sitkFloat32``, with its geometry unchanged.

    Raises:
        BadInputError: the path is missing, unreadable, corrupted or truncated, not 3D
            (a size-1 third axis counts as 2D), has vector or complex pixels, or holds NaN,
            infinite or absurdly large voxels (:data:`MAX_ABS_INTENSITY`); its header declares
            more than :data:`MAX_IMAGE_VOXELS` voxels,
            more bytes than the file holds, or an extent beyond :data:`MAX_EXTENT_MM`; a folder
            holds several DICOM series, or a series with a missing slice.
    """
    image, path = _read_any(path)
    _check_finite(sitk.GetArrayViewFromImage(image), path)
    _check_magnitude(sitk.GetArrayViewFromImage(image), path)
    if image.GetPixelID() != sitk.sitkFloat32:
        image = sitk.Cast(image, sitk.sitkFloat32)
    return image


def read_label(path: str | Path) -> sitk.Image:
    """Read a 3D label map as uint16.

    Args:
        path: Label file (or DICOM series folder), in any format :func:`read_image` reads.

    Returns:
        The label map, cast to ``sitkUInt16`` after checking that every voxel is a whole
        number between 0 and 65535.

    Raises:
        BadInputError: as :func:`read_image`, or the values are not integers, are negative or
            too large.
    """
    image, path = _read_any(path)
    array = sitk.GetArrayViewFromImage(image)
    _check_finite(array, path)
    if array.size and np.issubdtype(array.dtype, np.floating):
        fractional = array[array != np.round(array)]
        if fractional.size:
            raise BadInputError(
                f"holds {fractional.size} non-integer values (e.g. {float(fractional[0]):.9g}); "
                "a label map holds whole numbers",
                path,
            )
    if array.size:
        low, high = array.min(), array.max()
        if low < 0:
            raise BadInputError(f"holds negative label values (minimum {low:g})", path)
        if high > _MAX_LABEL_VALUE:
            raise BadInputError(
                f"holds label values above {_MAX_LABEL_VALUE} (maximum {high:g})", path
            )
    if image.GetPixelID() != sitk.sitkUInt16:
        image = sitk.Cast(image, sitk.sitkUInt16)
    return image


def write_image_atomic(
    image: sitk.Image, path: str | Path, *, pinned: PinnedFolder | None = None
) -> Path:
    """Write an image so that ``path`` is either the old file or the complete new one.

    The image goes to a hidden temporary file in the same folder (same suffix, so SimpleITK
    picks the format), is flushed to disk, then renamed over ``path``. On any failure the
    temporary file is removed and the error re-raised.

    Args:
        image: The image to write (compressed where the format allows).
        path: Destination; one of the single-file formats ``.nii.gz``, ``.nii``, ``.nrrd``,
            ``.mha`` (a detached header would point at the temporary data file).
        pinned: its folder as held when it was checked (:class:`~assft.io.atomic.PinnedFolder`):
            the file lands there or nowhere.

    Returns:
        The destination path.

    Raises:
        BadInputError: the suffix is not a single-file image format.
    """
    path = Path(path)
    itk_file_name(path)
    suffix = image_suffix(path)
    if suffix not in _SINGLE_FILE_SUFFIXES:
        raise BadInputError(
            f"cannot be written atomically: use one of {', '.join(_SINGLE_FILE_SUFFIXES)}", path
        )
    with atomic_path(path, suffix=suffix, pinned=pinned) as temporary, _quiet_itk():
        sitk.WriteImage(image, str(temporary), True)
        _check_written(image, temporary, path)
    return path


def _check_written(image: sitk.Image, written: Path, destination: Path) -> None:
    """Read a freshly written file back before it may replace ``destination``.

    ITK reports no error when the disk fills up while it writes: it leaves an empty or a short
    file. Reading the voxels back is the only way to know the file is whole.

    Raises:
        OSError: ENOSPC when the disk is (nearly) full, else EIO; the caller's atomic write then
            removes the temporary file and leaves ``destination`` as it was.
    """
    try:
        back = sitk.ReadImage(str(written))
        whole = back.GetSize() == image.GetSize() and bool(
            (sitk.GetArrayViewFromImage(back) == sitk.GetArrayViewFromImage(image)).all()
        )
    except RuntimeError:
        whole = False
    if not whole:
        raise short_write_error(written, destination, "the written image reads back differently")

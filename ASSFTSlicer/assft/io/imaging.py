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
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import re
import struct
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import SimpleITK as sitk

from assft.errors import BadInputError
from assft.io.atomic import atomic_path, short_write_error
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

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_EXTENT_MM",
    "MAX_ABS_INTENSITY",
    "MAX_IMAGE_VOXELS",
    "VoxelGrid",
    "case_id_from_path",
    "geometry_mismatch",
    "image_geometry",
    "image_suffix",
    "is_dicom_series",
    "read_header",
    "read_image",
    "read_label",
    "write_image_atomic",
]

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
"""File name endings recognised as images (matched case-insensitively)."""

MAX_ABS_INTENSITY = 1e12
"""Largest voxel magnitude an image may hold. CT, MRI and PET values stay many orders below it;
beyond it the intensity normalisation's float32 arithmetic overflows (a wrong ``scl_slope``
makes such values from an ordinary scan)."""

_SINGLE_FILE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
_MAX_LABEL_VALUE = int(np.iinfo(np.uint16).max)
_CASE_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def image_suffix(path: str | Path) -> str:
    """Return the image suffix of a file name (``".nii.gz"`` counts as one), or ``""``.

    Args:
        path: A file path or name.

    Returns:
        The matching entry of :data:`IMAGE_SUFFIXES` in lower case, or ``""`` if none matches.
    """
    name = Path(path).name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return ""


def scanned_image_file(path: Path) -> bool:
    """Whether an entry of a scanned folder is an image file: named like one and a regular file.

    Raises:
        BadInputError: it is named like an image but is a pipe, a device or a broken link (a
            folder scan never drops such a case or label without a word).
    """
    if path.name.startswith(".") or not image_suffix(path):
        return False
    if path.is_file():
        return True
    if path.is_dir():
        return False  # a folder named like a file (a DICOM series is found as a folder)
    raise BadInputError(
        "is named like an image but is not a regular file (a pipe, a device or a broken link)",
        path,
    )


def case_id_from_path(path: str | Path) -> str:
    """Derive a case id from an image file name or a DICOM series folder name.

    The image suffix is dropped, characters outside ``[A-Za-z0-9._-]`` become ``_`` and
    leading ``.``, ``_`` and ``-`` are removed, so the id is safe as a file name and starts
    with a letter or a digit (``"case"`` when nothing is left).

    Args:
        path: Image file or DICOM folder.

    Returns:
        The case id, e.g. ``"sub-01_T1w"`` for ``/data/sub-01 T1w.nii.gz``.
    """
    name = Path(path).name
    suffix = image_suffix(name)
    if suffix:
        name = name[: -len(suffix)]
    case_id = _CASE_ID_UNSAFE.sub("_", name).lstrip("._-")
    return case_id or "case"


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
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


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
    reader.SetFileName(str(path))
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
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return reader if reader.GetDimension() == 3 else None


def _read_dicom_folder(path: Path) -> sitk.Image:
    """Read the one DICOM series of a folder, checked before and after its pixels are read."""
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
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
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0])
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
            f"DICOM series {series[0]} ({len(files)} files) has a missing slice or uneven slice "
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
    _check_geometry(image, path)
    return image, path


def _check_geometry(image: sitk.Image, path: Path) -> None:
    """Refuse a voxel grid that no two programs would place alike: a spacing that is not a
    positive number, an origin or direction that is not finite, axes that are not perpendicular
    (a sheared grid), or, in a NIfTI file, a qform and an sform that disagree."""
    spacing = [float(v) for v in image.GetSpacing()]
    if not all(math.isfinite(v) and v > 0 for v in spacing):
        raise BadInputError(f"has the voxel spacing {_format(spacing)}; each must be above 0", path)
    origin = [float(v) for v in image.GetOrigin()]
    direction = [float(v) for v in image.GetDirection()]
    if not all(math.isfinite(v) for v in origin + direction):
        raise BadInputError(
            f"has a non-finite origin {_format(origin)} or direction {_format(direction)}", path
        )
    axes = np.array(direction).reshape(3, 3)
    if not np.allclose(axes.T @ axes, np.eye(3), atol=1e-3):
        raise BadInputError(
            f"has axes that are not perpendicular unit vectors (direction {_format(direction)}): "
            "a sheared grid, which the segmentation grid cannot hold; resample it first",
            path,
        )
    if image_suffix(path) in (".nii", ".nii.gz"):
        _check_nifti_transforms(path)


def _check_nifti_transforms(path: Path) -> None:
    """Refuse a NIfTI file whose qform and sform (both set) place the voxels differently.

    Programs differ in which one they believe (ITK, and so 3D Slicer and this engine, may take
    the qform where FSL and nibabel take the sform), so a label drawn in one could land
    elsewhere in another.
    """
    import nibabel as nib

    opener: Callable[..., Any] = gzip.open if image_suffix(path) == ".nii.gz" else open
    try:
        with opener(path, "rb") as stream:  # the header as written (nibabel's load mends it)
            start = stream.read(4)
            kind = (
                nib.Nifti2Header
                if struct.unpack("<i", start)[0] in (540, 469893120)
                else (nib.Nifti1Header)
            )
            stream.seek(0)
            header = kind.from_fileobj(stream, check=False)
        pixdim = [float(v) for v in header["pixdim"][1:4]]
        sform_code = int(header["sform_code"])
        qform_code = int(header["qform_code"])
        fields = ["quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z"]
        used = {name: float(header[name]) for name in fields} if qform_code > 0 else {}
        for row in ("srow_x", "srow_y", "srow_z") if sform_code > 0 else ():
            used.update({f"{row}[{i}]": float(v) for i, v in enumerate(header[row])})
    except Exception:  # noqa: BLE001 - ITK read the file; nibabel's view is only a check
        return
    broken = [name for name, value in used.items() if not math.isfinite(value)]
    if broken:
        # ITK would quietly put such a scan somewhere (its origin or axes made up).
        raise BadInputError(
            f"has NaN or infinite values in the transform it uses ({', '.join(broken[:4])}): "
            "where its voxels lie is unknown; rewrite the header with the scan's real position",
            path,
        )
    codes = {"qform_code": qform_code, "sform_code": sform_code}
    unknown = [f"{name} {code}" for name, code in codes.items() if not 0 <= code <= 5]
    if unknown:
        # ITK uses such a transform; nibabel and FSL ignore it and place the voxels elsewhere.
        raise BadInputError(
            f"has {', '.join(unknown)}, which NIfTI does not define (0 to 5): programs differ "
            "in whether they use that transform; rewrite the header with a valid code",
            path,
        )
    if qform_code > 0:
        quaternion = sum(float(header[name]) ** 2 for name in fields[:3])
        if quaternion > 1.0 + 1e-5:
            # nibabel refuses it; ITK makes up a rotation from it.
            raise BadInputError(
                f"has a qform quaternion (quatern_b, c, d) of squared length {quaternion:.6g}, "
                "above 1: it is no rotation, and programs differ on where the voxels lie",
                path,
            )
    if sform_code > 0 and qform_code == 0 and all(math.isfinite(v) and v > 0 for v in pixdim):
        columns = np.linalg.norm(
            np.array(
                [[float(v) for v in header[row][:3]] for row in ("srow_x", "srow_y", "srow_z")]
            ),
            axis=0,
        )
        if not np.allclose(columns, pixdim, rtol=1e-3, atol=1e-6):
            # ITK takes the voxel size from pixdim, nibabel and FSL from the sform.
            raise BadInputError(
                f"has an sform whose voxel sizes {_format(columns.tolist())} disagree with its "
                f"pixdim {_format(pixdim)}: programs differ in which they use; rewrite the "
                "header so that both give the scan's real voxel size",
                path,
            )
    if sform_code == 0 and not all(math.isfinite(v) and v > 0 for v in pixdim):
        # ITK would read 1 mm (or the absolute value) where the header gives no voxel size.
        raise BadInputError(
            f"declares the voxel size {_format(pixdim)} (pixdim) and no sform; each must be "
            "above 0: write the scan's real voxel size into its header",
            path,
        )
    try:
        qform, _ = header.get_qform(coded=True)
        sform, _ = header.get_sform(coded=True)
    except Exception:  # noqa: BLE001 - as above
        return
    if qform is None or sform is None or np.allclose(qform, sform, rtol=1e-4, atol=1e-3):
        return
    zooms = [np.linalg.norm(m[:3, :3], axis=0) for m in (qform, sform)]
    raise BadInputError(
        "has a qform and an sform that disagree (voxel (0, 0, 0) at "
        f"{_format(qform[:3, 3].tolist())} mm by the qform, {_format(sform[:3, 3].tolist())} by "
        f"the sform; voxel sizes {_format(zooms[0].tolist())} and {_format(zooms[1].tolist())}): "
        "programs differ in which one they use, so a label could land elsewhere; rewrite it "
        "with one transform (set qform_code or sform_code to 0)",
        path,
    )


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


def image_geometry(image: sitk.Image) -> dict[str, list[Any]]:
    """Describe an image's voxel grid in plain lists (JSON-ready).

    Args:
        image: Any SimpleITK image.

    Returns:
        ``{"size": [x, y, z], "spacing": [...], "origin": [...], "direction": [9 floats]}``.
    """
    return {
        "size": [int(v) for v in image.GetSize()],
        "spacing": [float(v) for v in image.GetSpacing()],
        "origin": [float(v) for v in image.GetOrigin()],
        "direction": [float(v) for v in image.GetDirection()],
    }


def _format(values: Sequence[float]) -> str:
    """Format a vector compactly, e.g. ``(1.0, 1.0, 2.5)``."""
    return "(" + ", ".join(repr(round(float(v), 6)) for v in values) + ")"


class VoxelGrid(Protocol):
    """The geometry that :func:`geometry_mismatch` compares.

    A ``sitk.Image`` has it, and so has a ``sitk.ImageFileReader`` after
    ``ReadImageInformation()`` (the header alone).
    """

    def GetDimension(self) -> int: ...
    def GetSize(self) -> Sequence[int]: ...
    def GetSpacing(self) -> Sequence[float]: ...
    def GetOrigin(self) -> Sequence[float]: ...
    def GetDirection(self) -> Sequence[float]: ...


def geometry_mismatch(a: VoxelGrid, b: VoxelGrid, tolerance: float = 1e-4) -> str | None:
    """Compare the voxel grid of ``a`` (e.g. a label) with that of ``b`` (e.g. its image).

    Size must match exactly; spacing and origin within ``tolerance * max(1, |value|)``;
    direction cosines within ``tolerance``.

    Args:
        a: The image being checked.
        b: The reference image.
        tolerance: Relative tolerance (absolute for values below 1 and for directions).

    Returns:
        None when the grids match, else a short description of the first difference, e.g.
        ``"spacing (1.0, 1.0, 2.0) differs from the image's (1.0, 1.0, 1.0)"``.
    """
    if a.GetDimension() != b.GetDimension():
        return f"is {a.GetDimension()}D, the image is {b.GetDimension()}D"
    if tuple(a.GetSize()) != tuple(b.GetSize()):
        return f"size {tuple(a.GetSize())} differs from the image's {tuple(b.GetSize())}"
    for name, ours, theirs, relative in (
        ("spacing", a.GetSpacing(), b.GetSpacing(), True),
        ("origin", a.GetOrigin(), b.GetOrigin(), True),
        ("direction", a.GetDirection(), b.GetDirection(), False),
    ):
        for x, y in zip(ours, theirs, strict=True):
            limit = tolerance * max(1.0, abs(y)) if relative else tolerance
            if not abs(x - y) <= limit:
                return f"{name} {_format(ours)} differs from the image's {_format(theirs)}"
    return None


def write_image_atomic(image: sitk.Image, path: str | Path) -> Path:
    """Write an image so that ``path`` is either the old file or the complete new one.

    The image goes to a hidden temporary file in the same folder (same suffix, so SimpleITK
    picks the format), is flushed to disk, then renamed over ``path``. On any failure the
    temporary file is removed and the error re-raised.

    Args:
        image: The image to write (compressed where the format allows).
        path: Destination; one of the single-file formats ``.nii.gz``, ``.nii``, ``.nrrd``,
            ``.mha`` (a detached header would point at the temporary data file).

    Returns:
        The destination path.

    Raises:
        BadInputError: the suffix is not a single-file image format.
    """
    path = Path(path)
    suffix = image_suffix(path)
    if suffix not in _SINGLE_FILE_SUFFIXES:
        raise BadInputError(
            f"cannot be written atomically: use one of {', '.join(_SINGLE_FILE_SUFFIXES)}", path
        )
    with atomic_path(path, suffix=suffix) as temporary, _quiet_itk():
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

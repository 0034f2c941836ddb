"""What an image file declares, checked against the limits before any voxel is read.

:func:`file_layout` and :func:`dicom_layout` read the bytes a file (a NIfTI, NRRD or MetaImage
header, or a DICOM series) declares and how it stores them; :func:`check_declared` compares the
voxel count with :data:`MAX_IMAGE_VOXELS` and the declared bytes with the bytes the file holds
(uncompressed data), or with what its compressed bytes can hold at most (deflate);
:func:`check_extent` refuses an extent beyond :data:`MAX_EXTENT_MM`; :func:`scan_nifti` reads a
NIfTI's header fields SimpleITK would not check. A 1 KB file declaring a billion voxels, or a
detached header whose data file is a device, is refused without allocating anything.
:mod:`assft.io.imaging` calls these before it reads.
"""

from __future__ import annotations

import gzip
import math
import re
import struct
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from assft.errors import BadInputError

MAX_IMAGE_VOXELS = 2**30
"""Most voxels an image may declare (about 1.07 billion: 4 GiB as float32), all axes together.

Checked from the header before any pixel is read. It is the only size check a compressed file
allows beyond :data:`_MAX_DEFLATE_RATIO` (its bytes say little about what they expand to).
"""

MAX_EXTENT_MM = 2500.0
"""Longest physical extent of a scan along any axis (voxels x spacing, in mm): a whole body fits.

A larger extent means a wrong spacing in the header (e.g. 400 mm voxels), which would blow up
the volume resampled onto the model's grid.
"""

_MAX_DEFLATE_RATIO = 1032
"""deflate (gzip, zlib) expands its input at most about 1032-fold: more is not in the file."""

_MAX_HEADER_BYTES = 16 << 20  # a NRRD or MetaImage header longer than this is refused
_UNCOMPRESSED_DICOM = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")
_DEFLATED_DICOM = "1.2.840.10008.1.2.1.99"


_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes of real floating point


def _nifti_layout(header: bytes) -> tuple[int, int, np.dtype | None] | None:
    """Locate the voxels of a single-file NIfTI from its header.

    Returns:
        ``(data offset, data bytes, float dtype or None for other voxel types)``, or None when
        the header is not a recognisable single-file NIfTI-1 or NIfTI-2 header.
    """
    for endian in "<>":
        if len(header) >= 348 and struct.unpack_from(endian + "i", header, 0)[0] == 348:
            if header[344:348] != b"n+1\x00":
                return None
            (datatype, bitpix) = struct.unpack_from(endian + "2h", header, 70)
            ndim, *dims = struct.unpack_from(endian + "8h", header, 40)
            offset = int(struct.unpack_from(endian + "f", header, 108)[0])
            break
        if len(header) >= 540 and struct.unpack_from(endian + "i", header, 0)[0] == 540:
            if header[4:8] != b"n+2\x00":
                return None
            (datatype, bitpix) = struct.unpack_from(endian + "2h", header, 12)
            ndim, *dims = struct.unpack_from(endian + "8q", header, 16)
            offset = int(struct.unpack_from(endian + "q", header, 168)[0])
            break
    else:
        return None
    if not 1 <= ndim <= 7 or bitpix <= 0 or offset < 348:
        return None
    voxels = math.prod(max(int(d), 1) for d in dims[:ndim])
    kind = _NIFTI_FLOAT_TYPES.get(int(datatype))
    dtype = None if kind is None else np.dtype(endian + kind)
    return offset, voxels * int(bitpix) // 8, dtype


def scan_nifti(path: Path) -> None:
    """Refuse a truncated NIfTI file or one with NaN/infinite voxels.

    ITK fills a truncated NIfTI with zeros and reads NaN voxels as 0 without a word, so the
    file is checked here (streamed: one more pass over the data).
    """
    with open(path, "rb") as stream:
        compressed = stream.read(2) == b"\x1f\x8b"
    opener = gzip.open if compressed else open
    nan = infinite = 0
    try:
        with opener(path, "rb") as stream:
            header = stream.read(540)
            layout = _nifti_layout(header)
            if layout is None:
                return  # not a plain single-file NIfTI: let ITK judge it
            offset, size, dtype = layout
            if not compressed and dtype is None:
                available = max(path.stat().st_size - offset, 0)
            else:
                stream.seek(offset)
                available = 0
                chunk_bytes = 1 << 22
                while available < size and (
                    chunk := stream.read(min(chunk_bytes, size - available))
                ):
                    available += len(chunk)
                    if dtype is not None and len(chunk) % dtype.itemsize == 0:
                        values = np.frombuffer(chunk, dtype)
                        finite = np.isfinite(values)
                        if not finite.all():
                            nan_here = int(np.isnan(values).sum())
                            nan += nan_here
                            infinite += int(values.size - finite.sum()) - nan_here
    except (OSError, EOFError, zlib.error) as error:
        raise BadInputError(f"is corrupted or truncated ({error})", path) from None
    if available < size:
        raise BadInputError(
            f"is truncated: its header announces {size} bytes of voxels, the file holds "
            f"{available}",
            path,
        )
    raise_non_finite(nan, infinite, path)


def _component_bytes(pixel_id: int) -> int:
    """Bytes per pixel component of a SimpleITK pixel type (1 when unknown: a lenient bound)."""
    sizes = {
        "Int8": 1,
        "UInt8": 1,
        "Int16": 2,
        "UInt16": 2,
        "Int32": 4,
        "UInt32": 4,
        "Int64": 8,
        "UInt64": 8,
        "Float32": 4,
        "Float64": 8,
    }
    for name, size in sizes.items():
        if pixel_id in (getattr(sitk, f"sitk{name}", -1), getattr(sitk, f"sitkVector{name}", -1)):
            return size
    if pixel_id == sitk.sitkComplexFloat32:
        return 8
    if pixel_id == sitk.sitkComplexFloat64:
        return 16
    return 1


_LINE_END = re.compile(rb"\r\n|\r|\n")
"""A header line ends at CR LF, LF or a lone CR: ITK's NRRD reader takes all three."""


def _header_lines(path: Path, ends: Callable[[str], bool]) -> list[tuple[str, int]]:
    """The lines of a text header, each with the offset where it ends, up to the line for which
    ``ends`` is true (included) or the end of the file, however long the header is. Lines end
    as ITK ends them (CR LF, LF or CR), so a header written with another line ending is read
    as ITK will read it.

    Raises:
        BadInputError: a header longer than :data:`_MAX_HEADER_BYTES`.
    """
    too_long = BadInputError(
        f"has a header longer than {_MAX_HEADER_BYTES >> 20} MB: not an image header", path
    )
    lines: list[tuple[str, int]] = []
    consumed = 0  # bytes of the file before ``buffer``
    buffer = b""
    with open(path, "rb") as stream:
        while True:
            match = _LINE_END.search(buffer)
            # A CR at the buffer's end may be the first half of CR LF: read on before deciding.
            if match is None or (match.group() == b"\r" and match.end() == len(buffer)):
                chunk = stream.read(1 << 16)
                if chunk:
                    buffer += chunk
                    if match is None and consumed + len(buffer) > _MAX_HEADER_BYTES + (1 << 16):
                        raise too_long
                    continue
                if match is None:
                    if buffer:
                        if consumed + len(buffer) > _MAX_HEADER_BYTES:
                            raise too_long
                        lines.append((buffer.decode("latin-1"), consumed + len(buffer)))
                    break
            line_end = consumed + match.end()
            if line_end > _MAX_HEADER_BYTES:
                raise too_long
            line = buffer[: match.start()].decode("latin-1")
            lines.append((line, line_end))
            consumed, buffer = line_end, buffer[match.end() :]
            if ends(line):
                break
    return lines


def _data_file_bytes(header: Path, name: str, skip: int) -> int | None:
    """Bytes after ``skip`` of a detached data file; None for a missing file (ITK names it).

    Raises:
        BadInputError: a list or pattern of data files, a data file outside the header's own
            folder (links resolved), or one that is not a regular file (a device such as
            /dev/zero, a pipe): none of them has a size to check against the header.
    """
    if not name:
        return None
    if name.upper().startswith("LIST") or "%" in name or " " in name.strip():
        raise BadInputError(
            f"names several data files ({name[:40]!r}: a list or a pattern), which are not read",
            header,
        )
    folder = header.parent.resolve()
    data = (folder / name).resolve()  # an absolute name stays absolute
    if not data.is_relative_to(folder):
        raise BadInputError(
            f"names the data file {name!r}, outside the header's own folder: keep the data "
            "file beside its header",
            header,
        )
    if not data.exists():
        return None
    if not data.is_file():
        raise BadInputError(f"names the data file {name!r}, which is not a regular file", header)
    return data.stat().st_size - max(skip, 0)


def _nrrd_layout(path: Path) -> tuple[int, str] | None:
    """``(bytes holding the voxels, encoding)`` of a NRRD header, or None if it cannot tell.

    The encoding is ``raw``, ``text`` (txt, ascii, hex), ``deflate`` (gzip) or ``other``.
    """
    fields: dict[str, str] = {}
    end = None
    lines = _header_lines(path, lambda line: not line)  # a blank line ends a NRRD header
    if not lines or not lines[0][0].startswith("NRRD"):
        return None
    for line, offset in lines[1:]:
        if not line:
            end = offset
            break
        if line.startswith("#") or line.find(":=") == line.find(":"):
            continue  # a comment or a key/value pair
        key, _, value = line.partition(":")
        fields[key.strip().lower().replace(" ", "")] = value.strip()
    encoding = fields.get("encoding", "raw").lower()
    kinds = {"raw": "raw", "txt": "text", "text": "text", "ascii": "text", "hex": "text"}
    kind = kinds.get(encoding, "deflate" if encoding in ("gz", "gzip") else "other")
    try:
        skip = int(fields.get("byteskip", "0"))
    except ValueError:
        return None
    if "datafile" in fields:
        available = _data_file_bytes(path, fields["datafile"], skip)
        return None if available is None else (available, kind)
    if end is None:
        return None
    return path.stat().st_size - end - max(skip, 0), kind


def _meta_layout(path: Path) -> tuple[int, str] | None:
    """``(bytes holding the voxels, encoding)`` of a MetaImage header (see :func:`_nrrd_layout`)."""
    fields: dict[str, str] = {}
    end = None

    def ends(line: str) -> bool:  # ElementDataFile is a MetaImage header's last field
        return line.partition("=")[0].strip().lower() == "elementdatafile"

    for line, offset in _header_lines(path, ends):
        key, sep, value = line.partition("=")
        if not sep:
            continue
        key = key.strip().lower()
        fields[key] = value.strip()
        if key == "elementdatafile":
            end = offset
            break
    if end is None:
        return None
    if fields.get("binarydata", "true").lower() == "false":
        kind = "text"
    elif fields.get("compresseddata", "false").lower() == "true":
        kind = "deflate"
    else:
        kind = "raw"
    try:
        skip = int(fields.get("headersize", "0"))
    except ValueError:
        return None
    name = fields["elementdatafile"]
    if name.upper() == "LOCAL":
        return path.stat().st_size - end - max(skip, 0), kind
    available = _data_file_bytes(path, name, skip)
    return None if available is None else (available, kind)


def file_layout(path: Path, suffix: str) -> tuple[int, str] | None:
    """Where a single file's voxels are, as far as its format (``suffix``: ``.nrrd``...)
    allows telling cheaply."""
    if suffix in (".nrrd", ".nhdr"):
        return _nrrd_layout(path)
    if suffix in (".mha", ".mhd"):
        return _meta_layout(path)
    if suffix == ".nii.gz":
        return path.stat().st_size, "deflate"
    return None  # .nii is checked by _scan_nifti; other formats by the voxel count alone


def _dicom_transfer_syntax(path: Path) -> str | None:
    """The transfer syntax UID in a DICOM file's meta header, or None if there is none."""
    with open(path, "rb") as stream:
        data = stream.read(132 + 4096)
    if data[128:132] != b"DICM":
        return None
    position = 132
    while position + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, position)
        if group != 2:
            return None
        if data[position + 4 : position + 6] in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            length = struct.unpack_from("<I", data, position + 8)[0]
            start = position + 12
        else:
            length = struct.unpack_from("<H", data, position + 6)[0]
            start = position + 8
        if element == 0x0010:
            return data[start : start + length].rstrip(b"\0 ").decode("ascii", errors="replace")
        position = start + length
    return None


def dicom_layout(files: Sequence[str]) -> tuple[int, str]:
    """Bytes of a DICOM series' files and their encoding (from the first file's syntax)."""
    available = sum(Path(name).stat().st_size for name in files)
    syntax = _dicom_transfer_syntax(Path(files[0]))
    if syntax in _UNCOMPRESSED_DICOM:
        return available, "raw"
    return available, "deflate" if syntax == _DEFLATED_DICOM else "other"


def check_extent(size: Sequence[int], spacing: Sequence[float], path: Path) -> None:
    """Refuse a scan longer than :data:`MAX_EXTENT_MM` along one of its first three axes."""
    for axis, (count, step) in enumerate(zip(size[:3], spacing[:3], strict=False)):
        extent = int(count) * abs(float(step))
        if not extent <= MAX_EXTENT_MM:
            raise BadInputError(
                f"spans {extent:g} mm along axis {'xyz'[axis]} ({count} voxels of {step:g} mm), "
                f"more than the {MAX_EXTENT_MM:g} mm a scan may span (MAX_EXTENT_MM): "
                "is the voxel spacing in its header right?",
                path,
            )


def check_declared(
    path: Path,
    size: Sequence[int],
    components: int,
    pixel_id: int,
    layout: tuple[int, str] | None,
) -> None:
    """Refuse a header that declares more voxels than allowed or than the file can hold."""
    voxels = math.prod(int(n) for n in size)
    shape = "x".join(str(int(n)) for n in size)
    if voxels > MAX_IMAGE_VOXELS:
        raise BadInputError(
            f"declares {shape} = {voxels} voxels, more than the {MAX_IMAGE_VOXELS} an image may "
            "have (MAX_IMAGE_VOXELS)",
            path,
        )
    if layout is None:
        return
    available, kind = layout
    declared = voxels * max(int(components), 1) * _component_bytes(pixel_id)
    if kind == "raw" and available < declared:
        raise BadInputError(
            f"is truncated: its header announces {shape} voxels in {declared} bytes, the file "
            f"holds {max(available, 0)}",
            path,
        )
    if kind == "text" and available < voxels * max(int(components), 1):
        raise BadInputError(
            f"is truncated: its header announces {shape} voxels as text, the file holds "
            f"{max(available, 0)} bytes",
            path,
        )
    if kind == "deflate" and declared > max(available, 0) * _MAX_DEFLATE_RATIO + 1024:
        raise BadInputError(
            f"is truncated or corrupted: its header announces {shape} voxels in {declared} "
            f"bytes, more than its {max(available, 0)} compressed bytes can hold",
            path,
        )


def raise_non_finite(nan: int, infinite: int, path: Path) -> None:
    """Refuse an image with NaN or infinite voxels, counting them in the message."""
    if nan or infinite:
        parts = [f"{nan} NaN voxels"] if nan else []
        parts += [f"{infinite} infinite voxels"] if infinite else []
        raise BadInputError(f"contains {' and '.join(parts)}", path)

"""Image readers: DICOM (pydicom), PNG and JPEG (Pillow) into :class:`ImageRecord`.

The format is sniffed from the bytes, never from the file name. Every failure
is a typed :class:`~radvault.errors.ImageInputError` whose message is a fixed
reason (no file name, no header value, no decoder message: its ``path``
attribute holds the name); a reader never returns a partial result. Size caps come from
:class:`~radvault.config.ImagingLimits`: the file size is checked before the
file is read, and the pixel count (rows x columns x frames x samples) is
checked from the header before anything is decompressed.

Strictness (a deliberate choice, per call)
------------------------------------------
``strict=False`` (default): pydicom reads with value validation off
(``IGNORE``), so values that break the standard's formatting rules, common in
clinical archives, are kept as read rather than losing the image. Structural
damage is still refused: a data set that ends early, an element shorter than
its declared length, a bare data set without File Meta Information.
``strict=True``: pydicom reads in ``RAISE`` mode and any warning pydicom or
Pillow emits while reading turns into :class:`~radvault.errors.CorruptImage`.

pydicom has no per-call switch, so the mode is set for the duration of the call
with pydicom's own context managers and restored afterwards, under a module
lock so concurrent reads do not interleave it. Every element is converted
inside that window (values are converted lazily otherwise, which would move
validation, and its warnings, into later unguarded code). Warnings raised while
reading are captured, never shown to callers (pytest's warnings-as-errors stays
green), and logged at DEBUG level by category and count only: their texts may
quote element values, which can be PHI. Note that pydicom also logs such texts
to its own ``pydicom`` logger; entry points should keep that logger at ERROR.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import stat
import threading
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from pydicom import Dataset, config

from radvault.config import ImagingLimits
from radvault.errors import CorruptImage, ImageInputError, ImageTooLarge, NotAnImage
from radvault.imaging import _dicom_reader, _raster_reader
from radvault.imaging.records import ImageRecord, SourceFormat
from radvault.imaging.vocabulary import body_part_term, modality_term

__all__ = [
    "read_dicom_dataset",
    "read_image",
    "read_image_bytes",
    "record_from_dataset",
    "sniff_format",
    "values_unvalidated",
]

logger = logging.getLogger(__name__)

#: How many leading bytes :func:`sniff_format` needs to recognise every format.
SNIFF_BYTES = 132

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"
_DICOM_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL "
    b"UN UR US UT UV".split()
)
_IMAGE_SUFFIXES = frozenset({".dcm", ".dicom", ".png", ".jpg", ".jpeg"})
_LOCK = threading.RLock()


def sniff_format(head: bytes) -> SourceFormat | None:
    """Recognise DICOM, PNG or JPEG from the first bytes of a file.

    DICOM is recognised by the ``DICM`` prefix after the 128-byte preamble, or,
    for files written without a preamble, by a first element in group 0002
    (File Meta) or 0008 in a valid little- or big-endian encoding. Pass at
    least :data:`SNIFF_BYTES` bytes.

    Parameters
    ----------
    head : bytes
        The start of the file.

    Returns
    -------
    SourceFormat or None
        The format, or ``None`` when the bytes are none of the three.
    """
    head = bytes(head[:SNIFF_BYTES])
    if head.startswith(_PNG_SIGNATURE):
        return SourceFormat.PNG
    if head.startswith(_JPEG_SIGNATURE):
        return SourceFormat.JPEG
    if head[128:132] == b"DICM" or _looks_like_bare_dicom(head):
        return SourceFormat.DICOM
    return None


def read_image(
    path: str | os.PathLike[str],
    *,
    limits: ImagingLimits | None = None,
    modality: str | None = None,
    body_part: str | None = None,
    strict: bool = False,
) -> ImageRecord:
    """Read a DICOM, PNG or JPEG file into an :class:`ImageRecord`.

    Parameters
    ----------
    path : str or PathLike
        The file; its name becomes only the ``path`` of an error, never its message.
    limits : ImagingLimits, optional
        Size caps; defaults to ``ImagingLimits()``.
    modality, body_part : str, optional
        Values that win over what the file says (a manifest's labels for PNG
        and JPEG, which otherwise get modality ``OT`` and no body part).
    strict : bool
        Refuse DICOM values that break the standard (see the module notes).

    Returns
    -------
    ImageRecord
        Frames-first pixels and metadata; ``dataset`` holds the DICOM dataset.

    Raises
    ------
    ImageTooLarge
        The file is larger than ``limits.max_file_bytes`` (checked before
        reading it) or its header declares more than ``limits.max_pixels``.
    NotAnImage
        Empty, text, or any content that is not DICOM, PNG or JPEG, whatever
        the file name says; also a path that is not a regular file.
    CorruptImage
        Truncated or malformed data, or a decoder failure.
    UnsupportedTransferSyntax
        No installed decoder handles the DICOM pixel encoding.
    MissingPixelData
        A DICOM object without pixels.
    ImageInputError
        The file cannot be opened (missing, permission denied).
    """
    limits = limits or ImagingLimits()
    name = str(path)
    data = _read_file(path, name, limits)
    return read_image_bytes(
        data, name, limits=limits, modality=modality, body_part=body_part, strict=strict
    )


def read_image_bytes(
    data: bytes,
    name: str,
    *,
    limits: ImagingLimits | None = None,
    modality: str | None = None,
    body_part: str | None = None,
    strict: bool = False,
) -> ImageRecord:
    """Read an in-memory DICOM, PNG or JPEG file (an upload) into an :class:`ImageRecord`.

    Parameters
    ----------
    data : bytes
        The whole file.
    name : str
        The ``path`` an error names the data by (e.g. the uploaded file name);
        never part of its message.
    limits, modality, body_part, strict
        As for :func:`read_image`.

    Returns
    -------
    ImageRecord
        Frames-first pixels and metadata.

    Raises
    ------
    ImageTooLarge, NotAnImage, CorruptImage, UnsupportedTransferSyntax, MissingPixelData
        As for :func:`read_image`.
    """
    limits = limits or ImagingLimits()
    data = bytes(data)
    source_format = _identify(data, name, limits)
    with _guarded(name, strict) as caught:
        if source_format is SourceFormat.DICOM:
            ds = _dicom_reader.parse_dicom(data, name, caught)
            record = _dicom_reader.decode_dataset(ds, name, limits)
        else:
            record = _raster_reader.decode_raster(data, source_format, name, limits)
    # hints are kept in the clear like header values, so they pass the same vocabulary
    overrides = {
        key: term(value)
        for key, value, term in (("modality", modality, modality_term),
                                 ("body_part", body_part, body_part_term))
        if value is not None
    }
    if overrides:
        record = dataclasses.replace(record, **overrides)
    logger.debug(
        "decoded %s image: %d frame(s) of %dx%d%s",
        record.source_format.value, record.frames, record.rows, record.columns,
        " RGB" if record.is_color else "",
    )
    return record


def read_dicom_dataset(
    path_or_bytes: str | os.PathLike[str] | bytes,
    *,
    limits: ImagingLimits | None = None,
    strict: bool = False,
    name: str | None = None,
) -> Dataset:
    """Parse a DICOM file without decoding its pixels (for de-identification).

    The dataset comes back fully converted (every element read and checked,
    pixel data left encoded as stored), so later access raises no warnings.

    Parameters
    ----------
    path_or_bytes : str, PathLike or bytes
        A file path, or the whole file's bytes.
    limits : ImagingLimits, optional
        Only ``max_file_bytes`` applies here.
    strict : bool
        Refuse values that break the standard (see the module notes).
    name : str, optional
        The ``path`` an error names the data by; defaults to the path, or ``"<bytes>"``.

    Returns
    -------
    pydicom.Dataset
        The dataset with its ``file_meta``.

    Raises
    ------
    NotAnImage
        The content is not DICOM (including PNG and JPEG files).
    CorruptImage
        Truncated or malformed, or a bare data set without File Meta Information.
    ImageTooLarge
        The file is larger than ``limits.max_file_bytes``.
    ImageInputError
        The file cannot be opened.
    """
    limits = limits or ImagingLimits()
    if isinstance(path_or_bytes, bytes | bytearray | memoryview):
        label = name or "<bytes>"
        data = bytes(path_or_bytes)
    else:
        label = name or str(path_or_bytes)
        data = _read_file(path_or_bytes, label, limits)
    source_format = _identify(data, label, limits)
    if source_format is not SourceFormat.DICOM:
        raise NotAnImage(label, f"is a {source_format.name} image, not DICOM")
    with _guarded(label, strict) as caught:
        ds = _dicom_reader.parse_dicom(data, label, caught)
    return ds


def record_from_dataset(
    ds: Dataset,
    name: str,
    *,
    limits: ImagingLimits | None = None,
    strict: bool = False,
) -> ImageRecord:
    """Decode an already-parsed (e.g. de-identified) dataset into an :class:`ImageRecord`.

    Parameters
    ----------
    ds : pydicom.Dataset
        A dataset with ``file_meta`` (Transfer Syntax UID) and pixel data. It
        becomes ``record.dataset`` unchanged.
    name : str
        The ``path`` an error names the dataset by.
    limits : ImagingLimits, optional
        Only ``max_pixels`` applies here.
    strict : bool
        Turn warnings raised while decoding into :class:`CorruptImage`.

    Returns
    -------
    ImageRecord
        Frames-first pixels and metadata.

    Raises
    ------
    MissingPixelData, ImageTooLarge, UnsupportedTransferSyntax, CorruptImage
        As for :func:`read_image`.
    TypeError
        If ``ds`` is not a pydicom Dataset.
    """
    if not isinstance(ds, Dataset):
        raise TypeError(f"expected a pydicom Dataset, got {type(ds).__name__}")
    limits = limits or ImagingLimits()
    with _guarded(name, strict):
        return _dicom_reader.decode_dataset(ds, name, limits)


def _looks_like_bare_dicom(head: bytes) -> bool:
    """A first element of group 0002 or 0008, explicit VR (either byte order) or implicit."""
    if len(head) < 8:
        return False
    for order in ("little", "big"):
        group = int.from_bytes(head[0:2], order)
        element = int.from_bytes(head[2:4], order)
        if group not in (0x0002, 0x0008) or element > 0x0100:
            continue
        if head[4:6] in _DICOM_VRS:
            return True
        # implicit VR is little endian only, with a 4-byte length
        if order == "little" and group == 0x0008 and int.from_bytes(head[4:8], order) < 0x10000:
            return True
    return False


def _read_file(path: str | os.PathLike[str], name: str, limits: ImagingLimits) -> bytes:
    """Read a whole regular file, refusing it from its size before reading it."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise NotAnImage(name, "is not a regular file")
        if info.st_size > limits.max_file_bytes:
            raise ImageTooLarge(name, _size_reason(info.st_size, limits))
        with Path(path).open("rb") as handle:
            data = handle.read(limits.max_file_bytes + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ImageInputError(name, f"cannot be read ({reason})") from None
    if len(data) > limits.max_file_bytes:  # the file grew after stat()
        raise ImageTooLarge(name, _size_reason(len(data), limits))
    return data


def _identify(data: bytes, name: str, limits: ImagingLimits) -> SourceFormat:
    if len(data) > limits.max_file_bytes:
        raise ImageTooLarge(name, _size_reason(len(data), limits))
    if not data:
        raise NotAnImage(name, "the file is empty")
    source_format = sniff_format(data[:SNIFF_BYTES])
    if source_format is None:
        raise NotAnImage(name, _unrecognised_reason(data, name))
    return source_format


def _unrecognised_reason(data: bytes, name: str) -> str:
    if _looks_like_text(data[:512]):
        reason = "the content is text, not an image"
    else:
        reason = "the content is not DICOM, PNG or JPEG"
    suffix = Path(name).suffix.lower()
    if suffix in _IMAGE_SUFFIXES:
        reason += f" (despite the {suffix} name)"
    return reason


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a character cut at the end
            return False
        text = head[: exc.start].decode("utf-8")
    return all(char.isprintable() or char.isspace() for char in text)


def _size_reason(size: int, limits: ImagingLimits) -> str:
    return f"the file has {size:,} bytes, over the cap of {limits.max_file_bytes:,}"


@contextlib.contextmanager
def values_unvalidated() -> Iterator[None]:
    """Decode and set DICOM values without pydicom's value validation: nothing warned or logged.

    pydicom's warning and log record about an invalid value quote the value (a UID
    may hold a record number), so code that touches values outside the reader does
    it in here. Serialised with the reader: pydicom's validation mode is global.
    """
    with _LOCK, config.disable_value_validation():
        yield


@contextlib.contextmanager
def _guarded(name: str, strict: bool) -> Iterator[list[warnings.WarningMessage]]:
    """Run library code with the chosen pydicom mode, warnings captured, errors typed."""
    mode = config.strict_reading() if strict else config.disable_value_validation()
    with _LOCK, mode, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield caught
        except ImageInputError:
            raise
        except MemoryError:
            raise
        except Exception as exc:  # any library failure becomes a typed, short message
            logger.debug("reader failed with %s", type(exc).__name__)
            raise CorruptImage(name, f"could not be read ({type(exc).__name__})") from None
        finally:
            _log_warnings(caught)
        if strict and caught:
            categories = sorted({message.category.__name__ for message in caught})
            raise CorruptImage(
                name,
                f"does not conform (strict reading): {len(caught)} problem(s) "
                f"({', '.join(categories)})",
            )


def _log_warnings(caught: list[warnings.WarningMessage]) -> None:
    if caught:
        counts = Counter(message.category.__name__ for message in caught)
        logger.debug(
            "suppressed %d reader warning(s): %s",
            len(caught), ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())),
        )

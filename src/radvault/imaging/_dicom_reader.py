"""DICOM parsing and pixel decoding behind :mod:`radvault.imaging.reading`.

Everything here assumes the caller holds the pydicom guard of ``reading.py``
(validation mode set, warnings captured): these functions may make pydicom
warn, and they raise the typed errors of :mod:`radvault.errors` for every
condition they recognise. Unexpected library exceptions are wrapped by the
caller.

Reasons are fixed phrases: they never quote a header value (any element may
hold PHI, planted or misplaced), nor a decoder's message (pydicom's quote the
offending value), only its exception type. Tags, standard defined terms
(photometric interpretations) and registered transfer syntaxes may be named.

Pixel pipeline (PS3.3 C.7.6.3 / C.11): decode with pydicom's decoder plugins
(YCbCr is turned into RGB by the decoders), then for greyscale the Modality LUT
(rescale slope/intercept, or a Modality LUT Sequence, per frame for Enhanced
objects) and MONOCHROME1 inversion; PALETTE COLOR goes through its lookup table
to 8-bit RGB.
"""

from __future__ import annotations

import io
import math
import warnings
from typing import Any

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, convert_color_space, get_decoder
from pydicom.pixels.utils import as_pixel_options
from pydicom.uid import UID

from radvault.config import ImagingLimits
from radvault.errors import (
    CorruptImage,
    ImageTooLarge,
    MissingPixelData,
    UnsupportedTransferSyntax,
)
from radvault.imaging.records import ImageRecord, SourceFormat
from radvault.imaging.vocabulary import body_part_term, modality_term

__all__ = ["decode_dataset", "parse_dicom", "transfer_syntax"]

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_UNDEFINED_LENGTH = 0xFFFFFFFF
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
#: Defined terms of Photometric Interpretation (PS3.3 C.7.6.3.1.2): the only values messages name.
_PHOTOMETRIC_TERMS = frozenset({
    "MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "HSV", "ARGB", "CMYK", "YBR_FULL",
    "YBR_FULL_422", "YBR_PARTIAL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT", "XYB",
})


def parse_dicom(data: bytes, name: str, caught: list[warnings.WarningMessage]) -> Dataset:
    """Parse DICOM bytes into a fully converted dataset, pixels left encoded.

    Every element is converted once here (recursing into sequences) so that
    value problems surface now, under the caller's validation mode, and not
    later in a caller that has no guard. ``caught`` is the list the caller's
    guard records warnings into; pydicom reports a data set that ends early only
    there.

    Raises
    ------
    CorruptImage
        The data set is malformed or truncated, has no elements, or lacks the
        File Meta Information (Transfer Syntax UID) of a DICOM Part 10 file.
    """
    try:
        ds = dcmread(io.BytesIO(data), force=True)
    except EOFError:
        raise CorruptImage(name, "truncated: the data ends inside a data element") from None
    except InvalidDicomError:
        raise CorruptImage(name, "malformed DICOM data set (encoding does not parse)") from None
    _reject_truncation_warnings(caught, name)
    transfer_syntax(ds, name)
    for element in ds.elements():
        if (
            isinstance(element, RawDataElement)
            and element.length != _UNDEFINED_LENGTH
            and element.value is not None
            and len(element.value) < element.length
        ):
            raise CorruptImage(
                name, f"truncated: element {element.tag} is shorter than its declared length"
            )
    if len(ds) == 0:
        raise CorruptImage(name, "the DICOM data set holds no data elements (empty or truncated)")
    _convert_all(ds, name)
    return ds


def _convert_all(ds: Dataset, name: str) -> None:
    """Convert every raw element, recursing into sequence items."""
    for tag in list(ds.keys()):
        try:
            element = ds[tag]
        except (EOFError, ValueError, KeyError, TypeError, OverflowError,
                NotImplementedError, LookupError) as exc:
            raise CorruptImage(
                name, f"element {tag} could not be read ({type(exc).__name__})"
            ) from None
        if element.VR == "SQ" and element.value is not None:
            for item in element.value:
                _convert_all(item, name)


def _reject_truncation_warnings(caught: list[warnings.WarningMessage], name: str) -> None:
    """Turn pydicom's "end of file" reading warnings into :class:`CorruptImage`.

    Outside strict mode pydicom reports a data set that ends early with a
    warning and returns what it read (often nothing); we refuse the file instead.

    Raises
    ------
    CorruptImage
        If any captured warning reports an unexpected end of the data.
    """
    for message in caught:
        if "end of file" in str(message.message).lower():
            raise CorruptImage(name, "truncated: the data ends before the data set is complete")


def transfer_syntax(ds: Dataset, name: str) -> UID:
    """Return the dataset's Transfer Syntax UID.

    Raises
    ------
    CorruptImage
        If there is no File Meta Information with a Transfer Syntax UID, i.e.
        the object is a bare data set rather than a DICOM Part 10 file.
    """
    file_meta = getattr(ds, "file_meta", None)
    value = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if not value:
        raise CorruptImage(
            name,
            "no File Meta Information with a Transfer Syntax UID "
            "(a bare data set, not a DICOM Part 10 file)",
        )
    return UID(str(value))


def decode_dataset(ds: Dataset, name: str, limits: ImagingLimits) -> ImageRecord:
    """Decode the pixels of a parsed dataset into an :class:`ImageRecord`.

    The pixel count is checked against ``limits.max_pixels`` from the header,
    before any decoding.

    Raises
    ------
    MissingPixelData
        No Pixel Data, Float Pixel Data or Double Float Pixel Data element.
    ImageTooLarge
        Rows x Columns x Frames x Samples exceeds ``limits.max_pixels``.
    UnsupportedTransferSyntax
        No installed decoder handles the transfer syntax or colour model.
    CorruptImage
        The pixel description is invalid or the decoder fails.
    """
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        raise MissingPixelData(
            name, "the DICOM object carries no pixel data (e.g. a report, plan or structure set)"
        )
    syntax = transfer_syntax(ds, name)
    rows, columns, frames, samples, photometric = _geometry(ds, name)
    output_samples = 3 if photometric == "PALETTE COLOR" else samples
    total = rows * columns * frames * output_samples
    if total > limits.max_pixels:
        raise ImageTooLarge(
            name,
            "the header declares more samples (rows x columns x frames x samples) than "
            f"the cap of {limits.max_pixels:,} (possible decompression bomb)",
        )

    array, decoded_photometric = _decode(ds, syntax, name)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if array.ndim == (2 if samples == 1 else 3):
        array = array[np.newaxis]
    expected = (frames, rows, columns) + (() if samples == 1 else (samples,))
    if array.shape != expected:
        raise CorruptImage(name, "the decoded pixels do not have the shape the header declares")

    window_center, window_width = _first_window(ds)
    bits_stored = _int_or(ds.get("BitsStored"), None) or _int_or(ds.get("BitsAllocated"), 8) or 8
    if samples == 3:
        pixels = _to_rgb(array, decoded_photometric, name)
    elif photometric == "PALETTE COLOR":
        pixels, bits_stored = _apply_palette(array, ds), 8
    elif photometric in _MONOCHROME:
        pixels, mirror = _greyscale(array, ds, photometric == "MONOCHROME1")
        if mirror is not None and window_center is not None:
            window_center = mirror - window_center
    else:
        raise UnsupportedTransferSyntax(
            name, f"{_photometric_label(photometric)} is not supported for one sample"
        )

    return ImageRecord(
        pixels=pixels,
        source_format=SourceFormat.DICOM,
        modality=modality_term(_text(ds.get("Modality"))),  # kept in the clear: checked
        body_part=body_part_term(_text(ds.get("BodyPartExamined"))),
        study_uid=_text(ds.get("StudyInstanceUID")),
        series_uid=_text(ds.get("SeriesInstanceUID")),
        sop_instance_uid=_text(ds.get("SOPInstanceUID")),
        pixel_spacing=_pixel_spacing(ds),
        window_center=window_center,
        window_width=window_width,
        bits_stored=int(bits_stored),
        dataset=ds,
    )


def _geometry(ds: Dataset, name: str) -> tuple[int, int, int, int, str]:
    rows = _int_or(ds.get("Rows"), None)
    columns = _int_or(ds.get("Columns"), None)
    if not rows or not columns or rows < 1 or columns < 1:
        raise CorruptImage(name, "Rows and Columns must be present and positive")
    frames = _int_or(ds.get("NumberOfFrames"), 1) if "NumberOfFrames" in ds else 1
    if frames is None or frames < 1:
        raise CorruptImage(name, "Number of Frames must be a positive integer")
    samples = _int_or(ds.get("SamplesPerPixel"), 1)
    if samples not in (1, 3):
        raise UnsupportedTransferSyntax(
            name, "only 1 or 3 samples per pixel are supported (the header declares another)"
        )
    photometric = _text(ds.get("PhotometricInterpretation")).upper()
    if samples == 1 and not photometric:
        photometric = "MONOCHROME2"
    if samples == 3 and photometric in (*_MONOCHROME, "PALETTE COLOR"):
        raise CorruptImage(name, f"{_photometric_label(photometric)} with 3 samples")
    return rows, columns, frames, samples, photometric


def _decode(ds: Dataset, syntax: UID, name: str) -> tuple[np.ndarray, str]:
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise UnsupportedTransferSyntax(
            name, f"no pixel decoder for {_syntax_label(syntax)}"
        ) from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin"
        raise UnsupportedTransferSyntax(
            name, f"no installed decoder for {_syntax_label(syntax)} ({missing})"
        )
    try:
        options = as_pixel_options(ds)
        array, meta = decoder.as_array(ds, validate=True, raw=False, **options)
    except MemoryError:
        raise
    except Exception as exc:  # the decoder plugins raise anything from ValueError to OSError
        # Their messages quote the offending header values: keep the type only.
        raise CorruptImage(
            name, f"pixel data could not be decoded ({type(exc).__name__})"
        ) from None
    photometric = str(meta.get("photometric_interpretation") or "").upper()
    return np.asarray(array), photometric


def _to_rgb(array: np.ndarray, photometric: str, name: str) -> np.ndarray:
    if photometric == "RGB":
        return array
    if photometric == "YBR_FULL":
        return convert_color_space(array, "YBR_FULL", "RGB", per_frame=True)
    raise UnsupportedTransferSyntax(
        name, f"{_photometric_label(photometric)} cannot be converted to RGB"
    )


def _apply_palette(array: np.ndarray, ds: Dataset) -> np.ndarray:
    rgb = apply_color_lut(array, ds)[..., :3]
    descriptor = ds.get("RedPaletteColorLookupTableDescriptor") or (0, 0, 8)
    if rgb.dtype == np.uint16 and int(descriptor[2]) == 16:
        rgb = rgb >> 8
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def _functional_item(ds: Dataset, sequence: str, frame: int = 0) -> Dataset | None:
    """The item of a functional-group macro for one frame (per-frame wins over shared)."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame),
                          ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        if items and len(items) > index:
            inner = items[index].get(sequence)
            if inner:
                return inner[0]
    return None


def _modality_source(ds: Dataset, frame: int) -> tuple[str, Dataset | None]:
    """Which Modality LUT applies to a frame: ('lut', ds), ('rescale', item) or ('none', None)."""
    if ds.get("ModalityLUTSequence"):
        return "lut", ds
    for source in (ds, _functional_item(ds, "PixelValueTransformationSequence", frame)):
        if source is None:
            continue
        slope = _float_or_none(source.get("RescaleSlope"))
        intercept = _float_or_none(source.get("RescaleIntercept"))
        if slope is not None and intercept is not None:
            if slope == 1.0 and intercept == 0.0:
                return "none", None
            return "rescale", source
    return "none", None


def _nominal_range(ds: Dataset, frame: np.ndarray) -> tuple[float, float]:
    """Stored-value range from Bits Stored and Pixel Representation (data range for floats)."""
    if frame.dtype.kind == "f":
        return float(frame.min()), float(frame.max())
    bits = _int_or(ds.get("BitsStored"), None) or frame.dtype.itemsize * 8
    if _int_or(ds.get("PixelRepresentation"), 0) == 1:
        return float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    return 0.0, float(2**bits - 1)


def _greyscale(array: np.ndarray, ds: Dataset, invert: bool) -> tuple[np.ndarray, float | None]:
    """Apply the Modality LUT frame by frame, then invert MONOCHROME1.

    Returns the pixels and, for MONOCHROME1, ``low + high`` of the first frame's
    output range: the value that mirrors a window centre into the inverted scale.
    """
    sources = [_modality_source(ds, index) for index in range(array.shape[0])]
    kinds = {kind for kind, _ in sources}
    if "rescale" in kinds:
        out = np.empty(array.shape, dtype=np.float32)
    elif kinds == {"lut"}:
        out = None  # dtype decided by the LUT (uint8 or uint16)
    else:
        out = array if not invert else array.copy()
    mirror: float | None = None
    for index, (kind, source) in enumerate(sources):
        frame = array[index]
        low, high = _nominal_range(ds, frame)
        if kind != "none":
            assert source is not None
            frame = apply_modality_lut(frame, source)
            ends = np.array([low, high])
            if kind == "lut":  # LUT lookups index with integers
                ends = ends.astype(np.int64)
            mapped = apply_modality_lut(ends, source)
            low, high = float(np.min(mapped)), float(np.max(mapped))
        if invert:
            frame = _invert(frame, low, high)
        if out is None:
            out = np.empty(array.shape, dtype=frame.dtype)
        out[index] = frame
        if index == 0 and invert:
            mirror = low + high
    assert out is not None
    return out, mirror


def _invert(frame: np.ndarray, low: float, high: float) -> np.ndarray:
    if frame.dtype.kind in "iu":
        total = round(low + high)
        clipped = np.clip(frame, round(low), round(high))
        return (np.int64(total) - clipped.astype(np.int64)).astype(frame.dtype)
    return (low + high) - np.clip(frame, low, high)


def _first_window(ds: Dataset) -> tuple[float | None, float | None]:
    source: Dataset | None = ds
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        source = _functional_item(ds, "FrameVOILUTSequence")
    if source is None:
        return None, None
    center = _float_or_none(_first(source.get("WindowCenter")))
    width = _float_or_none(_first(source.get("WindowWidth")))
    if center is None or width is None or width <= 0:
        return None, None
    return center, width


def _pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    candidates = [ds.get("PixelSpacing"), ds.get("ImagerPixelSpacing")]
    measures = _functional_item(ds, "PixelMeasuresSequence")
    if measures is not None:
        candidates.append(measures.get("PixelSpacing"))
    for value in candidates:
        try:
            spacing = tuple(float(v) for v in value) if value is not None else ()
        except (TypeError, ValueError):
            continue
        if len(spacing) == 2 and all(math.isfinite(v) and v > 0 for v in spacing):
            return spacing[0], spacing[1]
    return None


def _syntax_label(syntax: UID) -> str:
    """Name a transfer syntax pydicom knows as registered; never echo an unknown UID.

    A UID outside the standard's registry is a header value like any other (it may
    be built from an MRN or a birth date), so it is not quoted.
    """
    if syntax.name == str(syntax):  # not in pydicom's UID dictionary
        return "an unregistered transfer syntax"
    return f"transfer syntax {syntax.name} ({syntax})"


def _photometric_label(photometric: str) -> str:
    """Name a photometric interpretation that is a defined term; never echo another value."""
    if photometric in _PHOTOMETRIC_TERMS:
        return f"photometric interpretation {photometric!r}"
    return "an unrecognised photometric interpretation"


def _first(value: Any) -> Any:
    if value is None or isinstance(value, str | bytes):
        return value
    try:
        return value[0] if len(value) else None
    except TypeError:
        return value


def _float_or_none(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None


def _int_or(value: Any, default: int | None) -> int | None:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()

"""PNG and JPEG decoding behind :mod:`radvault.imaging.reading`.

The format is already known from the bytes, so the Pillow plugin class is
instantiated directly: that parses only the header, and it bypasses Pillow's
process-wide ``Image.MAX_IMAGE_PIXELS`` check, so the per-call cap in
:class:`~radvault.config.ImagingLimits` is the one that decides, before any
pixel is decompressed.

Conversions: 1-bit and 8-bit grey become ``uint8`` grey; 16-bit grey
(``I;16``) stays ``uint16``; palette images become RGB, or grey when every
palette entry is grey; alpha (LA, RGBA, PA, transparent palettes) is
composited over black, the background of radiographs; CMYK, YCbCr and other
colour models become RGB. EXIF orientation is applied so the array matches
what a viewer shows. 16-bit colour PNGs are reduced to 8 bits by Pillow.

Reasons name Pillow's exception type, never its message (which may quote the
file's bytes: a chunk, a text field), nor header values.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFile, ImageOps, JpegImagePlugin, PngImagePlugin

from radvault.config import ImagingLimits
from radvault.errors import CorruptImage, ImageTooLarge
from radvault.imaging.records import ImageRecord, SourceFormat

__all__ = ["decode_raster"]

_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N"})
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_LABELS = {SourceFormat.PNG: "PNG", SourceFormat.JPEG: "JPEG"}


def decode_raster(
    data: bytes,
    source_format: SourceFormat,
    name: str,
    limits: ImagingLimits,
    *,
    modality: str = "OT",
    body_part: str = "",
) -> ImageRecord:
    """Decode PNG or JPEG bytes into a single-frame :class:`ImageRecord`.

    Raises
    ------
    ImageTooLarge
        The header declares more samples than ``limits.max_pixels``.
    CorruptImage
        The header or the compressed data is malformed or truncated.
    """
    label = _LABELS[source_format]
    image = _open(data, source_format, name)
    width, height = image.size
    samples = width * height * (1 if image.mode in _GREY_MODES else 3)
    if samples > limits.max_pixels:
        raise ImageTooLarge(
            name,
            f"the {label} header declares more samples than the cap of {limits.max_pixels:,} "
            "(possible decompression bomb)",
        )
    if source_format is SourceFormat.PNG:
        try:  # every chunk present and its CRC right, whatever LOAD_TRUNCATED_IMAGES says
            _open(data, source_format, name).verify()
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise CorruptImage(name, f"truncated or corrupt PNG ({_reason(exc)})") from None
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise CorruptImage(name, f"{label} data could not be decoded ({_reason(exc)})") from None
    pixels, bits = _to_array(image, name)
    return ImageRecord(
        pixels=pixels[np.newaxis],
        source_format=source_format,
        modality=modality,
        body_part=body_part,
        bits_stored=bits,
    )


def _open(data: bytes, source_format: SourceFormat, name: str) -> ImageFile.ImageFile:
    plugin = (
        PngImagePlugin.PngImageFile
        if source_format is SourceFormat.PNG
        else JpegImagePlugin.JpegImageFile
    )
    try:
        return plugin(io.BytesIO(data))
    except (OSError, SyntaxError, ValueError, EOFError, TypeError, IndexError) as exc:
        raise CorruptImage(
            name, f"malformed {_LABELS[source_format]} header ({_reason(exc)})"
        ) from None


def _to_array(image: Image.Image, name: str) -> tuple[np.ndarray, int]:
    mode = image.mode
    if mode in _SIXTEEN_BIT:
        array = np.asarray(image)
        return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("=")), 16
    if mode == "I":  # 16-bit grey as some Pillow versions open it
        array = np.asarray(image)
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise CorruptImage(name, "grey values outside the 16-bit range")
        return array.astype(np.uint16), 16
    if mode == "1":
        return np.asarray(image.convert("L")), 8
    if mode == "L":
        return np.asarray(image), 8
    if mode in ("LA", "La"):
        return _over_black(np.asarray(image.convert("LA"))), 8
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in image.info
        rgb = np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
        if has_alpha:
            rgb = _over_black(rgb)
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            return np.ascontiguousarray(rgb[..., 0]), 8
        return rgb, 8
    if mode in ("RGBA", "RGBa"):
        return _over_black(np.asarray(image.convert("RGBA"))), 8
    if mode == "RGB":
        return np.asarray(image), 8
    try:  # CMYK, YCbCr, LAB, HSV, RGBX, ...
        return np.asarray(image.convert("RGB")), 8
    except (ValueError, OSError):
        raise CorruptImage(name, f"pixel mode {mode!r} cannot be converted to RGB") from None


def _over_black(array: np.ndarray) -> np.ndarray:
    """Composite grey+alpha or RGB+alpha (uint8) over black; drops the alpha channel."""
    colour = array[..., :-1].astype(np.uint32)
    alpha = array[..., -1:].astype(np.uint32)
    blended = ((colour * alpha + 127) // 255).astype(np.uint8)
    return blended[..., 0] if blended.shape[-1] == 1 else blended


def _reason(exc: BaseException) -> str:
    """A decoder failure, by its type alone (Pillow's messages may quote the file's bytes)."""
    return type(exc).__name__

"""Remove the metadata a PNG or JPEG carries beside its pixels, without re-encoding them.

Cameras, scanners and viewers write names, record numbers, dates, places and
free comments into a raster file's metadata: PNG text chunks (``tEXt``,
``zTXt``, ``iTXt``), EXIF (PNG ``eXIf``, JPEG APP1), XMP, JPEG comments (COM)
and application segments (APPn). :func:`strip_raster_metadata` keeps only what
decoding needs and drops everything else, byte for byte, so the pixels decode
exactly as before.

Hand-written on purpose: Pillow can drop metadata only by decoding and encoding
the image again, which is lossy for JPEG and rewrites every PNG; no maintained
library removes PNG chunks or JPEG segments losslessly. The parsing here is the
file's framing only (PNG chunks with their CRCs; JPEG marker segments and
entropy-coded scans); Pillow still parses the EXIF it reads orientation from.

What is kept
    PNG: the critical chunks (``IHDR``, ``PLTE``, ``IDAT``, ``IEND``) and the
    ancillary chunks that describe colour or geometry only: ``tRNS``, ``gAMA``,
    ``cHRM``, ``sRGB``, ``iCCP``, ``sBIT``, ``pHYs``, ``bKGD``, ``cICP``. Every
    other ancillary chunk is dropped (the text chunks, ``eXIf``, ``tIME``,
    ``sPLT``, whose name is free text, animation chunks, private chunks).
    JPEG: APP0 ``JFIF`` (without its thumbnail), APP2 ``ICC_PROFILE``, APP14
    ``Adobe`` (decoders need them for the colour transform) and the frame,
    table, restart and scan segments. APP1 (EXIF, XMP), the other APPn
    segments, COM, and anything after the end of image are dropped.

Orientation
    Viewers (and :mod:`radvault.imaging.reading`) rotate the pixels as the
    EXIF or XMP orientation says. When the dropped metadata held an orientation
    other than "as stored", a minimal EXIF block holding that tag alone is
    written back (PNG ``eXIf``, JPEG APP1), so the image reads exactly as before
    and carries nothing else.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterable

from PIL import Image

from radvault.errors import CorruptImage, NotAnImage

__all__ = ["strip_raster_metadata"]

_NAME = "<raster>"  # errors carry no file name: the caller's own errors may add one
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_KEEP = frozenset({b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM",
                       b"sRGB", b"iCCP", b"sBIT", b"pHYs", b"bKGD", b"cICP"})
_PNG_MAX_CHUNK = 2**31 - 1
_ORIENTATION = 0x0112
_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)([0-9])')
_XMP_KEY = b"XML:com.adobe.xmp"
_RAW_EXIF_KEY = b"Raw profile type exif"
_MAX_TEXT = 1 << 20  # the most a compressed text chunk is inflated to, looking for orientation

_SOI, _EOI, _SOS, _TEM = 0xD8, 0xD9, 0xDA, 0x01
_RST = range(0xD0, 0xD8)
_APP0, _APP1, _APP2, _APP14 = 0xE0, 0xE1, 0xE2, 0xEE
_COM = 0xFE
_EXIF_ID = b"Exif\x00\x00"
_XMP_ID = b"http://ns.adobe.com/xap/1.0/\x00"


def strip_raster_metadata(data: bytes) -> bytes:
    """A copy of a PNG or JPEG file without its metadata; the pixels are untouched.

    Parameters
    ----------
    data : bytes
        A whole PNG or JPEG file.

    Returns
    -------
    bytes
        The same image with only the chunks or segments decoding needs (see
        the module's docstring); the compressed pixel data is copied verbatim.

    Raises
    ------
    NotAnImage
        If ``data`` is neither PNG nor JPEG.
    CorruptImage
        If the file's framing is malformed: a bad PNG chunk length or CRC, a
        missing ``IHDR``/``IEND``, an unknown critical chunk, a JPEG segment
        running past the end, a stray byte where a marker belongs, no scan or
        no end of image. The message names the fault, never the file's bytes.
    """
    view = bytes(data)
    if view.startswith(_PNG_SIGNATURE):
        return _strip_png(view)
    if view.startswith(b"\xff\xd8"):
        return _strip_jpeg(view)
    raise NotAnImage(_NAME, "not a PNG or JPEG file")


# --------------------------------------------------------------------------- PNG


def _strip_png(data: bytes) -> bytes:
    chunks = list(_png_chunks(data))
    if not chunks or chunks[0][0] != b"IHDR":
        raise CorruptImage(_NAME, "malformed PNG: the first chunk is not IHDR")
    exif: bytes | None = None
    text: dict[bytes, bytes] = {}
    out = [_PNG_SIGNATURE]
    exif_at = 0  # where an orientation chunk goes: before the first IDAT
    for kind, body, raw in chunks:
        if kind in _PNG_KEEP:
            if kind == b"IDAT" and not exif_at:
                exif_at = len(out)
            out.append(raw)
        elif not kind[0] & 0x20:  # upper-case first letter: critical, must be understood
            raise CorruptImage(_NAME, "malformed PNG: an unknown critical chunk")
        elif kind == b"eXIf":
            exif = _EXIF_ID + body
        elif kind in (b"tEXt", b"zTXt", b"iTXt"):
            key, value = _png_text(kind, body)
            if key in (_XMP_KEY, _RAW_EXIF_KEY):
                text[key] = value
    if not exif_at:
        raise CorruptImage(_NAME, "malformed PNG: no IDAT chunk")
    if exif is None and _RAW_EXIF_KEY in text:
        exif = _raw_profile_exif(text[_RAW_EXIF_KEY])
    orientation = _orientation(exif, text.get(_XMP_KEY))
    if orientation is not None:
        out.insert(exif_at, _png_chunk(b"eXIf", _minimal_exif(orientation)[len(_EXIF_ID):]))
    return b"".join(out)


def _png_chunks(data: bytes) -> Iterable[tuple[bytes, bytes, bytes]]:
    """(type, data, the whole chunk) of every chunk up to IEND; what follows IEND is dropped."""
    pos = len(_PNG_SIGNATURE)
    while True:
        if pos + 12 > len(data):
            raise CorruptImage(_NAME, "truncated PNG: no IEND chunk")
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if length > _PNG_MAX_CHUNK or not kind.isalpha() or not kind.isascii():
            raise CorruptImage(_NAME, "malformed PNG: a bad chunk header")
        end = pos + 12 + length
        if end > len(data):
            raise CorruptImage(_NAME, "truncated PNG: a chunk runs past the end")
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[end - 4:end])
        if zlib.crc32(kind + body) != crc:
            raise CorruptImage(_NAME, "corrupt PNG: a chunk's CRC does not match")
        yield kind, body, data[pos:end]
        if kind == b"IEND":
            return
        pos = end


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_text(kind: bytes, body: bytes) -> tuple[bytes, bytes]:
    """Keyword and value of a text chunk (empty value when unreadable: it is dropped anyway)."""
    key, _, rest = body.partition(b"\x00")
    try:
        if kind == b"tEXt":
            return key, rest
        if kind == b"zTXt":
            return key, _inflate(rest[1:])
        compressed, rest = rest[:1], rest[2:]  # iTXt: flag, method, language, translated key
        value = rest.split(b"\x00", 2)[-1]
        return key, _inflate(value) if compressed == b"\x01" else value
    except zlib.error:
        return key, b""


def _inflate(data: bytes) -> bytes:
    return zlib.decompressobj().decompress(data, _MAX_TEXT)


def _raw_profile_exif(value: bytes) -> bytes | None:
    """EXIF from ImageMagick's hex "Raw profile type exif" text, as Pillow reads it."""
    try:
        return bytes.fromhex("".join(value.decode("latin-1").split("\n")[3:]))
    except ValueError:
        return None


# --------------------------------------------------------------------------- JPEG


def _strip_jpeg(data: bytes) -> bytes:
    out: list[bytes] = [b"\xff\xd8"]
    insert_at = 1  # where an orientation APP1 goes: after SOI and a leading JFIF APP0
    exif: bytes | None = None
    xmp: bytes | None = None
    pos = 2
    seen_scan = False
    while True:
        marker, pos = _next_marker(data, pos)
        if marker == _EOI:
            break
        if marker == _SOI or marker in _RST:  # (restart markers are consumed with their scan)
            raise CorruptImage(_NAME, "malformed JPEG: a marker out of place")
        if marker == _TEM:  # a standalone marker without a length
            out.append(b"\xff\x01")
            continue
        if pos + 2 > len(data):
            raise CorruptImage(_NAME, "truncated JPEG: a segment runs past the end")
        (length,) = struct.unpack(">H", data[pos:pos + 2])
        end = pos + length
        if length < 2 or end > len(data):
            raise CorruptImage(_NAME, "truncated JPEG: a segment runs past the end")
        body = data[pos + 2:end]
        segment = data[pos - 2:end]
        pos = end
        if marker == _APP0:
            if body.startswith(b"JFIF\x00") and len(body) >= 14:
                out.append(_jfif_without_thumbnail(body))
                if len(out) == insert_at + 1:
                    insert_at += 1
        elif marker == _APP1:
            if body.startswith(_EXIF_ID) and exif is None:
                exif = body
            elif body.startswith(_XMP_ID):
                xmp = body[len(_XMP_ID):]
        elif ((marker == _APP2 and body.startswith(b"ICC_PROFILE\x00"))
              or (marker == _APP14 and body.startswith(b"Adobe"))):
            out.append(segment)
        elif 0xE0 <= marker <= 0xEF or marker == _COM:
            pass  # other application segments and comments: metadata only
        else:
            out.append(segment)
            if marker == _SOS:
                seen_scan = True
                scan_end = _scan_end(data, pos)
                out.append(data[pos:scan_end])
                pos = scan_end
    if not seen_scan:
        raise CorruptImage(_NAME, "malformed JPEG: no scan before the end of image")
    out.append(b"\xff\xd9")
    orientation = _orientation(exif, xmp)
    if orientation is not None:
        app1 = _minimal_exif(orientation)
        out.insert(insert_at, b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1)
    return b"".join(out)


def _next_marker(data: bytes, pos: int) -> tuple[int, int]:
    """The marker at ``pos`` (fill bytes 0xFF allowed before it), and the position after it.

    Stray bytes before a marker are skipped (and so dropped), as libjpeg and Pillow skip
    them ("extraneous bytes before marker"): the reader has accepted such a file already.
    """
    while pos < len(data) and data[pos] != 0xFF:
        pos += 1
    if pos >= len(data):
        raise CorruptImage(_NAME, "truncated JPEG: no end of image")
    while pos < len(data) and data[pos] == 0xFF:
        pos += 1
    if pos >= len(data):
        raise CorruptImage(_NAME, "truncated JPEG: no end of image")
    if data[pos] == 0x00:
        raise CorruptImage(_NAME, "malformed JPEG: no marker where one belongs")
    return data[pos], pos + 1


def _scan_end(data: bytes, pos: int) -> int:
    """Where a scan's entropy-coded data ends: the first marker other than RSTn (0xFF00 is data)."""
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            raise CorruptImage(_NAME, "truncated JPEG: no end of image")
        following = data[pos + 1]
        if following == 0x00 or following in _RST:
            pos += 2
        elif following == 0xFF:
            pos += 1  # fill byte before a marker
        else:
            return pos


def _jfif_without_thumbnail(body: bytes) -> bytes:
    """The JFIF APP0 segment with its (pixel) thumbnail removed: version, units, density."""
    kept = body[:12] + b"\x00\x00"
    return b"\xff\xe0" + struct.pack(">H", len(kept) + 2) + kept


# --------------------------------------------------------------------------- orientation


def _orientation(exif: bytes | None, xmp: bytes | None) -> int | None:
    """The orientation (2..8) as Pillow reads it: EXIF first, else XMP; None for "as stored"."""
    value: object = None
    if exif is not None:
        parsed = Image.Exif()
        try:
            parsed.load(exif)
            value = parsed.get(_ORIENTATION)
        except (ValueError, SyntaxError, OSError, KeyError, IndexError, TypeError,
                struct.error):  # malformed EXIF: no orientation (and nothing of it is kept)
            value = None
    if value is None and xmp:
        match = _XMP_ORIENTATION.search(xmp)
        value = int(match[2]) if match else None
    return value if isinstance(value, int) and 2 <= value <= 8 else None


def _minimal_exif(orientation: int) -> bytes:
    """An EXIF block (``Exif\\0\\0`` and TIFF header) holding the orientation tag alone."""
    block = Image.Exif()
    block[_ORIENTATION] = orientation
    return block.tobytes()

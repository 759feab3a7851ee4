"""PNG and JPEG metadata (text, EXIF, XMP, comments) is removed; pixels stay bit-identical."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms, PngImagePlugin

from radvault.errors import CorruptImage, NotAnImage
from radvault.imaging.raster_metadata import strip_raster_metadata
from radvault.imaging.reading import read_image_bytes

PHI = "Doe^Jane MRN12345678 DOB 1980-04-12"
NEEDLES = (b"Doe^Jane", b"MRN12345678", b"1980-04-12")
IMAGE_DESCRIPTION, ORIENTATION = 0x010E, 0x0112


def pixels(seed: int, mode: str = "L") -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (48, 64) if mode == "L" else (48, 64, 3)
    return Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode)


def exif_with_phi(orientation: int | None = None) -> Image.Exif:
    exif = Image.Exif()
    exif[IMAGE_DESCRIPTION] = PHI
    if orientation is not None:
        exif[ORIENTATION] = orientation
    return exif


def png_with_phi(**save: object) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", PHI)
    info.add_text("Author", PHI, zip=True)
    info.add_itxt("Description", PHI, lang="en", tkey="Beschreibung")
    info.add_itxt("Title", PHI, zip=True)
    buf = io.BytesIO()
    pixels(1).save(buf, "PNG", pnginfo=info, exif=exif_with_phi(), **save)
    return buf.getvalue()


def jpeg_with_phi(*, orientation: int | None = None, **save: object) -> bytes:
    buf = io.BytesIO()
    xmp = f'<x:xmpmeta><rdf:Description dc:creator="{PHI}"/></x:xmpmeta>'.encode()
    pixels(2, "RGB").save(buf, "JPEG", quality=90, exif=exif_with_phi(orientation),
                          comment=PHI, xmp=xmp, **save)
    return buf.getvalue()


def decoded(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


def png_chunk_types(data: bytes) -> list[bytes]:
    types, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        types.append(data[pos + 4:pos + 8])
        pos += 12 + length
    return types


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def jpeg_markers(data: bytes) -> list[int]:
    """The markers before the first scan."""
    markers, pos = [], 2
    while data[pos + 1] != 0xDA:
        markers.append(data[pos + 1])
        pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
    return markers


# --------------------------------------------------------------------------- PNG


def test_png_text_and_exif_are_removed_and_the_pixels_are_identical() -> None:
    original = png_with_phi()
    assert all(needle in original for needle in (b"Doe^Jane", b"MRN12345678"))

    stripped = strip_raster_metadata(original)

    assert not any(needle in stripped for needle in NEEDLES)
    assert png_chunk_types(stripped) == [b"IHDR", b"IDAT", b"IEND"]
    assert np.array_equal(decoded(stripped), decoded(original))
    with Image.open(io.BytesIO(stripped)) as image:
        image.load()
        assert not image.text and "exif" not in image.info


def test_png_colour_chunks_are_kept_byte_for_byte() -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    buf = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", PHI)
    info.add(b"gAMA", struct.pack(">I", 45455))
    info.add(b"tIME", b"\x07\xea\x01\x02\x03\x04\x05")
    pixels(3, "RGB").save(buf, "PNG", pnginfo=info, icc_profile=icc, dpi=(300, 300),
                          transparency=(1, 2, 3))
    original = buf.getvalue()

    stripped = strip_raster_metadata(original)

    kinds = png_chunk_types(original)
    assert {b"tEXt", b"tIME", b"iCCP", b"gAMA", b"pHYs", b"tRNS"} <= set(kinds)
    assert png_chunk_types(stripped) == [k for k in kinds if k not in (b"tEXt", b"tIME")]
    assert not any(needle in stripped for needle in NEEDLES)
    with Image.open(io.BytesIO(stripped)) as image:
        assert image.info["icc_profile"] == icc and image.info["transparency"] == (1, 2, 3)
    assert np.array_equal(decoded(stripped), decoded(original))


def test_png_bytes_after_iend_and_private_chunks_are_dropped() -> None:
    original = png_with_phi()
    iend = original.rindex(b"IEND") - 4
    private = png_chunk(b"prVt", PHI.encode())
    tampered = original[:iend] + private + original[iend:] + PHI.encode()

    stripped = strip_raster_metadata(tampered)

    assert not any(needle in stripped for needle in NEEDLES)
    assert stripped.endswith(png_chunk(b"IEND", b""))


def test_png_orientation_is_kept_alone_so_the_image_reads_as_before() -> None:
    buf = io.BytesIO()
    pixels(4).save(buf, "PNG", exif=exif_with_phi(orientation=6))
    original = buf.getvalue()

    stripped = strip_raster_metadata(original)

    assert not any(needle in stripped for needle in NEEDLES)
    assert png_chunk_types(stripped) == [b"IHDR", b"eXIf", b"IDAT", b"IEND"]
    with Image.open(io.BytesIO(stripped)) as image:
        assert dict(image.getexif()) == {ORIENTATION: 6}
    before = read_image_bytes(original, "a.png").pixels
    assert before.shape[1:3] == (64, 48)  # rotated by the reader
    assert np.array_equal(read_image_bytes(stripped, "a.png").pixels, before)


def test_stripping_twice_changes_nothing_more() -> None:
    for original in (png_with_phi(), jpeg_with_phi(), jpeg_with_phi(orientation=3)):
        once = strip_raster_metadata(original)
        assert strip_raster_metadata(once) == once


# --------------------------------------------------------------------------- JPEG


def test_jpeg_exif_xmp_and_comments_are_removed_without_re_encoding() -> None:
    original = jpeg_with_phi()
    assert all(needle in original for needle in (b"Doe^Jane", b"MRN12345678"))

    stripped = strip_raster_metadata(original)

    assert not any(needle in stripped for needle in NEEDLES)
    markers = jpeg_markers(original)
    assert {0xE0, 0xE1, 0xFE} <= set(markers)  # JFIF, EXIF and XMP, comment
    assert jpeg_markers(stripped) == [m for m in markers if m not in (0xE1, 0xFE)]
    scan = original[original.index(b"\xff\xda"):]
    assert stripped.endswith(scan)  # the entropy-coded pixels, copied verbatim
    assert np.array_equal(decoded(stripped), decoded(original))


def test_jpeg_icc_profile_and_adobe_segments_are_kept() -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    buf = io.BytesIO()
    pixels(5, "RGB").convert("CMYK").save(buf, "JPEG", icc_profile=icc, comment=PHI)
    original = buf.getvalue()

    stripped = strip_raster_metadata(original)

    assert PHI.encode() not in stripped
    assert 0xE2 in jpeg_markers(stripped) and 0xEE in jpeg_markers(stripped)
    with Image.open(io.BytesIO(stripped)) as image:
        assert image.mode == "CMYK" and image.info["icc_profile"] == icc
    assert np.array_equal(decoded(stripped), decoded(original))


def test_jpeg_segments_between_scans_and_after_the_end_are_removed() -> None:
    original = jpeg_with_phi(progressive=True, restart_marker_blocks=2)
    comment = b"\xff\xfe" + struct.pack(">H", len(PHI) + 2) + PHI.encode()
    last_scan = original.rindex(b"\xff\xda")
    tampered = original[:last_scan] + comment + original[last_scan:] + PHI.encode()
    assert np.array_equal(decoded(tampered), decoded(original))

    stripped = strip_raster_metadata(tampered)

    assert not any(needle in stripped for needle in NEEDLES)
    assert stripped.endswith(b"\xff\xd9")
    assert np.array_equal(decoded(stripped), decoded(original))


def test_jpeg_orientation_is_kept_alone_so_the_image_reads_as_before() -> None:
    original = jpeg_with_phi(orientation=8)

    stripped = strip_raster_metadata(original)

    assert not any(needle in stripped for needle in NEEDLES)
    with Image.open(io.BytesIO(stripped)) as image:
        assert dict(image.getexif()) == {ORIENTATION: 8}
    assert np.array_equal(read_image_bytes(stripped, "a.jpg").pixels,
                          read_image_bytes(original, "a.jpg").pixels)


# --------------------------------------------------------------------------- refusals


def _png_cases() -> dict[str, bytes]:
    good = png_with_phi()
    first_idat = good.index(b"IDAT") - 4
    return {
        "truncated": good[:-20],
        "bad crc": good[:-1] + bytes([good[-1] ^ 1]),
        "no IHDR first": good[:8] + png_chunk(b"gAMA", b"\x00\x00\xb1\x8f") + good[8:],
        "unknown critical": good[:first_idat] + png_chunk(b"ABCD", b"x") + good[first_idat:],
        "no IDAT": good[:8] + good[8:33] + png_chunk(b"IEND", b""),
        "huge length": good[:8] + b"\xff\xff\xff\xff" + good[12:],
    }


def _jpeg_cases() -> dict[str, bytes]:
    good = jpeg_with_phi()
    return {
        "truncated in a segment": good[:30],
        "truncated in the scan": good[:-200],
        "no scan": b"\xff\xd8\xff\xfe\x00\x04ab\xff\xd9",
        "segment length below 2": b"\xff\xd8\xff\xe0\x00\x01" + good[6:],
        "second start of image": b"\xff\xd8\xff\xd8" + good[2:],
    }


@pytest.mark.parametrize("case", sorted(_png_cases()))
def test_malformed_png_is_refused(case: str) -> None:
    with pytest.raises(CorruptImage) as excinfo:
        strip_raster_metadata(_png_cases()[case])
    assert "Doe" not in str(excinfo.value)


@pytest.mark.parametrize("case", sorted(_jpeg_cases()))
def test_malformed_jpeg_is_refused(case: str) -> None:
    with pytest.raises(CorruptImage):
        strip_raster_metadata(_jpeg_cases()[case])


def test_anything_else_is_not_an_image() -> None:
    for data in (b"", b"GIF89a....", b"\x89PNG", PHI.encode()):
        with pytest.raises(NotAnImage):
            strip_raster_metadata(data)


def test_stray_bytes_between_jpeg_segments_are_skipped_as_decoders_skip_them() -> None:
    # libjpeg and Pillow read past "extraneous bytes before marker": ingest must not
    # refuse a file the reader accepted
    good = jpeg_with_phi()
    after_first = 4 + int.from_bytes(good[4:6], "big")  # the end of the first segment
    padded = good[:after_first] + b"\x00\x01" + good[after_first:]
    assert np.array_equal(decoded(padded), decoded(good))
    stripped = strip_raster_metadata(padded)
    assert np.array_equal(decoded(stripped), decoded(good))
    assert b"\x00\x01\xff" not in stripped

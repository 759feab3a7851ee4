"""Behaviour of radvault.imaging.reading: every format in, a valid record or a typed error out."""

from __future__ import annotations

import io
import logging
import re
import struct
import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import Dataset, config, dcmread
from pydicom.pixels import apply_modality_lut, convert_color_space

from radvault.config import ImagingLimits
from radvault.errors import (
    CorruptImage,
    ImageInputError,
    ImageTooLarge,
    MissingPixelData,
    NotAnImage,
    UnsupportedTransferSyntax,
)
from radvault.imaging.reading import (
    read_dicom_dataset,
    read_image,
    read_image_bytes,
    record_from_dataset,
    sniff_format,
)
from radvault.imaging.records import SourceFormat

CORPUS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "dicom"
CORPUS_FILES = (
    sorted(p.relative_to(CORPUS).as_posix() for p in CORPUS.rglob("*.dcm"))
    if CORPUS.is_dir() else []
)
NO_CORPUS = pytest.param(
    None, marks=pytest.mark.skip(reason=f"shared DICOM corpus not found at {CORPUS}")
)

# Why each deliberately broken file fails (README "Expected to fail"), as our error types.
BROKEN = {
    "broken/OT-PAL-8-face.dcm": CorruptImage,  # bare data set: no File Meta, no Transfer Syntax
    "broken/emri_small_jpeg_2k_lossless_too_short.dcm": CorruptImage,  # truncated
    "broken/liver_rle.dcm": CorruptImage,  # RLE segments of the wrong length: decoder refuses
    "broken/liver_deflate.dcm": UnsupportedTransferSyntax,  # Deflated Image Frame Compression
}
COLOUR_PHOTOMETRICS = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR"}


@dataclass(frozen=True)
class Documented:
    """One row of the corpus README's Files table."""

    modality: str
    rows: int | None
    cols: int | None
    frames: int
    photometric: str
    decodes: bool


def _readme_table() -> dict[str, Documented]:
    text = (CORPUS / "README.md").read_text(encoding="utf-8")
    table: dict[str, Documented] = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 9 or not re.fullmatch(r"`[^`]+\.dcm`", cells[0]):
            continue
        size = re.fullmatch(r"(\d+)x(\d+)", cells[4])
        table[cells[0].strip("`")] = Documented(
            modality=cells[1],
            rows=int(size[1]) if size else None,
            cols=int(size[2]) if size else None,
            frames=int(cells[5]),
            photometric=cells[6],
            decodes=cells[7].startswith("yes"),
        )
    series = re.search(
        r"Studyforrest series \((\d+) files, each (\w+), [^,]+, (\d+)x(\d+), (\d+) frame, "
        r"(\w+);.*?`N2D_(\d+)\.dcm` to `N2D_(\d+)\.dcm`",
        text,
    )
    assert series, "README no longer describes the studyforrest series"
    count, modality, rows, cols, frames, photometric, first, last = series.groups()
    numbers = range(int(first), int(last) + 1)
    assert len(numbers) == int(count)
    for number in numbers:
        table[f"studyforrest_mr_t1/N2D_{number:04d}.dcm"] = Documented(
            modality, int(rows), int(cols), int(frames), photometric, True
        )
    return table


def _readme_expected_failures() -> set[str]:
    text = (CORPUS / "README.md").read_text(encoding="utf-8")
    section = text.split("## Expected to fail", 1)[1].split("## Files", 1)[0]
    return set(re.findall(r"^\|\s*`([^`]+\.dcm)`\s*\|", section, flags=re.MULTILINE))


@pytest.fixture(scope="module")
def documented(dicom_corpus: Path) -> dict[str, Documented]:
    return _readme_table()


# ----------------------------------------------------------------------------- the corpus


def test_readme_documents_every_corpus_file(documented: dict[str, Documented]) -> None:
    assert set(documented) == set(CORPUS_FILES)
    assert _readme_expected_failures() == set(BROKEN)
    assert {name for name, row in documented.items() if not row.decodes} == set(BROKEN)


@pytest.mark.parametrize("relpath", CORPUS_FILES or [NO_CORPUS])
def test_every_corpus_file_reads_as_documented_or_fails_typed(
    relpath: str, documented: dict[str, Documented]
) -> None:
    path = CORPUS / relpath
    if relpath in BROKEN:
        with pytest.raises(BROKEN[relpath]) as caught:
            read_image(path)
        assert caught.value.path == str(path)
        assert str(caught.value) == caught.value.reason
        assert path.name not in str(caught.value)
        return

    row = documented[relpath]
    record = read_image(path)
    assert record.source_format is SourceFormat.DICOM
    assert (record.frames, record.rows, record.columns) == (row.frames, row.rows, row.cols)
    assert record.is_color == (row.photometric in COLOUR_PHOTOMETRICS)
    if record.is_color:
        assert record.pixels.shape[-1] == 3
    assert record.pixels.dtype.isnative
    if row.modality != "-":
        assert record.modality == row.modality
    ds = record.dataset
    assert ds is not None
    assert (ds.Rows, ds.Columns, int(ds.get("NumberOfFrames") or 1)) == (
        record.rows, record.columns, record.frames
    )
    assert record.sop_instance_uid == ds.get("SOPInstanceUID", "")
    assert record.study_uid == ds.get("StudyInstanceUID", "")
    assert record.series_uid == ds.get("SeriesInstanceUID", "")
    assert record.bits_stored >= 1


def test_broken_files_fail_for_their_documented_reason(dicom_corpus: Path) -> None:
    reasons = {
        relpath: read_error(dicom_corpus / relpath).reason for relpath in sorted(BROKEN)
    }
    assert "File Meta" in reasons["broken/OT-PAL-8-face.dcm"]
    assert "truncated" in reasons["broken/emri_small_jpeg_2k_lossless_too_short.dcm"]
    assert "could not be decoded" in reasons["broken/liver_rle.dcm"]
    # Deflated Image Frame Compression (1.2.840.10008.1.2.8.1) is newer than pydicom's
    # UID dictionary (pynetdicom, once imported, adds it): a UID pydicom does not know is
    # not echoed (it could be built from PHI); a known one is named with its UID.
    deflate = reasons["broken/liver_deflate.dcm"]
    assert "no pixel decoder" in deflate
    assert "1.2.840.10008.1.2.8.1" not in deflate or "Deflated Image Frame" in deflate


def read_error(path: Path) -> ImageInputError:
    with pytest.raises(ImageInputError) as caught:
        read_image(path)
    return caught.value


def test_dataset_keeps_the_encoded_pixel_data(dicom_corpus: Path) -> None:
    path = dicom_corpus / "pydicom_data/693_J2KR.dcm"
    record = read_image(path)
    assert record.dataset is not None
    assert record.dataset.PixelData == dcmread(path).PixelData  # still the JPEG 2000 stream
    assert record.dataset.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"


@pytest.mark.parametrize(
    "relpath", ["nema_wg04/CT1_UNC.dcm", "nema_wg04/CT2_UNC.dcm", "pydicom_data/693_UNCI.dcm"]
)
def test_ct_is_in_hounsfield_units_with_air_near_minus_1000(
    dicom_corpus: Path, relpath: str
) -> None:
    hu = read_image(dicom_corpus / relpath).pixels[0]
    scanned = hu[hu > -1500]  # not the padding value outside the scan circle
    air = np.percentile(scanned, 2)  # the darkest scanned pixels are air
    assert -1150 <= air <= -900
    assert np.percentile(scanned, 99) < 3100  # and nothing past dense bone


def test_enhanced_ct_rescale_spacing_and_window_come_from_functional_groups(
    dicom_corpus: Path,
) -> None:
    path = dicom_corpus / "pydicom_data/eCT_Supplemental.dcm"
    record = read_image(path)
    raw = dcmread(path).pixel_array.astype(np.float64)
    np.testing.assert_array_equal(record.pixels, raw - 1024.0)  # intercept -1024, slope 1
    assert record.pixel_spacing == pytest.approx((0.388672, 0.388672))
    assert (record.window_center, record.window_width) == (49.0, 102.0)


def test_big_endian_and_compressed_copies_decode_to_the_same_pixels(dicom_corpus: Path) -> None:
    reference = read_image(dicom_corpus / "pydicom_data/emri_small.dcm").pixels
    for relpath in (
        "pydicom_data/emri_small_big_endian.dcm",
        "pydicom_data/emri_small_RLE.dcm",
        "pydicom_data/emri_small_jpeg_2k_lossless.dcm",
        "pydicom_data/emri_small_jpeg_ls_lossless.dcm",
        "derived/emri_small_deflated.dcm",
    ):
        pixels = read_image(dicom_corpus / relpath).pixels
        assert pixels.dtype.isnative, relpath
        np.testing.assert_array_equal(pixels, reference, err_msg=relpath)


def test_ybr_files_come_out_as_the_same_rgb(dicom_corpus: Path) -> None:
    rgb = read_image(dicom_corpus / "pydicom_data/SC_rgb.dcm").pixels.astype(int)
    ybr = read_image(dicom_corpus / "pydicom_data/SC_ybr_full_uncompressed.dcm").pixels
    assert np.abs(ybr.astype(int) - rgb).max() <= 8
    us = read_image(dicom_corpus / "nema_wg04/US1_UNC.dcm").pixels.astype(int)
    jpeg = read_image(dicom_corpus / "derived/US1_jpeg_baseline.dcm").pixels.astype(int)
    assert np.abs(jpeg - us).mean() < 4  # lossy YBR_FULL_422 JPEG, colour restored


def test_monochrome1_radiograph_is_inverted_with_its_window(dicom_corpus: Path) -> None:
    path = dicom_corpus / "pydicom_data/RG1_J2KI.dcm"
    ds = dcmread(path)
    raw = ds.pixel_array
    record = read_image(path)
    top = 2**ds.BitsStored - 1
    np.testing.assert_array_equal(record.pixels[0], top - raw)
    assert record.window_center == top - float(ds.WindowCenter)
    assert record.window_width == float(ds.WindowWidth)


def test_palette_colour_ultrasound_becomes_rgb(dicom_corpus: Path) -> None:
    record = read_image(dicom_corpus / "pydicom_data/OBXXXX1A_rle_2frame.dcm")
    assert record.pixels.shape == (2, 600, 800, 3)
    assert record.pixels.dtype == np.uint8
    assert record.bits_stored == 8


# ------------------------------------------------------------------ samples in the pydicom wheel

WHEEL_SAMPLES = {
    "CT_small.dcm": ((1, 128, 128), "CT"),
    "MR_small.dcm": ((1, 64, 64), "MR"),
    "MR_small_bigendian.dcm": ((1, 64, 64), "MR"),
    "MR_small_RLE.dcm": ((1, 64, 64), "MR"),
    "MR_small_jp2klossless.dcm": ((1, 64, 64), "MR"),
    "JPEG2000.dcm": ((1, 1024, 256), "NM"),
    "SC_rgb_jpeg_dcmtk.dcm": ((1, 100, 100, 3), "OT"),
    "image_dfl.dcm": ((1, 512, 512), "OT"),
    "examples_palette.dcm": ((1, 350, 800, 3), "US"),
    "examples_ybr_color.dcm": ((30, 240, 320, 3), "US"),
    "rtdose.dcm": ((15, 10, 10), "RTDOSE"),
}


@pytest.mark.parametrize("name", sorted(WHEEL_SAMPLES))
def test_pydicom_wheel_samples_read(pydicom_sample, name: str) -> None:
    shape, modality = WHEEL_SAMPLES[name]
    record = read_image(pydicom_sample(name))
    assert record.pixels.shape == shape
    assert record.modality == modality


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("MR_truncated.dcm", CorruptImage),
        ("rtplan_truncated.dcm", CorruptImage),
        ("rtstruct.dcm", CorruptImage),  # bare implicit data set without File Meta
        ("meta_missing_tsyntax.dcm", CorruptImage),
        ("rtplan.dcm", MissingPixelData),
        ("test-SR.dcm", MissingPixelData),
    ],
)
def test_pydicom_wheel_samples_that_cannot_be_images(pydicom_sample, name, error) -> None:
    with pytest.raises(error):
        read_image(pydicom_sample(name))


def test_ct_small_has_rescale_applied(pydicom_sample) -> None:
    path = pydicom_sample("CT_small.dcm")
    ds = dcmread(path)
    record = read_image(path)
    np.testing.assert_array_equal(record.pixels[0], apply_modality_lut(ds.pixel_array, ds))
    assert record.pixel_spacing == pytest.approx((0.661468, 0.661468))


def test_rgb_jpeg_sample_matches_the_uncompressed_original(dicom_corpus, pydicom_sample) -> None:
    original = read_image(dicom_corpus / "pydicom_data/SC_rgb.dcm").pixels.astype(int)
    jpeg = read_image(pydicom_sample("SC_rgb_jpeg_dcmtk.dcm")).pixels.astype(int)
    assert np.abs(jpeg - original).max() <= 8


# ------------------------------------------------------------------------- synthetic DICOM


def test_rescale_slope_and_intercept_are_applied(make_dicom) -> None:
    stored = np.array([[0, 1024], [2048, 4095]], dtype=np.uint16)
    data = make_dicom(
        stored, bits_stored=12, Modality="CT", RescaleSlope=1, RescaleIntercept=-1024
    )
    record = read_image_bytes(data, "ct.dcm")
    np.testing.assert_array_equal(record.pixels[0], [[-1024, 0], [1024, 3071]])
    assert record.modality == "CT"
    assert record.bits_stored == 12


def test_identity_rescale_keeps_the_integer_pixels(make_dicom) -> None:
    stored = np.arange(16, dtype=np.int16).reshape(4, 4)
    record = read_image_bytes(make_dicom(stored, RescaleSlope=1, RescaleIntercept=0), "mr.dcm")
    assert record.pixels.dtype == np.int16
    np.testing.assert_array_equal(record.pixels[0], stored)


def test_monochrome1_is_inverted_so_higher_is_brighter(make_dicom) -> None:
    stored = np.array([[0, 1000], [4095, 2000]], dtype=np.uint16)
    data = make_dicom(stored, "MONOCHROME1", bits_stored=12, WindowCenter=1000, WindowWidth=400)
    record = read_image_bytes(data, "cr.dcm")
    np.testing.assert_array_equal(record.pixels[0], [[4095, 3095], [0, 2095]])
    assert (record.window_center, record.window_width) == (3095.0, 400.0)


def test_monochrome1_inversion_uses_the_rescaled_range(make_dicom) -> None:
    stored = np.array([[0, 10], [255, 100]], dtype=np.uint8)
    data = make_dicom(stored, "MONOCHROME1", RescaleSlope=2, RescaleIntercept=10)
    record = read_image_bytes(data, "dx.dcm")
    # output range [10, 520]: value v becomes 530 - v
    np.testing.assert_array_equal(record.pixels[0], 530 - (2 * stored.astype(float) + 10))


def test_ybr_full_is_converted_to_rgb(make_dicom) -> None:
    rgb = np.array(
        [[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 255]]], dtype=np.uint8
    )
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    record = read_image_bytes(make_dicom(ybr, "YBR_FULL", bits_stored=8), "ybr.dcm")
    assert record.is_color
    assert np.abs(record.pixels[0].astype(int) - rgb).max() <= 2


def test_palette_colour_lookup_is_applied(make_dicom) -> None:
    indices = np.arange(256, dtype=np.uint8).reshape(16, 16)
    ramp = np.arange(256, dtype=np.uint16) * 257  # 16-bit entries
    data = make_dicom(
        indices,
        "PALETTE COLOR",
        bits_stored=8,
        RedPaletteColorLookupTableDescriptor=[256, 0, 16],
        GreenPaletteColorLookupTableDescriptor=[256, 0, 16],
        BluePaletteColorLookupTableDescriptor=[256, 0, 16],
        RedPaletteColorLookupTableData=ramp.astype("<u2").tobytes(),
        GreenPaletteColorLookupTableData=ramp[::-1].astype("<u2").tobytes(),
        BluePaletteColorLookupTableData=np.zeros(256, "<u2").tobytes(),
    )
    record = read_image_bytes(data, "palette.dcm")
    assert record.pixels.dtype == np.uint8
    np.testing.assert_array_equal(record.pixels[0, ..., 0], indices)
    np.testing.assert_array_equal(record.pixels[0, ..., 1], 255 - indices)
    assert not record.pixels[0, ..., 2].any()


def test_multiframe_is_frames_first_and_metadata_is_filled(make_dicom) -> None:
    frames = np.stack([np.full((3, 5), value, dtype=np.uint16) for value in (1, 2, 3)])
    data = make_dicom(
        frames,
        implicit=True,
        Modality="MR",
        BodyPartExamined="HEAD",
        PixelSpacing=[0.5, 0.75],
        WindowCenter=[40, 400],
        WindowWidth=[80, 2000],
    )
    record = read_image_bytes(data, "mr.dcm")
    assert record.pixels.shape == (3, 3, 5)
    np.testing.assert_array_equal(record.pixels[:, 0, 0], [1, 2, 3])
    assert (record.modality, record.body_part) == ("MR", "HEAD")
    assert record.pixel_spacing == (0.5, 0.75)
    assert (record.window_center, record.window_width) == (40.0, 80.0)
    assert record.study_uid and record.series_uid and record.sop_instance_uid


def test_imager_pixel_spacing_is_the_fallback(make_dicom) -> None:
    data = make_dicom(np.zeros((2, 2), np.uint8), ImagerPixelSpacing=[0.143, 0.143])
    assert read_image_bytes(data, "dx.dcm").pixel_spacing == (0.143, 0.143)


def test_dicom_without_pixels_is_missing_pixel_data(make_dicom) -> None:
    ds = dcmread_bytes(make_dicom(np.zeros((2, 2), np.uint8)))
    del ds.PixelData
    with pytest.raises(MissingPixelData, match="no pixel data"):
        record_from_dataset(ds, "report.dcm")


def test_undecodable_transfer_syntax_is_unsupported(make_dicom) -> None:
    ds = dcmread_bytes(make_dicom(np.zeros((2, 2), np.uint8)))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder
    with pytest.raises(UnsupportedTransferSyntax, match="MPEG2"):
        record_from_dataset(ds, "video.dcm")


def test_decoder_failure_is_wrapped_as_corrupt_image(make_dicom) -> None:
    ds = dcmread_bytes(make_dicom(np.zeros((4, 4), np.uint16)))
    ds.BitsAllocated = 7  # not a valid allocation: pydicom refuses to decode
    with pytest.raises(CorruptImage, match=r"^pixel data could not be decoded") as caught:
        record_from_dataset(ds, "bad.dcm")
    assert caught.value.path == "bad.dcm"


def test_truncated_dicom_is_corrupt(make_dicom) -> None:
    data = make_dicom(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    with pytest.raises(CorruptImage, match="truncated"):
        read_image_bytes(data[:-100], "cut.dcm")
    with pytest.raises(CorruptImage):
        read_image_bytes(data[:140], "cut.dcm")


PATIENT_FILE = "Truncatello_Basilisa_MRN11122233.dcm"


def _planted(data: bytes, **elements: str) -> bytes:
    """The DICOM file ``data`` with elements (or a File Meta Transfer Syntax UID) replaced."""
    ds = dcmread(io.BytesIO(data))
    for keyword, value in elements.items():
        setattr(ds.file_meta if keyword == "TransferSyntaxUID" else ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize(("elements", "error", "planted"), [
    ({"PhotometricInterpretation": "MRN12121212"}, CorruptImage, "MRN12121212"),
    ({"TransferSyntaxUID": "1.2.840.55512345.19470315"}, UnsupportedTransferSyntax,
     "55512345"),
    ({"NumberOfFrames": "11122233"}, ImageTooLarge, "11122233"),
    ({"BitsAllocated": 24, "BitsStored": 24, "HighBit": 23}, CorruptImage, "24"),
])
def test_reader_errors_quote_no_header_value_file_name_or_decoder_text(
    make_dicom, caplog, elements, error, planted
) -> None:
    # The reason reaches API answers, web pages and the job store, and both a header
    # value and a decoder's message (which quotes header values) may be PHI.
    data = _planted(make_dicom(np.zeros((16, 16), np.uint16)), **elements)
    with caplog.at_level(logging.DEBUG), pytest.raises(error) as caught:
        read_image_bytes(data, PATIENT_FILE)
    message = str(caught.value)
    assert message == caught.value.reason
    assert caught.value.path == PATIENT_FILE
    for secret in (planted, "MRN11122233", "(0028,"):
        assert secret not in message
        assert secret not in caplog.text


def test_an_unknown_transfer_syntax_is_not_named_but_a_registered_one_is(make_dicom) -> None:
    data = make_dicom(np.zeros((2, 2), np.uint8))
    with pytest.raises(UnsupportedTransferSyntax, match="unregistered transfer syntax") as caught:
        read_image_bytes(_planted(data, TransferSyntaxUID="1.2.3.4.5"), "x.dcm")
    assert "1.2.3.4.5" not in str(caught.value)
    ds = dcmread_bytes(data)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: registered, no decoder
    with pytest.raises(UnsupportedTransferSyntax, match=r"MPEG2.*\(1\.2\.840\.10008\.1\.2\.4\.100"):
        record_from_dataset(ds, "video.dcm")


def test_preamble_followed_by_garbage_is_corrupt() -> None:
    data = b"\0" * 128 + b"DICM" + bytes(range(256)) * 4
    with pytest.raises(CorruptImage):
        read_image_bytes(data, "garbage.dcm")


def test_dicom_overrides_from_the_caller_win(make_dicom) -> None:
    data = make_dicom(np.zeros((2, 2), np.uint8), Modality="OT")
    record = read_image_bytes(data, "x.dcm", modality="dx", body_part="chest")
    assert (record.modality, record.body_part) == ("DX", "CHEST")


def dcmread_bytes(data: bytes) -> Dataset:
    return read_dicom_dataset(data)


# ------------------------------------------------------------------------------ PNG and JPEG


def test_grey_png_round_trips(make_png, gradient) -> None:
    image = gradient()
    record = read_image_bytes(make_png(image), "grey.png")
    assert record.source_format is SourceFormat.PNG
    assert record.pixels.shape == (1, *image.shape)
    np.testing.assert_array_equal(record.pixels[0], image)
    assert (record.modality, record.body_part, record.bits_stored) == ("OT", "", 8)
    assert record.dataset is None and record.sop_instance_uid == ""


def test_sixteen_bit_png_keeps_sixteen_bit_values(make_png, gradient) -> None:
    image = gradient(dtype=np.uint16)
    assert image.max() > 255
    record = read_image_bytes(make_png(image), "grey16.png")
    assert record.pixels.dtype == np.uint16
    assert record.bits_stored == 16
    np.testing.assert_array_equal(record.pixels[0], image)


def test_rgb_png_round_trips(make_png, gradient) -> None:
    image = gradient(colour=True)
    record = read_image_bytes(make_png(image), "colour.png")
    assert record.is_color
    np.testing.assert_array_equal(record.pixels[0], image)


def test_palette_png_becomes_rgb_or_grey(make_png, gradient) -> None:
    colour = Image.fromarray(gradient(colour=True)).quantize(colors=16)
    record = read_image_bytes(make_png(colour), "palette.png")
    np.testing.assert_array_equal(record.pixels[0], np.asarray(colour.convert("RGB")))
    grey = Image.fromarray(gradient()).convert("P")  # grey palette
    record = read_image_bytes(make_png(grey), "grey-palette.png")
    assert not record.is_color
    np.testing.assert_array_equal(record.pixels[0], np.asarray(grey.convert("L")))


def test_alpha_is_composited_over_black(make_png) -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = [[255, 0], [128, 255]]
    record = read_image_bytes(make_png(rgba, "RGBA"), "rgba.png")
    np.testing.assert_array_equal(record.pixels[0, ..., 0], [[200, 0], [100, 200]])
    la = np.stack([np.full((2, 2), 100, np.uint8), np.array([[255, 0], [255, 51]], np.uint8)], -1)
    record = read_image_bytes(make_png(la, "LA"), "la.png")
    np.testing.assert_array_equal(record.pixels[0], [[100, 0], [100, 20]])


def test_one_bit_png_becomes_black_and_white(make_png) -> None:
    bits = np.array([[0, 1], [1, 0]], dtype=bool)
    record = read_image_bytes(make_png(Image.fromarray(bits)), "mask.png")
    np.testing.assert_array_equal(record.pixels[0], [[0, 255], [255, 0]])


def test_jpeg_grey_and_colour_decode_close_to_the_source(make_jpeg, gradient) -> None:
    grey = gradient()
    record = read_image_bytes(make_jpeg(grey), "grey.jpg")
    assert record.source_format is SourceFormat.JPEG
    assert record.pixels.shape == (1, *grey.shape)
    assert np.abs(record.pixels[0].astype(int) - grey).mean() < 3
    colour = gradient(colour=True)
    record = read_image_bytes(make_jpeg(colour), "colour.jpg")
    assert record.pixels.shape == (1, *colour.shape)
    assert np.abs(record.pixels[0].astype(int) - colour).mean() < 4


def test_cmyk_jpeg_becomes_rgb(make_jpeg) -> None:
    record = read_image_bytes(make_jpeg(Image.new("CMYK", (8, 6), (0, 0, 0, 0))), "cmyk.jpg")
    assert record.pixels.shape == (1, 6, 8, 3)
    assert record.pixels.min() > 240  # no ink is white


def test_exif_orientation_is_applied(make_jpeg, gradient) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to display
    record = read_image_bytes(make_jpeg(gradient(40, 60), exif=exif), "phone.jpg")
    assert record.pixels.shape == (1, 60, 40)


def test_raster_hints_set_modality_and_body_part(tmp_path, make_png, gradient) -> None:
    path = tmp_path / "chest.png"
    path.write_bytes(make_png(gradient()))
    record = read_image(path, modality="cr", body_part="Chest")
    assert (record.modality, record.body_part) == ("CR", "CHEST")


def test_format_comes_from_the_bytes_not_the_name(tmp_path, make_png, gradient) -> None:
    path = tmp_path / "really-a-png.dcm"
    path.write_bytes(make_png(gradient()))
    assert read_image(path).source_format is SourceFormat.PNG


def test_truncated_png_is_corrupt(make_png, gradient) -> None:
    data = make_png(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    for cut in (len(data) // 2, len(data) - 12, 40):
        with pytest.raises(CorruptImage) as caught:
            read_image_bytes(data[:cut], "cut.png")
        assert caught.value.path == "cut.png"


def test_png_with_a_bad_checksum_is_corrupt(make_png, gradient) -> None:
    data = bytearray(make_png(gradient()))
    idat = data.index(b"IDAT")
    data[idat + 10] ^= 0xFF
    with pytest.raises(CorruptImage):
        read_image_bytes(bytes(data), "flipped.png")


def test_truncated_jpeg_is_corrupt(make_jpeg, gradient) -> None:
    data = make_jpeg(gradient(64, 64))
    with pytest.raises(CorruptImage):
        read_image_bytes(data[: len(data) // 2], "cut.jpg")
    with pytest.raises(CorruptImage):
        read_image_bytes(data[:20], "cut.jpg")


# ----------------------------------------------------------------------------- not images


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (b"PatientName: Doe^John\nthis is a text file\n", "text"),
        (bytes(range(256)) * 4, "not DICOM, PNG or JPEG"),
    ],
)
def test_content_that_is_no_image_is_refused(tmp_path, content, reason) -> None:
    path = tmp_path / "scan.dcm"
    path.write_bytes(content)
    with pytest.raises(NotAnImage, match=reason) as caught:
        read_image(path)
    assert caught.value.path == str(path)
    assert "Doe" not in str(caught.value)


def test_dcm_named_text_file_mentions_the_misleading_name(tmp_path) -> None:
    path = tmp_path / "notes.dcm"
    path.write_text("not an image at all\n", encoding="utf-8")
    with pytest.raises(NotAnImage, match=r"text.*\.dcm"):
        read_image(path)


def test_missing_file_and_directory_are_typed_errors(tmp_path) -> None:
    with pytest.raises(ImageInputError, match="cannot be read"):
        read_image(tmp_path / "absent.png")
    with pytest.raises(NotAnImage, match="not a regular file"):
        read_image(tmp_path)


# ------------------------------------------------------------------------------------ caps


def test_file_size_cap_applies_to_paths_and_bytes(tmp_path, make_png, gradient) -> None:
    data = make_png(gradient())
    limits = ImagingLimits(max_file_bytes=len(data) - 1)
    path = tmp_path / "big.png"
    path.write_bytes(data)
    with pytest.raises(ImageTooLarge, match="bytes"):
        read_image(path, limits=limits)
    with pytest.raises(ImageTooLarge):
        read_image_bytes(data, "big.png", limits=limits)
    assert read_image(path, limits=ImagingLimits(max_file_bytes=len(data))).rows == 48


def test_file_size_is_checked_before_the_file_is_opened(tmp_path, monkeypatch) -> None:
    path = tmp_path / "huge.dcm"
    with path.open("wb") as handle:  # sparse: costs no disk
        handle.truncate(ImagingLimits().max_file_bytes + 1)

    def refuse(*args, **kwargs):
        raise AssertionError("the file was opened before its size was checked")

    monkeypatch.setattr(Path, "open", refuse)
    started = time.perf_counter()
    with pytest.raises(ImageTooLarge):
        read_image(path)
    assert time.perf_counter() - started < 1.0


def test_dicom_header_bomb_is_refused_before_decoding(make_dicom) -> None:
    data = make_dicom(np.zeros((2, 2), np.uint16), Rows=60000, Columns=60000, NumberOfFrames=100)
    with pytest.raises(ImageTooLarge, match="decompression bomb"):
        read_image_bytes(data, "bomb.dcm")


def test_pixel_cap_counts_frames_and_samples(make_dicom) -> None:
    data = make_dicom(np.zeros((3, 10, 10, 3), np.uint8), "RGB", bits_stored=8)
    with pytest.raises(ImageTooLarge):
        read_image_bytes(data, "rgb.dcm", limits=ImagingLimits(max_pixels=899))
    assert read_image_bytes(data, "rgb.dcm", limits=ImagingLimits(max_pixels=900)).frames == 3


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge 8-bit grey image."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")
    )


def test_png_bomb_is_refused_from_its_header(monkeypatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # Pillow's own global guard off
    started = time.perf_counter()
    with pytest.raises(ImageTooLarge, match="PNG header declares more samples than the cap"):
        read_image_bytes(png_declaring(100_000, 100_000), "bomb.png")
    assert time.perf_counter() - started < 1.0


def test_pixel_cap_is_per_call_not_pillow_global(make_png, gradient) -> None:
    data = make_png(gradient(48, 64))
    with pytest.raises(ImageTooLarge):
        read_image_bytes(data, "small.png", limits=ImagingLimits(max_pixels=48 * 64 - 1))
    assert read_image_bytes(data, "small.png", limits=ImagingLimits(max_pixels=48 * 64)).rows == 48


def test_jpeg_bomb_is_refused_from_its_header(make_jpeg, gradient) -> None:
    data = bytearray(make_jpeg(gradient(16, 16)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5: sof + 9] = struct.pack(">HH", 65000, 65000)  # height, width
    with pytest.raises(ImageTooLarge, match="JPEG header declares more samples than the cap"):
        read_image_bytes(bytes(data), "bomb.jpg")


# ------------------------------------------------------------------ strictness and warnings


def test_pydicom_warnings_do_not_reach_the_caller(pydicom_sample) -> None:
    path = pydicom_sample("SC_rgb_jpeg.dcm")  # written with the wrong VR encoding
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        record = read_image(path)
    assert record.pixels.shape == (1, 256, 256, 3)


def test_strict_reading_refuses_what_lenient_reading_keeps(pydicom_sample) -> None:
    for name in ("SC_rgb_jpeg.dcm", "rtdose.dcm"):
        path = pydicom_sample(name)
        assert read_image(path).frames >= 1
        with pytest.raises(CorruptImage):
            read_image(path, strict=True)
        with pytest.raises(CorruptImage):
            read_dicom_dataset(path, strict=True)


def test_pydicom_validation_mode_is_restored(pydicom_sample, dicom_corpus) -> None:
    before = config.settings.reading_validation_mode
    read_image(pydicom_sample("CT_small.dcm"))
    with pytest.raises(CorruptImage):
        read_image(pydicom_sample("rtdose.dcm"), strict=True)
    with pytest.raises(ImageInputError):
        read_image(dicom_corpus / "broken/liver_rle.dcm")
    assert config.settings.reading_validation_mode == before


def test_values_are_converted_while_guarded_so_later_access_is_silent(pydicom_sample) -> None:
    ds = read_dicom_dataset(pydicom_sample("rtdose.dcm"))  # holds an invalid UI value
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with config.strict_reading():
            values = [element.value for element in ds.iterall()]
    assert values


# --------------------------------------------------------------- datasets and de-identification


def test_read_dicom_dataset_accepts_paths_and_bytes(pydicom_sample) -> None:
    path = pydicom_sample("MR_small.dcm")
    from_path = read_dicom_dataset(path)
    from_bytes = read_dicom_dataset(path.read_bytes())
    assert from_path.SOPInstanceUID == from_bytes.SOPInstanceUID
    assert from_path.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"


def test_read_dicom_dataset_refuses_other_formats(make_png, gradient) -> None:
    with pytest.raises(NotAnImage, match="PNG image, not DICOM"):
        read_dicom_dataset(make_png(gradient()), name="upload.png")
    with pytest.raises(NotAnImage):
        read_dicom_dataset(b"hello", name="upload.dcm")
    with pytest.raises(ImageTooLarge):
        read_dicom_dataset(b"x" * 100, limits=ImagingLimits(max_file_bytes=99))


def test_read_dicom_dataset_refuses_truncated_files(pydicom_sample) -> None:
    with pytest.raises(CorruptImage, match="truncated"):
        read_dicom_dataset(pydicom_sample("MR_truncated.dcm"))


def test_record_from_a_rewritten_dataset(pydicom_sample) -> None:
    path = pydicom_sample("MR_small.dcm")
    ds = read_dicom_dataset(path)
    ds.PatientName = "ANONYMOUS"
    del ds.PatientID
    record = record_from_dataset(ds, "deidentified")
    assert record.dataset is ds
    np.testing.assert_array_equal(record.pixels, read_image(path).pixels)


def test_record_from_dataset_needs_a_transfer_syntax_and_a_dataset(make_dicom) -> None:
    ds = read_dicom_dataset(make_dicom(np.zeros((2, 2), np.uint8)))
    del ds.file_meta.TransferSyntaxUID
    with pytest.raises(CorruptImage, match="Transfer Syntax"):
        record_from_dataset(ds, "no-meta")
    with pytest.raises(TypeError, match="expected a pydicom Dataset, got bytes"):
        record_from_dataset(b"not a dataset", "bytes")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- sniffing


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 8, SourceFormat.PNG),
        (b"\xff\xd8\xff\xe0" + b"\0" * 8, SourceFormat.JPEG),
        (b"\0" * 128 + b"DICM", SourceFormat.DICOM),
        # File Meta without a preamble
        (b"\x02\x00\x10\x00UI\x14\x001.2.840.10008.1.2.1\0", SourceFormat.DICOM),
        (b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100", SourceFormat.DICOM),  # bare explicit VR
        (b"\x08\x00\x00\x00\x04\x00\x00\x00\x80\x00\x00\x00", SourceFormat.DICOM),  # bare implicit
        (b"GIF89a" + b"\0" * 200, None),
        (b"%PDF-1.7\n" + b"\0" * 200, None),
        (b"\0" * 132, None),
        (b"", None),
        (b"\x89PN", None),
    ],
)
def test_sniff_format(head: bytes, expected: SourceFormat | None) -> None:
    assert sniff_format(head) is expected

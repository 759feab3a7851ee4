"""Fixtures shared by the imaging tests: the shared DICOM corpus and builders of
synthetic DICOM, PNG and JPEG bytes (no files on disk unless a test writes them)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom import Dataset, dcmwrite
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
DICOM_CORPUS = SHARED_DATA / "dicom"


@pytest.fixture(scope="session")
def dicom_corpus() -> Path:
    """The shared DICOM corpus folder (see its README.md); skips when absent."""
    if not (DICOM_CORPUS / "README.md").is_file():
        pytest.skip(f"shared DICOM corpus not found at {DICOM_CORPUS}")
    return DICOM_CORPUS.resolve()


@pytest.fixture(scope="session")
def pydicom_sample() -> Callable[[str], Path]:
    """Path of a DICOM file shipped inside the pydicom wheel (never downloads)."""

    def find(name: str) -> Path:
        path = get_testdata_file(name, download=False)
        if path is None:
            pytest.skip(f"{name} is not in the installed pydicom wheel")
        return Path(str(path))

    return find


@pytest.fixture(scope="session")
def make_dicom() -> Callable[..., bytes]:
    """Build a DICOM Part 10 file in memory.

    ``make_dicom(pixels, photometric="MONOCHROME2", bits_stored=None,
    implicit=False, **elements)``: ``pixels`` is ``(rows, cols)``,
    ``(frames, rows, cols)`` or with a trailing RGB axis; ``elements`` are
    extra data elements by keyword (``Modality="CT"``, ``RescaleSlope=1``, ...).
    """

    def build(
        pixels: np.ndarray,
        photometric: str = "MONOCHROME2",
        *,
        bits_stored: int | None = None,
        implicit: bool = False,
        **elements: Any,
    ) -> bytes:
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        ds.file_meta.TransferSyntaxUID = syntax
        is_ct = elements.get("Modality") == "CT"
        ds.SOPClassUID = CTImageStorage if is_ct else SecondaryCaptureImageStorage
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.PatientName = "Test^Synthetic"
        ds.PatientID = "SYN-0001"
        ds.Modality = "OT"
        pixels = np.asarray(pixels)
        ds.set_pixel_data(pixels, photometric, bits_stored or pixels.dtype.itemsize * 8)
        for keyword, value in elements.items():
            setattr(ds, keyword, value)
        buffer = io.BytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
        return buffer.getvalue()

    return build


@pytest.fixture(scope="session")
def make_png() -> Callable[..., bytes]:
    """``make_png(array, mode=None, **save_options)``: PNG bytes through Pillow."""

    def build(array: np.ndarray | Image.Image, mode: str | None = None, **options: Any) -> bytes:
        image = array if isinstance(array, Image.Image) else Image.fromarray(array, mode)
        buffer = io.BytesIO()
        image.save(buffer, "PNG", **options)
        return buffer.getvalue()

    return build


@pytest.fixture(scope="session")
def make_jpeg() -> Callable[..., bytes]:
    """``make_jpeg(array, mode=None, quality=95, **save_options)``: JPEG bytes through Pillow."""

    def build(
        array: np.ndarray | Image.Image, mode: str | None = None, quality: int = 95,
        **options: Any,
    ) -> bytes:
        image = array if isinstance(array, Image.Image) else Image.fromarray(array, mode)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality, **options)
        return buffer.getvalue()

    return build


@pytest.fixture(scope="session")
def gradient() -> Callable[..., np.ndarray]:
    """``gradient(rows, cols, dtype=np.uint8, colour=False)``: a smooth, JPEG-friendly image."""

    def build(rows: int = 48, cols: int = 64, dtype: Any = np.uint8, colour: bool = False):
        top = np.iinfo(dtype).max
        y, x = np.mgrid[0:rows, 0:cols]
        grey = ((x / max(cols - 1, 1)) * 0.7 + (y / max(rows - 1, 1)) * 0.3) * top
        if not colour:
            return grey.astype(dtype)
        return np.stack([grey, top - grey, np.full_like(grey, top / 3)], axis=-1).astype(dtype)

    return build

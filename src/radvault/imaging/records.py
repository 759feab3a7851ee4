"""The image record: pixels plus the few metadata later layers need.

An :class:`ImageRecord` is what every reader returns and what preprocessing,
the vault and the analysis engine consume. It deliberately has no PHI fields:
identifying values live only inside ``dataset`` (the DICOM dataset, when the
source is DICOM), which de-identification rewrites.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pydicom import Dataset

__all__ = ["ImageRecord", "SourceFormat"]


class SourceFormat(StrEnum):
    """The container an image came in."""

    DICOM = "dicom"
    PNG = "png"
    JPEG = "jpeg"


@dataclass(frozen=True, eq=False)
class ImageRecord:
    """Decoded pixels and the metadata the pipeline needs.

    Parameters
    ----------
    pixels : numpy.ndarray
        Frames first: shape ``(frames, rows, columns)`` for greyscale or
        ``(frames, rows, columns, 3)`` for colour (RGB). Greyscale DICOM pixels
        have the Modality LUT applied (e.g. Hounsfield units for CT) and
        MONOCHROME1 inverted so that higher is brighter.
    source_format : SourceFormat
        DICOM, PNG or JPEG.
    modality : str
        DICOM modality code (``CT``, ``MR``, ``DX``, ``US``, ...); ``OT`` when unknown.
    body_part : str
        DICOM Body Part Examined, upper case; ``""`` when unknown.
    study_uid, series_uid, sop_instance_uid : str
        DICOM UIDs; ``""`` for PNG/JPEG.
    pixel_spacing : tuple of float or None
        Row and column spacing in mm, when known.
    window_center, window_width : float or None
        The first VOI window the DICOM gives, when it gives one.
    bits_stored : int
        Bits per sample in the source (8 or 16 for PNG/JPEG).
    dataset : pydicom.Dataset or None
        The DICOM dataset without pixel data bulk kept decoded; ``None`` for PNG/JPEG.
    """

    pixels: np.ndarray
    source_format: SourceFormat
    modality: str = "OT"
    body_part: str = ""
    study_uid: str = ""
    series_uid: str = ""
    sop_instance_uid: str = ""
    pixel_spacing: tuple[float, float] | None = None
    window_center: float | None = None
    window_width: float | None = None
    bits_stored: int = 8
    dataset: Dataset | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.pixels, np.ndarray):
            raise TypeError("pixels must be a numpy array")
        if self.pixels.ndim not in (3, 4) or (self.pixels.ndim == 4 and self.pixels.shape[-1] != 3):
            raise ValueError(
                "pixels must have shape (frames, rows, cols) or (frames, rows, cols, 3), "
                f"got {self.pixels.shape}"
            )
        if min(self.pixels.shape[:3]) < 1:
            raise ValueError(f"pixels must not be empty, got shape {self.pixels.shape}")
        object.__setattr__(self, "source_format", SourceFormat(self.source_format))
        object.__setattr__(self, "modality", (self.modality or "OT").upper())
        object.__setattr__(self, "body_part", (self.body_part or "").upper())

    @property
    def frames(self) -> int:
        """Number of frames."""
        return int(self.pixels.shape[0])

    @property
    def is_color(self) -> bool:
        """True for RGB pixels."""
        return self.pixels.ndim == 4

    @property
    def rows(self) -> int:
        """Rows per frame."""
        return int(self.pixels.shape[1])

    @property
    def columns(self) -> int:
        """Columns per frame."""
        return int(self.pixels.shape[2])

    def pixel_message(self) -> tuple[bytes, memoryview]:
        """What a digest of the decoded pixels covers: dtype and shape, then the values.

        It depends on the decoded values only, not on the file's encoding. The
        vault records a keyed digest of it at ingest and recomputes it on every
        read (``Vault.pixel_digest``).

        Returns
        -------
        tuple of (bytes, memoryview)
            The dtype and shape as ASCII, and the pixels' bytes (C order).
        """
        pixels = np.ascontiguousarray(self.pixels)
        header = f"{pixels.dtype.str}{pixels.shape}".encode("ascii")
        return header, memoryview(pixels).cast("B")

    def pixel_sha256(self) -> str:
        """Plain sha-256 of :meth:`pixel_message`, as hex.

        Unkeyed, so anyone holding the image can compute it: the vault records
        a keyed digest instead, and accepts this one only from catalogs written
        before it did.
        """
        digest = hashlib.sha256()
        for part in self.pixel_message():
            digest.update(part)
        return digest.hexdigest()

    def frame(self, index: int = 0) -> np.ndarray:
        """Return one frame, ``(rows, cols)`` or ``(rows, cols, 3)``."""
        return self.pixels[index]

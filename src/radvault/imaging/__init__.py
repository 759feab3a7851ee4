"""Imaging layer: read images, de-identify DICOM (PS3.15 Annex E), preprocess for the model.

Pure functions on files, bytes, arrays and datasets: no storage, no network.
"""

from radvault.imaging.deid import (
    PROFILE_EDITION,
    Deidentifier,
    DeidOptions,
    DeidResult,
    pseudonym_for,
)
from radvault.imaging.preprocess import (
    Preprocessor,
    settings_from_dict,
    settings_to_dict,
    to_png_bytes,
    to_uint8_rgb,
)
from radvault.imaging.reading import (
    read_dicom_dataset,
    read_image,
    read_image_bytes,
    record_from_dataset,
    sniff_format,
)
from radvault.imaging.records import ImageRecord, SourceFormat

__all__ = [
    "PROFILE_EDITION",
    "DeidOptions",
    "DeidResult",
    "Deidentifier",
    "ImageRecord",
    "Preprocessor",
    "SourceFormat",
    "pseudonym_for",
    "read_dicom_dataset",
    "read_image",
    "read_image_bytes",
    "record_from_dataset",
    "settings_from_dict",
    "settings_to_dict",
    "sniff_format",
    "to_png_bytes",
    "to_uint8_rgb",
]

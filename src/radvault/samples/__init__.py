"""Sample images that ship with RadVault, so the demo needs no other data.

Five licensed PNG/JPEG images live in this package (see ``ATTRIBUTION.md``);
the DICOM samples are the test files inside the installed pydicom wheel,
located on disk directly so that nothing is ever downloaded.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pydicom

__all__ = ["SAMPLE_DICOM_FILES", "Sample", "export_samples", "list_samples"]

#: pydicom wheel files used as DICOM samples: CT (uncompressed and JPEG 2000), MR (small and
#: one with overlays), and an RGB secondary capture that the default policy refuses
#: (secondary captures may carry burned-in text).
SAMPLE_DICOM_FILES: tuple[str, ...] = (
    "CT_small.dcm",
    "693_J2KI.dcm",
    "MR_small.dcm",
    "examples_overlay.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
)

_RASTER_HINTS = {
    "chest_xray": ("DX", "CHEST"),
    "brain_mri": ("MR", "BRAIN"),
    "breast_us": ("US", "BREAST"),
    "lung_ct": ("CT", "CHEST"),
    "kidney_ct": ("CT", "KIDNEY"),
}


@dataclass(frozen=True)
class Sample:
    """One sample file with the hints a user would give for it."""

    path: Path
    modality: str | None = None
    body_part: str | None = None
    label: str | None = None


def _pydicom_test_files() -> Path:
    return Path(pydicom.__file__).resolve().parent / "data" / "test_files"


def list_samples() -> list[Sample]:
    """Return the shipped samples that exist in this installation."""
    samples: list[Sample] = []
    for name in SAMPLE_DICOM_FILES:
        path = _pydicom_test_files() / name
        if path.is_file():
            samples.append(Sample(path))
    images = resources.files(__name__) / "images"
    for entry in sorted(images.iterdir(), key=lambda e: e.name):
        if not entry.is_file():
            continue
        dataset, label, _ = entry.name.split("__", 2)
        modality, body_part = _RASTER_HINTS.get(dataset, (None, None))
        samples.append(Sample(Path(str(entry)), modality, body_part, label))
    return samples


def export_samples(dest: str | Path) -> list[Sample]:
    """Copy every sample into ``dest`` (created if needed) and return the copies."""
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    copies: list[Sample] = []
    for sample in list_samples():
        target = out / sample.path.name
        shutil.copyfile(sample.path, target)
        copies.append(Sample(target, sample.modality, sample.body_part, sample.label))
    return copies

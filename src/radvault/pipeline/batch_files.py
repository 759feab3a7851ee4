"""Use cases that work on plain files, without a vault: de-identify and preprocess to a folder.

Output file names never carry input names (which may hold PHI): de-identified
DICOM files are named by their new SOP Instance UID, preprocessed PNGs by a
keyed digest of the input bytes. Summaries list successes without input paths,
so a summary never links a pseudonym back to a named file.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radvault.config import ImagingLimits, PreprocessSettings
from radvault.errors import RadVaultError
from radvault.imaging.deid import Deidentifier
from radvault.imaging.preprocess import Preprocessor, to_png_bytes
from radvault.imaging.reading import read_dicom_dataset, read_image, record_from_dataset

__all__ = ["BatchSummary", "FileFailure", "deidentify_to_folder", "preprocess_to_folder"]

log = logging.getLogger(__name__)

ProgressCallback = Callable[[Path, bool], None]


@dataclass(frozen=True)
class FileFailure:
    """An input that was skipped, with the reason (no PHI: path as given, reason text)."""

    path: str
    error: str
    reason: str


@dataclass
class BatchSummary:
    """What a batch did: outputs written and inputs skipped."""

    written: list[dict[str, Any]] = field(default_factory=list)
    failed: list[FileFailure] = field(default_factory=list)
    #: inputs skipped because an earlier input had the same SOP Instance UID
    duplicates: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no input failed."""
        return not self.failed

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "written": self.written,
            "failed": [vars(f) for f in self.failed],
            "duplicates": self.duplicates,
            "counts": {"written": len(self.written), "failed": len(self.failed),
                       "duplicates": len(self.duplicates)},
        }


def _fail(summary: BatchSummary, path: Path, exc: RadVaultError) -> None:
    reason = getattr(exc, "reason", None) or str(exc)
    summary.failed.append(FileFailure(str(path), type(exc).__name__, reason))
    log.info("skipped an input: %s", type(exc).__name__)


def _write_atomic(target: Path, data: bytes) -> None:
    tmp = target.with_name(f".{target.name}.partial")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)


def deidentify_to_folder(
    paths: Iterable[Path],
    out_dir: Path,
    deidentifier: Deidentifier,
    *,
    limits: ImagingLimits | None = None,
    on_file: ProgressCallback | None = None,
) -> BatchSummary:
    """De-identify DICOM files into ``out_dir`` as ``<new SOP Instance UID>.dcm``.

    Each file is parsed, checked to decode (so a corrupt file never yields a
    half result), de-identified and written atomically. Bad files are skipped
    and reported in the summary; the rest are written.
    """
    import io

    out_dir.mkdir(parents=True, exist_ok=True)
    summary = BatchSummary()
    written: set[str] = set()
    for path in paths:
        try:
            ds = read_dicom_dataset(path, limits=limits)
            record_from_dataset(ds, str(path), limits=limits)  # proves the pixels decode
            result = deidentifier(ds, in_place=True)  # ds is ours alone
            buffer = io.BytesIO()
            result.dataset.save_as(buffer, enforce_file_format=True)
            name = f"{result.dataset.SOPInstanceUID}.dcm"
            if name in written:
                summary.duplicates.append(str(path))
                if on_file:
                    on_file(path, True)
                continue
            written.add(name)
            _write_atomic(out_dir / name, buffer.getvalue())
            summary.written.append(
                {
                    "file": name,
                    "pseudonym": result.pseudonym,
                    "modality": str(result.dataset.get("Modality", "")),
                    "burned_in_risk": result.burned_in_risk,
                    "date_shift_days": result.date_shift_days,
                }
            )
            ok = True
        except RadVaultError as exc:
            _fail(summary, path, exc)
            ok = False
        if on_file:
            on_file(path, ok)
    return summary


def preprocess_to_folder(
    paths: Iterable[Path],
    out_dir: Path,
    settings: PreprocessSettings,
    *,
    limits: ImagingLimits | None = None,
    on_file: ProgressCallback | None = None,
) -> BatchSummary:
    """Preprocess images (DICOM, PNG, JPEG) into ``out_dir`` as PNGs for inspection.

    Output names are the first 16 hex digits of the sha-256 of the input bytes,
    so they carry nothing from the input's name.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    preprocess = Preprocessor(settings)
    summary = BatchSummary()
    for path in paths:
        try:
            record = read_image(path, limits=limits)
            array = preprocess(record)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
            name = f"{digest}.png"
            _write_atomic(out_dir / name, to_png_bytes(array))
            summary.written.append(
                {"file": name, "modality": record.modality, "size": settings.size}
            )
            ok = True
        except RadVaultError as exc:
            _fail(summary, path, exc)
            ok = False
        if on_file:
            on_file(path, ok)
    return summary

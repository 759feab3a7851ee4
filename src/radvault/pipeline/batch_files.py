"""Use cases that work on plain files, without a vault: de-identify and preprocess to a folder.

Output file names never carry input names (which may hold PHI): de-identified
DICOM files are named by their new SOP Instance UID, preprocessed PNGs by the
run and the input's ordinal. The summary (:meth:`BatchSummary.as_dict`,
written beside the outputs) never names an input either: it lists successes
without them, so it never links a pseudonym back to a named file, and refers to
skipped inputs by ordinal, their position (from 1) in the inputs the run
processed. Paths stay on the in-memory records, for the operator's console.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radvault.config import ImagingLimits, PreprocessSettings
from radvault.errors import RadVaultError
from radvault.imaging.deid import Deidentifier
from radvault.imaging.preprocess import Preprocessor, to_png_bytes
from radvault.imaging.reading import read_dicom_dataset, read_image, record_from_dataset
from radvault.imaging.vocabulary import modality_term

__all__ = [
    "BatchSummary",
    "DuplicateInput",
    "FileFailure",
    "deidentify_to_folder",
    "preprocess_to_folder",
]

log = logging.getLogger(__name__)

ProgressCallback = Callable[[Path, bool], None]


@dataclass(frozen=True)
class FileFailure:
    """An input that was skipped, with the reason.

    ``ordinal`` is the input's position (from 1) in the inputs the run
    processed; ``path`` is the path as given, for the operator's console only
    (it may name a patient: :meth:`BatchSummary.as_dict` leaves it out).
    ``reason`` names no file and quotes no header value.
    """

    ordinal: int
    path: str
    error: str
    reason: str


@dataclass(frozen=True)
class DuplicateInput:
    """An input skipped because an earlier one had the same SOP Instance UID.

    ``ordinal`` and ``path`` as for :class:`FileFailure`.
    """

    ordinal: int
    path: str


@dataclass
class BatchSummary:
    """What a batch did: outputs written and inputs skipped."""

    written: list[dict[str, Any]] = field(default_factory=list)
    failed: list[FileFailure] = field(default_factory=list)
    duplicates: list[DuplicateInput] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no input failed."""
        return not self.failed

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, for the summary file beside the outputs: inputs by ordinal only.

        Returns
        -------
        dict
            ``written`` (one entry per output file), ``failed`` (``ordinal``,
            ``error``, ``reason``), ``duplicates`` (ordinals) and ``counts``.
        """
        return {
            "written": self.written,
            "failed": [{"ordinal": f.ordinal, "error": f.error, "reason": f.reason}
                       for f in self.failed],
            "duplicates": [d.ordinal for d in self.duplicates],
            "counts": {"written": len(self.written), "failed": len(self.failed),
                       "duplicates": len(self.duplicates)},
        }


def _fail(summary: BatchSummary, ordinal: int, path: Path, exc: RadVaultError) -> None:
    reason = getattr(exc, "reason", None) or str(exc)
    summary.failed.append(FileFailure(ordinal, str(path), type(exc).__name__, reason))
    log.info("skipped input %d: %s", ordinal, type(exc).__name__)


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
    and reported in the summary, by ordinal (position from 1 in ``paths``); the
    rest are written.
    """
    import io

    out_dir.mkdir(parents=True, exist_ok=True)
    summary = BatchSummary()
    written: set[str] = set()
    for ordinal, path in enumerate(paths, start=1):
        try:
            ds = read_dicom_dataset(path, limits=limits)
            record_from_dataset(ds, str(path), limits=limits)  # proves the pixels decode
            result = deidentifier(ds, in_place=True)  # ds is ours alone
            buffer = io.BytesIO()
            result.dataset.save_as(buffer, enforce_file_format=True)
            name = f"{result.dataset.SOPInstanceUID}.dcm"
            if name in written:
                summary.duplicates.append(DuplicateInput(ordinal, str(path)))
                if on_file:
                    on_file(path, True)
                continue
            written.add(name)
            _write_atomic(out_dir / name, buffer.getvalue())
            summary.written.append(
                {
                    "file": name,
                    "pseudonym": result.pseudonym,
                    "modality": modality_term(str(result.dataset.get("Modality", ""))),
                    "burned_in_risk": result.burned_in_risk,
                    "date_shift_days": result.date_shift_days,
                }
            )
            ok = True
        except RadVaultError as exc:
            _fail(summary, ordinal, path, exc)
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

    Output names are a random run tag and the input's ordinal
    (``preview-3fa9c1-0001.png`` for the first), so they carry nothing from the
    input's name or content (a plain hash of the bytes would link a preview to the
    vault's catalog) and a later run into the same folder replaces none of them;
    skipped inputs are reported by ordinal, as for :func:`deidentify_to_folder`.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    preprocess = Preprocessor(settings)
    summary = BatchSummary()
    run = secrets.token_hex(3)
    for ordinal, path in enumerate(paths, start=1):
        try:
            record = read_image(path, limits=limits)
            array = preprocess(record)
            name = f"preview-{run}-{ordinal:04d}.png"
            _write_atomic(out_dir / name, to_png_bytes(array))
            summary.written.append({"ordinal": ordinal, "file": name,
                                    "modality": record.modality, "size": settings.size})
            ok = True
        except RadVaultError as exc:
            _fail(summary, ordinal, path, exc)
            ok = False
        if on_file:
            on_file(path, ok)
    return summary

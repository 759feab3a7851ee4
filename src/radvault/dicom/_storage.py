"""What the DICOM faces share: storage SOP classes, transfer syntaxes, C-STORE ingest.

Private: the public names are handed on by :mod:`radvault.dicom`. Both the SCP
(modalities push to us) and ``radvault pull`` (a PACS sends to us during C-GET
or C-MOVE) receive C-STORE requests; both hand the received bytes, exactly as
sent, to the one :class:`~radvault.pipeline.ingest.Ingestor`, in memory, and
answer with a status only once the instance was de-identified, sealed, signed
and audited (or refused and audited).
"""

from __future__ import annotations

import logging
import re
import socket
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import _config as pynetdicom_config
from pynetdicom import sop_class

from radvault._diagnostics import log_unexpected
from radvault.errors import ConfigurationError
from radvault.pipeline.ingest import Ingestor, IngestOutcome
from radvault.vault.audit import Action, Outcome
from radvault.vault.vault import Vault

__all__ = [
    "STATUS_BY_ERROR",
    "STORAGE_SOP_CLASSES",
    "StoreReceiver",
    "accepted_transfer_syntaxes",
    "actor_for",
    "check_in_memory_receive",
    "retrieve_contexts",
    "set_nodelay",
    "set_nodelay_on_event",
]

log = logging.getLogger(__name__)

#: The storage SOP classes RadVault accepts: CT, MR, CR, DX, US (single and
#: multi-frame), SC (single and multi-frame), XA, NM and MG.
STORAGE_SOP_CLASSES: Final[tuple[UID, ...]] = (
    sop_class.CTImageStorage,
    sop_class.EnhancedCTImageStorage,
    sop_class.MRImageStorage,
    sop_class.EnhancedMRImageStorage,
    sop_class.ComputedRadiographyImageStorage,
    sop_class.DigitalXRayImageStorageForPresentation,
    sop_class.DigitalXRayImageStorageForProcessing,
    sop_class.UltrasoundImageStorage,
    sop_class.UltrasoundMultiFrameImageStorage,
    sop_class.SecondaryCaptureImageStorage,
    sop_class.MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    sop_class.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    sop_class.MultiFrameTrueColorSecondaryCaptureImageStorage,
    sop_class.XRayAngiographicImageStorage,
    sop_class.EnhancedXAImageStorage,
    sop_class.NuclearMedicineImageStorage,
    sop_class.DigitalMammographyXRayImageStorageForPresentation,
    sop_class.DigitalMammographyXRayImageStorageForProcessing,
)

_NATIVE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
           ExplicitVRBigEndian)
_COMPRESSED = (
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.51",  # JPEG extended
    "1.2.840.10008.1.2.4.57",  # JPEG lossless
    "1.2.840.10008.1.2.4.70",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K RPCL lossless
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.5",  # RLE lossless
)

#: C-STORE failure status per refusal (the ingest error's class name), PS3.4 B.2.3 / PS3.7 C.
STATUS_BY_ERROR: Final[dict[str, int]] = {
    "BurnedInAnnotationRefused": 0x0124,  # Refused: Not Authorised (the policy refuses it)
    "StudySiteConflict": 0x0124,  # Refused: Not Authorised (the study is another site's)
    "ImageTooLarge": 0xA700,  # Refused: Out of Resources
    "MissingPixelData": 0xA900,  # Data Set Does Not Match SOP Class
    "NotAnImage": 0xC001,  # Cannot Understand: not a DICOM image
    "CorruptImage": 0xC001,
    "UnsupportedTransferSyntax": 0xC002,  # Cannot Understand: no decoder
    "DeidentificationError": 0xC003,  # Cannot Understand: profile cannot be applied
    "UidConflict": 0xC000,  # Cannot Understand: its study or series UID is another's
    "ImageInputError": 0xC000,
}
_INTERNAL_FAILURE = 0x0110  # Processing Failure (a vault or catalog error)
_SAFE_ACTOR = re.compile(r"[^A-Za-z0-9._:@-]")


def accepted_transfer_syntaxes() -> list[UID]:
    """The transfer syntaxes RadVault accepts: native ones, and those pydicom can decode here.

    A compressed syntax without an installed decoder is never negotiated, so a
    sender falls back to a syntax RadVault can read rather than having every
    instance refused after transfer.
    """
    accepted = [UID(u) for u in _NATIVE]
    for uid in map(UID, _COMPRESSED):
        try:
            if get_decoder(uid).is_available:
                accepted.append(uid)
        except NotImplementedError:  # pragma: no cover - pydicom knows all of these
            continue
    return accepted


#: The compressed syntaxes C-GET proposes, most wanted first, as far as they fit.
_RETRIEVE_ORDER = (
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.203", "1.2.840.10008.1.2.4.202",
)


def retrieve_contexts(limit: int = 127) -> list[tuple[UID, list[UID]]]:
    """Storage contexts to propose when a PACS sends on our own association (C-GET).

    The PACS accepts one transfer syntax per proposed context and must convert every
    instance of that class to it: a single context listing every syntax ends up
    uncompressed, and a PACS that cannot decompress JPEG 2000 fails the retrieve.
    So each class gets one context of the native syntaxes, then one per compressed
    syntax RadVault decodes here (:func:`accepted_transfer_syntaxes`), the most
    common first across all classes, while fewer than ``limit`` are proposed
    (pynetdicom allows 128 contexts in all; the caller keeps one for C-GET).

    Returns
    -------
    list of (SOP class UID, transfer syntax UIDs)
    """
    native = [UID(u) for u in _NATIVE]
    decodable = {str(u) for u in accepted_transfer_syntaxes()}
    contexts = [(uid, native) for uid in STORAGE_SOP_CLASSES][:limit]
    for syntax in (UID(u) for u in _RETRIEVE_ORDER if u in decodable):
        for uid in STORAGE_SOP_CLASSES:
            if len(contexts) >= limit:
                return contexts
            contexts.append((uid, [syntax]))
    return contexts


def actor_for(ae_title: str) -> str:
    """The audit actor of a DICOM peer: ``dicom:`` and its AE title, reduced to safe characters."""
    cleaned = _SAFE_ACTOR.sub("_", ae_title.strip())[:64] or "_"
    return f"dicom:{cleaned}"


def set_nodelay(sock: Any) -> None:
    """Turn Nagle's algorithm off on a TCP socket (each DIMSE message would wait ~40 ms)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # not TCP (tests may hand in other sockets)
        log.debug("TCP_NODELAY not set on a non-TCP socket")


def set_nodelay_on_event(event: Any) -> None:
    """An ``EVT_CONN_OPEN`` handler that sets TCP_NODELAY on the association's socket."""
    dul_socket = getattr(event.assoc.dul, "socket", None)
    raw = getattr(dul_socket, "socket", None)
    if raw is not None:
        set_nodelay(raw)


def check_in_memory_receive() -> None:
    """Refuse to run when pynetdicom would spool received datasets to temporary files.

    Raises
    ------
    ConfigurationError
        When ``pynetdicom._config.STORE_RECV_CHUNKED_DATASET`` is on.
    """
    if pynetdicom_config.STORE_RECV_CHUNKED_DATASET:
        raise ConfigurationError(
            "pynetdicom STORE_RECV_CHUNKED_DATASET writes received images to temporary "
            "files; RadVault keeps them in memory only: turn it off"
        )


def _status(code: int, comment: str | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]
    return ds


@dataclass
class StoreReceiver:
    """Ingests C-STORE requests for one peer and counts the outcomes.

    Parameters
    ----------
    vault : Vault
        The open vault.
    actor : str
        The audit actor (see :func:`actor_for`).
    site : str
        The site the peer's studies belong to.
    lock : threading.Lock
        Serialises ingests into one vault (the ingest flow merges each patient's
        identity record read-modify-write, so two ingests must not interleave).
    on_outcome : callable, optional
        Called with each :class:`IngestOutcome` (tests, progress bars).
    """

    vault: Vault
    actor: str
    site: str
    lock: threading.Lock
    on_outcome: Callable[[IngestOutcome], None] | None = None
    counts: Counter[str] = field(default_factory=Counter)
    _ingestor: Ingestor | None = field(default=None, init=False, repr=False)

    @property
    def ingestor(self) -> Ingestor:
        """The ingestor of this peer (built on first use)."""
        if self._ingestor is None:
            self._ingestor = Ingestor(self.vault, actor=self.actor, site=self.site)
        return self._ingestor

    def __call__(self, event: Any) -> Dataset:
        """Handle one ``EVT_C_STORE``: ingest the bytes as received; return the status."""
        try:
            data = event.encoded_dataset(include_meta=True)
        except Exception:  # a malformed request: pynetdicom could not frame it
            log.warning("C-STORE from %s: the dataset could not be read", self.actor)
            return self._failed("unreadable", 0xC000, "the dataset could not be read")
        limit = self.vault.settings.limits.max_file_bytes
        if len(data) > limit:
            return self._failed("ImageTooLarge", 0xA700, f"over the cap of {limit} bytes")
        try:
            with self.lock:
                outcome = self.ingestor.ingest_bytes(data, f"C-STORE from {self.actor}")
        except Exception as exc:  # a vault or catalog failure: audited, reported, never silent
            # type and stack frames only: an unexpected exception's message could quote
            # dataset values
            log_unexpected(log, exc, f"C-STORE from {self.actor}: ingest failed")
            return self._failed(type(exc).__name__, _INTERNAL_FAILURE, "processing failure")
        finally:
            del data
        self.counts[outcome.status] += 1
        if self.on_outcome is not None:
            self.on_outcome(outcome)
        if outcome.ok:
            return _status(0x0000)
        error = outcome.error or "ImageInputError"
        code = STATUS_BY_ERROR.get(error, STATUS_BY_ERROR["ImageInputError"])
        log.info("C-STORE from %s refused: %s", self.actor, error)
        return _status(code, error)

    def _failed(self, error: str, code: int, reason: str) -> Dataset:
        """Audit a refusal the ingest flow never saw, and build its status."""
        self.counts["refused"] += 1
        try:
            self.vault.audit.append(self.actor, Action.INGEST_REFUSED, Outcome.REFUSED,
                                    details={"error": error, "via": "c-store"})
        except Exception as exc:  # the status still goes back; the log says auditing failed
            log_unexpected(log, exc, f"could not audit a refused C-STORE from {self.actor}")
        if self.on_outcome is not None:
            self.on_outcome(IngestOutcome(f"C-STORE from {self.actor}", "refused",
                                          error=error, reason=reason))
        return _status(code, error)

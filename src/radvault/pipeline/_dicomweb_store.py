"""DICOMweb STOW-RS: storing instances (private: use :mod:`radvault.pipeline.clinical`).

Each DICOM part of a STOW-RS request gets the checks of
:meth:`ClinicalService.upload` (a PS3.10 file, the size cap, not another
site's study), then the accepted parts are ingested together
(:meth:`Ingestor.ingest_many`, group commit), each refused or stored with its
own outcome. :class:`DicomWebStoreCases` is a base of
:class:`~radvault.pipeline._clinical_dicomweb.DicomWebCases`.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydicom import dcmread

from radvault.access.policy import Action
from radvault.access.principal import Principal
from radvault.errors import (
    AccessDenied,
    BurnedInAnnotationRefused,
    CorruptImage,
    DeidentificationError,
    ImageInputError,
    ImageTooLarge,
    MissingPixelData,
    NotAnImage,
    RadVaultError,
    StudySiteConflict,
    UidConflict,
    UnsupportedTransferSyntax,
)
from radvault.imaging.deid import replacement_uid
from radvault.pipeline._clinical_base import InvalidRequest, ServiceCore
from radvault.pipeline.ingest import IngestItem, Ingestor, IngestOutcome
from radvault.pipeline.sites import study_site
from radvault.vault.audit import Outcome

__all__ = [
    "COERCION_WARNING",
    "FAILURE_REASONS",
    "PROCESSING_FAILURE",
    "DicomWebStoreCases",
    "StoreItem",
    "StoreResult",
]

#: PS3.18 Annex I / PS3.4 Table B.2-1 failure reasons, by the error that refused the part.
FAILURE_REASONS: dict[type[RadVaultError], int] = {
    BurnedInAnnotationRefused: 0x0124,  # Refused: Not Authorised (the policy refuses it)
    AccessDenied: 0x0124,  # e.g. the instance belongs to a study of another site
    StudySiteConflict: 0x0124,  # the same, found by ingest (a race with another site's upload)
    ImageTooLarge: 0xA700,  # Refused: Out of Resources
    MissingPixelData: 0xA900,  # Data Set Does Not Match SOP Class
    UnsupportedTransferSyntax: 0xC122,  # Referenced Transfer Syntax not supported
    NotAnImage: 0xC001,  # Cannot Understand
    CorruptImage: 0xC001,
    DeidentificationError: 0xC003,  # Cannot Understand: the profile cannot be applied
    ImageInputError: 0xC000,
    UidConflict: 0xC000,  # Cannot Understand: its study or series UID is another's
}
PROCESSING_FAILURE = 0x0110
"""Failure reason of a part refused by a vault or catalog failure (not the data's fault)."""
COERCION_WARNING = 0xB000
"""Warning reason of every stored instance: de-identification coerced its attributes."""


# --------------------------------------------------------------------------- answers


@dataclass(frozen=True)
class StoreItem:
    """The outcome of one part of a STOW-RS request.

    ``sop_class_uid`` and ``sop_instance_uid`` are the values the sender sent
    (so it can match outcomes to what it sent; ``None`` when the part could
    not be parsed); ``study_id``, ``series_id`` and ``instance_id`` are
    RadVault's pseudonymous ids (``None`` when refused).
    """

    index: int
    status: str
    sop_class_uid: str | None = field(default=None, repr=False)
    sop_instance_uid: str | None = field(default=None, repr=False)
    study_id: str | None = None
    series_id: str | None = None
    instance_id: str | None = None
    failure_reason: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the instance is stored (now or before)."""
        return self.status != "failed"


@dataclass(frozen=True)
class StoreResult:
    """Every part's outcome, in request order."""

    items: tuple[StoreItem, ...]

    @property
    def stored(self) -> tuple[StoreItem, ...]:
        """The parts that are stored (``stored`` or ``duplicate``)."""
        return tuple(i for i in self.items if i.ok)

    @property
    def failed(self) -> tuple[StoreItem, ...]:
        """The refused parts."""
        return tuple(i for i in self.items if not i.ok)


# --------------------------------------------------------------------------- the mixin


class DicomWebStoreCases(ServiceCore):
    """DICOMweb use case: store (STOW-RS)."""

    # ------------------------------------------------------------------ STOW-RS

    def dicomweb_store(self, principal: Principal, parts: Sequence[bytes]) -> StoreResult:
        """Store the DICOM instances of one STOW-RS request into the caller's site.

        The checks of :meth:`upload`, per part, before anything is stored: a
        PS3.10 file, under the size cap, and not (joining) a study of another
        site (refusals audited). The accepted parts are then ingested together
        (:meth:`Ingestor.ingest_many`: de-identified, preprocessed, sealed,
        cataloged and audited one by one, their blob flushes and catalog
        commits shared), so the answer, which covers the whole request, comes
        only once every stored instance is durable. A refused part never
        stops the others. The request is audited as ``dicomweb.store``.

        Parameters
        ----------
        principal : Principal
            A technologist of the destination site.
        parts : sequence of bytes
            The request's ``application/dicom`` parts (PS3.10 files).

        Returns
        -------
        StoreResult
            One item per part, in order.

        Raises
        ------
        AccessDenied
            If the caller may not upload at all, or their site is not registered
            (audited).
        InvalidRequest
            If there are no parts (audited).
        """
        site = self._authorize_upload(principal)
        if not parts:
            raise self._part_refused(principal, InvalidRequest("the request holds no instance"))
        sites: dict[str, str | None] = {}
        items: list[StoreItem | None] = []
        accepted: list[tuple[int, IngestItem, _Sent]] = []
        for index, data in enumerate(parts):
            sent = _sent_header(data)
            name = f"part-{index + 1}.dcm"
            try:
                self._check_part(principal, data, name, sent, sites)
            except RadVaultError as exc:
                items.append(StoreItem(index, "failed", sent.sop_class, sent.sop_instance,
                                       failure_reason=_failure_reason(type(exc).__name__),
                                       error=type(exc).__name__))
                continue
            items.append(None)
            accepted.append((index, IngestItem(data, name=name), sent))
        ingestor = Ingestor(self.vault, actor=principal.username, site=site)
        outcomes = ingestor.ingest_many(item for _, item, _ in accepted)
        landed: dict[str, str | None] = {}  # the sites of the studies written to, re-read
        for (index, _, sent), outcome in zip(accepted, outcomes, strict=True):
            items[index] = self._stored_item(principal, index, sent, outcome, landed)
        result = StoreResult(tuple(i for i in items if i is not None))
        studies = sorted({i.study_id for i in result.stored if i.study_id})
        self.vault.audit.append(
            principal.username, "dicomweb.store",
            Outcome.OK if result.stored else Outcome.REFUSED,
            object_ids=studies[:64],
            details={"stored": len(result.stored), "failed": len(result.failed),
                     "errors": sorted({i.error for i in result.failed if i.error})[:8]})
        return result

    def _check_part(self, principal: Principal, data: bytes, name: str, sent: _Sent,
                    sites: dict[str, str | None]) -> None:
        """Refuse (audited) a part that must not reach ingest."""
        if len(data) < 132 or data[128:132] != b"DICM":
            raise self._part_refused(principal, NotAnImage(
                name, "not a DICOM file (PS3.10 preamble and DICM prefix)"))
        cap = self.vault.settings.limits.max_file_bytes
        if len(data) > cap:
            raise self._part_refused(principal, ImageTooLarge(name, f"over the cap of {cap} "
                                                                    "bytes"))
        # The study it is, or would join (as upload's check): the same file stored
        # before, else the de-identified Study Instance UID ingest will give it.
        if sent.study_uid:
            study_id: str | None = replacement_uid(self.vault.keys.deid_secret(),
                                                   sent.study_uid)
        else:
            existing = self.vault.find_instance_by_source(data)
            study_id = existing.study_id if existing is not None else None
        if study_id is None:
            return
        if study_id not in sites:
            sites[study_id] = study_site(self.vault, study_id)
        if sites[study_id] not in (None, principal.site):
            raise self._refuse(principal, Action.UPLOAD,
                               "the image belongs to a study of another site",
                               [f"site:{principal.site}"])

    def _stored_item(self, principal: Principal, index: int, sent: _Sent,
                     outcome: IngestOutcome, landed: dict[str, str | None]) -> StoreItem:
        """The item of one ingested part (ingest audited it), re-checking its study's site."""
        if outcome.status == "refused" or not outcome.study_id or not outcome.instance_id:
            error = outcome.error or "ImageInputError"
            return StoreItem(index, "failed", sent.sop_class, sent.sop_instance,
                             failure_reason=_failure_reason(error), error=error)
        if outcome.study_id not in landed:
            landed[outcome.study_id] = study_site(self.vault, outcome.study_id)
        if landed[outcome.study_id] != principal.site:  # a race with another site's upload
            self._refuse(principal, Action.UPLOAD, "the image belongs to a study of another "
                         "site", [f"site:{principal.site}"])
            return StoreItem(index, "failed", sent.sop_class, sent.sop_instance,
                             failure_reason=_failure_reason("AccessDenied"),
                             error="AccessDenied")
        instance = self.vault.catalog.get_instance(outcome.instance_id)
        return StoreItem(index, outcome.status, sent.sop_class, sent.sop_instance,
                         outcome.study_id, instance.series_id, outcome.instance_id)

    def _part_refused(self, principal: Principal, error: RadVaultError) -> RadVaultError:
        """Audit a part refused before it reached ingest; return ``error`` to raise."""
        self.vault.audit.append(principal.username, "ingest_refused", Outcome.REFUSED,
                                object_ids=[f"site:{principal.site}"] if principal.site else [],
                                details={"error": type(error).__name__, "via": "dicomweb"})
        return error


# --------------------------------------------------------------------------- helpers


_FAILURE_BY_NAME = {cls.__name__: code for cls, code in FAILURE_REASONS.items()}


def _failure_reason(error: str) -> int:
    """The failure reason of a refusal, by the refusing error's class name."""
    return _FAILURE_BY_NAME.get(error, PROCESSING_FAILURE)


@dataclass(frozen=True)
class _Sent:
    """UIDs of a STOW-RS part as the sender wrote them (``None`` where unreadable)."""

    sop_class: str | None
    sop_instance: str | None
    study_uid: str | None


_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def _sent_header(data: bytes) -> _Sent:
    """Read the part's SOP Class, SOP Instance and Study Instance UIDs (header only)."""
    try:
        ds = dcmread(io.BytesIO(data), stop_before_pixels=True,
                     specific_tags=["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"])
        values = [str(ds.get(k, "") or "").strip() for k in
                  ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID")]
    except Exception:  # a best-effort probe (any parser failure): ingest gives the verdict
        return _Sent(None, None, None)
    ok = [v if v and len(v) <= 64 and _UID.fullmatch(v) else None for v in values]
    return _Sent(ok[0], ok[1], values[2] or None)

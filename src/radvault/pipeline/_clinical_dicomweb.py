"""DICOMweb use cases: STOW-RS, QIDO-RS, WADO-RS (private: use :mod:`radvault.pipeline.clinical`).

The same rules as every other clinical use case: the authenticated principal
comes first, the policy is asked before anything is touched (with the study's
site as the catalog records it), and every refusal is audited.

* **Store** (technologists, into their own site): each DICOM part of a
  STOW-RS request gets the checks of :meth:`ClinicalService.upload` (a PS3.10
  file, the size cap, not another site's study), then the accepted parts are
  ingested together (:meth:`Ingestor.ingest_many`, group commit): each one
  de-identified, preprocessed, sealed, cataloged, audited, and refused
  (burned-in risk, corrupt...) exactly like an upload. One refused part never
  stops the others: each gets its own outcome.
* **Search** (radiologists and physicians, their granted studies only):
  answers come from the catalog, never from stored datasets, so they can only
  hold what the catalog holds, all of it de-identified or pseudonymous (the
  same rule as C-FIND, :mod:`radvault.dicom._query`). A filter on an attribute
  RadVault does not disclose matches nothing, so no query can probe hidden
  values.
* **Retrieve** (radiologists, granted studies): the sealed de-identified DICOM
  is opened in memory (:meth:`Vault.open_object` checks the signed row, the
  blob digest and the AEAD tags), its pixels are decoded and checked against
  the digest recorded at ingest (back-verification), and the read is audited.
  Metadata is the same dataset in the DICOM JSON model without its bulk data;
  rendered images go through :meth:`ClinicalService.render_image`.

RadVault's ids are the de-identified UIDs, so a DICOMweb URL names a study,
series or instance by the pseudonymous id the rest of the API uses.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image
from pydicom import dcmread
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from radvault.access.policy import Action, Resource
from radvault.access.principal import Principal
from radvault.errors import (
    AccessDenied,
    BurnedInAnnotationRefused,
    CorruptImage,
    DeidentificationError,
    ImageInputError,
    ImageTooLarge,
    IntegrityError,
    MissingPixelData,
    NotAnImage,
    ObjectNotFound,
    RadVaultError,
    UnsupportedTransferSyntax,
)
from radvault.imaging.deid import replacement_uid
from radvault.imaging.reading import read_dicom_dataset, record_from_dataset
from radvault.pipeline._clinical_base import (
    ID_RE,
    SCAN_LIMIT,
    InvalidRequest,
    ServiceCore,
    newest_first,
)
from radvault.pipeline.ingest import DICOM_KIND, IngestItem, Ingestor, IngestOutcome
from radvault.vault.audit import Action as AuditAction
from radvault.vault.audit import Outcome
from radvault.vault.catalog import InstanceRecord, StudyRecord
from radvault.vault.secure_memory import zeroize

__all__ = [
    "COERCION_WARNING",
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "FAILURE_REASONS",
    "PROCESSING_FAILURE",
    "QIDO_LEVELS",
    "DicomPart",
    "DicomWebCases",
    "NotAcceptable",
    "SearchResult",
    "StoreItem",
    "StoreResult",
]

logger = logging.getLogger(__name__)

EXPLICIT_VR_LITTLE_ENDIAN = str(ExplicitVRLittleEndian)
"""The transfer syntax a WADO-RS answer defaults to (PS3.18 8.7.3.5.2)."""

QIDO_LEVELS = ("study", "series", "instance")
"""The levels a QIDO-RS search can be made at."""

_BULK_THRESHOLD = 1024
_BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_PIXEL_KEYWORDS = frozenset({"PixelData", "FloatPixelData", "DoubleFloatPixelData"})

#: PS3.18 Annex I / PS3.4 Table B.2-1 failure reasons, by the error that refused the part.
FAILURE_REASONS: dict[type[RadVaultError], int] = {
    BurnedInAnnotationRefused: 0x0124,  # Refused: Not Authorised (the policy refuses it)
    AccessDenied: 0x0124,  # e.g. the instance belongs to a study of another site
    ImageTooLarge: 0xA700,  # Refused: Out of Resources
    MissingPixelData: 0xA900,  # Data Set Does Not Match SOP Class
    UnsupportedTransferSyntax: 0xC122,  # Referenced Transfer Syntax not supported
    NotAnImage: 0xC001,  # Cannot Understand
    CorruptImage: 0xC001,
    DeidentificationError: 0xC003,  # Cannot Understand: the profile cannot be applied
    ImageInputError: 0xC000,
}
PROCESSING_FAILURE = 0x0110
"""Failure reason of a part refused by a vault or catalog failure (not the data's fault)."""
COERCION_WARNING = 0xB000
"""Warning reason of every stored instance: de-identification coerced its attributes."""


class NotAcceptable(InvalidRequest):
    """No representation the caller accepts can be made (HTTP 406 at the face)."""


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


@dataclass(frozen=True)
class SearchResult:
    """One page of QIDO-RS matches, each a dataset of disclosed attributes only.

    ``more`` tells that matches exist beyond this page.
    """

    level: str
    matches: tuple[Dataset, ...]
    more: bool


@dataclass(frozen=True)
class DicomPart:
    """One retrieved instance: a de-identified PS3.10 file in a given transfer syntax."""

    instance_id: str
    transfer_syntax: str
    data: bytes = field(repr=False)


# --------------------------------------------------------------------------- QIDO attributes


@dataclass(frozen=True)
class _Key:
    """A query key: the keyword, the DICOM tag as 8 hex digits, and its VR."""

    keyword: str
    tag: int
    vr: str


_STUDY_KEYS = ("StudyInstanceUID", "PatientID", "PatientName", "ModalitiesInStudy",
               "BodyPartExamined", "NumberOfStudyRelatedSeries",
               "NumberOfStudyRelatedInstances")
_SERIES_KEYS = ("SeriesInstanceUID", "Modality", "NumberOfSeriesRelatedInstances")
_INSTANCE_KEYS = ("SOPInstanceUID", "Rows", "Columns", "NumberOfFrames")
_DISCLOSED = {"study": _STUDY_KEYS, "series": _STUDY_KEYS + _SERIES_KEYS,
              "instance": _STUDY_KEYS + _SERIES_KEYS + _INSTANCE_KEYS}
_DEFAULT_FIELDS = {
    "study": (*_STUDY_KEYS, "InstanceAvailability"),
    "series": ("StudyInstanceUID", *_SERIES_KEYS, "InstanceAvailability"),
    "instance": ("StudyInstanceUID", "SeriesInstanceUID", *_INSTANCE_KEYS,
                 "InstanceAvailability"),
}
_HEX_TAG = re.compile(r"[0-9A-Fa-f]{8}")


def _key(name: str) -> _Key:
    """The attribute a QIDO parameter or ``includefield`` value names (keyword or tag)."""
    if _HEX_TAG.fullmatch(name):
        tag = int(name, 16)
        keyword = keyword_for_tag(tag)
    else:
        keyword = name
        found = tag_for_keyword(name)
        tag = found if found is not None else -1
    if not keyword or tag < 0:
        raise InvalidRequest("unknown query attribute (give a DICOM keyword or tag)")
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        raise InvalidRequest("unknown query attribute (give a DICOM keyword or tag)") from None
    if vr == "SQ" or "." in name:
        raise InvalidRequest("sequence attributes cannot be searched")
    return _Key(keyword, tag, vr)


def _wildcard(pattern: str) -> re.Pattern[str]:
    """PS3.4 C.2.2.2.4 wild card matching: ``*`` any run, ``?`` one character."""
    parts = (".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.compile("".join(parts), re.DOTALL)


def _values(raw: Sequence[str]) -> list[str]:
    """The alternatives a query value lists (comma- or backslash-separated)."""
    out = []
    for value in raw:
        out.extend(v.strip() for v in re.split(r"[,\\]", value) if v.strip())
    return out


def _matches(key: _Key, wanted: list[str], have: Any) -> bool:
    """Whether the disclosed value matches one of the query's alternatives."""
    if have is None or have == "":
        return False
    text = str(have)
    if key.vr == "UI":  # list of UID matching, no wild cards
        return text in wanted
    return any(_wildcard(w).fullmatch(text) for w in wanted)


class _StudyRow:
    """The values RadVault may disclose for one study (counts read on first use)."""

    def __init__(self, study: StudyRecord, instances: Callable[[], list[InstanceRecord]]) -> None:
        self.study = study
        self._instances = instances
        self._cache: list[InstanceRecord] | None = None

    def instances(self) -> list[InstanceRecord]:
        if self._cache is None:
            self._cache = self._instances()
        return self._cache

    def series(self) -> Counter[str]:
        return Counter(i.series_id for i in self.instances())

    def values(self) -> dict[str, Any]:
        s = self.study
        return {
            "StudyInstanceUID": s.study_id,
            "PatientID": s.patient_pseudonym,
            "PatientName": s.patient_pseudonym,
            "ModalitiesInStudy": s.modality or "",
            "BodyPartExamined": s.body_part or "",
            "NumberOfStudyRelatedInstances": s.n_instances,
            "NumberOfStudyRelatedSeries": lambda: len(self.series()),
        }


def _answer(level: str, values: Mapping[str, Any], fields: Sequence[_Key]) -> Dataset:
    """A response dataset: the asked fields, disclosed values or empty."""
    ds = Dataset()
    for key in fields:
        value = values.get(key.keyword)
        if callable(value):
            value = value()
        if key.keyword == "InstanceAvailability":
            value = "ONLINE"
        if value is None or value == "":
            ds.add(DataElement(key.tag, key.vr, None))
        else:
            ds.add(DataElement(key.tag, key.vr, value))
    return ds


# --------------------------------------------------------------------------- the mixin


class DicomWebCases(ServiceCore):
    """DICOMweb use cases: store, search, retrieve, metadata, rendered."""

    if TYPE_CHECKING:  # provided by ClinicalService, which this mixin is a base of

        def render_image(self, principal: Principal, study_id: str, instance_id: str, *,
                         frame: int | None = None, window_center: float | None = None,
                         window_width: float | None = None, max_size: int = 1024) -> bytes: ...

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
            If the caller may not upload at all (audited).
        InvalidRequest
            If there are no parts (audited).
        """
        self.policy.authorize(principal, Action.UPLOAD, Resource(site=principal.site))
        if not parts:
            raise self._part_refused(principal, InvalidRequest("the request holds no instance"))
        site = str(principal.site)
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
            existing = self.vault.catalog.find_instance_by_source_sha256(
                hashlib.sha256(data).hexdigest())
            study_id = existing.study_id if existing is not None else None
        if study_id is None:
            return
        if study_id not in sites:
            sites[study_id] = self._site_of(study_id)
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
            landed[outcome.study_id] = self._site_of(outcome.study_id)
        if landed[outcome.study_id] != principal.site:  # a race with another site's upload
            self._refuse(principal, Action.UPLOAD, "the image belongs to a study of another "
                         "site", [f"site:{principal.site}"])
            return StoreItem(index, "failed", sent.sop_class, sent.sop_instance,
                             failure_reason=_failure_reason("AccessDenied"),
                             error="AccessDenied")
        instance = self.vault.catalog.get_instance(outcome.instance_id)
        return StoreItem(index, outcome.status, sent.sop_class, sent.sop_instance,
                         outcome.study_id, instance.series_id, outcome.instance_id)

    def _site_of(self, study_id: str) -> str | None:
        try:
            return self.vault.catalog.get_study(study_id).site
        except ObjectNotFound:
            return None

    def _part_refused(self, principal: Principal, error: RadVaultError) -> RadVaultError:
        """Audit a part refused before it reached ingest; return ``error`` to raise."""
        self.vault.audit.append(principal.username, "ingest_refused", Outcome.REFUSED,
                                object_ids=[f"site:{principal.site}"] if principal.site else [],
                                details={"error": type(error).__name__, "via": "dicomweb"})
        return error

    # ------------------------------------------------------------------ QIDO-RS

    def dicomweb_search(self, principal: Principal, level: str,
                        filters: Mapping[str, Sequence[str]] | None = None, *,
                        study_id: str | None = None, series_id: str | None = None,
                        include: Sequence[str] = (), limit: int = 100,
                        offset: int = 0) -> SearchResult:
        """Search studies, series or instances among those the caller may see.

        Parameters
        ----------
        principal : Principal
            A radiologist or physician.
        level : {"study", "series", "instance"}
            What to search for.
        filters : mapping of str to sequence of str, optional
            Query keys (DICOM keywords or 8-digit tags) and their values:
            alternatives separated by commas, ``*`` and ``?`` wild cards
            (not for UIDs), an empty value asking for the attribute only.
        study_id, series_id : str, optional
            Search within one study (and one of its series), as the URL says.
        include : sequence of str
            Extra attributes to return (``includefield``; ``all`` for every
            disclosed one). Attributes RadVault does not disclose come back empty.
        limit, offset : int
            The page (``limit`` 1..1000).

        Returns
        -------
        SearchResult
            The page of matches, newest study first.

        Raises
        ------
        AccessDenied
            If the caller's role may not view studies, or the study in the
            URL is not granted (audited).
        ObjectNotFound
            If the series in the URL is not in the study.
        InvalidRequest
            If the level, a key or the page is malformed.
        """
        if level not in QIDO_LEVELS:
            raise InvalidRequest("the search level must be study, series or instance")
        if not 1 <= limit <= 1000 or offset < 0:
            raise InvalidRequest("limit must be within 1..1000 and offset not negative")
        if study_id is None and series_id is not None:
            raise InvalidRequest("a series is searched within its study")
        self._require_role(principal, Action.VIEW_STUDY)
        constraints, fields = self._qido_keys(level, filters or {}, include)
        uids = [w for key, wanted in constraints if key.keyword == "StudyInstanceUID"
                for w in wanted]
        if study_id is not None:
            study = self._study(principal, Action.VIEW_STUDY, study_id)
            studies: Iterator[StudyRecord] = iter([study] if study.shredded_at is None else [])
            if series_id is not None:
                series_id = self._check_id(principal, Action.VIEW_STUDY, series_id, "series")
                if not any(i.series_id == series_id
                           for i in self.vault.catalog.instances_of_study(study.study_id)):
                    raise ObjectNotFound(f"study {study.study_id} has no series {series_id}")
        else:
            studies = self._visible_studies(principal, uids)
        page: list[Dataset] = []
        seen = 0
        more = False
        for values in self._qido_rows(level, studies, series_id):
            if not all(key.keyword in _DISCLOSED[level] and _matches(
                    key, wanted, _resolve(values.get(key.keyword)))
                    for key, wanted in constraints):
                continue
            if seen >= offset:
                if len(page) >= limit:
                    more = True
                    break
                page.append(_answer(level, values, fields))
            seen += 1
        self.vault.audit.append(principal.username, "dicomweb.search", Outcome.OK,
                                object_ids=[study_id] if study_id else [],
                                details={"level": level, "matches": len(page)})
        return SearchResult(level, tuple(page), more)

    def _qido_keys(self, level: str, filters: Mapping[str, Sequence[str]],
                   include: Sequence[str]) -> tuple[list[tuple[_Key, list[str]]], list[_Key]]:
        """The constraints (key, alternatives) and the fields to return, in order."""
        constraints: list[tuple[_Key, list[str]]] = []
        fields: dict[str, _Key] = {k: _key(k) for k in _DEFAULT_FIELDS[level]}
        for name, raw in filters.items():
            key = _key(name)
            fields.setdefault(key.keyword, key)
            wanted = _values(raw)
            if wanted:
                constraints.append((key, wanted))
        for name in include:
            if name.lower() == "all":
                for keyword in _DISCLOSED[level]:
                    fields.setdefault(keyword, _key(keyword))
            else:
                key = _key(name)
                fields.setdefault(key.keyword, key)
        return constraints, list(fields.values())

    def _visible_studies(self, principal: Principal, uids: list[str]) -> Iterator[StudyRecord]:
        """The live studies the caller may see: the named ones, or all, newest first."""
        scope = self.policy.visible_study_filter(principal)
        if uids:
            for uid in dict.fromkeys(uids):
                if not ID_RE.fullmatch(uid):
                    continue
                try:
                    study = self.vault.catalog.get_study(uid)
                except ObjectNotFound:
                    continue
                if scope.contains(study.study_id, study.site) and study.shredded_at is None:
                    yield study
            return
        sources: list[Iterator[StudyRecord]] = [
            self._studies_of_site(s) for s in sorted(scope.sites)]
        singles = []
        for uid in sorted(scope.study_ids):
            try:
                study = self.vault.catalog.get_study(uid)
            except ObjectNotFound:
                continue
            if study.site not in scope.sites:
                singles.append(study)
        sources.append(iter(sorted(singles, key=newest_first)))
        for scanned, study in enumerate(heapq.merge(*sources, key=newest_first)):
            if scanned >= SCAN_LIMIT:
                logger.warning("DICOMweb search stopped after %d studies", SCAN_LIMIT)
                return
            if study.shredded_at is None:
                yield study


    def _qido_rows(self, level: str, studies: Iterator[StudyRecord],
                   series_id: str | None) -> Iterator[dict[str, Any]]:
        catalog = self.vault.catalog
        for study in studies:
            row = _StudyRow(study, lambda s=study.study_id: catalog.instances_of_study(s))
            values = row.values()
            if level == "study":
                yield values
                continue
            if level == "series":
                for sid, n in sorted(row.series().items()):
                    if series_id is None or sid == series_id:
                        yield {**values, "SeriesInstanceUID": sid,
                               "Modality": study.modality or "",
                               "NumberOfSeriesRelatedInstances": n}
                continue
            counts = row.series()
            for inst in row.instances():
                if series_id is not None and inst.series_id != series_id:
                    continue
                yield {**values, "SeriesInstanceUID": inst.series_id,
                       "Modality": study.modality or "",
                       "NumberOfSeriesRelatedInstances": counts[inst.series_id],
                       "SOPInstanceUID": inst.instance_id, "Rows": inst.rows,
                       "Columns": inst.cols, "NumberOfFrames": inst.frames}

    # ------------------------------------------------------------------ WADO-RS

    def dicomweb_retrieve(self, principal: Principal, study_id: str,
                          series_id: str | None = None, instance_id: str | None = None, *,
                          transfer_syntaxes: Sequence[str] = (EXPLICIT_VR_LITTLE_ENDIAN,)
                          ) -> Iterator[DicomPart]:
        """The de-identified DICOM instances of a study, series or one instance.

        Every check happens, and the first instance is opened, before this
        returns; the others are opened one at a time as the iterator is
        consumed (so a large study is never held in memory at once). Each is
        decrypted in memory, back-verified and audited (``read``).

        Parameters
        ----------
        principal : Principal
            A radiologist granted the study.
        study_id : str
            The study.
        series_id, instance_id : str, optional
            Narrow to one series, or one instance.
        transfer_syntaxes : sequence of str
            What the caller accepts, in order of preference: transfer syntax
            UIDs or ``*`` (as stored). Stored files are sent as stored when
            accepted, else converted to Explicit VR Little Endian when that
            is accepted.

        Returns
        -------
        iterator of DicomPart
            The instances, in the order they were stored.

        Raises
        ------
        AccessDenied
            If not granted (audited).
        ObjectNotFound
            If the series or instance is not in the study, or nothing in it
            was stored as DICOM (PNG/JPEG uploads have only ``/rendered``).
        NotAcceptable
            If no accepted transfer syntax can be produced.
        IntegrityError
            If a stored object fails back-verification (audited).
        """
        instances = self._dicom_targets(principal, Action.VIEW_IMAGE, study_id, series_id,
                                        instance_id)
        accepted = tuple(transfer_syntaxes)
        first = self._open_part(principal, instances[0], accepted)

        def parts() -> Iterator[DicomPart]:
            yield first
            for inst in instances[1:]:
                yield self._open_part(principal, inst, accepted)

        return parts()

    def dicomweb_metadata(self, principal: Principal, study_id: str,
                          series_id: str | None = None,
                          instance_id: str | None = None) -> list[dict[str, Any]]:
        """The de-identified datasets, in the DICOM JSON model, without bulk data.

        Pixel data and every other binary value over 1 KiB are left out (the
        instance itself carries them); each instance is back-verified and the
        read audited, as for :meth:`dicomweb_retrieve`.

        Parameters
        ----------
        principal : Principal
            A radiologist granted the study.
        study_id : str
            The study.
        series_id, instance_id : str, optional
            Narrow to one series, or one instance.

        Returns
        -------
        list of dict
            One DICOM JSON object per instance.

        Raises
        ------
        AccessDenied
            If not granted (audited).
        ObjectNotFound
            As for :meth:`dicomweb_retrieve`.
        IntegrityError
            If a stored object fails back-verification (audited).
        """
        instances = self._dicom_targets(principal, Action.VIEW_IMAGE, study_id, series_id,
                                        instance_id)
        out = []
        for inst in instances:
            plain, ds = self._open_verified(principal, inst, what="metadata")
            zeroize(plain)
            _drop_bulk(ds)
            out.append(ds.to_json_dict())
        return out

    def dicomweb_rendered(self, principal: Principal, study_id: str, series_id: str,
                          instance_id: str, *, media_type: str = "image/png",
                          window: tuple[float, float] | None = None,
                          viewport: int | None = None, quality: int | None = None) -> bytes:
        """One instance rendered as PNG or JPEG (in memory; :meth:`render_image`).

        Parameters
        ----------
        principal : Principal
            A radiologist granted the study.
        study_id, series_id, instance_id : str
            The instance.
        media_type : {"image/png", "image/jpeg"}
            The image format.
        window : tuple of float, optional
            ``(center, width)`` of a linear VOI window; default the image's own.
        viewport : int, optional
            The longest side of the image.
        quality : int, optional
            JPEG quality 1..100 (default 90).

        Returns
        -------
        bytes
            The image.

        Raises
        ------
        AccessDenied
            If not granted (audited).
        ObjectNotFound
            If the instance is not in that series of the study.
        NotAcceptable
            If the media type is neither PNG nor JPEG.
        InvalidRequest
            If the window, viewport or quality is out of range.
        IntegrityError
            If the stored image fails back-verification (audited).
        """
        if media_type not in ("image/png", "image/jpeg"):
            raise NotAcceptable("rendered images are image/png or image/jpeg")
        if quality is not None and not 1 <= quality <= 100:
            raise InvalidRequest("quality must be within 1..100")
        self._dicom_targets(principal, Action.VIEW_IMAGE, study_id, series_id, instance_id,
                            dicom_only=False)
        png = self.render_image(
            principal, study_id, instance_id,
            window_center=window[0] if window else None,
            window_width=window[1] if window else None,
            max_size=viewport if viewport is not None else 1024)
        if media_type == "image/png":
            return png
        with Image.open(io.BytesIO(png)) as image:
            out = io.BytesIO()
            image.convert("RGB").save(out, format="JPEG", quality=quality or 90)
        return out.getvalue()

    # ------------------------------------------------------------------ WADO helpers

    def _dicom_targets(self, principal: Principal, action: Action, study_id: str,
                       series_id: str | None, instance_id: str | None, *,
                       dicom_only: bool = True) -> list[InstanceRecord]:
        """The authorised instances a WADO-RS URL names (404 when it names nothing)."""
        if instance_id is not None:
            study, inst = self._instance(principal, action, study_id, instance_id)
            instances = [inst]
        else:
            study = self._study(principal, action, study_id)
            instances = self.vault.catalog.instances_of_study(study.study_id)
        if series_id is not None:
            series_id = self._check_id(principal, action, series_id, "series")
            instances = [i for i in instances if i.series_id == series_id]
            if not instances:
                what = f"instance {instance_id}" if instance_id else f"series {series_id}"
                raise ObjectNotFound(f"study {study.study_id} has no {what} in that series")
        if dicom_only:
            instances = [i for i in instances if i.source_format == "dicom"]
            if not instances:
                raise ObjectNotFound("nothing there was stored as DICOM (PNG and JPEG "
                                     "uploads are available as /rendered only)")
        if not instances:
            raise ObjectNotFound(f"study {study.study_id} has no instances")
        return instances

    def _open_verified(self, principal: Principal, inst: InstanceRecord, *,
                       what: str) -> tuple[bytearray, Dataset]:
        """Open, parse and back-verify one stored DICOM; audit the read.

        The caller owns (and wipes) the returned plaintext.
        """
        actor = principal.username
        obj = next((o for o in self.vault.catalog.objects_of_instance(inst.instance_id)
                    if o.kind == DICOM_KIND), None)
        if obj is None:
            self.vault.audit.append(actor, AuditAction.INTEGRITY_FAILURE, Outcome.REFUSED,
                                    object_ids=[inst.instance_id],
                                    details={"error": "object row missing", "kind": DICOM_KIND})
            raise IntegrityError(f"instance {inst.instance_id}: its DICOM object is missing")
        plain = self.vault.open_object(obj, actor=actor)
        try:
            name = f"object {obj.object_id}"
            limits = self.vault.settings.limits
            ds = read_dicom_dataset(bytes(plain), limits=limits, name=name)
            record = record_from_dataset(ds, name, limits=limits)
            try:
                digest = record.pixel_sha256()
            finally:
                if record.pixels.flags.writeable:
                    record.pixels.fill(0)
            if digest != inst.pixel_sha256:
                self.vault.audit.append(actor, AuditAction.INTEGRITY_FAILURE, Outcome.REFUSED,
                                        object_ids=[inst.instance_id, obj.object_id],
                                        details={"error": "pixel digest mismatch"})
                raise IntegrityError(f"instance {inst.instance_id}: pixels do not match the "
                                     "digest recorded at ingest")
        except ImageInputError:
            zeroize(plain)
            self.vault.audit.append(actor, AuditAction.INTEGRITY_FAILURE, Outcome.REFUSED,
                                    object_ids=[inst.instance_id, obj.object_id],
                                    details={"error": "stored DICOM unreadable"})
            raise IntegrityError(f"instance {inst.instance_id}: the stored DICOM is "
                                 "unreadable") from None
        except BaseException:
            zeroize(plain)
            raise
        self.vault.audit.append(actor, AuditAction.READ, Outcome.OK,
                                object_ids=[inst.instance_id],
                                details={"via": "dicomweb", "what": what})
        return plain, ds

    def _open_part(self, principal: Principal, inst: InstanceRecord,
                   accepted: tuple[str, ...]) -> DicomPart:
        plain, ds = self._open_verified(principal, inst, what="instance")
        try:
            stored = str(ds.file_meta.TransferSyntaxUID)
            if "*" in accepted or stored in accepted:
                return DicomPart(inst.instance_id, stored, bytes(plain))
            if EXPLICIT_VR_LITTLE_ENDIAN in accepted:
                return DicomPart(inst.instance_id, EXPLICIT_VR_LITTLE_ENDIAN,
                                 _to_explicit_little(ds))
            raise NotAcceptable(f"instance {inst.instance_id} is stored as {stored}; "
                                f"it can be sent as that or as {EXPLICIT_VR_LITTLE_ENDIAN}")
        finally:
            zeroize(plain)


# --------------------------------------------------------------------------- helpers


def _resolve(value: Any) -> Any:
    return value() if callable(value) else value



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


def _drop_bulk(ds: Dataset) -> None:
    """Remove pixel data and large binary values, in sequences too (in place)."""
    for elem in list(ds):
        if elem.VR == "SQ":
            for item in elem.value or []:
                _drop_bulk(item)
        elif elem.keyword in _PIXEL_KEYWORDS or (
                elem.VR in _BULK_VRS and elem.value is not None
                and len(elem.value) > _BULK_THRESHOLD):
            del ds[elem.tag]


def _to_explicit_little(ds: Dataset) -> bytes:
    """The dataset re-encoded as Explicit VR Little Endian, pixels decompressed.

    Raises
    ------
    NotAcceptable
        If pydicom cannot convert it (a big endian file, a missing decoder).
    """
    try:
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress()
        else:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
    except (ValueError, NotImplementedError, RuntimeError, AttributeError) as exc:
        raise NotAcceptable(f"this instance cannot be converted to {EXPLICIT_VR_LITTLE_ENDIAN}; "
                            "accept its stored transfer syntax (transfer-syntax=*)") from exc
    return buffer.getvalue()

"""DICOMweb QIDO-RS: searching the catalog (private: use :mod:`radvault.pipeline.clinical`).

Answers come from the catalog, never from stored datasets, so they can only
hold what the catalog holds, all of it de-identified or pseudonymous. A
filter on an attribute RadVault does not disclose matches nothing, so no
query can probe hidden values. :class:`DicomWebQueryCases` is a base of
:class:`~radvault.pipeline._clinical_dicomweb.DicomWebCases`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from radvault.access.policy import Action
from radvault.access.principal import Principal
from radvault.errors import ObjectNotFound
from radvault.pipeline._clinical_base import (
    ID_RE,
    InvalidRequest,
    ServiceCore,
)
from radvault.pipeline.wildcard import wildcard_match
from radvault.vault.audit import Outcome
from radvault.vault.catalog import InstanceRecord, StudyRecord

__all__ = ["MAX_QUERY_VALUE_LENGTH", "QIDO_LEVELS", "DicomWebQueryCases", "SearchResult"]


QIDO_LEVELS = ("study", "series", "instance")
"""The levels a QIDO-RS search can be made at."""

MAX_QUERY_VALUE_LENGTH = 64
"""The longest query value (one alternative) a search accepts: a UID's 64 characters.

Longer values are refused: no disclosed attribute is longer, and wild card
matching costs time in proportion to the pattern's length."""


# --------------------------------------------------------------------------- answers


@dataclass(frozen=True)
class SearchResult:
    """One page of QIDO-RS matches, each a dataset of disclosed attributes only.

    ``more`` tells that matches exist beyond this page.
    """

    level: str
    matches: tuple[Dataset, ...]
    more: bool


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


def _values(raw: Sequence[str]) -> list[str]:
    """The alternatives a query value lists (comma- or backslash-separated).

    Raises
    ------
    InvalidRequest
        If an alternative is longer than :data:`MAX_QUERY_VALUE_LENGTH`.
    """
    out = []
    for value in raw:
        out.extend(v.strip() for v in re.split(r"[,\\]", value) if v.strip())
    if any(len(v) > MAX_QUERY_VALUE_LENGTH for v in out):
        raise InvalidRequest(
            f"a query value is longer than {MAX_QUERY_VALUE_LENGTH} characters")
    return out


def _matches(key: _Key, wanted: list[str], have: Any) -> bool:
    """Whether the disclosed value matches one of the query's alternatives."""
    if have is None or have == "":
        return False
    text = str(have)
    if key.vr == "UI":  # list of UID matching, no wild cards
        return text in wanted
    return any(wildcard_match(w, text) for w in wanted)


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


class DicomWebQueryCases(ServiceCore):
    """DICOMweb use case: search (QIDO-RS)."""

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
            (not for UIDs; :func:`~radvault.pipeline.wildcard.wildcard_match`),
            an empty value asking for the attribute only.
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
            If the level, a key or the page is malformed, or a query value is
            longer than :data:`MAX_QUERY_VALUE_LENGTH` characters.
        """
        self._require_role(principal, Action.VIEW_STUDY)
        try:
            if level not in QIDO_LEVELS:
                raise InvalidRequest("the search level must be study, series or instance")
            if not 1 <= limit <= 1000 or offset < 0:
                raise InvalidRequest("limit must be within 1..1000 and offset not negative")
            if study_id is None and series_id is not None:
                raise InvalidRequest("a series is searched within its study")
            constraints, fields = self._qido_keys(level, filters or {}, include)
        except InvalidRequest:  # every refusal is audited: by its class, never the query
            self.vault.audit.append(principal.username, "dicomweb.search", Outcome.REFUSED,
                                    details={"error": "InvalidRequest"})
            raise
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
            # a lone "*" is universal matching (PS3.4 C.2.2.2.4), as in C-FIND: it keeps
            # images whose value is empty too, so it constrains nothing
            if wanted and wanted != ["*"]:
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
        for study in self._studies_in_scope(scope, search="DICOMweb"):
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


# --------------------------------------------------------------------------- helpers


def _resolve(value: Any) -> Any:
    return value() if callable(value) else value

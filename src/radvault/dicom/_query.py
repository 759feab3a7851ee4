"""C-FIND matching (Study Root, STUDY and SERIES levels) against the catalog.

Private: used by :mod:`radvault.dicom.scp`. Answers come from the catalog
alone, never from stored datasets, so they can only hold what the catalog
holds, all of it de-identified or pseudonymous: study and series UIDs (the
de-identified ones), the patient pseudonym as Patient ID and Patient's Name,
modality, body part and counts. Any other requested attribute is returned
empty. A query that *constrains* an attribute RadVault does not expose
(e.g. a birth date) matches nothing, so no query can probe hidden values.
Only studies of the caller's site are ever looked at; shredded studies are gone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from radvault.errors import ObjectNotFound
from radvault.pipeline.wildcard import wildcard_match
from radvault.vault.catalog import Catalog, StudyRecord

__all__ = ["LEVELS", "QueryError", "find_matches"]

LEVELS = ("STUDY", "SERIES")
_PAGE = 500
_IGNORED = {"QueryRetrieveLevel", "SpecificCharacterSet"}


class QueryError(Exception):
    """The identifier cannot be answered (unsupported level, malformed key)."""


@dataclass(frozen=True)
class _Row:
    """One candidate match: the values RadVault may disclose for it."""

    values: dict[str, Any]


def _as_values(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, MultiValue | list | tuple):
        return [str(v).strip() for v in value if str(v).strip()]
    text = str(value).strip()
    return [v.strip() for v in text.split("\\") if v.strip()] if text else []


def _matches(key: str, wanted: list[str], have: Any) -> bool:
    """Whether the disclosed value(s) ``have`` match the query values ``wanted``."""
    haves = _as_values(have)
    if not haves:
        return False
    if key.endswith("InstanceUID"):  # list of UID matching
        return any(h in wanted for h in haves)
    # PS3.4 C.2.2.2.4 wild cards, matched in linear time: a backtracking regex let one
    # query of many "*" hold a worker for minutes per study
    return any(wildcard_match(w, h) for w in wanted for h in haves)


class _SeriesOfStudy:
    """A study's series and their instance counts, read from the catalog on first use."""

    def __init__(self, catalog: Catalog, study_id: str) -> None:
        self._catalog = catalog
        self._study_id = study_id
        self._counts: Counter[str] | None = None

    def counts(self) -> Counter[str]:
        if self._counts is None:
            self._counts = Counter(
                i.series_id for i in self._catalog.instances_of_study(self._study_id)
            )
        return self._counts

    def number(self) -> int:
        return len(self.counts())


def _study_values(study: StudyRecord, series: _SeriesOfStudy) -> dict[str, Any]:
    return {
        "StudyInstanceUID": study.study_id,
        "PatientID": study.patient_pseudonym,
        "PatientName": study.patient_pseudonym,
        "ModalitiesInStudy": study.modality or "",
        "BodyPartExamined": study.body_part or "",
        "NumberOfStudyRelatedInstances": study.n_instances,
        "NumberOfStudyRelatedSeries": series.number,  # computed only when asked for
    }


def _site_studies(catalog: Catalog, site: str, uids: list[str]) -> Iterator[StudyRecord]:
    """The site's live studies: the named ones, or all of them a page at a time."""
    if uids:
        for uid in uids:
            try:
                study = catalog.get_study(uid)
            except (ObjectNotFound, ValueError):
                continue
            if study.site == site:
                yield study
        return
    offset = 0
    while True:
        page = catalog.list_studies(limit=_PAGE, offset=offset, site=site)
        yield from page
        if len(page) < _PAGE:
            return
        offset += _PAGE


def _rows(catalog: Catalog, site: str, level: str, identifier: Dataset) -> Iterator[_Row]:
    study_uids = _as_values(identifier.get("StudyInstanceUID"))
    for study in _site_studies(catalog, site, study_uids):
        if study.shredded_at is not None:
            continue
        series = _SeriesOfStudy(catalog, study.study_id)
        values = _study_values(study, series)
        if level == "STUDY":
            yield _Row(values)
            continue
        for series_id, n in sorted(series.counts().items()):
            yield _Row({**values, "SeriesInstanceUID": series_id,
                        "Modality": study.modality or "",
                        "NumberOfSeriesRelatedInstances": n})


def find_matches(catalog: Catalog, site: str, identifier: Dataset) -> Iterator[Dataset]:
    """Yield one response identifier per match of ``identifier`` among ``site``'s studies.

    Raises
    ------
    QueryError
        When the level is not STUDY or SERIES.
    """
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level not in LEVELS:
        raise QueryError(f"query level {level or '(none)'} is not supported (STUDY, SERIES)")
    requested = [elem for elem in identifier if elem.keyword and elem.keyword not in _IGNORED]
    for row in _rows(catalog, site, level, identifier):
        answer = Dataset()
        answer.QueryRetrieveLevel = level
        matched = True
        for elem in requested:
            key = elem.keyword
            wanted = [] if elem.VR == "SQ" else _as_values(elem.value)
            if wanted == ["*"]:  # PS3.4 C.2.2.2.4: a lone "*" is universal matching (as empty)
                wanted = []
            disclosed = key in row.values
            value = row.values.get(key)
            if callable(value):
                value = value()
            if wanted and not (disclosed and _matches(key, wanted, value)):
                matched = False
                break
            if elem.VR == "SQ":
                answer.add_new(elem.tag, "SQ", [])
            elif disclosed and value not in (None, ""):
                setattr(answer, key, value)
            else:
                answer.add_new(elem.tag, elem.VR, None)
        if matched:
            yield answer

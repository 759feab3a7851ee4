"""Shared core of the clinical use cases (private: use :mod:`radvault.pipeline.clinical`).

What every use case needs: the answers' types, the settings, and the look-ups
that ask the policy before an object is touched (``_study``, ``_instance``),
refuse malformed ids (audited), and audit refusals the policy object cannot
phrase. An id the catalog (or the job runner) does not hold is only text the
caller typed, perhaps a medical record number: the audit trail names it by
its keyed digest (``Vault.audit_digest``), never verbatim.
:class:`~radvault.pipeline.clinical.ClinicalService` is built from this core
and the mixins of :mod:`._clinical_studies` (upload, browse, render),
:mod:`._clinical_analysis` (analysis jobs, results, heatmaps), :mod:`._clinical_admin`,
:mod:`._clinical_reports` and :mod:`._clinical_dicomweb` (with :mod:`._dicomweb_query`
and :mod:`._dicomweb_store`).
"""

from __future__ import annotations

import heapq
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.orm import sessionmaker

from radvault.access.oidc import OIDCSettings
from radvault.access.policy import ROLE_ACTIONS, Action, Policy, Resource, StudyScope
from radvault.access.principal import Principal
from radvault.access.tokens import TokenService
from radvault.access.users import Accounts, LockoutPolicy
from radvault.errors import (
    AccessDenied,
    ConfigurationError,
    InvalidRequest,
    ObjectNotFound,
)
from radvault.jobs import JobRunner
from radvault.pipeline._clinical_tables import (
    ClinicalBase,
)
from radvault.pipeline.analyse import Analyser
from radvault.pipeline.sites import require_site
from radvault.vault.audit import Outcome
from radvault.vault.catalog import InstanceRecord, StudyRecord
from radvault.vault.vault import Vault

__all__ = [
    "AUDIT_ACTION_RE",
    "AUDIT_NAME_RE",
    "COMMENT_MAX",
    "FILE_NAME_MAX",
    "ID_RE",
    "JOB_ID_RE",
    "MEDIA_TYPES",
    "REASON_MAX",
    "SCAN_LIMIT",
    "SIGNOFF_TYPE",
    "ImageView",
    "InvalidRequest",
    "JobView",
    "Reidentification",
    "ReportFile",
    "ReportFormat",
    "ResultView",
    "ServiceCore",
    "ServiceSettings",
    "SignOffView",
    "StudyDetail",
    "UploadResult",
    "newest_first",
]

ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
JOB_ID_RE = re.compile(r"[A-Za-z0-9]{1,64}")
AUDIT_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
AUDIT_ACTION_RE = re.compile(r"[a-z][a-z0-9_.]{0,63}")
FILE_NAME_MAX = 255
COMMENT_MAX = 4000
REASON_MAX = 1000
SIGNOFF_TYPE = "radvault.signoff/1"
#: Studies a site-scoped search (study list, DICOMweb QIDO) reads at most before it stops.
SCAN_LIMIT = 20_000

logger = logging.getLogger(__name__)


class ReportFormat(StrEnum):
    """The report formats a study can be downloaded in."""

    HTML = "html"
    PDF = "pdf"
    FHIR = "fhir"
    SR = "sr"


MEDIA_TYPES = {
    ReportFormat.HTML: ("text/html; charset=utf-8", "html"),
    ReportFormat.PDF: ("application/pdf", "pdf"),
    ReportFormat.FHIR: ("application/fhir+json", "fhir.json"),
    ReportFormat.SR: ("application/dicom", "dcm"),
}


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ServiceSettings:
    """How the clinical service is assembled (tokens, passwords, jobs, models).

    Parameters
    ----------
    issuer : str
        ``iss`` of the access tokens; default ``urn:radvault:<vault key id>``.
    audience : str
        ``aud`` of the access tokens.
    access_ttl, refresh_ttl : datetime.timedelta
        Token lifetimes.
    argon2 : tuple of int
        ``(time_cost, memory_cost_kib, parallelism)`` for new password hashes
        (RFC 9106's second option by default; tests use ``(1, 8, 1)``).
    lockout : LockoutPolicy, optional
        Lock-out after repeated login failures (default five, then doubling).
    oidc : OIDCSettings, optional
        Accept an external OpenID Connect provider's tokens.
    workers : int
        Job runner threads analysing in the background.
    start_workers : bool
        Start the job runner with the service (off: run jobs with
        :meth:`ClinicalService.run_pending_jobs`, for tests and tools).
    models_dir : Path, optional
        The model registry folder (default: the shipped ``models/``).
    min_reason_length : int
        Fewest characters of a re-identification reason.
    render_max_size : int
        Largest side of a rendered image, in pixels.

    Raises
    ------
    ConfigurationError
        If a value is out of range.
    """

    issuer: str | None = None
    audience: str = "radvault-api"
    access_ttl: timedelta = timedelta(minutes=10)
    refresh_ttl: timedelta = timedelta(hours=8)
    argon2: tuple[int, int, int] = (3, 65536, 4)
    lockout: LockoutPolicy | None = None
    oidc: OIDCSettings | None = None
    workers: int = 2
    start_workers: bool = True
    models_dir: Path | None = None
    min_reason_length: int = 10
    render_max_size: int = 2048

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigurationError("the clinical service needs at least one job worker")
        if not 64 <= self.render_max_size <= 4096:
            raise ConfigurationError("render_max_size must be within 64..4096")
        if len(self.argon2) != 3:
            raise ConfigurationError("argon2 is (time_cost, memory_cost_kib, parallelism)")


# --------------------------------------------------------------------------- answers


@dataclass(frozen=True)
class UploadResult:
    """What an upload did: ``stored`` or ``duplicate`` (refusals raise)."""

    status: str
    study_id: str
    instance_id: str
    modality: str | None


@dataclass(frozen=True)
class SignOffView:
    """A verified sign-off (its signature checked, its comment unsealed)."""

    signoff_id: str
    study_id: str
    instance_id: str
    result_id: str
    decision: str
    predicted_label: str
    final_label: str
    comment: str
    signed_by: str
    signed_at: datetime


_T = TypeVar("_T")


def lead_image(analysed: Sequence[_T], *, refer: Callable[[_T], bool],
               created: Callable[[_T], datetime]) -> _T | None:
    """The image a study is summarised by, one rule for the worklist, the study page and
    the default report: the first flagged one in the study's order, else the newest
    analysed one (``None`` when nothing is analysed).

    ``analysed`` holds one entry per analysed image (its latest analysis), in the
    study's order; ``refer`` and ``created`` read an entry's flag and time.
    """
    flagged = next((a for a in analysed if refer(a)), None)
    if flagged is not None:
        return flagged
    newest: _T | None = None
    for a in analysed:  # the last of equal times, as a later row is the later analysis
        if newest is None or created(a) >= created(newest):
            newest = a
    return newest


@dataclass(frozen=True)
class ResultView:
    """One stored analysis result, with its current sign-off."""

    result_id: str
    study_id: str
    instance_id: str
    model_id: str
    created_at: datetime
    task: str
    predicted_class: str
    probability: float
    probabilities: dict[str, float]
    refer: bool
    reasons: tuple[str, ...]
    refer_threshold: float | None
    signoff: SignOffView | None = None
    #: What the image check took the image for (``looks_like``, ``probability``,
    #: ``unlike_declared``, ``model_id``); ``None`` for a result made without one.
    image_check: dict[str, Any] | None = None
    #: The modality and body part the study was recorded as when it was analysed
    #: (``None`` for results before session 11); a relabel changes the study's only.
    recorded_as: tuple[str, str] | None = None


@dataclass(frozen=True)
class ImageView:
    """One instance as a study detail lists it."""

    instance: InstanceRecord
    results: int
    latest_result_id: str | None
    signed_off: bool


@dataclass(frozen=True)
class StudyDetail:
    """A study with its instances."""

    study: StudyRecord
    instances: tuple[ImageView, ...]


@dataclass(frozen=True)
class JobView:
    """An analysis job as its requester sees it."""

    job_id: str
    status: str
    study_id: str
    instance_ids: tuple[str, ...]
    model: str | None
    attempts: int
    created_at: datetime
    finished_at: datetime | None
    error: str | None
    results: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class ReportFile:
    """A rendered report, ready to send."""

    content: bytes = field(repr=False)
    media_type: str
    filename: str
    reidentified: bool = False


@dataclass(frozen=True)
class Reidentification:
    """The real identity behind a study's pseudonym (PHI: show it, never log it)."""

    request_id: str
    study_id: str
    patient_name: str | None = field(repr=False)
    patient_id: str | None = field(repr=False)
    birth_date: str | None = field(repr=False)


# --------------------------------------------------------------------------- the core


class ServiceCore:
    """State and object-level checks shared by every clinical use case."""

    def __init__(self, vault: Vault, accounts: Accounts, tokens: TokenService, policy: Policy,
                 jobs: JobRunner | None = None, settings: ServiceSettings | None = None) -> None:
        self.vault = vault
        self.accounts = accounts
        self.tokens = tokens
        self.policy = policy
        self.settings = settings or ServiceSettings()
        self.jobs = jobs
        self._read = sessionmaker(vault.catalog.engine, expire_on_commit=False)
        self._write = sessionmaker(vault.catalog.write_engine(), expire_on_commit=False)
        ClinicalBase.metadata.create_all(vault.catalog.write_engine())
        self._analysers: OrderedDict[str, Analyser] = OrderedDict()
        self._analysers_lock = threading.Lock()
        self._started = False

    def _studies_in_scope(self, scope: StudyScope, *, site: str | None = None,
                          search: str = "study") -> Iterator[StudyRecord]:
        """The studies of a scope (optionally of one site), newest first, at most
        :data:`SCAN_LIMIT` of them: every site's pages and the single grants, merged."""
        sources: list[Iterator[StudyRecord]] = [
            self._studies_of_site(s) for s in sorted(scope.sites) if site is None or s == site]
        singles = []
        for study_id in sorted(scope.study_ids):
            try:
                study = self.vault.catalog.get_study(study_id)
            except ObjectNotFound:
                continue
            if study.site not in scope.sites and (site is None or study.site == site):
                singles.append(study)
        sources.append(iter(sorted(singles, key=newest_first)))
        for scanned, study in enumerate(heapq.merge(*sources, key=newest_first)):
            if scanned >= SCAN_LIMIT:
                logger.warning("%s search stopped after %d studies", search, SCAN_LIMIT)
                return
            yield study

    def _studies_of_site(self, site: str, batch: int = 200) -> Iterator[StudyRecord]:
        """Every study of a site, newest first, read a page at a time."""
        offset = 0
        while True:
            rows = self.vault.catalog.list_studies(limit=batch, offset=offset, site=site)
            yield from rows
            if len(rows) < batch:
                return
            offset += batch

    def _runner(self) -> JobRunner:
        if self.jobs is None:
            raise ConfigurationError("the clinical service has no job runner")
        return self.jobs

    def _refuse(self, principal: Principal, action: Action | str, reason: str,
                object_ids: Sequence[str] = ()) -> AccessDenied:
        """Audit a refusal the policy object cannot phrase (no resource) and build the error."""
        name = action.value if isinstance(action, Action) else str(action)
        self.vault.audit.append(principal.username, "access_denied", Outcome.REFUSED,
                                object_ids=list(object_ids),
                                details={"action": name, "role": principal.role.value,
                                         "reason": reason})
        return AccessDenied(f"{name} refused: {reason}")

    def _authorize_upload(self, principal: Principal) -> str:
        """The caller's site, after the policy allowed them to upload into it and the site
        was found registered; refusals audited.

        Raises
        ------
        AccessDenied
            If the caller may not upload, or their site does not exist (a site
            named by a single sign-on claim that nobody registered).
        """
        self.policy.authorize(principal, Action.UPLOAD, Resource(site=principal.site))
        site = str(principal.site)
        try:
            return require_site(self.vault, site)
        except ConfigurationError:
            raise self._refuse(principal, Action.UPLOAD, "the caller's site is not registered",
                               [f"site:{site}"]) from None

    def _require_role(self, principal: Principal, action: Action) -> None:
        """Refuse (audited) unless the caller's role and token allow ``action`` at all."""
        if action not in ROLE_ACTIONS.get(principal.role, frozenset()):
            raise self._refuse(principal, action,
                               f"the {principal.role.value} role may not do this")
        if action.value not in principal.scopes:
            raise self._refuse(principal, action, "the token does not carry this scope")

    def _check_id(self, principal: Principal, action: Action, value: object, what: str) -> str:
        """Return ``value`` if it can be an id; otherwise audit the attempt and refuse it."""
        if isinstance(value, str) and ID_RE.fullmatch(value):
            return value
        self.vault.audit.append(principal.username, "access_denied", Outcome.REFUSED,
                                details={"action": action.value, "role": principal.role.value,
                                         "reason": f"malformed {what} id",
                                         "id_hmac": self.vault.audit_digest(str(value))})
        raise ObjectNotFound(f"no such {what}")

    def _study(self, principal: Principal, action: Action, study_id: str, *,
               reason: str | None = None) -> StudyRecord:
        """The study, after the policy allowed ``action`` on it (site from the catalog).

        An id the catalog does not hold is judged all the same (the same
        refusal whether or not the study exists), but a refusal names it only
        by its keyed digest.
        """
        study_id = self._check_id(principal, action, study_id, "study")
        try:
            study: StudyRecord | None = self.vault.catalog.get_study(study_id)
        except ObjectNotFound:
            study = None
        resource = (Resource.study(study_id, study.site) if study is not None
                    else Resource.unknown_study(study_id, self.vault.audit_digest(study_id)))
        self.policy.authorize(principal, action, resource, reason=reason)
        if study is None:  # granted by id, but not (or no longer) in the catalog
            raise ObjectNotFound(f"no study {study_id}")
        return study

    def _unknown_study(self, study_id: object) -> bool:
        """Whether ``study_id`` is a well-formed id that the catalog does not hold."""
        if not isinstance(study_id, str) or not ID_RE.fullmatch(study_id):
            return False  # malformed: the caller refuses it for that
        try:
            self.vault.catalog.get_study(study_id)
        except ObjectNotFound:
            return True
        return False

    def _instance(self, principal: Principal, action: Action, study_id: str,
                  instance_id: str) -> tuple[StudyRecord, InstanceRecord]:
        """The study (authorised) and one of its instances."""
        study = self._study(principal, action, study_id)
        instance_id = self._check_id(principal, action, instance_id, "instance")
        try:
            instance = self.vault.catalog.get_instance(instance_id)
        except ObjectNotFound:
            instance = None
        if instance is None or instance.study_id != study.study_id:
            raise ObjectNotFound(f"study {study.study_id} has no instance {instance_id}")
        return study, instance

    def _lead_of(self, instances: Sequence[InstanceRecord]) -> InstanceRecord | None:
        """The lead image of a study's instances (:func:`lead_image`), chosen by the stored
        result rows: the caller reads, and so verifies, only the chosen one's results."""
        analysed = []
        for inst in instances:
            rows = self.vault.catalog.results_of_instance(inst.instance_id)
            if rows:
                analysed.append((inst, rows[-1]))
        lead = lead_image(analysed, refer=lambda a: bool(a[1].payload.get("refer")),
                          created=lambda a: a[1].created_at)
        return lead[0] if lead is not None else None

    def _not_found(self, principal: Principal, action: Action, what: str,
                   ident: str) -> ObjectNotFound:
        """Audit a look-up of an unknown ``what`` (the id only as its keyed digest); the error."""
        details = {"action": action.value, "role": principal.role.value,
                   "reason": f"unknown {what}"}
        if ident:
            details["unknown_id_hmac"] = self.vault.audit_digest(ident)
        self.vault.audit.append(principal.username, "access_denied", Outcome.REFUSED,
                                details=details)
        return ObjectNotFound(f"no such {what}")

    def _analyser(self, actor: str) -> Analyser:
        """One analyser per actor (the audit names who asked), the few latest kept."""
        with self._analysers_lock:
            analyser = self._analysers.get(actor)
            if analyser is None:
                analyser = Analyser.default(self.vault, actor=actor,
                                            models_dir=self.settings.models_dir)
                self._analysers[actor] = analyser
                while len(self._analysers) > 8:
                    self._analysers.popitem(last=False)
            else:
                self._analysers.move_to_end(actor)
            return analyser


def newest_first(study: StudyRecord) -> tuple[float, str]:
    """Sort key: newest study first, ties by id (the catalog's listing order)."""
    return (-study.created_at.timestamp(), study.study_id)

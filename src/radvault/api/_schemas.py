"""Request and response bodies of the HTTP API (private; published through OpenAPI).

Responses carry pseudonymous ids only, except :class:`ReidentifyOut`, the one
answer that names a patient (sent with ``Cache-Control: no-store`` like every
API response).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from radvault.access.users import Grant, Site, User
from radvault.pipeline.clinical import (
    ImageView,
    JobView,
    Reidentification,
    ResultView,
    SignOffView,
    StudyDetail,
    UploadResult,
)
from radvault.vault.audit import AuditEntry, AuditReport
from radvault.vault.catalog import StudyRecord

__all__ = [
    "ID_PATTERN",
    "NAME_PATTERN",
    "AnalysisIn",
    "AuditEntryOut",
    "AuditReportOut",
    "GrantIn",
    "GrantOut",
    "HealthOut",
    "InstanceOut",
    "JobOut",
    "LogoutIn",
    "PasswordIn",
    "PrincipalOut",
    "Problem",
    "ReasonIn",
    "ReidentifyOut",
    "ResultOut",
    "SignOffIn",
    "SignOffOut",
    "SiteIn",
    "SiteOut",
    "StudyDetailOut",
    "StudyOut",
    "TokenOut",
    "UploadOut",
    "UserIn",
    "UserOut",
]

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"
SITE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=4096)


class Problem(_Out):
    """An error (RFC 9457 problem details): never PHI, never a stack trace."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    errors: list[dict[str, Any]] | None = None


class TokenOut(_Out):
    """The OAuth2 token response."""

    access_token: str
    token_type: str = "bearer"  # noqa: S105
    expires_in: int
    refresh_token: str
    refresh_expires_in: int


class LogoutIn(_In):
    """What logout revokes besides the bearer token."""

    refresh_token: str | None = Field(default=None, max_length=256)


class PrincipalOut(_Out):
    """Who the bearer token stands for."""

    username: str
    role: str
    site: str | None
    scopes: list[str]


class UploadOut(_Out):
    """An upload's outcome."""

    status: Literal["stored", "duplicate"]
    study_id: str
    instance_id: str
    modality: str | None

    @classmethod
    def of(cls, r: UploadResult) -> UploadOut:
        return cls(status=r.status, study_id=r.study_id, instance_id=r.instance_id,  # type: ignore[arg-type]
                   modality=r.modality)


class StudyOut(_Out):
    """A study (pseudonymous)."""

    study_id: str
    patient_pseudonym: str
    site: str
    modality: str | None
    body_part: str | None
    created_at: datetime
    status: str
    n_instances: int

    @classmethod
    def of(cls, s: StudyRecord) -> StudyOut:
        return cls(study_id=s.study_id, patient_pseudonym=s.patient_pseudonym, site=s.site,
                   modality=s.modality, body_part=s.body_part, created_at=s.created_at,
                   status=s.status, n_instances=s.n_instances)


class InstanceOut(_Out):
    """One image of a study."""

    instance_id: str
    series_id: str
    source_format: str
    rows: int
    cols: int
    frames: int
    created_at: datetime
    results: int
    latest_result_id: str | None
    signed_off: bool

    @classmethod
    def of(cls, v: ImageView) -> InstanceOut:
        i = v.instance
        return cls(instance_id=i.instance_id, series_id=i.series_id,
                   source_format=i.source_format, rows=i.rows, cols=i.cols, frames=i.frames,
                   created_at=i.created_at, results=v.results,
                   latest_result_id=v.latest_result_id, signed_off=v.signed_off)


class StudyDetailOut(_Out):
    """A study with its images."""

    study: StudyOut
    instances: list[InstanceOut]

    @classmethod
    def of(cls, d: StudyDetail) -> StudyDetailOut:
        return cls(study=StudyOut.of(d.study), instances=[InstanceOut.of(v) for v in d.instances])


class AnalysisIn(_In):
    """What to analyse: one instance of the study, or all (and optionally which model)."""

    instance_id: str | None = Field(default=None, pattern=ID_PATTERN)
    after: str | None = Field(
        default=None, pattern=ID_PATTERN,
        description="The newest result id the client has seen: analyse again after it "
                    "(without it, asking again returns the job already made)")
    # no pattern here: the service judges the name, so that a malformed one is refused
    # and audited like an unknown one (a schema pattern refused it unaudited)
    model: str | None = Field(
        default=None, max_length=4096,
        description="A model of the service's registry (default: the registry chooses per "
                    "image); an unknown or malformed one is refused (422 unknown_model, "
                    "400 invalid_request) and audited before anything is queued")


class JobOut(_Out):
    """An analysis job."""

    job_id: str
    status: Literal["pending", "running", "succeeded", "failed"]
    study_id: str
    instance_ids: list[str]
    model: str | None
    attempts: int
    created_at: datetime
    finished_at: datetime | None
    error: str | None
    results: list[dict[str, Any]]

    @classmethod
    def of(cls, j: JobView) -> JobOut:
        return cls(job_id=j.job_id, status=j.status, study_id=j.study_id,  # type: ignore[arg-type]
                   instance_ids=list(j.instance_ids), model=j.model, attempts=j.attempts,
                   created_at=j.created_at, finished_at=j.finished_at, error=j.error,
                   results=list(j.results))


class SignOffIn(_In):
    """A radiologist's decision on a prediction."""

    decision: Literal["accepted", "overridden"]
    label: str | None = Field(default=None, max_length=128)
    comment: str = Field(default="", max_length=4000)
    #: The analysis the radiologist reviewed (required: a client never signs whatever
    #: analysis happens to be newest; one a newer analysis superseded is 409).
    result_id: str = Field(pattern=ID_PATTERN)
    #: The id of the analysis's current sign-off, which this one replaces (an analysis
    #: already signed off is otherwise 409 ``signoff_conflict``).
    amends: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")


class SignOffOut(_Out):
    """A stored, signature-checked sign-off."""

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

    @classmethod
    def of(cls, s: SignOffView) -> SignOffOut:
        return cls(signoff_id=s.signoff_id, study_id=s.study_id, instance_id=s.instance_id,
                   result_id=s.result_id, decision=s.decision, predicted_label=s.predicted_label,
                   final_label=s.final_label, comment=s.comment, signed_by=s.signed_by,
                   signed_at=s.signed_at)


class ImageCheckOut(_Out):
    """What the image check took the image for (``unlike_declared``: referred for it)."""

    model_id: str
    looks_like: str
    probability: float
    #: Under it, a guess is not sure enough to refer (``None`` for results before it
    #: was stored).
    threshold: float | None = None
    unlike_declared: bool
    #: Whether the guess is the source the image is recorded as (``None``: the check
    #: does not know that kind of image, or the result predates the field).
    matches_declared: bool | None = None
    #: The (modality, body part) that source was trained on: what to relabel it as.
    looks_like_pair: list[str] | None = None


class ResultOut(_Out):
    """An analysis: calibrated probabilities and the decision-support flag."""

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
    reasons: list[str]
    refer_threshold: float | None
    decision_support: str
    signoff: SignOffOut | None
    image_check: ImageCheckOut | None = None
    #: [modality, body part] the study was recorded as when this analysis was made
    #: (``None`` before session 11); another than the study's now: relabelled since.
    recorded_as: list[str] | None = None

    @classmethod
    def of(cls, r: ResultView) -> ResultOut:
        flag = ("refer to a radiologist" if r.refer
                else "confident prediction; still requires radiologist review")
        return cls(result_id=r.result_id, study_id=r.study_id, instance_id=r.instance_id,
                   model_id=r.model_id, created_at=r.created_at, task=r.task,
                   predicted_class=r.predicted_class, probability=r.probability,
                   probabilities=r.probabilities, refer=r.refer, reasons=list(r.reasons),
                   refer_threshold=r.refer_threshold, decision_support=flag,
                   signoff=SignOffOut.of(r.signoff) if r.signoff else None,
                   image_check=ImageCheckOut(**r.image_check) if r.image_check else None,
                   recorded_as=list(r.recorded_as) if r.recorded_as else None)


class RelabelIn(_In):
    """What a study really is: DICOM defined terms."""

    # only bounded here: the service judges the terms, and audits a refusal
    modality: str = Field(max_length=4096)
    body_part: str | None = Field(default=None, max_length=4096)


class ReasonIn(_In):
    """Why a physician needs the patient's identity (sealed; the audit keeps its length)."""

    reason: str = Field(min_length=1, max_length=1000)


class ReidentifyOut(_Out):
    """The identity behind a pseudonym. PHI."""

    request_id: str
    study_id: str
    patient_name: str | None
    patient_id: str | None
    birth_date: str | None

    @classmethod
    def of(cls, r: Reidentification) -> ReidentifyOut:
        return cls(request_id=r.request_id, study_id=r.study_id, patient_name=r.patient_name,
                   patient_id=r.patient_id, birth_date=r.birth_date)


class AuditEntryOut(_Out):
    """One audit entry."""

    seq: int
    ts: str
    actor: str
    action: str
    outcome: str
    object_ids: list[str]
    details: dict[str, Any]
    prev_hash: str
    entry_hash: str

    @classmethod
    def of(cls, e: AuditEntry) -> AuditEntryOut:
        return cls(**e.to_dict())


class AuditReportOut(_Out):
    """The outcome of verifying the audit chain."""

    ok: bool
    entries_checked: int
    checkpoints_checked: int
    problems: list[str]
    notes: list[str]
    head_seq: int
    head_hash: str
    last_checkpoint_seq: int

    @classmethod
    def of(cls, r: AuditReport) -> AuditReportOut:
        return cls(**r.to_dict())


class SiteIn(_In):
    """A new site."""

    name: str = Field(pattern=SITE_PATTERN)


class SiteOut(_Out):
    """A site."""

    name: str
    created_at: datetime

    @classmethod
    def of(cls, s: Site) -> SiteOut:
        return cls(name=s.name, created_at=s.created_at)


class UserIn(_In):
    """A new account (without a password it can sign in only through OpenID Connect)."""

    username: str = Field(pattern=NAME_PATTERN)
    role: Literal["admin", "technologist", "radiologist", "physician", "auditor"]
    site: str | None = Field(default=None, pattern=SITE_PATTERN)
    password: str | None = Field(default=None, max_length=1024)


class PasswordIn(_In):
    """A replacement password."""

    password: str = Field(min_length=1, max_length=1024)


class UserOut(_Out):
    """An account (never its password hash)."""

    username: str
    role: str
    site: str | None
    created_at: datetime
    has_password: bool
    failed_attempts: int
    locked_until: datetime | None
    locked_by_admin: bool
    deleted_at: datetime | None

    @classmethod
    def of(cls, u: User) -> UserOut:
        return cls(username=u.username, role=u.role.value, site=u.site, created_at=u.created_at,
                   has_password=u.has_password, failed_attempts=u.failed_attempts,
                   locked_until=u.locked_until, locked_by_admin=u.locked_by_admin,
                   deleted_at=u.deleted_at)


class GrantIn(_In):
    """A grant of one study or of one site (exactly one)."""

    study_id: str | None = Field(default=None, pattern=ID_PATTERN)
    site: str | None = Field(default=None, pattern=SITE_PATTERN)


class GrantOut(_Out):
    """A grant."""

    username: str
    study_id: str | None
    site: str | None
    created_at: datetime

    @classmethod
    def of(cls, g: Grant) -> GrantOut:
        return cls(username=g.username, study_id=g.study_id, site=g.site,
                   created_at=g.created_at)


class HealthOut(_Out):
    """Liveness."""

    status: str
    version: str
    jobs: dict[str, int]

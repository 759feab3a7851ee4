"""Clinical use cases: everything a clinician or administrator can ask of RadVault.

This is the one layer that checks policy. Every public method of
:class:`ClinicalService` takes the authenticated
:class:`~radvault.access.principal.Principal` first and asks
:meth:`~radvault.access.policy.Policy.authorize` before it touches anything,
on every object of the request, with the study's site **as the catalog
records it** (never as the request says). Refusals raise
:class:`~radvault.errors.AccessDenied` and are audited. The faces (the HTTP
API, the CLI) only authenticate, call one method here and render the answer.

Object-level rules:

* a study id the caller is not granted, whether it exists or not, is refused
  the same way (403, audited), so the answer does not tell whether it exists;
* an instance, result, sign-off or job is reached only through its study, and
  must belong to that study;
* an id that cannot be an id at all (path separators, ``..``, control
  characters) is refused and audited as malformed before any look-up.

What is stored here (tables in :mod:`radvault.pipeline._clinical_tables`):
sign-offs (signed by the vault key, comments sealed under the identity key),
which result each analysis job stored (so a re-run stores no second result),
and re-identification requests (their reason sealed; the audit trail keeps
only its length).

The analysis task (:data:`ANALYSE_TASK`, :func:`analyse_task`) runs in the
job runner with the service as its context; it re-checks the requester's
grant before it opens anything.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import logging
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, NoReturn

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy.exc import IntegrityError as SQLIntegrityError

from radvault.access.oidc import OIDCVerifier
from radvault.access.passwords import make_hasher
from radvault.access.policy import ROLE_ACTIONS, Action, Policy, Resource
from radvault.access.principal import Principal, Role
from radvault.access.store import AccessStore
from radvault.access.tokens import TokenPair, TokenService
from radvault.access.users import Accounts
from radvault.config import PreprocessSettings
from radvault.errors import (
    AccessDenied,
    AuthenticationFailed,
    BurnedInAnnotationRefused,
    ConfigurationError,
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
from radvault.imaging.preprocess import Preprocessor, to_png_bytes
from radvault.jobs import Job, JobRunner, JobStatus, TaskRegistry, current_job
from radvault.pipeline._clinical_admin import AdminCases
from radvault.pipeline._clinical_base import (
    BODY_PART_RE,
    FILE_NAME_MAX,
    JOB_ID_RE,
    MODALITY_RE,
    ImageView,
    InvalidRequest,
    JobView,
    Reidentification,
    ReportFile,
    ReportFormat,
    ResultView,
    ServiceSettings,
    SignOffView,
    StudyDetail,
    UploadResult,
)
from radvault.pipeline._clinical_dicomweb import DicomWebCases
from radvault.pipeline._clinical_reports import ReportCases
from radvault.pipeline._clinical_tables import (
    AnalysisRunRow,
)
from radvault.pipeline.ingest import Ingestor
from radvault.pipeline.retrieve import open_image
from radvault.vault.audit import Outcome
from radvault.vault.catalog import ResultRecord, StudyRecord, canonical_json
from radvault.vault.vault import Vault

__all__ = [
    "ANALYSE_TASK",
    "ClinicalService",
    "ImageView",
    "InvalidRequest",
    "JobView",
    "Reidentification",
    "ReportFile",
    "ReportFormat",
    "ResultView",
    "ServiceSettings",
    "SignOffView",
    "StudyDetail",
    "UploadResult",
    "analyse_task",
    "operator_principal",
    "register_tasks",
    "token_signing_key",
]

logger = logging.getLogger(__name__)

ANALYSE_TASK = "clinical.analyse"
"""The job task that analyses the instances of one study."""

_TOKEN_KEY_INFO = b"radvault/api-token-signing-key/v1"
_SCAN_LIMIT = 20_000


# --------------------------------------------------------------------------- keys and principals


def token_signing_key(vault: Vault) -> Ed25519PrivateKey:
    """The Ed25519 key that signs API access tokens, derived from the vault's secrets.

    HKDF-SHA256 over the vault's de-identification secret with a label of its
    own, so the key is stable across restarts, exists only while the vault is
    unlocked, and is cryptographically independent of every other use of
    that secret.

    Parameters
    ----------
    vault : Vault
        The unlocked vault.

    Returns
    -------
    Ed25519PrivateKey
        The token signing key.

    Raises
    ------
    VaultLocked
        If the vault's keys are closed.
    """
    secret = vault.keys.deid_secret()
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_TOKEN_KEY_INFO).derive(
        bytes(secret)
    )
    return Ed25519PrivateKey.from_private_bytes(raw)


def operator_principal(name: str) -> Principal:
    """The principal of a local operator (the CLI), who proved themselves with the passphrase.

    Holding the vault passphrase is the operator's authentication; the
    operator acts as an administrator (users, sites and grants only: the
    policy still keeps images and results out of reach).

    Parameters
    ----------
    name : str
        How the audit trail names the operator (e.g. ``cli:alice``).

    Returns
    -------
    Principal
        An admin principal with the admin scopes.
    """
    scopes = frozenset(a.value for a in ROLE_ACTIONS[Role.ADMIN])
    return Principal(name, Role.ADMIN, None, scopes)


# --------------------------------------------------------------------------- the service


class ClinicalService(AdminCases, ReportCases, DicomWebCases):
    """The clinical use cases over one unlocked vault.

    Build it with :meth:`build` (which assembles the access core, the job
    runner and the model registry from :class:`ServiceSettings`), call
    :meth:`start` to start the job workers and :meth:`stop` before closing
    the vault.

    Parameters
    ----------
    vault : Vault
        The unlocked vault.
    accounts : Accounts
        Users, sites and grants (sharing the catalog's database).
    tokens : TokenService
        Issues and verifies tokens.
    policy : Policy
        The one authorisation decision.
    jobs : JobRunner, optional
        Runs analyses in the background; :meth:`build` makes one.
    settings : ServiceSettings, optional
        The settings it was built with.
    """

    @classmethod
    def build(cls, vault: Vault, settings: ServiceSettings | None = None) -> ClinicalService:
        """Assemble the service over ``vault``: access tables, tokens, policy, job runner.

        The access and job tables are created in the catalog's database when
        missing. The token signing key comes from the vault
        (:func:`token_signing_key`).

        Parameters
        ----------
        vault : Vault
            The unlocked vault.
        settings : ServiceSettings, optional
            How to assemble it.

        Returns
        -------
        ClinicalService
            The service (job workers not yet started).

        Raises
        ------
        ConfigurationError
            If a setting is invalid or a table cannot be created.
        """
        settings = settings or ServiceSettings()
        # Access transactions take SQLite's write lock at BEGIN: a login reads,
        # verifies (argon2) and updates in one transaction, and on the deferred
        # engine concurrent logins failed their lock upgrade (SQLITE_BUSY, seen
        # in benchmarks/api.py). The price: logins are serialised.
        store = AccessStore.create(vault.catalog.write_engine())
        audit = vault.audit.append
        accounts = Accounts(store, hasher=make_hasher(*settings.argon2), lockout=settings.lockout,
                            audit=audit)
        issuer = settings.issuer or f"urn:radvault:{vault.signer.key_id}"
        oidc = OIDCVerifier(settings.oidc) if settings.oidc is not None else None
        tokens = TokenService(accounts, token_signing_key(vault), issuer=issuer,
                              audience=settings.audience, access_ttl=settings.access_ttl,
                              refresh_ttl=settings.refresh_ttl, oidc=oidc)
        policy = Policy(store, audit=audit, min_reason_length=settings.min_reason_length)
        service = cls(vault, accounts, tokens, policy, None, settings)
        registry = TaskRegistry()
        register_tasks(registry)
        service.jobs = JobRunner(vault.catalog.engine, registry, context=service,
                                 workers=settings.workers)
        return service

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the background job workers (pending jobs from before a restart resume)."""
        if self.jobs is not None and self.settings.start_workers and not self._started:
            self.jobs.start()
            self._started = True

    def stop(self) -> None:
        """Stop the job workers, letting the running jobs finish."""
        if self.jobs is not None and self._started:
            self.jobs.stop(drain=True, timeout=30)
            self._started = False

    def run_pending_jobs(self) -> int:
        """Run every due job in the calling thread (when workers are not started).

        Returns
        -------
        int
            How many attempts ran.
        """
        return self._runner().run_pending()

    def __repr__(self) -> str:
        return f"ClinicalService(home={self.vault.settings.home!s})"

    # ------------------------------------------------------------------ authentication

    def login(self, username: str, password: str) -> TokenPair:
        """OAuth2 password flow: check the password, start a session.

        Raises
        ------
        AuthenticationFailed
            With one message for every refusal (audited by the accounts).
        """
        return self.tokens.login(username, password)

    def refresh(self, refresh_token: str) -> TokenPair:
        """Rotate a refresh token into a new pair.

        Raises
        ------
        AuthenticationFailed
            If the token is unknown, expired, revoked or re-used (audited).
        """
        return self.tokens.refresh(refresh_token)

    def logout(self, access_token: str | None, refresh_token: str | None = None) -> None:
        """Revoke the access token and the session's refresh tokens.

        Raises
        ------
        AuthenticationFailed
            If the access token is not valid (audited).
        """
        try:
            self.tokens.logout(access_token, refresh_token)
        except AuthenticationFailed as exc:
            self._audit_token_refused(str(exc))
            raise

    def authenticate(self, token: str | None) -> Principal:
        """Verify a bearer token; every refusal is audited with its reason.

        Parameters
        ----------
        token : str or None
            The bearer token from the request.

        Returns
        -------
        Principal
            The caller.

        Raises
        ------
        AuthenticationFailed
            Missing, malformed, forged, expired, revoked or out-of-date token,
            refresh token used as access token, or a locked or removed user.
        """
        try:
            return self.tokens.authenticate(token)
        except AuthenticationFailed as exc:
            self._audit_token_refused(str(exc))
            raise

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        """The public key set of the service's tokens."""
        return self.tokens.jwks()

    def _audit_token_refused(self, reason: str) -> None:
        self.vault.audit.append("anonymous", "token_refused", Outcome.REFUSED,
                                details={"reason": reason[:80]})

    # ------------------------------------------------------------------ refusals and look-ups

    # ------------------------------------------------------------------ upload

    def upload(self, principal: Principal, data: bytes, name: str, *,
               modality: str | None = None, body_part: str | None = None) -> UploadResult:
        """Ingest one uploaded image into the caller's site.

        Parameters
        ----------
        principal : Principal
            A technologist of the destination site.
        data : bytes
            The file's bytes (DICOM, PNG or JPEG).
        name : str
            The file name as uploaded (a bare name; only for messages).
        modality, body_part : str, optional
            Hints for PNG/JPEG files.

        Returns
        -------
        UploadResult
            ``stored``, or ``duplicate`` when the same file is already in
            this site.

        Raises
        ------
        AccessDenied
            If the caller may not upload, or the image belongs to a study of
            another site (audited).
        ImageInputError
            If the file is not a readable image, too large, or refused by the
            de-identification policy (audited by the ingest use case).
        InvalidRequest
            If the name or a hint is malformed (audited).
        """
        self.authorize_upload(principal)
        site = str(principal.site)
        name = self._check_upload_name(principal, name)
        for label, value, pattern in (("modality", modality, MODALITY_RE),
                                      ("body part", body_part, BODY_PART_RE)):
            if value is not None and not pattern.fullmatch(value):
                self.reject_upload(principal, InvalidRequest(f"invalid {label}"))
        if len(data) > self.vault.settings.limits.max_file_bytes:
            self.reject_upload(principal, ImageTooLarge(
                name, f"over the cap of {self.vault.settings.limits.max_file_bytes} bytes"))
        self._check_not_other_site(principal, data)
        ingestor = Ingestor(self.vault, actor=principal.username, site=site)
        outcome = ingestor.ingest_bytes(data, name, modality=modality, body_part=body_part)
        if outcome.status == "refused":
            raise _ingest_error(name, outcome.error, outcome.reason)
        assert outcome.study_id is not None and outcome.instance_id is not None
        study = self.vault.catalog.get_study(outcome.study_id)
        if study.site != site:  # a race with another site's identical upload
            raise self._refuse(principal, Action.UPLOAD,
                               "the image belongs to a study of another site",
                               [f"site:{site}"])
        return UploadResult(outcome.status, outcome.study_id, outcome.instance_id,
                            outcome.modality or study.modality)

    def authorize_upload(self, principal: Principal) -> None:
        """Check that the caller may upload to their site, before any byte is read.

        Raises
        ------
        AccessDenied
            If not (audited).
        """
        self.policy.authorize(principal, Action.UPLOAD, Resource(site=principal.site))

    def reject_upload(self, principal: Principal, error: RadVaultError) -> NoReturn:
        """Audit an upload the face refused before it reached ingest (size, form, name).

        Parameters
        ----------
        principal : Principal
            Who uploaded.
        error : RadVaultError
            Why it was refused.

        Raises
        ------
        RadVaultError
            ``error``, always, after it was audited.
        """
        self.vault.audit.append(principal.username, "ingest_refused", Outcome.REFUSED,
                                object_ids=[f"site:{principal.site}"] if principal.site else [],
                                details={"error": type(error).__name__})
        raise error

    def _check_upload_name(self, principal: Principal, name: str) -> str:
        bad = (not isinstance(name, str) or not name or len(name) > FILE_NAME_MAX
               or any(c in name for c in "/\\\x00") or name in {".", ".."}
               or name.startswith("..") or not name.isprintable())
        if bad:
            self.reject_upload(principal, InvalidRequest(
                "invalid file name: give a bare file name without folders"))
        return name

    def _check_not_other_site(self, principal: Principal, data: bytes) -> None:
        """Refuse (audited) an image that is, or would join, a study of another site."""
        source = hashlib.sha256(data).hexdigest()
        existing = self.vault.catalog.find_instance_by_source_sha256(source)
        study_id = existing.study_id if existing is not None else _dicom_study_id(
            self.vault, data)
        if study_id is None:
            return
        try:
            study = self.vault.catalog.get_study(study_id)
        except ObjectNotFound:
            return
        if study.site != principal.site:
            raise self._refuse(principal, Action.UPLOAD,
                               "the image belongs to a study of another site",
                               [f"site:{principal.site}"])

    # ------------------------------------------------------------------ studies

    def list_studies(self, principal: Principal, *, limit: int = 50, offset: int = 0,
                     modality: str | None = None, body_part: str | None = None,
                     site: str | None = None, status: str | None = None) -> list[StudyRecord]:
        """The studies the caller may see, newest first, optionally filtered.

        Only studies of granted sites and individually granted studies are
        ever read (:meth:`Policy.visible_study_filter`).

        Parameters
        ----------
        principal : Principal
            A radiologist or physician.
        limit, offset : int
            The page (``limit`` 1..500).
        modality, body_part, site, status : str, optional
            Exact (case-insensitive) filters.

        Returns
        -------
        list of StudyRecord
            The page.

        Raises
        ------
        AccessDenied
            If the caller's role may not view studies (audited).
        InvalidRequest
            If the page is out of range.
        """
        self._require_role(principal, Action.VIEW_STUDY)
        if not 1 <= limit <= 500 or offset < 0:
            raise InvalidRequest("limit must be within 1..500 and offset not negative")
        scope = self.policy.visible_study_filter(principal)
        sources: list[Iterator[StudyRecord]] = [
            self._studies_of_site(s) for s in sorted(scope.sites)
            if site is None or s == site
        ]
        singles = []
        for study_id in sorted(scope.study_ids):
            try:
                study = self.vault.catalog.get_study(study_id)
            except ObjectNotFound:
                continue
            if study.site not in scope.sites and (site is None or study.site == site):
                singles.append(study)
        sources.append(iter(sorted(singles, key=_newest_first)))

        def wanted(s: StudyRecord) -> bool:
            return ((modality is None or (s.modality or "").upper() == modality.upper())
                    and (body_part is None or (s.body_part or "").upper() == body_part.upper())
                    and (status is None or s.status == status))

        page: list[StudyRecord] = []
        seen = 0
        for scanned, study in enumerate(heapq.merge(*sources, key=_newest_first)):
            if scanned >= _SCAN_LIMIT:
                logger.warning("study search stopped after %d studies", _SCAN_LIMIT)
                break
            if not wanted(study):
                continue
            if seen >= offset:
                page.append(study)
                if len(page) >= limit:
                    break
            seen += 1
        return page

    def _studies_of_site(self, site: str, batch: int = 200) -> Iterator[StudyRecord]:
        offset = 0
        while True:
            rows = self.vault.catalog.list_studies(limit=batch, offset=offset, site=site)
            yield from rows
            if len(rows) < batch:
                return
            offset += batch

    def study(self, principal: Principal, study_id: str) -> StudyDetail:
        """One study and its instances.

        Raises
        ------
        AccessDenied
            If the caller is not granted the study, or it does not exist (audited).
        ObjectNotFound
            If the id is malformed.
        """
        study = self._study(principal, Action.VIEW_STUDY, study_id)
        views = []
        for inst in self.vault.catalog.instances_of_study(study.study_id):
            results = self.vault.catalog.results_of_instance(inst.instance_id)
            views.append(ImageView(inst, len(results),
                                   results[-1].result_id if results else None,
                                   self._latest_signoff_row(inst.instance_id) is not None))
        self.vault.audit.append(principal.username, "study.read", Outcome.OK,
                                object_ids=[study.study_id])
        return StudyDetail(study, tuple(views))

    # ------------------------------------------------------------------ images

    def render_image(self, principal: Principal, study_id: str, instance_id: str, *,
                     frame: int | None = None, window_center: float | None = None,
                     window_width: float | None = None, max_size: int = 1024) -> bytes:
        """The de-identified image as a PNG, decrypted and rendered in memory only.

        Parameters
        ----------
        principal : Principal
            A radiologist granted the study.
        study_id, instance_id : str
            The image.
        frame : int, optional
            Which frame (default the middle one).
        window_center, window_width : float, optional
            A VOI window in the pixels' units (Hounsfield units for CT); both
            or neither. Without one, the image's own window, else min-max.
        max_size : int
            Longest side of the PNG (64..``render_max_size``); the image is
            fitted into a square of this side.

        Returns
        -------
        bytes
            An 8-bit PNG.

        Raises
        ------
        AccessDenied
            If not granted (audited).
        ObjectNotFound
            If the instance is not in the study.
        InvalidRequest
            If the frame, window or size is out of range.
        IntegrityError
            If the stored image fails back-verification (audited).
        """
        _, instance = self._instance(principal, Action.VIEW_IMAGE, study_id, instance_id)
        if (window_center is None) != (window_width is None):
            raise InvalidRequest("give both window_center and window_width, or neither")
        if window_width is not None and not (np.isfinite(window_width) and window_width >= 1):
            raise InvalidRequest("window_width must be a number of at least 1")
        if window_center is not None and not np.isfinite(window_center):
            raise InvalidRequest("window_center must be a finite number")
        if not 64 <= max_size <= self.settings.render_max_size:
            raise InvalidRequest(f"max_size must be within 64..{self.settings.render_max_size}")
        if frame is not None and not 0 <= frame < instance.frames:
            raise InvalidRequest(f"frame must be within 0..{instance.frames - 1}")
        record = open_image(self.vault, instance.instance_id, actor=principal.username)
        try:
            index = record.frames // 2 if frame is None else frame
            window: tuple[float, float] | None = None
            if window_center is not None and window_width is not None:
                window = (float(window_center), float(window_width))
            elif record.window_center is not None and record.window_width is not None:
                window = (record.window_center, record.window_width)
            side = max(8, min(max_size, max(record.rows, record.columns)))
            render = Preprocessor(PreprocessSettings(
                size=side, window=window is not None, normalize=window is None,
                enhance=False, denoise=False))
            array = render.from_array(record.frame(index), window=window)
            try:
                return to_png_bytes(array)
            finally:
                array.fill(0)
        finally:
            if record.pixels.flags.writeable:
                record.pixels.fill(0)

    # ------------------------------------------------------------------ analysis

    def start_analysis(self, principal: Principal, study_id: str, *,
                       instance_id: str | None = None, model: str | None = None) -> JobView:
        """Queue the analysis of a study (or one of its instances); idempotent.

        Asking again for the same instances and model returns the same job,
        whatever its state, unless it failed: then a new job is started.

        Parameters
        ----------
        principal : Principal
            A radiologist granted the study.
        study_id : str
            The study.
        instance_id : str, optional
            One instance; default every instance of the study.
        model : str, optional
            A model folder name; default the registry's choice per image.

        Returns
        -------
        JobView
            The job (``pending`` at first).

        Raises
        ------
        AccessDenied
            If not granted (audited).
        ObjectNotFound
            If the instance is not in the study.
        InvalidRequest
            If the study has no images or the model name is malformed.
        """
        if instance_id is not None:
            study, inst = self._instance(principal, Action.ANALYSE, study_id, instance_id)
            instance_ids = [inst.instance_id]
        else:
            study = self._study(principal, Action.ANALYSE, study_id)
            instance_ids = [i.instance_id for i in self.vault.catalog.instances_of_study(
                study.study_id)]
        if not instance_ids:
            raise InvalidRequest("the study has no images to analyse")
        if model is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", model):
            raise InvalidRequest("invalid model name")
        payload = {"study_id": study.study_id, "instance_ids": sorted(instance_ids),
                   "model": model}
        key = "clinical.analyse:" + hashlib.sha256(canonical_json(payload)).hexdigest()[:48]
        runner = self._runner()
        job = runner.submit(ANALYSE_TASK, payload, idempotency_key=key,
                            actor=principal.username)
        for _ in range(20):  # a failed job is not the final word: chain a fresh one
            if job.status is not JobStatus.FAILED:
                break
            job = runner.submit(ANALYSE_TASK, payload, idempotency_key=f"{key}:{job.job_id}",
                                actor=principal.username)
        self.vault.audit.append(principal.username, "analysis.request", Outcome.OK,
                                object_ids=[study.study_id, *payload["instance_ids"]][:64],
                                details={"job_id": job.job_id, "model": model})
        return _job_view(job)

    def job(self, principal: Principal, job_id: str) -> JobView:
        """An analysis job's state, for a caller granted its study.

        Raises
        ------
        ObjectNotFound
            If there is no such analysis job (audited as a refused look-up).
        AccessDenied
            If the caller is not granted the job's study (audited).
        """
        if not isinstance(job_id, str) or not JOB_ID_RE.fullmatch(job_id):
            raise self._not_found(principal, Action.VIEW_RESULT, "job", "")
        try:
            job = self._runner().get(job_id)
        except ObjectNotFound:
            job = None
        if job is None or job.task != ANALYSE_TASK:
            raise self._not_found(principal, Action.VIEW_RESULT, "job", job_id)
        self._study(principal, Action.VIEW_RESULT, str(job.payload.get("study_id")))
        return _job_view(job)

    def results(self, principal: Principal, study_id: str,
                instance_id: str) -> list[ResultView]:
        """Every stored analysis of one instance, oldest first, with sign-offs.

        Raises
        ------
        AccessDenied
            If not granted (audited).
        ObjectNotFound
            If the instance is not in the study.
        """
        study, inst = self._instance(principal, Action.VIEW_RESULT, study_id, instance_id)
        records = self.vault.catalog.results_of_instance(inst.instance_id)
        signoffs = {s.result_id: s for s in self._signoffs(inst.instance_id)}
        views = [_result_view(study.study_id, r, signoffs.get(r.result_id)) for r in records]
        self.vault.audit.append(principal.username, "result.read", Outcome.OK,
                                object_ids=[study.study_id, inst.instance_id],
                                details={"results": len(views)})
        return views

    def latest_result(self, principal: Principal, study_id: str,
                      instance_id: str) -> ResultView:
        """The newest analysis of one instance.

        Raises
        ------
        AccessDenied
            If not granted (audited).
        ObjectNotFound
            If the instance is not in the study or was never analysed.
        """
        views = self.results(principal, study_id, instance_id)
        if not views:
            raise ObjectNotFound(f"instance {instance_id} has not been analysed")
        return views[-1]

    def heatmap(self, principal: Principal, study_id: str, instance_id: str) -> bytes:
        """The class-activation overlay of an analysed instance (PNG, computed in memory).

        Raises
        ------
        AccessDenied
            If not granted (audited).
        ObjectNotFound
            If the instance is not in the study or was never analysed.
        ModelError
            If no model can compute it.
        """
        _, inst = self._instance(principal, Action.VIEW_RESULT, study_id, instance_id)
        if not self.vault.catalog.results_of_instance(inst.instance_id):
            raise ObjectNotFound(f"instance {inst.instance_id} has not been analysed")
        return self._analyser(principal.username).heatmap_png(inst.instance_id)

    # ------------------------------------------------------------------ sign-off

    # ------------------------------------------------------------------ reports

    # ------------------------------------------------------------------ re-identification

    # ------------------------------------------------------------------ audit

    # ------------------------------------------------------------------ administration

    # ------------------------------------------------------------------ analysis task

    def _run_analysis(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The body of :func:`analyse_task` (see there)."""
        info = current_job()
        if info is None:
            raise ConfigurationError("the analysis task runs inside a job only")
        study_id = str(payload.get("study_id", ""))
        instance_ids = [str(i) for i in payload.get("instance_ids", [])]
        model = payload.get("model")
        principal = self._principal_of(info.actor)
        study = self._study(principal, Action.ANALYSE, study_id)
        analyser = self._analyser(info.actor)
        for instance_id in instance_ids:
            inst = self.vault.catalog.get_instance(instance_id)
            if inst.study_id != study.study_id:
                raise ObjectNotFound(f"study {study.study_id} has no instance {instance_id}")
        # What an earlier run of this job stored is kept (a resumed job redoes only what is
        # missing); the rest go in batches: one model call and one commit per batch. A
        # failed instance fails the job once the others are stored and recorded.
        runs = {i: self._run_of(info.job_id, i) for i in instance_ids}
        pending = [i for i, done in runs.items() if done is None]
        if pending:
            batch = analyser.analyse_many(pending, model_name=model)
            for result in batch.results:
                runs[result.instance_id] = self._record_run(info.job_id, result.instance_id,
                                                            result.result_id)
            if batch.failures:
                raise batch.failures[0][1]
        out = []
        for instance_id in instance_ids:
            done = runs[instance_id]
            record = next((r for r in self.vault.catalog.results_of_instance(instance_id)
                           if r.result_id == done), None)
            if record is None:
                raise IntegrityError(f"result {done} of job {info.job_id} is missing")
            out.append({"instance_id": instance_id, "result_id": record.result_id,
                        "model_id": record.model_id,
                        "predicted_class": record.payload.get("predicted_class"),
                        "probability": record.payload.get("probability"),
                        "refer": record.payload.get("refer")})
        return {"study_id": study.study_id, "results": out}

    def _principal_of(self, username: str) -> Principal:
        """The current principal of an account (for a job run on its behalf)."""
        user = self.accounts.find_user(username)
        if user is None or (user.is_locked(datetime.now(UTC)) and user.locked_by_admin):
            raise AccessDenied("the job's requester is no longer an active user")
        scopes = frozenset(a.value for a in ROLE_ACTIONS[user.role])
        return Principal(user.username, user.role, user.site, scopes)

    def _run_of(self, job_id: str, instance_id: str) -> str | None:
        with self._read.begin() as session:
            row = session.get(AnalysisRunRow, (job_id, instance_id))
            return None if row is None else row.result_id

    def _record_run(self, job_id: str, instance_id: str, result_id: str) -> str:
        try:
            with self._write.begin() as session:
                session.add(AnalysisRunRow(job_id=job_id, instance_id=instance_id,
                                           result_id=result_id, created_at=datetime.now(UTC)))
            return result_id
        except SQLIntegrityError:  # a concurrent re-run recorded first: keep its result
            existing = self._run_of(job_id, instance_id)
            assert existing is not None
            return existing


# --------------------------------------------------------------------------- the task


def analyse_task(context: ClinicalService, payload: dict[str, Any]) -> dict[str, Any]:
    """Job task: analyse the listed instances of one study on behalf of the requester.

    Idempotent: the result stored for each instance is recorded against the
    job id, so a re-run after a crash or a retry finds it instead of storing
    a second one. The requester's grant is checked again before anything is
    opened (a grant withdrawn since the request stops the job).

    Parameters
    ----------
    context : ClinicalService
        The service (the job runner's context).
    payload : dict
        ``{"study_id", "instance_ids", "model"}``.

    Returns
    -------
    dict
        ``{"study_id", "results": [{"instance_id", "result_id", "model_id",
        "predicted_class", "probability", "refer"}]}``.

    Raises
    ------
    AccessDenied
        If the requester may no longer analyse the study.
    ObjectNotFound, IntegrityError, ModelError
        Unknown instance, failed back-verification, no usable model.
    """
    return context._run_analysis(payload)


def register_tasks(registry: TaskRegistry) -> None:
    """Register the clinical tasks (:data:`ANALYSE_TASK`) in ``registry``.

    Parameters
    ----------
    registry : TaskRegistry
        The registry the job runner (or a Celery worker) uses.

    Raises
    ------
    ConfigurationError
        If another function holds the name.
    """
    registry.register(ANALYSE_TASK, analyse_task)


# --------------------------------------------------------------------------- helpers


def _newest_first(study: StudyRecord) -> tuple[float, str]:
    return (-study.created_at.timestamp(), study.study_id)


def _result_view(study_id: str, record: ResultRecord, signoff: SignOffView | None) -> ResultView:
    p = record.payload
    return ResultView(
        result_id=record.result_id, study_id=study_id, instance_id=record.instance_id,
        model_id=record.model_id, created_at=record.created_at, task=str(p.get("task", "")),
        predicted_class=str(p.get("predicted_class", "")),
        probability=float(p.get("probability", 0.0)),
        probabilities={str(k): float(v) for k, v in dict(p.get("probabilities", {})).items()},
        refer=bool(p.get("refer", False)), reasons=tuple(str(r) for r in p.get("reasons", [])),
        refer_threshold=(float(p["refer_threshold"]) if p.get("refer_threshold") is not None
                         else None),
        signoff=signoff)


def _job_view(job: Job) -> JobView:
    result = job.result or {}
    return JobView(
        job_id=job.job_id, status=job.status.value,
        study_id=str(job.payload.get("study_id", "")),
        instance_ids=tuple(str(i) for i in job.payload.get("instance_ids", [])),
        model=job.payload.get("model"), attempts=job.attempts, created_at=job.created_at,
        finished_at=job.finished_at,
        error=job.error.split(":", 1)[0] if job.error and job.status is JobStatus.FAILED
        else None,
        results=tuple(dict(r) for r in result.get("results", [])))


_INGEST_ERRORS: dict[str, type[ImageInputError]] = {
    cls.__name__: cls for cls in (NotAnImage, CorruptImage, UnsupportedTransferSyntax,
                                  MissingPixelData, ImageTooLarge, BurnedInAnnotationRefused)
}


def _ingest_error(name: str, error: str | None, reason: str | None) -> RadVaultError:
    """Turn a refused ingest outcome back into its error (already audited by ingest)."""
    if error == "DeidentificationError":
        return DeidentificationError(f"{name}: the image could not be de-identified safely")
    cls = _INGEST_ERRORS.get(error or "", ImageInputError)
    return cls(name, reason or "refused")


def _dicom_study_id(vault: Vault, data: bytes) -> str | None:
    """The study id a DICOM file would get at ingest (``None`` when it is not DICOM)."""
    if len(data) < 132 or data[128:132] != b"DICM":
        return None
    import pydicom
    from pydicom.errors import InvalidDicomError

    from radvault.imaging.deid import replacement_uid

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True,
                             specific_tags=["StudyInstanceUID"])
        uid = str(ds.get("StudyInstanceUID", "") or "")
    except (InvalidDicomError, ValueError, TypeError, KeyError, OSError, EOFError):
        return None
    if not uid:
        return None
    return replacement_uid(vault.keys.deid_secret(), uid)

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

from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from radvault.access.oidc import OIDCVerifier
from radvault.access.passwords import make_hasher
from radvault.access.policy import ROLE_ACTIONS, Policy
from radvault.access.principal import Principal, Role
from radvault.access.store import AccessStore
from radvault.access.tokens import TokenPair, TokenService
from radvault.access.users import DEFAULT_SITE, Accounts
from radvault.errors import AuthenticationFailed
from radvault.jobs import JobRunner, TaskRegistry
from radvault.pipeline._clinical_admin import AdminCases
from radvault.pipeline._clinical_analysis import ANALYSE_TASK, AnalysisCases
from radvault.pipeline._clinical_base import (
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
    lead_image,
)
from radvault.pipeline._clinical_dicomweb import DicomWebCases
from radvault.pipeline._clinical_reports import ReportCases
from radvault.pipeline._clinical_studies import StudyCases
from radvault.pipeline.sites import ensure_default_site
from radvault.vault.audit import Outcome
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
    "lead_image",
    "operator_principal",
    "register_tasks",
    "token_signing_key",
]


_TOKEN_KEY_INFO = b"radvault/api-token-signing-key/v1"


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


class ClinicalService(StudyCases, AnalysisCases, AdminCases, ReportCases, DicomWebCases):
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
        (:func:`token_signing_key`). A vault made before the default site was
        registered at ``radvault init`` gets it here when it holds studies of it
        (audited as ``site.add`` by ``system``), so they can be granted by site.

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
        if (not vault.read_only and not store.has_site(DEFAULT_SITE)
                and vault.catalog.list_studies(limit=1, site=DEFAULT_SITE)):
            ensure_default_site(vault)
        audit = vault.audit.append
        accounts = Accounts(store, hasher=make_hasher(*settings.argon2), lockout=settings.lockout,
                            audit=audit, digest=vault.audit_digest)
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

"""Authorisation: who may do what to which study, decided in one place.

Deny by default. A request is allowed only when every check passes:

1. the caller's role allows the action (:data:`ROLE_ACTIONS`);
2. the caller's token carries the action in its scopes;
3. the object is in reach: an upload goes to the caller's own site; a
   clinical action on a study needs a grant of that study or of its site;
4. a re-identification states a reason of at least ``min_reason_length``
   characters.

The roles keep duties apart: technologists upload to their site; radiologists
view, analyse and sign reports of the studies they are granted; physicians see
results and reports of their granted studies and may ask for re-identification;
auditors read the audit trail and nothing clinical; admins manage sites, users
and grants but never see images or results.

Every refusal raises :class:`~radvault.errors.AccessDenied` and is reported to
the audit sink with outcome ``"refused"`` (ids and reasons only, never PHI or
the re-identification reason's text). A study id the catalog does not hold is
whatever the caller typed (an MRN pasted into a URL, say): the use case builds
its resource with :meth:`Resource.unknown_study`, and the refusal names it only
by its keyed digest, never verbatim.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from radvault.access.principal import AuditSink, Principal, Role, emit_audit
from radvault.access.store import AccessStore
from radvault.errors import AccessDenied, ConfigurationError

__all__ = [
    "CLINICAL_ACTIONS",
    "ROLE_ACTIONS",
    "Action",
    "Policy",
    "Resource",
    "StudyScope",
    "scopes_for",
]

logger = logging.getLogger(__name__)


class Action(StrEnum):
    """Everything a caller can ask RadVault to do."""

    UPLOAD = "upload"
    VIEW_STUDY = "view_study"
    VIEW_IMAGE = "view_image"
    ANALYSE = "analyse"
    VIEW_RESULT = "view_result"
    SIGN_REPORT = "sign_report"
    DOWNLOAD_REPORT = "download_report"
    REIDENTIFY = "reidentify"
    READ_AUDIT = "read_audit"
    MANAGE_USERS = "manage_users"
    MANAGE_SITES = "manage_sites"
    MANAGE_GRANTS = "manage_grants"


CLINICAL_ACTIONS: frozenset[Action] = frozenset(
    {
        Action.VIEW_STUDY,
        Action.VIEW_IMAGE,
        Action.ANALYSE,
        Action.VIEW_RESULT,
        Action.SIGN_REPORT,
        Action.DOWNLOAD_REPORT,
        Action.REIDENTIFY,
    }
)
"""Actions on one study; each needs a grant of the study or of its site."""

ROLE_ACTIONS: Mapping[Role, frozenset[Action]] = {
    Role.ADMIN: frozenset({Action.MANAGE_USERS, Action.MANAGE_SITES, Action.MANAGE_GRANTS}),
    Role.TECHNOLOGIST: frozenset({Action.UPLOAD}),
    Role.RADIOLOGIST: frozenset(
        {
            Action.VIEW_STUDY,
            Action.VIEW_IMAGE,
            Action.ANALYSE,
            Action.VIEW_RESULT,
            Action.SIGN_REPORT,
            Action.DOWNLOAD_REPORT,
        }
    ),
    Role.PHYSICIAN: frozenset(
        {Action.VIEW_STUDY, Action.VIEW_RESULT, Action.DOWNLOAD_REPORT, Action.REIDENTIFY}
    ),
    Role.AUDITOR: frozenset({Action.READ_AUDIT}),
}
"""What each role may do at all, before grants are considered."""


def scopes_for(role: Role | str) -> frozenset[str]:
    """The scope names a token for ``role`` carries: its allowed actions.

    Parameters
    ----------
    role : Role or str
        The role.

    Returns
    -------
    frozenset of str
        Action values.

    Raises
    ------
    ValueError
        If the role is unknown.
    """
    return frozenset(a.value for a in ROLE_ACTIONS[Role(role)])


@dataclass(frozen=True)
class Resource:
    """The object of a request.

    Parameters
    ----------
    site : str, optional
        The site the object belongs to (an upload's destination, a study's site).
    study_id : str, optional
        The study's pseudonymous id, for clinical actions.
    unknown_id_hmac : str, optional
        Set when the catalog does not hold ``study_id``: its keyed digest,
        under which the audit trail names it instead (see :meth:`unknown_study`).

    Raises
    ------
    ValueError
        If ``unknown_id_hmac`` is given without a study id, or with a site.
    """

    site: str | None = None
    study_id: str | None = None
    unknown_id_hmac: str | None = None

    def __post_init__(self) -> None:
        if self.unknown_id_hmac is not None and (self.study_id is None or self.site is not None):
            raise ValueError("only a study id the catalog does not hold (so no site) has a digest")

    @classmethod
    def study(cls, study_id: str, site: str | None) -> Resource:
        """A study and the site it belongs to (as the catalog records it).

        Parameters
        ----------
        study_id : str
            The study's pseudonymous id.
        site : str or None
            Its site.

        Returns
        -------
        Resource
            The resource.
        """
        return cls(site=site, study_id=study_id)

    @classmethod
    def unknown_study(cls, study_id: str, id_hmac: str) -> Resource:
        """A study id the catalog does not hold, and its keyed digest.

        The policy still judges the id itself (a grant by id may outlive its
        study), but a refusal names it only by ``id_hmac``: an id nobody
        stored is just text someone typed, perhaps a medical record number.

        Parameters
        ----------
        study_id : str
            The id as the caller gave it.
        id_hmac : str
            Its keyed digest (the vault's ``audit_digest``).

        Returns
        -------
        Resource
            The resource (no site: the catalog knows none).
        """
        return cls(study_id=study_id, unknown_id_hmac=id_hmac)

    def object_ids(self) -> list[str]:
        """Ids for the audit trail: the study id (if the catalog holds it) and ``site:<name>``.

        Returns
        -------
        list of str
            The ids of what was asked for.
        """
        ids = []
        if self.study_id is not None and self.unknown_id_hmac is None:
            ids.append(self.study_id)
        if self.site is not None:
            ids.append(f"site:{self.site}")
        return ids

    def audit_details(self) -> dict[str, str]:
        """What the audit trail adds to the details: the digest of an unknown study id.

        Returns
        -------
        dict
            ``{"unknown_id_hmac": ...}``, or empty.
        """
        return {} if self.unknown_id_hmac is None else {"unknown_id_hmac": self.unknown_id_hmac}


@dataclass(frozen=True)
class StudyScope:
    """The studies a principal may list: all of some sites, plus some single studies.

    A catalog query keeps a study when ``site IN sites OR study_id IN study_ids``.
    """

    sites: frozenset[str] = field(default_factory=frozenset)
    study_ids: frozenset[str] = field(default_factory=frozenset)

    @property
    def empty(self) -> bool:
        """Whether nothing at all is visible."""
        return not self.sites and not self.study_ids

    def contains(self, study_id: str, site: str | None) -> bool:
        """Whether one study is visible.

        Parameters
        ----------
        study_id : str
            The study.
        site : str or None
            Its site.

        Returns
        -------
        bool
            True when the study or its site is in scope.
        """
        return study_id in self.study_ids or (site is not None and site in self.sites)


class Policy:
    """The one place that decides whether a principal may act on a resource.

    Parameters
    ----------
    store : AccessStore
        Where grants live (read on every decision, so a withdrawn grant takes
        effect at once).
    audit : AuditSink, optional
        Receives every refusal.
    min_reason_length : int
        Fewest characters (after trimming) of a re-identification reason.

    Raises
    ------
    ConfigurationError
        If ``min_reason_length`` is below 1.
    """

    def __init__(self, store: AccessStore, *, audit: AuditSink | None = None,
                 min_reason_length: int = 10) -> None:
        if min_reason_length < 1:
            raise ConfigurationError("min_reason_length must be at least 1")
        self.store = store
        self.audit = audit
        self.min_reason_length = min_reason_length

    def authorize(self, principal: Principal, action: Action | str,
                  resource: Resource | None = None, *, reason: str | None = None) -> None:
        """Allow the request or refuse it (and audit the refusal).

        Parameters
        ----------
        principal : Principal
            The authenticated caller.
        action : Action or str
            What they ask to do.
        resource : Resource, optional
            What they ask to do it to: the destination site of an upload, the
            study (with its site) of a clinical action; nothing for audit and
            administration.
        reason : str, optional
            The stated reason, required for :attr:`Action.REIDENTIFY`; it is
            never recorded here (the use case records it where PHI may live).

        Raises
        ------
        AccessDenied
            If any check fails; the message says which check, without PHI.
        """
        refusal = self._refusal(principal, action, resource, reason)
        if refusal is None:
            return
        action_name = action.value if isinstance(action, Action) else str(action)[:64]
        emit_audit(
            self.audit,
            principal.username,
            "access_denied",
            "refused",
            resource.object_ids() if resource is not None else [],
            {"action": action_name, "role": principal.role.value, "reason": refusal,
             **(resource.audit_details() if resource is not None else {})},
        )
        logger.info("access refused: %s", refusal)
        raise AccessDenied(f"{action_name} refused: {refusal}")

    def allowed(self, principal: Principal, action: Action | str,
                resource: Resource | None = None, *, reason: str | None = None) -> bool:
        """Whether :meth:`authorize` would allow the request (nothing is audited).

        For deciding what to show (menus, buttons); never use it instead of
        :meth:`authorize` before acting.

        Parameters
        ----------
        principal, action, resource, reason
            As for :meth:`authorize`.

        Returns
        -------
        bool
            True when every check passes.
        """
        return self._refusal(principal, action, resource, reason) is None

    def visible_study_filter(self, principal: Principal) -> StudyScope:
        """The sites and studies ``principal`` may list or search.

        Parameters
        ----------
        principal : Principal
            The authenticated caller.

        Returns
        -------
        StudyScope
            Granted sites and studies; empty for roles that may not view
            studies (technologists, auditors, admins).
        """
        if not self._role_and_scope_allow(principal, Action.VIEW_STUDY):
            return StudyScope()
        sites, studies = self.store.grants_of(principal.username)
        return StudyScope(sites=sites, study_ids=studies)

    # ------------------------------------------------------------- internals

    @staticmethod
    def _role_and_scope_allow(principal: Principal, action: Action) -> bool:
        return action in ROLE_ACTIONS.get(principal.role, frozenset()) and (
            action.value in principal.scopes
        )

    def _refusal(self, principal: Principal, action: Action | str,
                 resource: Resource | None, reason: str | None) -> str | None:
        """Why the request is refused, or ``None`` when it is allowed."""
        try:
            action = Action(action)
        except ValueError:
            return "unknown action"
        if action not in ROLE_ACTIONS.get(principal.role, frozenset()):
            return f"the {principal.role.value} role may not do this"
        if action.value not in principal.scopes:
            return "the token does not carry this scope"
        if action is Action.UPLOAD:
            if resource is None or resource.site is None:
                return "no destination site given"
            if resource.site != principal.site:
                return "uploads go only to the caller's own site"
            return None
        if action in CLINICAL_ACTIONS:
            if resource is None or resource.study_id is None:
                return "no study given"
            sites, studies = self.store.grants_of(principal.username)
            granted = resource.study_id in studies or (
                resource.site is not None and resource.site in sites
            )
            if not granted:
                return "no grant for this study"
            if action is Action.REIDENTIFY and (
                reason is None or len(reason.strip()) < self.min_reason_length
            ):
                return f"a reason of at least {self.min_reason_length} characters is required"
        return None

    def __repr__(self) -> str:
        return f"Policy(store={self.store!r})"

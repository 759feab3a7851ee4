"""Audit and administration use cases (private: use :mod:`radvault.pipeline.clinical`).

Auditors read and verify the audit trail; admins manage sites, users and
grants. Every method asks the policy first, so a clinician calling them is
refused (and audited) like anyone else without the role. A study is granted
by id only once the catalog holds it (the access layer cannot see the
catalog, so the check is here): an id nobody stored may be a medical record
number typed in the wrong field, and a grant would audit it verbatim.
"""

from __future__ import annotations

import logging
from datetime import datetime

from radvault.access.policy import Action
from radvault.access.principal import Principal, Role
from radvault.access.users import DEFAULT_SITE, Grant, Site, User
from radvault.errors import ObjectNotFound
from radvault.pipeline._clinical_base import (
    AUDIT_ACTION_RE,
    AUDIT_NAME_RE,
    InvalidRequest,
    ServiceCore,
)
from radvault.pipeline.sites import ensure_default_site
from radvault.vault.audit import AuditEntry, AuditReport, Outcome

__all__ = ["AdminCases"]

logger = logging.getLogger(__name__)


class AdminCases(ServiceCore):
    """Audit and administration use cases."""

    def audit_entries(self, principal: Principal, *, actor: str | None = None,
                      action: str | None = None, object_id: str | None = None,
                      since: datetime | None = None, limit: int = 100) -> list[AuditEntry]:
        """Search the audit trail, newest first (auditors only; the search is audited).

        Raises
        ------
        AccessDenied
            If the caller is not an auditor (audited).
        InvalidRequest
            If a filter is malformed or ``limit`` is outside 1..1000.
        """
        self.policy.authorize(principal, Action.READ_AUDIT)
        if actor is not None and not AUDIT_NAME_RE.fullmatch(actor):
            raise InvalidRequest("invalid actor filter")
        if action is not None and not AUDIT_ACTION_RE.fullmatch(action):
            raise InvalidRequest("invalid action filter")
        if object_id is not None and not AUDIT_NAME_RE.fullmatch(object_id):
            raise InvalidRequest("invalid object id filter")
        if not 1 <= limit <= 1000:
            raise InvalidRequest("limit must be within 1..1000")
        entries = self.vault.audit.query(actor=actor, action=action, object_id=object_id,
                                         since=since, limit=limit)
        self.vault.audit.append(principal.username, "audit.read", Outcome.OK,
                                details={"returned": len(entries)})
        return entries

    def verify_audit(self, principal: Principal) -> AuditReport:
        """Check the whole audit chain and its signed checkpoints (auditors only).

        Raises
        ------
        AccessDenied
            If the caller is not an auditor (audited).
        """
        self.policy.authorize(principal, Action.READ_AUDIT)
        report = self.vault.audit.verify()
        self.vault.audit.append(principal.username, "audit_verify",
                                Outcome.OK if report.ok else Outcome.ERROR,
                                details={"entries": report.entries_checked,
                                         "problems": len(report.problems)})
        return report

    def sites(self, principal: Principal) -> list[Site]:
        """Every site (admins).

        Raises
        ------
        AccessDenied
            If the caller is not an admin (audited).
        """
        self.policy.authorize(principal, Action.MANAGE_SITES)
        return self.accounts.sites()

    def add_site(self, principal: Principal, name: str) -> Site:
        """Create a site (admins; audited).

        Raises
        ------
        AccessDenied
            If the caller is not an admin (audited).
        AccountError
            If the name is invalid or taken.
        """
        self.policy.authorize(principal, Action.MANAGE_SITES)
        return self.accounts.add_site(principal.username, name)

    def users(self, principal: Principal, *, include_deleted: bool = False) -> list[User]:
        """Every account (admins).

        Raises
        ------
        AccessDenied
            If the caller is not an admin (audited).
        """
        self.policy.authorize(principal, Action.MANAGE_USERS)
        return self.accounts.users(include_deleted=include_deleted)

    def user(self, principal: Principal, username: str) -> User:
        """One account (admins).

        Raises
        ------
        AccessDenied
            If the caller is not an admin (audited).
        ObjectNotFound
            If there is no such live account.
        """
        self.policy.authorize(principal, Action.MANAGE_USERS)
        return self.accounts.get_user(username)

    def add_user(self, principal: Principal, username: str, role: Role | str, *,
                 site: str | None = None, password: str | None = None) -> User:
        """Create an account (admins; audited).

        Raises
        ------
        AccessDenied
            If the caller is not an admin (audited).
        AccountError
            If the name is taken or invalid, or the role and site do not fit.
        PasswordPolicyError
            If the password breaks the policy.
        """
        self.policy.authorize(principal, Action.MANAGE_USERS)
        self._register_default_site_if_named(site)
        return self.accounts.add_user(principal.username, username, role, site=site,
                                      password=password)

    def set_password(self, principal: Principal, username: str, password: str) -> None:
        """Replace an account's password (admins; audited; sessions end).

        Raises
        ------
        AccessDenied
            If the caller is not an admin (audited).
        ObjectNotFound
            If there is no such live account.
        PasswordPolicyError
            If the password breaks the policy.
        """
        self.policy.authorize(principal, Action.MANAGE_USERS)
        self.accounts.set_password(principal.username, username, password)

    def lock_user(self, principal: Principal, username: str) -> None:
        """Lock an account until unlocked; its sessions end (admins; audited).

        Raises
        ------
        AccessDenied
            If the caller is not an admin (audited).
        ObjectNotFound
            If there is no such live account.
        """
        self.policy.authorize(principal, Action.MANAGE_USERS)
        self.accounts.lock(principal.username, username)

    def unlock_user(self, principal: Principal, username: str) -> None:
        """Lift a lock or lock-out (admins; audited).

        Raises
        ------
        AccessDenied
            If the caller is not an admin (audited).
        ObjectNotFound
            If there is no such live account.
        """
        self.policy.authorize(principal, Action.MANAGE_USERS)
        self.accounts.unlock(principal.username, username)

    def remove_user(self, principal: Principal, username: str) -> None:
        """Remove an account: grants and sessions go, the name is never reused (admins).

        Raises
        ------
        AccessDenied
            If the caller is not an admin, or removes themselves (audited).
        ObjectNotFound
            If there is no such live account.
        """
        self.policy.authorize(principal, Action.MANAGE_USERS)
        if username == principal.username:
            raise self._refuse(principal, Action.MANAGE_USERS, "an admin may not remove itself")
        self.accounts.remove(principal.username, username)

    def _register_default_site_if_named(self, site: str | None) -> None:
        """Register the site ``default`` when an admin names it and an older vault lacks it.

        Every vault since session 9 has it from ``init``; an older one got it only when
        something was ingested without a site, so until then granting it was refused.
        """
        if site == DEFAULT_SITE and not self.vault.read_only:
            ensure_default_site(self.vault)

    def grants(self, principal: Principal, username: str) -> list[Grant]:
        """An account's grants (admins).

        Raises
        ------
        AccessDenied
            If the caller is not an admin (audited).
        ObjectNotFound
            If there is no such live account.
        """
        self.policy.authorize(principal, Action.MANAGE_GRANTS)
        return self.accounts.grants(username)

    def grant(self, principal: Principal, username: str, *, study_id: str | None = None,
              site: str | None = None) -> Grant:
        """Grant an account one study or one site (admins; audited).

        Raises
        ------
        AccessDenied
            If the caller is not an admin (audited).
        ObjectNotFound
            If there is no such live account, or the catalog holds no study
            ``study_id`` (nothing is stored or audited).
        AccountError
            If both or neither target is given, the site is unknown, the study
            id malformed, or the grant exists.
        """
        self.policy.authorize(principal, Action.MANAGE_GRANTS)
        self._register_default_site_if_named(site)
        if site is None and self._unknown_study(study_id):
            raise ObjectNotFound("no such study: a study is granted by id only once the "
                                 "catalog holds it")
        return self.accounts.grant(principal.username, username, study_id=study_id, site=site)

    def revoke_grant(self, principal: Principal, username: str, *, study_id: str | None = None,
                     site: str | None = None) -> None:
        """Withdraw a grant (admins; audited; effective at once).

        A grant of a study the catalog does not hold (granted before grants
        were checked, or its study since removed) is withdrawn all the same;
        the audit trail names that study only by its keyed digest.

        Raises
        ------
        AccessDenied
            If the caller is not an admin (audited).
        ObjectNotFound
            If there is no such account or grant.
        AccountError
            If both or neither target is given.
        """
        self.policy.authorize(principal, Action.MANAGE_GRANTS)
        catalogued = site is not None or not self._unknown_study(study_id)
        self.accounts.revoke_grant(principal.username, username, study_id=study_id, site=site,
                                   catalogued=catalogued)

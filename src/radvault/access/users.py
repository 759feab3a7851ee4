"""Accounts: sites, users, grants, password checks and lock-out.

:class:`Accounts` is the one way to change who may log in and what they are
granted. It checks inputs (name patterns, role and site rules, the password
policy), stores argon2id hashes, counts failed logins and locks an account
for a growing time after repeated failures, and reports every change and
every login outcome to the audit sink, after the change is committed.

Whether the *caller* may make a change (only admins manage users and grants)
is decided by :class:`radvault.access.policy.Policy` in the use-case layer;
``actor`` here only names who did it, for the audit trail.

Login timing does not reveal whether an account exists: an unknown, removed,
password-less or locked account still costs one argon2 verification (against
a dummy hash) and gets the same error as a wrong password.
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError as SQLIntegrityError
from sqlalchemy.orm import Session

from radvault.access._models import GrantRow, RefreshTokenRow, SiteRow, UserRow
from radvault.access.passwords import (
    AccountError,
    PasswordPolicy,
    check_hasher,
    make_hasher,
    normalise_password,
)
from radvault.access.principal import AuditSink, Clock, Role, TextDigest, emit_audit, utcnow
from radvault.access.store import AccessStore
from radvault.errors import AuthenticationFailed, ConfigurationError, ObjectNotFound

__all__ = ["DEFAULT_SITE", "LOGIN_FAILED", "Accounts", "Grant", "LockoutPolicy", "Site", "User",
           "ensure_site", "is_site_name"]

logger = logging.getLogger(__name__)

LOGIN_FAILED = "invalid username or password"
"""The one message of every refused login, whatever the reason (no account enumeration)."""

DEFAULT_SITE = "default"
"""The site of studies ingested without naming one (``radvault ingest`` without ``--site``).

It exists in every vault: registered when the vault is initialised, and on first
use in a vault made before that (:mod:`radvault.pipeline.sites`)."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_SITE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_STUDY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


@dataclass(frozen=True)
class LockoutPolicy:
    """How repeated login failures lock an account.

    After ``threshold`` consecutive failures the account is locked for
    ``base``; every further failure after the lock ends doubles it, up to
    ``maximum``. A successful login resets the count.

    Parameters
    ----------
    threshold : int
        Consecutive failures that trigger the first lock (default 5).
    base : datetime.timedelta
        Length of the first lock (default one minute).
    maximum : datetime.timedelta
        Longest lock (default one day).

    Raises
    ------
    ConfigurationError
        If a value is not positive or ``maximum < base``.
    """

    threshold: int = 5
    base: timedelta = timedelta(minutes=1)
    maximum: timedelta = timedelta(days=1)

    def __post_init__(self) -> None:
        if self.threshold < 1 or self.base <= timedelta(0) or self.maximum < self.base:
            raise ConfigurationError("lock-out needs threshold >= 1 and 0 < base <= maximum")

    def lock_for(self, failures: int) -> timedelta | None:
        """How long to lock after ``failures`` consecutive failures (``None``: not yet).

        Parameters
        ----------
        failures : int
            Consecutive failed logins so far.

        Returns
        -------
        datetime.timedelta or None
            The lock length, or ``None`` below the threshold.
        """
        if failures < self.threshold:
            return None
        doublings = min(failures - self.threshold, 40)
        return min(self.base * (2**doublings), self.maximum)


@dataclass(frozen=True)
class Site:
    """A hospital or imaging centre."""

    name: str
    created_at: datetime


@dataclass(frozen=True)
class User:
    """A read-only view of an account (never its password hash)."""

    username: str
    role: Role
    site: str | None
    created_at: datetime
    has_password: bool
    failed_attempts: int
    locked_until: datetime | None
    locked_by_admin: bool
    deleted_at: datetime | None

    @property
    def deleted(self) -> bool:
        """Whether the account was removed."""
        return self.deleted_at is not None

    def is_locked(self, now: datetime) -> bool:
        """Whether the account is locked at ``now`` (by an admin or by lock-out).

        Parameters
        ----------
        now : datetime.datetime
            The moment to judge (aware UTC).

        Returns
        -------
        bool
            True while an admin lock holds or a lock-out has not ended.
        """
        return self.locked_by_admin or (self.locked_until is not None and self.locked_until > now)

    @classmethod
    def _from_row(cls, row: UserRow) -> User:
        return cls(
            username=row.username,
            role=Role(row.role),
            site=row.site,
            created_at=row.created_at,
            has_password=row.password_hash is not None,
            failed_attempts=row.failed_attempts,
            locked_until=row.locked_until,
            locked_by_admin=row.locked_by_admin,
            deleted_at=row.deleted_at,
        )


@dataclass(frozen=True)
class Grant:
    """A user's access to one study or to every study of one site."""

    username: str
    study_id: str | None
    site: str | None
    created_at: datetime

    @property
    def object_id(self) -> str:
        """The study id, or ``site:<name>``: what the audit trail names."""
        return self.study_id if self.study_id is not None else f"site:{self.site}"


class Accounts:
    """Sites, users and grants, with password checks and lock-out.

    Parameters
    ----------
    store : AccessStore
        Where accounts live.
    hasher : argon2.PasswordHasher, optional
        An argon2id hasher (default :func:`make_hasher`'s RFC 9106 parameters).
        Hashes made with other parameters are upgraded at the next login.
    password_policy : PasswordPolicy, optional
        Rules for new passwords.
    lockout : LockoutPolicy, optional
        When repeated failures lock an account.
    audit : AuditSink, optional
        Receives every change and login outcome (none: log only).
    digest : TextDigest, optional
        The keyed digest (the vault's ``audit_digest``) under which the audit
        trail names what must not be kept verbatim: a login name no account
        has, a study id the catalog does not hold. Without one, such text is
        left out of the trail altogether.
    clock : Clock, optional
        The current time (tests inject one).

    Raises
    ------
    ConfigurationError
        If the hasher is not argon2id.
    """

    def __init__(
        self,
        store: AccessStore,
        *,
        hasher: PasswordHasher | None = None,
        password_policy: PasswordPolicy | None = None,
        lockout: LockoutPolicy | None = None,
        audit: AuditSink | None = None,
        digest: TextDigest | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self.store = store
        self.hasher = check_hasher(hasher if hasher is not None else make_hasher())
        self.password_policy = password_policy or PasswordPolicy()
        self.lockout = lockout or LockoutPolicy()
        self.audit = audit
        self.digest = digest
        self.clock = clock
        self._dummy_hash = self.hasher.hash(secrets.token_urlsafe(24))

    # ----------------------------------------------------------------- sites

    def add_site(self, actor: str, name: str) -> Site:
        """Create a site.

        Parameters
        ----------
        actor : str
            Who does it (for the audit trail).
        name : str
            Letters, digits, ``.``, ``_``, ``-``; at most 64 characters.

        Returns
        -------
        Site
            The new site.

        Raises
        ------
        AccountError
            If the name is invalid or taken.
        """
        _check_site_name(name)
        now = self.clock()
        with self.store.session() as session:
            if session.get(SiteRow, name) is not None:
                raise AccountError(f"site {name!r} already exists")
            session.add(SiteRow(name=name, created_at=now))
        emit_audit(self.audit, actor, "site.add", "ok", [f"site:{name}"])
        return Site(name, now)

    def sites(self) -> list[Site]:
        """All sites, by name.

        Returns
        -------
        list of Site
            Every site.
        """
        with self.store.session() as session:
            rows = session.scalars(select(SiteRow).order_by(SiteRow.name)).all()
            return [Site(r.name, r.created_at) for r in rows]

    # ----------------------------------------------------------------- users

    def add_user(
        self,
        actor: str,
        username: str,
        role: Role | str,
        *,
        site: str | None = None,
        password: str | None = None,
    ) -> User:
        """Create an account.

        Parameters
        ----------
        actor : str
            Who does it.
        username : str
            Letters, digits, ``.``, ``_``, ``@``, ``-``; at most 64 characters;
            never reused, even after removal.
        role : Role or str
            The account's one role.
        site : str, optional
            Home site; required for technologists, radiologists and physicians.
        password : str, optional
            Initial password, checked against the policy. Without one the
            account can only sign in through OpenID Connect.

        Returns
        -------
        User
            The new account.

        Raises
        ------
        AccountError
            If the name is invalid or taken, the role unknown, or the site
            missing or unknown.
        PasswordPolicyError
            If the password breaks the policy.
        """
        _check_name(username, "username")
        role = _role(role)
        password_hash = self._hash_new(password, username) if password is not None else None
        now = self.clock()
        with self.store.session() as session:
            self._check_site_for(session, role, site)
            if session.scalar(select(UserRow.id).where(UserRow.username == username)) is not None:
                raise AccountError(f"username {username!r} is already taken")
            row = UserRow(
                username=username,
                role=role.value,
                site=site,
                password_hash=password_hash,
                failed_attempts=0,
                locked_by_admin=False,
                created_at=now,
            )
            session.add(row)
            session.flush()
            user = User._from_row(row)
        emit_audit(self.audit, actor, "user.add", "ok", [],
                   {"user": username, "role": role.value, "site": site})
        return user

    def get_user(self, username: str, *, include_deleted: bool = False) -> User:
        """One account.

        Parameters
        ----------
        username : str
            The account name.
        include_deleted : bool
            Also return a removed account.

        Returns
        -------
        User
            The account.

        Raises
        ------
        ObjectNotFound
            If there is no such (live) account.
        """
        user = self.find_user(username, include_deleted=include_deleted)
        if user is None:
            raise ObjectNotFound(f"no user {username!r}")
        return user

    def find_user(self, username: str, *, include_deleted: bool = False) -> User | None:
        """One account, or ``None`` when there is no such (live) account.

        Parameters
        ----------
        username : str
            The account name.
        include_deleted : bool
            Also return a removed account.

        Returns
        -------
        User or None
            The account, if any.
        """
        with self.store.session() as session:
            row = _user_row(session, username, include_deleted=include_deleted)
            return None if row is None else User._from_row(row)

    def users(self, *, include_deleted: bool = False) -> list[User]:
        """All accounts, by name.

        Parameters
        ----------
        include_deleted : bool
            Also list removed accounts.

        Returns
        -------
        list of User
            The accounts.
        """
        query = select(UserRow).order_by(UserRow.username)
        if not include_deleted:
            query = query.where(UserRow.deleted_at.is_(None))
        with self.store.session() as session:
            return [User._from_row(r) for r in session.scalars(query).all()]

    def set_password(self, actor: str, username: str, password: str) -> None:
        """Replace an account's password; its refresh tokens are revoked.

        Parameters
        ----------
        actor : str
            Who does it.
        username : str
            The account.
        password : str
            The new password.

        Raises
        ------
        ObjectNotFound
            If there is no such live account.
        PasswordPolicyError
            If the password breaks the policy.
        """
        password_hash = self._hash_new(password, username)
        now = self.clock()
        with self.store.session() as session:
            row = self._live(session, username)
            row.password_hash = password_hash
            row.failed_attempts = 0
            row.locked_until = None
            _revoke_refresh_tokens(session, row.id, now, "password")
        emit_audit(self.audit, actor, "user.password", "ok", [], {"user": username})

    def set_role(self, actor: str, username: str, role: Role | str, *,
                 site: str | None = None) -> User:
        """Change an account's role and home site; its refresh tokens are revoked.

        Parameters
        ----------
        actor : str
            Who does it.
        username : str
            The account.
        role : Role or str
            The new role.
        site : str, optional
            The new home site (required for the clinical roles).

        Returns
        -------
        User
            The updated account.

        Raises
        ------
        ObjectNotFound
            If there is no such live account.
        AccountError
            If the role is unknown or the site missing or unknown.
        """
        role = _role(role)
        now = self.clock()
        with self.store.session() as session:
            row = self._live(session, username)
            self._check_site_for(session, role, site)
            row.role, row.site = role.value, site
            _revoke_refresh_tokens(session, row.id, now, "role")
            session.flush()
            user = User._from_row(row)
        emit_audit(self.audit, actor, "user.role", "ok", [],
                   {"user": username, "role": role.value, "site": site})
        return user

    def lock(self, actor: str, username: str) -> None:
        """Lock an account until an admin unlocks it; its refresh tokens are revoked.

        Parameters
        ----------
        actor : str
            Who does it.
        username : str
            The account.

        Raises
        ------
        ObjectNotFound
            If there is no such live account.
        """
        now = self.clock()
        with self.store.session() as session:
            row = self._live(session, username)
            row.locked_by_admin = True
            _revoke_refresh_tokens(session, row.id, now, "locked")
        emit_audit(self.audit, actor, "user.lock", "ok", [], {"user": username})

    def unlock(self, actor: str, username: str) -> None:
        """Lift an admin lock and any lock-out, and reset the failure count.

        Parameters
        ----------
        actor : str
            Who does it.
        username : str
            The account.

        Raises
        ------
        ObjectNotFound
            If there is no such live account.
        """
        with self.store.session() as session:
            row = self._live(session, username)
            row.locked_by_admin = False
            row.locked_until = None
            row.failed_attempts = 0
        emit_audit(self.audit, actor, "user.unlock", "ok", [], {"user": username})

    def remove(self, actor: str, username: str) -> None:
        """Remove an account: it can no longer sign in, its grants and tokens are gone.

        The row is kept (with ``deleted_at``) so the name is never reused and
        the audit trail keeps pointing at one person.

        Parameters
        ----------
        actor : str
            Who does it.
        username : str
            The account.

        Raises
        ------
        ObjectNotFound
            If there is no such live account.
        """
        now = self.clock()
        with self.store.session() as session:
            row = self._live(session, username)
            row.deleted_at = now
            row.password_hash = None
            session.execute(delete(GrantRow).where(GrantRow.user_id == row.id))
            _revoke_refresh_tokens(session, row.id, now, "removed")
        emit_audit(self.audit, actor, "user.remove", "ok", [], {"user": username})

    # ---------------------------------------------------------------- grants

    def grant(self, actor: str, username: str, *, study_id: str | None = None,
              site: str | None = None) -> Grant:
        """Grant an account one study or every study of one site.

        This layer cannot see the catalog: the use case that calls it
        (``ClinicalService.grant``) refuses a study id the catalog does not
        hold, so that no typed text reaches the audit trail as an id.

        Parameters
        ----------
        actor : str
            Who does it.
        username : str
            The account.
        study_id : str, optional
            The study (its pseudonymous id).
        site : str, optional
            The site. Exactly one of ``study_id`` and ``site`` is given.

        Returns
        -------
        Grant
            The new grant.

        Raises
        ------
        ObjectNotFound
            If there is no such live account.
        AccountError
            If both or neither target is given, the site is unknown, the study
            id malformed, or the grant exists already.
        """
        _check_target(study_id, site)
        now = self.clock()
        with self.store.session() as session:
            row = self._live(session, username)
            if site is not None and session.get(SiteRow, site) is None:
                raise AccountError(f"unknown site {site!r}")
            if _grant_row(session, row.id, study_id, site) is not None:
                raise AccountError("that grant exists already")
            session.add(GrantRow(user_id=row.id, study_id=study_id, site=site, created_at=now))
        grant = Grant(username, study_id, site, now)
        emit_audit(self.audit, actor, "grant", "ok", [grant.object_id], {"user": username})
        return grant

    def revoke_grant(self, actor: str, username: str, *, study_id: str | None = None,
                     site: str | None = None, catalogued: bool = True) -> None:
        """Withdraw a grant.

        Parameters
        ----------
        actor : str
            Who does it.
        username : str
            The account.
        study_id : str, optional
            The study.
        site : str, optional
            The site. Exactly one of ``study_id`` and ``site`` is given.
        catalogued : bool
            Whether the catalog holds ``study_id`` (the caller knows; this layer
            cannot see the catalog). A grant of a study it does not hold (never,
            or no longer) is withdrawn all the same, but the audit trail names
            the study only by its keyed digest (``unknown_id_hmac``): the id may
            be anything an admin once typed.

        Raises
        ------
        ObjectNotFound
            If there is no such live account or no such grant.
        AccountError
            If both or neither target is given.
        """
        _check_target(study_id, site)
        with self.store.session() as session:
            row = self._live(session, username)
            grant = _grant_row(session, row.id, study_id, site)
            if grant is None:
                raise ObjectNotFound("no such grant")
            session.delete(grant)
        if study_id is not None and not catalogued:
            details: dict[str, object] = {"user": username}
            if self.digest is not None:
                details["unknown_id_hmac"] = self.digest(study_id)
            emit_audit(self.audit, actor, "revoke", "ok", [], details)
            return
        object_id = study_id if study_id is not None else f"site:{site}"
        emit_audit(self.audit, actor, "revoke", "ok", [object_id], {"user": username})

    def grants(self, username: str) -> list[Grant]:
        """An account's grants, sites first.

        Parameters
        ----------
        username : str
            The account.

        Returns
        -------
        list of Grant
            Its grants.

        Raises
        ------
        ObjectNotFound
            If there is no such live account.
        """
        with self.store.session() as session:
            row = self._live(session, username)
            grants = session.scalars(
                select(GrantRow).where(GrantRow.user_id == row.id).order_by(GrantRow.id)
            ).all()
            result = [Grant(username, g.study_id, g.site, g.created_at) for g in grants]
        return sorted(result, key=lambda g: (g.site is None, g.site or "", g.study_id or ""))

    # ----------------------------------------------------------------- login

    def verify_credentials(self, username: str, password: str) -> User:
        """Check a username and password, with lock-out and auditing.

        Every refusal raises the same :data:`LOGIN_FAILED` error and costs one
        argon2 verification, whether the account is unknown, removed, locked or
        the password wrong. A wrong password for a live account counts toward
        lock-out; attempts during a lock do not extend it. A success resets the
        count and upgrades the stored hash if the hasher's parameters changed.

        Parameters
        ----------
        username : str
            The account name as typed.
        password : str
            The password as typed.

        Returns
        -------
        User
            The account that signed in.

        Raises
        ------
        AuthenticationFailed
            If the credentials are not accepted, for whatever reason.
        """
        password = normalise_password(password)
        now = self.clock()
        outcome: str
        details: dict[str, object] = {}
        user: User | None = None
        # The argon2 work runs outside any transaction: the access tables share the
        # catalog's database, and on SQLite a transaction here holds its one write
        # lock, which would stall every ingest, analysis and audit append (and every
        # other login) for the length of a verification.
        seen: tuple[int, str, bool, datetime | None] | None = None
        if _NAME.fullmatch(username or ""):
            with self.store.session() as session:
                row = _user_row(session, username)
                if row is not None and row.password_hash is not None:
                    seen = (row.id, row.password_hash, row.locked_by_admin, row.locked_until)
        if seen is None:
            self._burn(password)
            outcome = "unknown"
        elif seen[2] or (seen[3] is not None and seen[3] > now):
            self._burn(password)
            outcome = "locked"
        else:
            user_id, password_hash = seen[0], seen[1]
            good = self._verify(password_hash, password)
            new_hash = (self.hasher.hash(password)
                        if good and self.hasher.check_needs_rehash(password_hash) else None)
            with self.store.session() as session:
                row = session.get(UserRow, user_id)
                if row is None or row.deleted_at is not None or row.password_hash != password_hash:
                    # Removed or given a new password while this attempt was checked:
                    # refuse it, without counting it against the account.
                    outcome = "changed"
                elif row.locked_by_admin or (row.locked_until is not None
                                             and row.locked_until > now):
                    outcome = "locked"
                elif good:
                    row.failed_attempts = 0
                    row.locked_until = None
                    if new_hash is not None:
                        row.password_hash = new_hash
                        details["rehashed"] = True
                    outcome = "ok"
                    session.flush()
                    user = User._from_row(row)
                else:
                    # One atomic increment, so concurrent failures are all counted.
                    failures = session.scalar(
                        update(UserRow)
                        .where(UserRow.id == row.id)
                        .values(failed_attempts=UserRow.failed_attempts + 1)
                        .returning(UserRow.failed_attempts)
                        .execution_options(synchronize_session=False)
                    )
                    details["failures"] = failures
                    lock = self.lockout.lock_for(int(failures or 0))
                    if lock is not None:
                        row.locked_until = now + lock
                        details["locked_seconds"] = int(lock.total_seconds())
                    outcome = "wrong_password"
        self._audit_login(username, outcome, details)
        if user is None:
            raise AuthenticationFailed(LOGIN_FAILED)
        return user

    def _audit_login(self, username: str, outcome: str, details: dict[str, object]) -> None:
        if outcome == "ok":
            emit_audit(self.audit, username, "login", "ok", [], details)
        elif outcome == "unknown":
            # The name typed may be a mistyped password: record only its keyed digest
            # (repeats correlate; no dictionary of passwords can be tested against it).
            refusal: dict[str, object] = {"reason": "unknown user"}
            if self.digest is not None:
                refusal["username_hmac"] = self.digest(username or "")
            emit_audit(self.audit, "anonymous", "login_failed", "refused", [], refusal)
        elif outcome == "locked":
            emit_audit(self.audit, username, "login_failed", "refused", [], {"reason": "locked"})
        elif outcome == "changed":
            emit_audit(self.audit, username, "login_failed", "refused", [],
                       {"reason": "account changed during login"})
        else:
            emit_audit(self.audit, username, "login_failed", "refused", [],
                       {"reason": "wrong password", **details})
            if "locked_seconds" in details:
                logger.info("an account was locked after repeated login failures")
                emit_audit(self.audit, "system", "user.lockout", "ok", [],
                           {"user": username, **details})

    # --------------------------------------------------------------- helpers

    def _hash_new(self, password: str, username: str) -> str:
        self.password_policy.check(password, username)
        return self.hasher.hash(normalise_password(password))

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return bool(self.hasher.verify(password_hash, password))
        except (VerificationError, InvalidHashError):
            return False

    def _burn(self, password: str) -> None:
        """Spend one verification on the dummy hash, so refusals all cost the same."""
        self._verify(self._dummy_hash, password)

    def _live(self, session: Session, username: str) -> UserRow:
        row = _user_row(session, username)
        if row is None:
            raise ObjectNotFound(f"no user {username!r}")
        return row

    @staticmethod
    def _check_site_for(session: Session, role: Role, site: str | None) -> None:
        if site is None:
            if role.needs_site:
                raise AccountError(f"a {role.value} must belong to a site")
            return
        if session.get(SiteRow, site) is None:
            raise AccountError(f"unknown site {site!r}")

    def __repr__(self) -> str:
        return f"Accounts(store={self.store!r})"


def _user_row(session: Session, username: str, *, include_deleted: bool = False) -> UserRow | None:
    query = select(UserRow).where(UserRow.username == username)
    if not include_deleted:
        query = query.where(UserRow.deleted_at.is_(None))
    return session.scalar(query)


def _grant_row(session: Session, user_id: int, study_id: str | None,
               site: str | None) -> GrantRow | None:
    query = select(GrantRow).where(GrantRow.user_id == user_id)
    if study_id is not None:
        query = query.where(GrantRow.study_id == study_id)
    else:
        query = query.where(GrantRow.site == site)
    return session.scalar(query)


def _revoke_refresh_tokens(session: Session, user_id: int, now: datetime, reason: str) -> None:
    session.execute(
        update(RefreshTokenRow)
        .where(RefreshTokenRow.user_id == user_id, RefreshTokenRow.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason=reason)
    )


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise AccountError(
            f"invalid {what}: use 1-64 letters, digits, '.', '_', '@' or '-',"
            " starting with a letter or digit"
        )


def is_site_name(name: object) -> bool:
    """Whether ``name`` is a well-formed site name (1-64 letters, digits, ``.``, ``_``,
    ``-``, starting with a letter or digit), as :meth:`Accounts.add_site` requires."""
    return isinstance(name, str) and _SITE.fullmatch(name) is not None


def _check_site_name(name: str) -> None:
    if not is_site_name(name):
        raise AccountError(
            "invalid site name: use 1-64 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        )


def ensure_site(store: AccessStore, name: str, *, actor: str = "system",
                audit: AuditSink | None = None, clock: Clock = utcnow) -> Site | None:
    """Create a site unless it exists: for the sites RadVault itself relies on
    (:data:`DEFAULT_SITE`) and for set-up code; an admin adds a site with
    :meth:`Accounts.add_site`, which refuses a name that is taken.

    Idempotent and safe against a concurrent creation (another process that
    creates it at the same moment wins, and nothing is audited here). Unlike
    :meth:`Accounts.add_site` it needs no password hasher, so ingest can call it.
    A creation is audited as ``site.add`` by ``actor``, as an admin's would be.

    Parameters
    ----------
    store : AccessStore
        Where accounts live (its tables must exist: :meth:`AccessStore.create`).
    name : str
        The site.
    actor : str
        Who creates it, for the audit trail (``system`` by default).
    audit : AuditSink, optional
        Receives the creation.
    clock : Clock, optional
        The current time.

    Returns
    -------
    Site or None
        The new site, or ``None`` when it existed already.

    Raises
    ------
    AccountError
        If the name is invalid.
    """
    _check_site_name(name)
    now = clock()
    try:
        with store.session() as session:
            if session.get(SiteRow, name) is not None:
                return None
            session.add(SiteRow(name=name, created_at=now))
    except SQLIntegrityError:  # created by a concurrent writer since the look-up
        if store.has_site(name):
            return None
        raise
    emit_audit(audit, actor, "site.add", "ok", [f"site:{name}"])
    return Site(name, now)


def _check_target(study_id: str | None, site: str | None) -> None:
    if (study_id is None) == (site is None):
        raise AccountError("give exactly one of a study id and a site")
    if study_id is not None and not _STUDY_ID.fullmatch(study_id):
        raise AccountError("invalid study id")


def _role(role: Role | str) -> Role:
    try:
        return Role(role)
    except ValueError:
        names = ", ".join(r.value for r in Role)
        raise AccountError(f"unknown role {role!r}; choose one of {names}") from None

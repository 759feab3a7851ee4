"""Who is calling: roles, the authenticated principal, and the shared callables.

A :class:`Principal` is what authentication produces and what the policy
judges. It is built only from verified tokens and current account rows, never
from anything a caller merely claims.

The access core reports its decisions through an :class:`AuditSink`, a callable
with the signature of the vault's ``AuditLog.append``, and names text a user
typed that must not be kept (an unknown login name) only through a
:data:`TextDigest`, the vault's keyed ``audit_digest``; it takes a
:data:`Clock` so tests can move time without sleeping.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

__all__ = ["AuditSink", "Clock", "Principal", "Role", "TextDigest", "emit_audit", "utcnow"]

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]
"""A callable returning the current time as an aware UTC datetime."""

TextDigest = Callable[[str], str]
"""A keyed digest of text a user typed, for the audit trail (the vault's ``audit_digest``).

Same text, same digest (repeats correlate); without the vault's secrets no
guess can be tested against it, unlike a plain hash of short text.
"""


def utcnow() -> datetime:
    """Return the current time as an aware UTC datetime (the default :data:`Clock`)."""
    return datetime.now(UTC)


class Role(StrEnum):
    """The five roles of RadVault; a user holds exactly one (separation of duties)."""

    ADMIN = "admin"
    TECHNOLOGIST = "technologist"
    RADIOLOGIST = "radiologist"
    PHYSICIAN = "physician"
    AUDITOR = "auditor"

    @property
    def needs_site(self) -> bool:
        """Whether users of this role must belong to a site (the clinical roles do)."""
        return self in {Role.TECHNOLOGIST, Role.RADIOLOGIST, Role.PHYSICIAN}


@dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    Parameters
    ----------
    username : str
        The account name (local) or the mapped identity (OpenID Connect).
    role : Role or str
        The caller's one role; a string is turned into a :class:`Role`.
    site : str or None
        The caller's home site; ``None`` only for admins and auditors.
    scopes : frozenset of str
        The action names the token allows (a subset of what the role allows).

    Raises
    ------
    ValueError
        If the role is unknown or the username empty.
    """

    username: str
    role: Role
    site: str | None = None
    scopes: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if not self.username:
            raise ValueError("a principal needs a username")
        object.__setattr__(self, "role", Role(self.role))
        object.__setattr__(self, "scopes", frozenset(self.scopes))


class AuditSink(Protocol):
    """Receives one audit event; the vault's ``AuditLog.append`` fits.

    Called positionally as ``audit(actor, action, outcome, object_ids, details)``.
    ``object_ids`` are pseudonymous ids only and ``details`` never holds a
    password, a token or PHI.
    """

    def __call__(
        self,
        actor: str,
        action: str,
        outcome: str,
        object_ids: Sequence[str],
        details: Mapping[str, Any],
    ) -> Any: ...


def emit_audit(
    audit: AuditSink | None,
    actor: str,
    action: str,
    outcome: str,
    object_ids: Sequence[str] = (),
    details: Mapping[str, Any] | None = None,
) -> None:
    """Send one event to ``audit`` (or only to the log when there is no sink).

    Parameters
    ----------
    audit : AuditSink or None
        Where audit events go.
    actor, action, outcome : str
        Who did what, and how it ended (``"ok"`` or ``"refused"``; the vault's
        audit log also knows ``"error"``).
    object_ids : sequence of str
        Pseudonymous ids of the objects concerned.
    details : mapping, optional
        Extra facts; never secrets or PHI.

    Raises
    ------
    Exception
        Whatever the sink raises: an event that cannot be recorded must stop the
        operation rather than pass silently.
    """
    logger.debug("audit %s %s", action, outcome)
    if audit is not None:
        audit(actor, action, outcome, list(object_ids), dict(details or {}))

"""Identity and authorisation: users, passwords, tokens, OIDC, and the one access policy.

No HTTP here: the faces call :class:`TokenService` to authenticate and
:class:`Policy` to authorise, and every refusal is audited.
"""

from radvault.access.oidc import OIDCSettings, OIDCVerifier
from radvault.access.passwords import PasswordPolicy, make_hasher
from radvault.access.policy import ROLE_ACTIONS, Action, Policy, Resource, StudyScope, scopes_for
from radvault.access.principal import AuditSink, Clock, Principal, Role, TextDigest
from radvault.access.store import AccessStore
from radvault.access.tokens import SigningKey, TokenPair, TokenService
from radvault.access.users import DEFAULT_SITE, Accounts, Grant, LockoutPolicy, Site, User

__all__ = [
    "DEFAULT_SITE",
    "ROLE_ACTIONS",
    "AccessStore",
    "Accounts",
    "Action",
    "AuditSink",
    "Clock",
    "Grant",
    "LockoutPolicy",
    "OIDCSettings",
    "OIDCVerifier",
    "PasswordPolicy",
    "Policy",
    "Principal",
    "Resource",
    "Role",
    "SigningKey",
    "Site",
    "StudyScope",
    "TextDigest",
    "TokenPair",
    "TokenService",
    "User",
    "make_hasher",
    "scopes_for",
]

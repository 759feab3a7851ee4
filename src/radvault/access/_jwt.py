"""Checks shared by local and OpenID Connect token verification (private).

PyJWT verifies signatures, issuer and audience; the times are checked here
against the service's own clock (so tests can move time) and every PyJWT
error becomes an :class:`~radvault.errors.AuthenticationFailed` with a short
reason that says what is wrong with the token without echoing any of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, NoReturn

import jwt

from radvault.errors import AuthenticationFailed

__all__ = ["MAX_TOKEN_LENGTH", "check_times", "decode_verified", "refuse", "unverified_parts"]

MAX_TOKEN_LENGTH = 16384

# Time claims are checked by check_times with the injected clock, not by PyJWT.
_NO_TIME_CHECKS = {"verify_exp": False, "verify_nbf": False, "verify_iat": False}


def refuse(reason: str) -> NoReturn:
    """Raise the one authentication error, with a short reason.

    Parameters
    ----------
    reason : str
        What is wrong, without any part of the token.

    Raises
    ------
    AuthenticationFailed
        Always.
    """
    raise AuthenticationFailed(reason)


def unverified_parts(token: object) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a token's header and claims *without* verifying them, for routing only.

    Parameters
    ----------
    token : object
        What the caller presented.

    Returns
    -------
    tuple of (dict, dict)
        The header and the claims.

    Raises
    ------
    AuthenticationFailed
        If the token is missing, not a string, too long, or not a JWS.
    """
    if token is None or token == "":
        refuse("missing token")
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        refuse("malformed token")
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        refuse("malformed token")
    if not isinstance(claims, dict):
        refuse("malformed token")
    return header, claims


def decode_verified(
    token: str,
    key: Any,
    *,
    algorithms: list[str],
    issuer: str,
    audience: str,
    require: list[str],
) -> dict[str, Any]:
    """Verify signature, algorithm, issuer and audience; return the claims.

    Parameters
    ----------
    token : str
        The compact JWS.
    key : Any
        The verification key (a public key object or a ``PyJWK``).
    algorithms : list of str
        The only algorithms accepted; the header's ``alg`` is never trusted.
    issuer, audience : str
        The expected ``iss`` and ``aud``.
    require : list of str
        Claims that must be present.

    Returns
    -------
    dict
        The verified claims (times not yet checked: see :func:`check_times`).

    Raises
    ------
    AuthenticationFailed
        With reason ``algorithm not allowed``, ``bad signature``, ``wrong
        audience``, ``wrong issuer``, ``missing claim`` or ``malformed token``.
    """
    try:
        return jwt.decode(
            token,
            key,
            algorithms=algorithms,
            issuer=issuer,
            audience=audience,
            options={"require": require, **_NO_TIME_CHECKS},  # type: ignore[typeddict-item]
        )
    except jwt.InvalidAlgorithmError:
        refuse("algorithm not allowed")
    except jwt.InvalidSignatureError:
        refuse("bad signature")
    except jwt.InvalidAudienceError:
        refuse("wrong audience")
    except jwt.InvalidIssuerError:
        refuse("wrong issuer")
    except jwt.MissingRequiredClaimError:
        refuse("missing claim")
    except (jwt.PyJWTError, ValueError, TypeError):
        refuse("malformed token")


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        refuse("malformed token")
    return float(value)


def check_times(claims: Mapping[str, Any], now: datetime, leeway: timedelta) -> None:
    """Check ``exp``, ``nbf`` and ``iat`` against ``now``, allowing ``leeway`` of skew.

    Parameters
    ----------
    claims : mapping
        Verified claims.
    now : datetime.datetime
        The current time (aware UTC).
    leeway : datetime.timedelta
        Allowed clock skew.

    Raises
    ------
    AuthenticationFailed
        With reason ``token expired`` or ``token not yet valid`` (or
        ``malformed token`` for non-numeric times).
    """
    t = now.timestamp()
    slack = leeway.total_seconds()
    exp, nbf, iat = (_number(claims, n) for n in ("exp", "nbf", "iat"))
    if exp is not None and t >= exp + slack:
        refuse("token expired")
    if (nbf is not None and t + slack < nbf) or (iat is not None and t + slack < iat):
        refuse("token not yet valid")


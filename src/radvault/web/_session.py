"""Server-side sessions and CSRF tokens of the web pages (private).

The browser holds one opaque, random session id in an ``HttpOnly``,
``SameSite=Strict`` cookie (``Secure`` and ``__Host-`` prefixed over TLS);
the access and refresh tokens the clinical service issued at login stay in
this process's memory, keyed by the id's SHA-256. Keeping them server-side
means a page, its image and its heatmap, loaded in parallel, never race to
rotate the same refresh token (the service would take the second use for a
stolen token and end the session), and no token ever reaches JavaScript.

CSRF: every session has a synchronizer token that every POST form carries
(compared in constant time). The login form, before any session exists, is
protected by a signed double submit: a random nonce in a short-lived cookie
and its HMAC (under a per-process key) in the form.

Sessions end on logout, after ``idle_timeout`` without a request, when the
service refuses to refresh them (the refresh token's own 8-hour and 24-hour
bounds, an admin lock or removal), and when the process restarts.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from radvault.access.tokens import TokenPair
from radvault.errors import AccessDenied, ConfigurationError

__all__ = ["LoginGuard", "SessionStore", "WebSession", "WebSettings", "check_csrf"]


@dataclass(frozen=True)
class WebSettings:
    """How the web pages keep sessions and lists.

    Parameters
    ----------
    idle_timeout : datetime.timedelta
        A session unused this long ends (the user signs in again).
    refresh_margin : datetime.timedelta
        The access token is renewed when it has less than this left.
    max_sessions : int
        Most sessions kept in memory; the least recently used goes first.
    worklist_size : int
        Most studies a worklist shows (1..500).

    Raises
    ------
    ConfigurationError
        If a value is out of range.
    """

    idle_timeout: timedelta = timedelta(minutes=30)
    refresh_margin: timedelta = timedelta(seconds=30)
    max_sessions: int = 10_000
    worklist_size: int = 100

    def __post_init__(self) -> None:
        if self.idle_timeout <= timedelta(0) or self.refresh_margin < timedelta(0):
            raise ConfigurationError("web session timeouts must be positive")
        if self.max_sessions < 1:
            raise ConfigurationError("max_sessions must be at least 1")
        if not 1 <= self.worklist_size <= 500:
            raise ConfigurationError("worklist_size must be within 1..500")


@dataclass
class WebSession:
    """One signed-in browser: the service's tokens and the CSRF token (all secret)."""

    username: str
    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    access_expires: float
    csrf_token: str = field(repr=False)
    last_seen: float
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def renew(self, pair: TokenPair, now: float) -> None:
        """Take a freshly rotated token pair."""
        self.access_token = pair.access_token
        self.refresh_token = pair.refresh_token
        self.access_expires = now + pair.expires_in


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "replace")).hexdigest()


class SessionStore:
    """Sessions of this process, by the SHA-256 of their cookie value; thread-safe.

    Parameters
    ----------
    settings : WebSettings
        Timeouts and the size bound.
    clock : callable, optional
        Seconds since the epoch (tests move it).
    """

    def __init__(self, settings: WebSettings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self._sessions: OrderedDict[str, WebSession] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def create(self, username: str, pair: TokenPair) -> tuple[str, WebSession]:
        """Start a session for a fresh login; a new id every time (no fixation).

        Parameters
        ----------
        username : str
            Who signed in.
        pair : TokenPair
            The tokens the service issued.

        Returns
        -------
        tuple of (str, WebSession)
            The cookie value (256 random bits) and the session.
        """
        now = self.clock()
        session_id = secrets.token_urlsafe(32)
        session = WebSession(username, pair.access_token, pair.refresh_token,
                             now + pair.expires_in, secrets.token_urlsafe(32), now)
        with self._lock:
            self._sessions[_key(session_id)] = session
            while len(self._sessions) > self.settings.max_sessions:
                self._sessions.popitem(last=False)
        return session_id, session

    def get(self, session_id: str | None) -> WebSession | None:
        """The live session of a cookie value, or ``None`` (unknown, or idle too long).

        Parameters
        ----------
        session_id : str or None
            The cookie's value.

        Returns
        -------
        WebSession or None
            The session, its idle clock restarted.
        """
        if not session_id or len(session_id) > 128:
            return None
        key = _key(session_id)
        now = self.clock()
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                return None
            if now - session.last_seen > self.settings.idle_timeout.total_seconds():
                del self._sessions[key]
                return None
            session.last_seen = now
            self._sessions.move_to_end(key)
            return session

    def drop(self, session_id: str | None) -> WebSession | None:
        """End a session; returns it (to revoke its tokens) or ``None`` if unknown."""
        if not session_id:
            return None
        with self._lock:
            return self._sessions.pop(_key(session_id), None)

    def needs_refresh(self, session: WebSession) -> bool:
        """Whether the session's access token is expired or about to be."""
        margin = self.settings.refresh_margin.total_seconds()
        return self.clock() >= session.access_expires - margin


def check_csrf(expected: str, given: str | None) -> None:
    """Compare a form's CSRF token with the session's, in constant time.

    Parameters
    ----------
    expected : str
        The session's token.
    given : str or None
        What the form carried.

    Raises
    ------
    AccessDenied
        If the token is missing or wrong.
    """
    if not given or not hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace")):
        raise AccessDenied("the form's CSRF token is missing or wrong; reload the page")


class LoginGuard:
    """Signed double-submit CSRF tokens for the login form (no session exists yet).

    The nonce travels in a cookie, ``HMAC-SHA256(key, nonce)`` in the form; an
    attacker's page can neither read the form nor set the cookie.

    Parameters
    ----------
    key : bytes, optional
        The HMAC key (default: 32 random bytes for this process).
    """

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def issue(self) -> tuple[str, str]:
        """A fresh ``(cookie nonce, form token)`` pair."""
        nonce = secrets.token_urlsafe(24)
        return nonce, self._sign(nonce)

    def verify(self, nonce: str | None, token: str | None) -> None:
        """Check that the form token signs the cookie's nonce.

        Raises
        ------
        AccessDenied
            If either is missing or they do not match.
        """
        if not nonce or not token or len(nonce) > 128:
            raise AccessDenied("the sign-in form expired; reload the page and try again")
        if not hmac.compare_digest(self._sign(nonce).encode(), token.encode("utf-8", "replace")):
            raise AccessDenied("the sign-in form expired; reload the page and try again")

    def _sign(self, nonce: str) -> str:
        return hmac.new(self._key, nonce.encode("utf-8", "replace"), hashlib.sha256).hexdigest()

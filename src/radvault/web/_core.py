"""What every web page shares (private): state, the signed-in user, CSRF, rendering, errors.

* :class:`WebRoute` turns RadVault errors into HTML pages (the API's handlers
  answer problem JSON): a refused or missing session redirects to the sign-in
  page, anything else renders ``error.html`` with the API's status for it.
* :func:`current_user` reads the session cookie, renews the access token when
  it is about to expire, and authenticates it through the clinical service on
  every request (so a lock, removal or role change takes effect at once, and
  refusals are audited as for the API).
* :func:`form_user` adds the CSRF check every POST needs.
* :func:`render` sends a template with the pages' Content-Security-Policy:
  scripts, styles and images from this origin only; no inline script or style.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

import jinja2
from fastapi import Depends, Form, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute

from radvault.access.policy import ROLE_ACTIONS
from radvault.access.principal import Principal, Role
from radvault.api.shared import get_service, status_of
from radvault.errors import AccessDenied, AuthenticationFailed, RadVaultError
from radvault.pipeline.clinical import ClinicalService
from radvault.reports import percent
from radvault.web._session import LoginGuard, SessionStore, WebSettings, check_csrf

__all__ = [
    "LOGIN_PATH",
    "PAGE_CSP",
    "STATIC_PATH",
    "WEB_PREFIX",
    "CurrentUser",
    "FormUser",
    "WebRoute",
    "WebState",
    "WebUser",
    "audit_forgery",
    "check_same_origin",
    "current_user",
    "error_page",
    "form_user",
    "home_of",
    "render",
    "safe_next",
    "see_other",
    "session_cookie",
    "verify_post",
    "web_state",
]

logger = logging.getLogger(__name__)

WEB_PREFIX = "/web"
STATIC_PATH = WEB_PREFIX + "/static"
LOGIN_PATH = WEB_PREFIX + "/login"
TEMPLATES = Path(__file__).resolve().parent / "templates"

PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
            "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
"""Pages load scripts, styles and images from this origin only (no CDN, nothing inline)."""

_HOMES = {
    Role.RADIOLOGIST: WEB_PREFIX + "/",
    Role.PHYSICIAN: WEB_PREFIX + "/",
    Role.TECHNOLOGIST: WEB_PREFIX + "/upload",
    Role.AUDITOR: WEB_PREFIX + "/audit",
    Role.ADMIN: WEB_PREFIX + "/admin/users",
}

#: (label, path, the action that makes the link worth showing). Showing is
#: cosmetic: every page asks the clinical service, which decides.
_NAV = (
    ("Worklist", WEB_PREFIX + "/", "view_study"),
    ("Upload", WEB_PREFIX + "/upload", "upload"),
    ("Audit", WEB_PREFIX + "/audit", "read_audit"),
    ("Users and grants", WEB_PREFIX + "/admin/users", "manage_users"),
)


@dataclass
class WebState:
    """The web pages' state, kept on ``app.state.web``."""

    settings: WebSettings
    sessions: SessionStore
    login_guard: LoginGuard
    templates: jinja2.Environment

    @classmethod
    def build(cls, settings: WebSettings) -> WebState:
        """Fresh state: no sessions, a new login key, the packaged templates."""
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=jinja2.select_autoescape(["html"]),
            undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        env.globals["static"] = lambda name: f"{STATIC_PATH}/{name}"
        env.filters["when"] = lambda value: value.strftime("%Y-%m-%d %H:%M UTC") if value else ""
        # Estimates never read as certain ("> 99.9 %"), as in the reports; a set value
        # such as the referral threshold is shown as it is.
        env.filters["percent"] = lambda value: percent(float(value))
        env.filters["percent_setting"] = lambda value: percent(float(value), estimate=False)
        return cls(settings, SessionStore(settings), LoginGuard(), env)


@dataclass(frozen=True)
class WebUser:
    """The signed-in user of a request."""

    principal: Principal
    csrf_token: str
    session_id: str

    def may(self, action: str) -> bool:
        """Whether the role and token allow ``action`` at all (for showing controls only)."""
        allowed = {a.value for a in ROLE_ACTIONS.get(self.principal.role, frozenset())}
        return action in allowed and action in self.principal.scopes


def web_state(request: Request) -> WebState:
    """The web pages' state of the app serving ``request``."""
    state: WebState = request.app.state.web
    return state


def session_cookie(request: Request) -> str:
    """The session cookie's name: ``__Host-`` prefixed (hence Secure-only) over TLS."""
    return "__Host-rv_session" if request.url.scheme == "https" else "rv_session"


def current_user(request: Request,
                 service: Annotated[ClinicalService, Depends(get_service)]) -> WebUser:
    """The signed-in user: the session's access token, renewed if due, authenticated.

    Parameters
    ----------
    request : Request
        The request (its session cookie).
    service : ClinicalService
        The service that issued the tokens.

    Returns
    -------
    WebUser
        The user (also kept on ``request.state.web_user`` for error pages).

    Raises
    ------
    AuthenticationFailed
        If there is no live session, or the service refuses its tokens (the
        session is then ended; the page redirects to the sign-in form).
    """
    state = web_state(request)
    session_id = request.cookies.get(session_cookie(request))
    session = state.sessions.get(session_id)
    if session is None or session_id is None:
        if session_id:  # a cookie naming no live session: forged, replayed or expired
            service.vault.audit.append("anonymous", "token_refused", "refused",
                                       details={"reason": "unknown web session"})
        raise AuthenticationFailed("sign in to continue")
    with session.lock:  # parallel requests of one page renew the token once
        if state.sessions.needs_refresh(session):
            try:
                pair = service.refresh(session.refresh_token)
            except AuthenticationFailed:
                state.sessions.drop(session_id)
                raise
            session.renew(pair, state.sessions.clock())
        token = session.access_token
    try:
        principal = service.authenticate(token)
    except AuthenticationFailed:
        state.sessions.drop(session_id)
        raise
    user = WebUser(principal, session.csrf_token, session_id)
    request.state.web_user = user
    return user


CurrentUser = Annotated[WebUser, Depends(current_user)]


def form_user(request: Request, user: CurrentUser,
              service: Annotated[ClinicalService, Depends(get_service)],
              csrf_token: Annotated[str | None, Form(max_length=128)] = None) -> WebUser:
    """The signed-in user of a POST whose form carries the session's CSRF token.

    A cross-site ``Origin`` or ``Sec-Fetch-Site`` is refused too (the
    ``SameSite=Strict`` cookie is a third line).

    Raises
    ------
    AccessDenied
        If the token is missing or wrong or the request is cross-site (audited
        as ``request_refused``).
    AuthenticationFailed
        If there is no live session.
    """
    verify_post(request, service, user, csrf_token)
    return user


FormUser = Annotated[WebUser, Depends(form_user)]


def verify_post(request: Request, service: ClinicalService, user: WebUser,
                csrf_token: str | None) -> None:
    """Check a POST's CSRF token and origin; audit and refuse a forgery.

    Parameters
    ----------
    request : Request
        The POST.
    service : ClinicalService
        Where the refusal is audited (``request_refused``, reason ``csrf``).
    user : WebUser
        The session's user (its token is the expected one).
    csrf_token : str or None
        What the form carried.

    Raises
    ------
    AccessDenied
        If the token is missing or wrong, or the request is cross-site.
    """
    try:
        check_same_origin(request)
        check_csrf(user.csrf_token, csrf_token)
    except AccessDenied:
        audit_forgery(service, user, request.method)
        raise


def audit_forgery(service: ClinicalService, user: WebUser, method: str) -> None:
    """Record a refused forged or token-less POST (``request_refused``, reason ``csrf``)."""
    service.vault.audit.append(user.principal.username, "request_refused", "refused",
                               details={"reason": "csrf", "method": method[:10]})


def check_same_origin(request: Request) -> None:
    """Refuse a POST whose ``Sec-Fetch-Site`` or ``Origin`` says it came from another site.

    ``Sec-Fetch-Site`` decides when the browser sent it; otherwise an
    ``Origin`` other than this server's (or ``null``) is refused.

    Raises
    ------
    AccessDenied
        If it did.
    """
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:  # browsers set it and scripts cannot: the clearest signal
        if fetch_site != "same-origin":
            raise AccessDenied("cross-site form posts are refused")
        return
    # Under "Referrer-Policy: no-referrer" a browser's own form post says "Origin: null".
    origin = request.headers.get("origin")
    if origin not in (None, "null"):
        expected = f"{request.url.scheme}://{request.headers.get('host', '')}"
        if origin != expected:
            raise AccessDenied("cross-site form posts are refused")


def home_of(principal: Principal) -> str:
    """The page a role lands on after signing in."""
    return _HOMES.get(principal.role, LOGIN_PATH)


def safe_next(target: str | None) -> str | None:
    """``target`` if it is a local page of the web face (no open redirect), else ``None``."""
    if not target or len(target) > 512:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith(WEB_PREFIX + "/"):
        return None
    if "\\" in target or "//" in parts.path or any(ord(c) < 32 for c in target):
        return None
    return target


def see_other(url: str) -> RedirectResponse:
    """A 303 redirect (after a POST, the browser follows with a GET)."""
    return RedirectResponse(url, status_code=303)


def render(request: Request, template: str, context: Mapping[str, Any] | None = None, *,
           status: int = 200, user: WebUser | None = None,
           headers: Mapping[str, str] | None = None) -> HTMLResponse:
    """Render a page with the pages' CSP (the middleware adds ``no-store`` and the rest).

    Parameters
    ----------
    request : Request
        The request.
    template : str
        The template's name under ``templates/``.
    context : mapping, optional
        The template's variables.
    status : int
        The HTTP status.
    user : WebUser, optional
        The signed-in user (navigation, CSRF token); default the request's.
    headers : mapping, optional
        Extra headers.

    Returns
    -------
    HTMLResponse
        The page.
    """
    user = user or getattr(request.state, "web_user", None)
    path = request.url.path
    nav = [] if user is None else [
        {"label": label, "href": href, "current": path == href,
         "within": href != WEB_PREFIX + "/" and path.startswith(href + "/")}
        for label, href, action in _NAV if user.may(action)]
    values = {"user": user, "nav": nav, "csrf_token": user.csrf_token if user else "",
              "path": request.url.path, **(context or {})}
    html = web_state(request).templates.get_template(template).render(values)
    out = {"Content-Security-Policy": PAGE_CSP, **(headers or {})}
    return HTMLResponse(html, status_code=status, headers=out)


def error_page(request: Request, exc: BaseException) -> Response:
    """The HTML answer to a RadVault error, with the status the API gives it.

    Parameters
    ----------
    request : Request
        The request.
    exc : BaseException
        The error.

    Returns
    -------
    Response
        A redirect to sign in (authentication), else an error page.
    """
    if isinstance(exc, AuthenticationFailed):
        return _to_sign_in(request)
    if isinstance(exc, RequestValidationError):
        status, message = 400, "the request's parameters are not valid"
    else:
        status, _code = status_of(exc)
        if status >= 500:
            logger.error("web page failed: %s", type(exc).__name__)
            message = "something went wrong on the server; the event is logged"
        else:
            message = str(exc)[:300] or HTTPStatus(status).phrase
    title = {403: "Not allowed", 404: "Not found", 410: "Gone"}.get(
        status, HTTPStatus(status).phrase)
    return render(request, "error.html", {"title": title, "status": status, "message": message},
                  status=status)


def _to_sign_in(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    url = LOGIN_PATH
    if request.method == "GET" and safe_next(target) and request.url.path != LOGIN_PATH:
        url += "?next=" + quote(target, safe="")
    response = see_other(url)
    response.delete_cookie(session_cookie(request), path="/",
                           secure=request.url.scheme == "https", httponly=True,
                           samesite="strict")
    return response


class WebRoute(APIRoute):
    """A route whose errors are answered as HTML pages (or a redirect to sign in)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except (RadVaultError, RequestValidationError) as exc:
                return error_page(request, exc)

        return guarded

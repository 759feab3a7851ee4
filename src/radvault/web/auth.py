"""Sign-in and sign-out pages.

``GET /web/login`` shows the form (with a signed double-submit CSRF token);
``POST /web/login`` checks the password through the clinical service (the
same lock-out and audit as the API's token endpoint), starts a server-side
session and sends the user to their role's page; ``POST /web/logout`` revokes
the session's tokens. ``GET /`` sends a visitor to their page or to sign in.
"""

from __future__ import annotations

import contextlib
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from radvault.api.shared import get_service
from radvault.errors import AccessDenied, AuthenticationFailed
from radvault.pipeline.clinical import ClinicalService
from radvault.web._core import (
    LOGIN_PATH,
    WEB_PREFIX,
    FormUser,
    WebRoute,
    current_user,
    home_of,
    render,
    safe_next,
    see_other,
    session_cookie,
    web_state,
)

__all__ = ["root_router", "router"]

router = APIRouter(prefix=WEB_PREFIX, route_class=WebRoute, include_in_schema=False)
root_router = APIRouter(route_class=WebRoute, include_in_schema=False)

LOGIN_COOKIE = "rv_login"
_LOGIN_COOKIE_AGE = 3600


Service = Annotated[ClinicalService, Depends(get_service)]


@root_router.get("/")
def root(request: Request, service: Service) -> Response:
    """The signed-in user's page, or the sign-in form."""
    try:
        user = current_user(request, service)
    except AuthenticationFailed:
        return see_other(LOGIN_PATH)
    return see_other(home_of(user.principal))


def _login_page(request: Request, *, status: int = 200, error: str | None = None,
                username: str = "", next_url: str | None = None,
                notice: str | None = None) -> Response:
    nonce, token = web_state(request).login_guard.issue()
    response = render(request, "login.html",
                      {"title": "Sign in", "login_token": token, "error": error,
                       "notice": notice, "username": username,
                       "next_url": safe_next(next_url) or ""},
                      status=status, user=None)
    response.set_cookie(LOGIN_COOKIE, nonce, max_age=_LOGIN_COOKIE_AGE, path=LOGIN_PATH,
                        secure=request.url.scheme == "https", httponly=True, samesite="strict")
    return response


@router.get("/login")
def login_form(request: Request,
               next: Annotated[str | None, Query(max_length=512)] = None,
               signed_out: Annotated[bool, Query()] = False) -> Response:
    """The sign-in form."""
    return _login_page(request, next_url=next,
                       notice="You have signed out." if signed_out else None)


@router.post("/login")
async def login(request: Request, service: Service,
                username: Annotated[str, Form(max_length=256)] = "",
                password: Annotated[str, Form(max_length=1024)] = "",
                login_token: Annotated[str, Form(max_length=128)] = "",
                next: Annotated[str, Form(max_length=512)] = "") -> Response:
    """Check the password (audited, lock-out applies) and start a session."""
    state = web_state(request)
    try:
        state.login_guard.verify(request.cookies.get(LOGIN_COOKIE), login_token)
    except AccessDenied as exc:
        await run_in_threadpool(service.vault.audit.append, "anonymous", "request_refused",
                                "refused", details={"reason": "csrf", "method": "POST"})
        return _login_page(request, status=403, error=str(exc), username=username,
                           next_url=next)
    if not username or not password:
        return _login_page(request, status=400, error="Enter your user name and password.",
                           username=username, next_url=next)
    try:
        pair = await run_in_threadpool(service.login, username, password)
    except AuthenticationFailed:
        return _login_page(request, status=401, username=username, next_url=next,
                           error="Sign-in failed: wrong user name or password, or the "
                                 "account is locked.")
    old = state.sessions.drop(request.cookies.get(session_cookie(request)))
    if old is not None:
        await run_in_threadpool(_revoke, service, old.access_token, old.refresh_token)
    session_id, session = state.sessions.create(username, pair)
    principal = await run_in_threadpool(service.authenticate, session.access_token)
    response = see_other(safe_next(next) or home_of(principal))
    response.set_cookie(session_cookie(request), session_id, path="/", httponly=True,
                        secure=request.url.scheme == "https", samesite="strict")
    response.delete_cookie(LOGIN_COOKIE, path=LOGIN_PATH)
    return response


@router.post("/logout")
def logout(request: Request, service: Service, user: FormUser) -> Response:
    """End the session: the tokens are revoked and the cookie cleared."""
    session = web_state(request).sessions.drop(user.session_id)
    if session is not None:
        _revoke(service, session.access_token, session.refresh_token)
    response = see_other(LOGIN_PATH + "?signed_out=1")
    response.delete_cookie(session_cookie(request), path="/", httponly=True,
                           secure=request.url.scheme == "https", samesite="strict")
    return response


def _revoke(service: ClinicalService, access: str, refresh: str) -> None:
    with contextlib.suppress(AuthenticationFailed):  # already expired or revoked
        service.logout(access, refresh)

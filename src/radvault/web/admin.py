"""The admin's pages: accounts, sites and grants (never images or results).

* ``GET /web/admin/users`` accounts and sites, with forms to add either;
* ``GET /web/admin/users/{name}`` one account: its grants (add, withdraw) and
  lock or unlock;
* the POSTs change through the clinical service (audited as ``user.*``,
  ``site.add``, ``grant``, ``revoke``) and come back with 303, or show the
  page again with the reason when the change is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Query, Request, Response

from radvault.access.principal import Role
from radvault.api.shared import UserName, get_service, status_of
from radvault.errors import (
    AccountError,
    InvalidRequest,
    ObjectNotFound,
    PasswordPolicyError,
    RadVaultError,
)
from radvault.pipeline.clinical import ClinicalService
from radvault.web._core import (
    WEB_PREFIX,
    CurrentUser,
    FormUser,
    WebRoute,
    WebUser,
    render,
    see_other,
)

__all__ = ["router"]

router = APIRouter(prefix=WEB_PREFIX + "/admin", route_class=WebRoute, include_in_schema=False)

Service = Annotated[ClinicalService, Depends(get_service)]

_DONE = {"added": "Account created.", "site": "Site added.", "granted": "Grant added.",
         "revoked": "Grant withdrawn.", "locked": "Account locked; its sessions ended.",
         "unlocked": "Account unlocked."}
_REFUSALS = (AccountError, InvalidRequest, ObjectNotFound)


def _user_url(username: str, done: str | None = None) -> str:
    return (f"{WEB_PREFIX}/admin/users/{quote(username, safe='')}"
            + (f"?done={done}" if done else ""))


def _problems(exc: RadVaultError) -> tuple[str, list[str]]:
    problems = list(exc.problems) if isinstance(exc, PasswordPolicyError) else []
    return str(exc)[:300], problems


def _users_page(request: Request, service: ClinicalService, user: WebUser, *,
                removed: bool = False, status: int = 200, error: RadVaultError | None = None,
                done: str | None = None) -> Response:
    now = datetime.now(UTC)
    accounts = service.users(user.principal, include_deleted=removed)
    message, problems = _problems(error) if error else (None, [])
    return render(request, "admin_users.html", {
        "title": "Users and grants",
        "accounts": [{"user": a, "url": _user_url(a.username),
                      "state": "removed" if a.deleted else
                      "locked" if a.is_locked(now) else "active"} for a in accounts],
        "sites": service.sites(user.principal), "roles": [r.value for r in Role],
        "removed": removed, "error": message, "problems": problems,
        "done": _DONE.get(done or "")}, status=status, user=user)


def _user_page(request: Request, service: ClinicalService, user: WebUser, username: str, *,
               status: int = 200, error: RadVaultError | None = None,
               done: str | None = None) -> Response:
    account = service.user(user.principal, username)
    message, problems = _problems(error) if error else (None, [])
    return render(request, "admin_user.html", {
        "title": f"User {account.username}", "account": account,
        "locked": account.is_locked(datetime.now(UTC)),
        "grants": service.grants(user.principal, username),
        "sites": service.sites(user.principal), "url": _user_url(account.username),
        "error": message, "problems": problems, "done": _DONE.get(done or "")},
        status=status, user=user)


@router.get("/users")
def users_page(request: Request, service: Service, user: CurrentUser,
               removed: Annotated[bool, Query()] = False,
               done: Annotated[str | None, Query(max_length=16)] = None) -> Response:
    """Every account and site."""
    return _users_page(request, service, user, removed=removed, done=done)


@router.post("/users")
def add_user(request: Request, service: Service, user: FormUser,
             username: Annotated[str, Form(max_length=64)],
             role: Annotated[Literal["admin", "technologist", "radiologist", "physician",
                                     "auditor"], Form()],
             site: Annotated[str, Form(max_length=64)] = "",
             password: Annotated[str, Form(max_length=1024)] = "") -> Response:
    """Create an account (a clinical role needs a site; grants are added on its page)."""
    try:
        service.add_user(user.principal, username.strip(), role, site=site or None,
                         password=password or None)
    except _REFUSALS as exc:
        return _users_page(request, service, user, status=status_of(exc)[0], error=exc)
    return see_other(_user_url(username.strip(), "added"))


@router.post("/sites")
def add_site(request: Request, service: Service, user: FormUser,
             name: Annotated[str, Form(max_length=64)]) -> Response:
    """Create a site."""
    try:
        service.add_site(user.principal, name.strip())
    except _REFUSALS as exc:
        return _users_page(request, service, user, status=status_of(exc)[0], error=exc)
    return see_other(f"{WEB_PREFIX}/admin/users?done=site")


@router.get("/users/{username}")
def user_page(request: Request, service: Service, user: CurrentUser, username: UserName,
              done: Annotated[str | None, Query(max_length=16)] = None) -> Response:
    """One account, its grants and its lock."""
    return _user_page(request, service, user, username, done=done)


def _change(request: Request, service: ClinicalService, user: WebUser, username: str,
            change: Callable[[], object], done: str) -> Response:
    try:
        change()
    except _REFUSALS as exc:
        return _user_page(request, service, user, username, status=status_of(exc)[0],
                          error=exc)
    return see_other(_user_url(username, done))


@router.post("/users/{username}/grants")
def add_grant(request: Request, service: Service, user: FormUser, username: UserName,
              site: Annotated[str, Form(max_length=64)] = "",
              study_id: Annotated[str, Form(max_length=128)] = "") -> Response:
    """Grant one site or one study (exactly one)."""
    def change() -> object:
        if bool(site) == bool(study_id.strip()):
            raise InvalidRequest("choose a site or type a study id, not both")
        return service.grant(user.principal, username, site=site or None,
                             study_id=study_id.strip() or None)
    return _change(request, service, user, username, change, "granted")


@router.post("/users/{username}/grants/revoke")
def revoke_grant(request: Request, service: Service, user: FormUser, username: UserName,
                 site: Annotated[str, Form(max_length=64)] = "",
                 study_id: Annotated[str, Form(max_length=128)] = "") -> Response:
    """Withdraw a grant (effective at once)."""
    return _change(request, service, user, username,
                   lambda: service.revoke_grant(user.principal, username, site=site or None,
                                                study_id=study_id or None), "revoked")


@router.post("/users/{username}/lock")
def lock_user(request: Request, service: Service, user: FormUser,
              username: UserName) -> Response:
    """Lock an account until unlocked; its sessions end."""
    return _change(request, service, user, username,
                   lambda: service.lock_user(user.principal, username), "locked")


@router.post("/users/{username}/unlock")
def unlock_user(request: Request, service: Service, user: FormUser,
                username: UserName) -> Response:
    """Lift a lock or a lock-out."""
    return _change(request, service, user, username,
                   lambda: service.unlock_user(user.principal, username), "unlocked")

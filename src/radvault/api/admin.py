"""Administration routes (admins): sites, users and grants. Every change is audited."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from radvault.api._deps import API_PREFIX, CurrentPrincipal, Service, UserName
from radvault.api._schemas import (
    ID_PATTERN,
    SITE_PATTERN,
    GrantIn,
    GrantOut,
    PasswordIn,
    SiteIn,
    SiteOut,
    UserIn,
    UserOut,
)

__all__ = ["router"]

router = APIRouter(prefix=f"{API_PREFIX}/admin", tags=["admin"])


@router.get("/sites", response_model=list[SiteOut])
def sites(service: Service, principal: CurrentPrincipal) -> list[SiteOut]:
    """Every site."""
    return [SiteOut.of(s) for s in service.sites(principal)]


@router.post("/sites", status_code=201, response_model=SiteOut)
def add_site(service: Service, principal: CurrentPrincipal, body: SiteIn) -> SiteOut:
    """Create a site."""
    return SiteOut.of(service.add_site(principal, body.name))


@router.get("/users", response_model=list[UserOut])
def users(service: Service, principal: CurrentPrincipal,
          include_deleted: bool = False) -> list[UserOut]:
    """Every account (removed ones too on request)."""
    return [UserOut.of(u) for u in service.users(principal, include_deleted=include_deleted)]


@router.post("/users", status_code=201, response_model=UserOut)
def add_user(service: Service, principal: CurrentPrincipal, body: UserIn) -> UserOut:
    """Create an account; clinical roles need a site."""
    return UserOut.of(service.add_user(principal, body.username, body.role, site=body.site,
                                       password=body.password))


@router.get("/users/{username}", response_model=UserOut)
def user(service: Service, principal: CurrentPrincipal, username: UserName) -> UserOut:
    """One account."""
    return UserOut.of(service.user(principal, username))


@router.delete("/users/{username}", status_code=204, response_class=Response)
def remove_user(service: Service, principal: CurrentPrincipal, username: UserName) -> Response:
    """Remove an account: its grants and sessions go; the name is never reused."""
    service.remove_user(principal, username)
    return Response(status_code=204)


@router.post("/users/{username}/lock", status_code=204, response_class=Response)
def lock_user(service: Service, principal: CurrentPrincipal, username: UserName) -> Response:
    """Lock an account until unlocked; its sessions end."""
    service.lock_user(principal, username)
    return Response(status_code=204)


@router.post("/users/{username}/unlock", status_code=204, response_class=Response)
def unlock_user(service: Service, principal: CurrentPrincipal, username: UserName) -> Response:
    """Lift a lock or a lock-out."""
    service.unlock_user(principal, username)
    return Response(status_code=204)


@router.put("/users/{username}/password", status_code=204, response_class=Response)
def set_password(service: Service, principal: CurrentPrincipal, username: UserName,
                 body: PasswordIn) -> Response:
    """Replace an account's password; its sessions end."""
    service.set_password(principal, username, body.password)
    return Response(status_code=204)


@router.get("/users/{username}/grants", response_model=list[GrantOut])
def grants(service: Service, principal: CurrentPrincipal, username: UserName) -> list[GrantOut]:
    """An account's grants."""
    return [GrantOut.of(g) for g in service.grants(principal, username)]


@router.post("/users/{username}/grants", status_code=201, response_model=GrantOut)
def add_grant(service: Service, principal: CurrentPrincipal, username: UserName,
              body: GrantIn) -> GrantOut:
    """Grant one study or one site."""
    return GrantOut.of(service.grant(principal, username, study_id=body.study_id,
                                     site=body.site))


@router.delete("/users/{username}/grants", status_code=204, response_class=Response)
def remove_grant(
    service: Service, principal: CurrentPrincipal, username: UserName,
    study_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    site: Annotated[str | None, Query(pattern=SITE_PATTERN)] = None,
) -> Response:
    """Withdraw a grant (effective at once)."""
    service.revoke_grant(principal, username, study_id=study_id, site=site)
    return Response(status_code=204)

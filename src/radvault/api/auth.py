"""Authentication routes: the OAuth2 token endpoint, logout, who-am-I and the key set."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Form, Response
from fastapi.concurrency import run_in_threadpool

from radvault.access.tokens import TokenPair
from radvault.api._deps import API_PREFIX, CurrentPrincipal, Service, bearer_token
from radvault.api._schemas import LogoutIn, PrincipalOut, TokenOut
from radvault.pipeline.clinical import InvalidRequest

__all__ = ["router"]

router = APIRouter(prefix=f"{API_PREFIX}/auth", tags=["auth"])


def _token_out(pair: TokenPair) -> TokenOut:
    return TokenOut(access_token=pair.access_token, token_type="bearer",  # noqa: S106
                    expires_in=pair.expires_in, refresh_token=pair.refresh_token,
                    refresh_expires_in=pair.refresh_expires_in)


@router.post("/token", response_model=TokenOut,
             responses={401: {"description": "Credentials or refresh token refused"}})
async def token(
    service: Service,
    grant_type: Annotated[Literal["password", "refresh_token"], Form()],
    username: Annotated[str | None, Form(max_length=256)] = None,
    password: Annotated[str | None, Form(max_length=1024)] = None,
    refresh_token: Annotated[str | None, Form(max_length=256)] = None,
    scope: Annotated[str, Form(max_length=1024)] = "",
) -> TokenOut:
    """OAuth2 token endpoint: the password grant, or a refresh-token rotation.

    Every refusal has the same message (no account enumeration) and is audited.
    """
    if grant_type == "password":
        if username is None or password is None:
            raise InvalidRequest("the password grant needs username and password")
        pair = await run_in_threadpool(service.login, username, password)
    else:
        if refresh_token is None:
            raise InvalidRequest("the refresh_token grant needs refresh_token")
        pair = await run_in_threadpool(service.refresh, refresh_token)
    return _token_out(pair)


@router.post("/logout", status_code=204, response_class=Response)
def logout(service: Service, token: Annotated[str | None, Depends(bearer_token)],
           body: LogoutIn | None = None) -> Response:
    """End the session: the bearer token is denied and the refresh tokens revoked."""
    service.logout(token, body.refresh_token if body is not None else None)
    return Response(status_code=204)


@router.get("/me", response_model=PrincipalOut)
def me(principal: CurrentPrincipal) -> PrincipalOut:
    """Who the bearer token stands for: name, role, site and scopes."""
    return PrincipalOut(username=principal.username, role=principal.role.value,
                        site=principal.site, scopes=sorted(principal.scopes))


@router.get("/jwks.json")
def jwks(service: Service) -> dict[str, list[dict[str, object]]]:
    """The public keys that verify RadVault's access tokens (JWK set)."""
    return service.jwks()

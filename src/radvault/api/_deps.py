"""Dependencies shared by the routers (private): the service and the caller.

Every protected route depends on :func:`current_principal`, which verifies the
bearer token through the clinical service (so a refused token is audited). The
routers never decide what a caller may do: the use cases do.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import OAuth2PasswordBearer

from radvault.access.principal import Principal
from radvault.pipeline.clinical import ClinicalService

__all__ = ["API_PREFIX", "CurrentPrincipal", "InstanceId", "JobId", "Service", "StudyId",
           "UserName", "bearer_token", "current_principal", "get_service"]

API_PREFIX = "/api/v1"

bearer_token = OAuth2PasswordBearer(tokenUrl=f"{API_PREFIX}/auth/token", auto_error=False)
"""Reads ``Authorization: Bearer ...`` (and documents the password flow in OpenAPI)."""


def get_service(request: Request) -> ClinicalService:
    """The clinical service the app was built with.

    Parameters
    ----------
    request : Request
        The request.

    Returns
    -------
    ClinicalService
        The service.
    """
    service: ClinicalService = request.app.state.service
    return service


Service = Annotated[ClinicalService, Depends(get_service)]


def current_principal(service: Service,
                      token: Annotated[str | None, Depends(bearer_token)]) -> Principal:
    """Authenticate the request's bearer token.

    Parameters
    ----------
    service : ClinicalService
        The service.
    token : str or None
        The bearer token, if any.

    Returns
    -------
    Principal
        The caller.

    Raises
    ------
    AuthenticationFailed
        If the token is missing or refused (audited; answered 401).
    """
    return service.authenticate(token)


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


# Ids in paths are not pattern-checked here: the use cases check them, and audit
# a malformed one (a path-traversal attempt) before refusing it.
StudyId = Annotated[str, Path(description="The study's pseudonymous id")]
InstanceId = Annotated[str, Path(description="The instance's pseudonymous id")]
JobId = Annotated[str, Path(description="The job's id")]
UserName = Annotated[str, Path(description="An account name")]

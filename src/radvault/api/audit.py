"""Audit routes (auditors): search the trail and verify its chain."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from radvault.api._deps import API_PREFIX, CurrentPrincipal, Service
from radvault.api._schemas import AuditEntryOut, AuditReportOut

__all__ = ["router"]

router = APIRouter(prefix=f"{API_PREFIX}/audit", tags=["audit"])

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"


@router.get("", response_model=list[AuditEntryOut])
def entries(
    service: Service, principal: CurrentPrincipal,
    actor: Annotated[str | None, Query(pattern=_NAME)] = None,
    action: Annotated[str | None, Query(pattern=r"^[a-z][a-z0-9_.]{0,63}$")] = None,
    object_id: Annotated[str | None, Query(pattern=_NAME)] = None,
    since: Annotated[datetime | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AuditEntryOut]:
    """Audit entries, newest first, filtered by actor, action, object id and time."""
    found = service.audit_entries(principal, actor=actor, action=action, object_id=object_id,
                                  since=since, limit=limit)
    return [AuditEntryOut.of(e) for e in found]


@router.get("/verify", response_model=AuditReportOut)
def verify(service: Service, principal: CurrentPrincipal) -> AuditReportOut:
    """Verify the hash chain and its signed checkpoints."""
    return AuditReportOut.of(service.verify_audit(principal))

"""The auditor's page: search the audit trail and verify its chain.

``GET /web/audit`` with optional ``actor``, ``action``, ``object_id``,
``since`` (a date) and ``limit``; ``verify=1`` also checks the whole hash
chain and its signed checkpoints. Both reads are audited by the service.
Entries hold pseudonymous ids only, never PHI.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from radvault.api.shared import get_service
from radvault.errors import InvalidRequest
from radvault.pipeline.clinical import ClinicalService
from radvault.web._core import WEB_PREFIX, CurrentUser, WebRoute, render

__all__ = ["router"]

router = APIRouter(prefix=WEB_PREFIX, route_class=WebRoute, include_in_schema=False)

Service = Annotated[ClinicalService, Depends(get_service)]

_TEXT = Annotated[str, Query(max_length=128)]


def _since(value: str) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise InvalidRequest("since must be a date (YYYY-MM-DD)") from None


@router.get("/audit")
def audit_page(request: Request, service: Service, user: CurrentUser,
               actor: _TEXT = "", action: _TEXT = "", object_id: _TEXT = "",
               since: Annotated[str, Query(max_length=10)] = "",
               limit: Annotated[int, Query(ge=1, le=1000)] = 100,
               verify: Annotated[bool, Query()] = False) -> Response:
    """Search the trail, newest first; optionally verify the chain."""
    entries = service.audit_entries(user.principal, actor=actor.strip() or None,
                                    action=action.strip() or None,
                                    object_id=object_id.strip() or None,
                                    since=_since(since.strip()), limit=limit)
    report = service.verify_audit(user.principal) if verify else None
    rows = [{"entry": e, "objects": ", ".join(e.object_ids),
             "details": json.dumps(dict(e.details), sort_keys=True, separators=(", ", ": "),
                                   default=str)}
            for e in entries]
    return render(request, "audit.html",
                  {"title": "Audit trail", "rows": rows, "report": report,
                   "filters": {"actor": actor, "action": action, "object_id": object_id,
                               "since": since, "limit": limit}})

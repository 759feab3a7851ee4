"""Re-identification routes: who a pseudonym is, and the re-identified report copy."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from radvault.api._deps import API_PREFIX, CurrentPrincipal, Service, StudyId
from radvault.api._schemas import ID_PATTERN, ReasonIn, ReidentifyOut
from radvault.api.reports import file_response

__all__ = ["router"]

router = APIRouter(prefix=API_PREFIX + "/studies/{study_id}/reidentify",
                   tags=["reidentify"])


@router.post("", response_model=ReidentifyOut)
def reidentify(service: Service, principal: CurrentPrincipal, study_id: StudyId,
               body: ReasonIn) -> ReidentifyOut:
    """The patient's name, id and birth date, for a physician who states a reason.

    The reason (10 characters or more) is sealed and kept; the audit trail
    records the request and the reason's length.
    """
    return ReidentifyOut.of(service.reidentify(principal, study_id, body.reason))


@router.post("/report", response_class=Response,
             responses={200: {"content": {"text/html": {}, "application/pdf": {}}}})
def reidentified_report(
    service: Service, principal: CurrentPrincipal, study_id: StudyId, body: ReasonIn,
    format: Annotated[Literal["html", "pdf"], Query()] = "html",
    instance_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
) -> Response:
    """The report with the patient's real identity, marked as a re-identified copy."""
    report = service.reidentified_report(principal, study_id, body.reason, format,
                                         instance_id=instance_id)
    return file_response(report)

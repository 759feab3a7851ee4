"""Report routes: downloads (HTML, PDF, FHIR R4, DICOM SR) and the radiologist's sign-off."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from radvault.api._deps import API_PREFIX, CurrentPrincipal, InstanceId, Service, StudyId
from radvault.api._schemas import ID_PATTERN, SignOffIn, SignOffOut
from radvault.pipeline.clinical import ReportFile, ReportFormat

__all__ = ["file_response", "router"]

router = APIRouter(prefix=API_PREFIX, tags=["reports"])

REPORT_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
              "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")

_FILES = {200: {"description": "The report", "content": {
    "text/html": {}, "application/pdf": {}, "application/fhir+json": {},
    "application/dicom": {}}}}


def file_response(report: ReportFile) -> Response:
    """Send a rendered report as a download (an HTML one may use its inline styles).

    Parameters
    ----------
    report : ReportFile
        The report.

    Returns
    -------
    Response
        The response, ``Content-Disposition: attachment``.
    """
    headers = {"Content-Disposition": f'attachment; filename="{report.filename}"'}
    if report.media_type.startswith("text/html"):
        headers["Content-Security-Policy"] = REPORT_CSP
    return Response(report.content, media_type=report.media_type, headers=headers)


@router.get("/studies/{study_id}/report", response_class=Response, responses=_FILES)
def report(service: Service, principal: CurrentPrincipal, study_id: StudyId,
           format: Annotated[ReportFormat, Query()] = ReportFormat.HTML,
           instance_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None) -> Response:
    """The pseudonymous report of the study's latest analysis.

    ``html`` and ``pdf`` for people, ``fhir`` (an R4 DiagnosticReport with its
    Observations) and ``sr`` (a DICOM Structured Report referencing the
    source) for systems. Research prototype: not for clinical use.
    """
    return file_response(service.report(principal, study_id, format, instance_id=instance_id))


@router.post("/studies/{study_id}/instances/{instance_id}/signoff", status_code=201,
             response_model=SignOffOut,
             responses={409: {"description": "signoff_conflict: the analysis was superseded, "
                                             "or signed off and `amends` does not name that "
                                             "sign-off"}})
def sign_off(service: Service, principal: CurrentPrincipal, study_id: StudyId,
             instance_id: InstanceId, body: SignOffIn) -> SignOffOut:
    """A radiologist accepts or overrides the prediction, with a comment (audited)."""
    signed = service.sign_off(principal, study_id, instance_id, decision=body.decision,
                              label=body.label, comment=body.comment, result_id=body.result_id,
                              amends=body.amends)
    return SignOffOut.of(signed)

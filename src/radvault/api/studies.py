"""Study routes: upload (streamed, capped, in memory), list and search, detail."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from radvault.access.principal import Principal
from radvault.api._deps import (
    API_PREFIX,
    CurrentPrincipal,
    Service,
    StudyId,
    bearer_token,
    get_service,
)
from radvault.api._errors import UploadBudgetExhausted
from radvault.api._schemas import StudyDetailOut, StudyOut, UploadOut
from radvault.api._upload import LIMIT_RESPONSES, check_declared_length, read_upload
from radvault.errors import ImageTooLarge, RadVaultError
from radvault.pipeline.clinical import ClinicalService, InvalidRequest

__all__ = ["UPLOAD_PATH", "router"]

router = APIRouter(prefix=API_PREFIX, tags=["studies"])

UPLOAD_PATH = "/uploads"

_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {
                "file": {"type": "string", "format": "binary",
                         "description": "DICOM, PNG or JPEG"},
                "modality": {"type": "string",
                             "description": "Modality hint for PNG/JPEG: a DICOM defined "
                                            "term (PS3.3 C.7.3.1.1.1: DX, CR, CT, MR, US, "
                                            "MG, OT...), in any case; any other value is "
                                            "refused (400)"},
                "body_part": {"type": "string",
                              "description": "Body part hint for PNG/JPEG: a DICOM Body Part "
                                             "Examined defined term (PS3.16 Annex L: CHEST, "
                                             "HEAD, BRAIN, ABDOMEN...), in any case; any other "
                                             "value is refused (400)"},
            }}}},
    }
}


@router.post(UPLOAD_PATH, status_code=201, response_model=UploadOut, openapi_extra=_UPLOAD_BODY,
             responses={**LIMIT_RESPONSES,
                        400: {"description": "A malformed form, file name, or a hint "
                                             "that is not a DICOM defined term"},
                        403: {"description": "The caller may not upload, their site is not "
                                             "registered, or the image belongs to a study "
                                             "of another site"},
                        422: {"description": "Not a readable image, or refused by policy"}})
async def upload(request: Request, response: Response,
                 service: Annotated[ClinicalService, Depends(get_service)],
                 token: Annotated[str | None, Depends(bearer_token)]) -> UploadOut:
    """Upload one image (multipart ``file``) into the caller's site.

    201 when stored; 200 when the same file was already stored in this site.

    Checked before a byte of the body is read: the token, then the right to
    upload. The body is then read as it arrives, in memory only, and refused
    the moment it passes the cap, or before it is read when the uploads in
    flight leave too little memory for it (503, ``Retry-After``). Refusals are
    audited.
    """
    principal: Principal = await run_in_threadpool(service.authenticate, token)
    await run_in_threadpool(service.authorize_upload, principal)
    cap = request.app.state.max_upload_bytes
    declared = request.headers.get("content-length")
    try:
        check_declared_length(declared, cap)
        form = await read_upload(request.headers.get("content-type"), request.stream(),
                                 max_bytes=cap)
    except (ImageTooLarge, InvalidRequest, UploadBudgetExhausted) as exc:
        await run_in_threadpool(_reject, service, principal, exc)
        raise  # pragma: no cover - _reject always raises
    try:
        result = await run_in_threadpool(
            service.upload, principal, bytes(form.data), form.filename,
            modality=form.fields.get("modality") or None,
            body_part=form.fields.get("body_part") or None)
    finally:
        form.wipe()
    if result.status == "duplicate":
        response.status_code = 200
    return UploadOut.of(result)


def _reject(service: ClinicalService, principal: Principal, exc: RadVaultError) -> None:
    service.reject_upload(principal, exc)


@router.get("/studies", response_model=list[StudyOut])
def list_studies(
    service: Service, principal: CurrentPrincipal,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    modality: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_]{1,16}$")] = None,
    body_part: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_ -]{1,64}$")] = None,
    site: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")] = None,
    status: Annotated[str | None, Query(pattern=r"^(active|shredded)$")] = None,
) -> list[StudyOut]:
    """The studies the caller is granted, newest first, optionally filtered."""
    studies = service.list_studies(principal, limit=limit, offset=offset, modality=modality,
                                   body_part=body_part, site=site, status=status)
    return [StudyOut.of(s) for s in studies]


@router.get("/studies/{study_id}", response_model=StudyDetailOut)
def study_detail(service: Service, principal: CurrentPrincipal,
                 study_id: StudyId) -> StudyDetailOut:
    """One study and its images, if the caller is granted it."""
    return StudyDetailOut.of(service.study(principal, study_id))

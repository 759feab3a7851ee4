"""The technologist's upload page: one image (DICOM, PNG or JPEG) into their own site.

The post is read as it streams in, in memory only (:mod:`._forms`): the
session and the right to upload are checked before the body is read, the CSRF
token (the form's first field) before the file is kept, and the file is
refused the moment it passes the cap, or before it is read when the uploads in
flight leave too little memory for it (503, ``Retry-After``). Ingest (de-identification, sealing,
audit) is the clinical service's, as for the API.
"""

from __future__ import annotations

import contextlib
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool

from radvault.api.shared import UploadBudgetExhausted, check_declared_length, get_service, status_of
from radvault.errors import (
    AccessDenied,
    DeidentificationError,
    ImageInputError,
    ImageTooLarge,
    InvalidRequest,
    RadVaultError,
)
from radvault.imaging.vocabulary import body_part_hint, modality_hint
from radvault.pipeline.clinical import ClinicalService, UploadResult
from radvault.web._core import (
    WEB_PREFIX,
    CurrentUser,
    WebRoute,
    WebUser,
    audit_forgery,
    check_same_origin,
    current_user,
    render,
)
from radvault.web._forms import read_page_upload
from radvault.web._session import check_csrf

__all__ = ["UPLOAD_PATH", "router"]

router = APIRouter(prefix=WEB_PREFIX, route_class=WebRoute, include_in_schema=False)

UPLOAD_PATH = WEB_PREFIX + "/upload"
"""The page's path; its POST body is capped by the upload cap, not the API's body limit."""

Service = Annotated[ClinicalService, Depends(get_service)]

MODALITIES = (("", "From the DICOM header"), ("DX", "DX: digital radiography"),
              ("CR", "CR: computed radiography"), ("CT", "CT"), ("MR", "MR"),
              ("US", "US: ultrasound"), ("MG", "MG: mammography"), ("OT", "Other"))


def _page(request: Request, user: WebUser, *, status: int = 200,
          result: UploadResult | None = None, error: str | None = None,
          fields: dict[str, str] | None = None,
          headers: dict[str, str] | None = None) -> Response:
    return render(request, "upload.html",
                  {"title": "Upload", "modalities": MODALITIES, "result": result,
                   "error": error, "fields": fields or {}}, status=status, user=user,
                  headers=headers)


def _terms_only(fields: dict[str, str]) -> dict[str, str]:
    """The hints to show again in the form: only defined terms (a refused one may be a
    patient's name typed into the wrong field; the page names the field, not the value)."""
    kept = {}
    for key, term in (("modality", modality_hint), ("body_part", body_part_hint)):
        try:
            if term(fields.get(key)):
                kept[key] = fields[key]
        except InvalidRequest:
            continue
    return kept


@router.get("/upload")
def upload_form(request: Request, service: Service, user: CurrentUser) -> Response:
    """The upload form (technologists)."""
    service.authorize_upload(user.principal)
    return _page(request, user)


@router.post("/upload")
async def upload(request: Request, service: Service) -> Response:
    """Store one image, streamed and capped, and say what became of it."""
    user = await run_in_threadpool(current_user, request, service)
    principal = user.principal
    await run_in_threadpool(service.authorize_upload, principal)
    cap = int(request.app.state.max_upload_bytes)

    def check(token: str) -> None:
        check_csrf(user.csrf_token, token)

    try:
        check_same_origin(request)
        check_declared_length(request.headers.get("content-length"), cap)
        form = await read_page_upload(request.headers.get("content-type"), request.stream(),
                                      max_bytes=cap, check_csrf=check)
    except AccessDenied:
        await run_in_threadpool(audit_forgery, service, user, "POST")
        raise
    except (ImageTooLarge, InvalidRequest, UploadBudgetExhausted) as exc:
        with contextlib.suppress(RadVaultError):  # it audits, then raises: answered below
            await run_in_threadpool(service.reject_upload, principal, exc)
        busy = isinstance(exc, UploadBudgetExhausted)
        return _page(request, user, status=status_of(exc)[0], error=str(exc)[:300],
                     headers={"Retry-After": str(exc.retry_after_s)} if busy else None)
    fields = {k: v for k, v in form.fields.items() if k in ("modality", "body_part")}
    try:
        result = await run_in_threadpool(
            service.upload, principal, bytes(form.data), form.filename,
            modality=fields.get("modality") or None, body_part=fields.get("body_part") or None)
    except (ImageInputError, DeidentificationError, InvalidRequest, AccessDenied) as exc:
        return _page(request, user, status=status_of(exc)[0], error=str(exc)[:300],
                     fields=_terms_only(fields))
    finally:
        form.wipe()
    return _page(request, user, status=201 if result.status == "stored" else 200,
                 result=result)

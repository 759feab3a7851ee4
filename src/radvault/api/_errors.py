"""The one place where errors become HTTP answers (private).

Every error RadVault raises on purpose (:mod:`radvault.errors`, plus the jobs
layer's and the clinical layer's own subclasses) maps to one status and a
short code; the answer is an RFC 9457 problem document whose ``detail`` is the
error's own message (written never to carry PHI) for 4xx answers and a fixed
sentence for 5xx ones. Request validation errors list where and what, never
the value sent. Anything unexpected becomes a bare 500: the server log gets
the exception's type, never its message or a stack trace.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from radvault._diagnostics import log_unexpected
from radvault.errors import (
    AccessDenied,
    AccountError,
    AuthenticationFailed,
    ConfigurationError,
    DatasetError,
    DeidentificationError,
    ImageInputError,
    ImageTooLarge,
    IntegrityError,
    ModelError,
    ObjectNotFound,
    ObjectShredded,
    PasswordPolicyError,
    RadVaultError,
    SignOffConflict,
    UnknownModel,
    VaultError,
    VaultLocked,
)
from radvault.jobs import IdempotencyConflict, JobError, JobRejected, JobTimeout, TransientError
from radvault.pipeline.clinical import InvalidRequest

__all__ = ["BodyTooLarge", "CatchAllMiddleware", "UploadBudgetExhausted", "UploadStalled",
           "UploadTooSlow", "install_error_handlers", "problem", "status_of"]

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

#: (error class, HTTP status, code), first match wins: subclasses before their bases.
STATUS_MAP: tuple[tuple[type[BaseException], int, str], ...] = (
    (AuthenticationFailed, 401, "authentication_failed"),
    (AccessDenied, 403, "access_denied"),
    (ObjectShredded, 410, "shredded"),
    (ObjectNotFound, 404, "not_found"),
    (ImageTooLarge, 413, "too_large"),
    (PasswordPolicyError, 422, "password_policy"),
    (AccountError, 409, "account_conflict"),
    (IdempotencyConflict, 409, "idempotency_conflict"),
    (JobRejected, 422, "job_rejected"),
    (ImageInputError, 422, "invalid_image"),
    (DeidentificationError, 422, "deidentification_refused"),
    (DatasetError, 422, "invalid_dataset"),
    (UnknownModel, 422, "unknown_model"),
    (SignOffConflict, 409, "signoff_conflict"),
    (InvalidRequest, 400, "invalid_request"),
    (VaultLocked, 503, "vault_locked"),
    (IntegrityError, 500, "integrity_failure"),
    (ModelError, 503, "model_unavailable"),
    (JobTimeout, 504, "job_timeout"),
    (TransientError, 503, "temporarily_unavailable"),
    (JobError, 500, "job_error"),
    (ConfigurationError, 500, "configuration_error"),
    (VaultError, 500, "vault_error"),
    (RadVaultError, 500, "internal_error"),
)

_SERVER_MESSAGES = {
    "integrity_failure": "stored data failed its integrity check; the event is audited",
    "model_unavailable": "no usable model is installed for this image",
    "vault_locked": "the vault is locked",
    "job_timeout": "the job did not finish in time",
    "temporarily_unavailable": "temporarily unavailable; try again",
    "uploads_busy": "the server is busy with other uploads; try again after Retry-After",
}


class BodyTooLarge(RadVaultError):
    """A request body passed the size limit of its route."""


class UploadBudgetExhausted(RadVaultError):
    """The uploads in flight hold the memory set aside for upload bodies (503, Retry-After).

    The upload was refused before the rest of its body was read; it may be sent
    again once others are done.

    Parameters
    ----------
    retry_after_s : int
        Seconds the client should wait before trying again.
    """

    def __init__(self, retry_after_s: int) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(f"the server is busy with other uploads; try again in {retry_after_s} "
                         "seconds")


class UploadStalled(InvalidRequest):
    """An upload's body stopped arriving while it held upload memory (408).

    An :class:`InvalidRequest` (the client's fault), so the upload routes refuse
    and audit it on the path they already take for a malformed body; it maps to
    408, and the connection is closed after the answer.

    Parameters
    ----------
    idle_timeout_s : float
        The longest wait for the next part of the body.
    """

    def __init__(self, idle_timeout_s: float) -> None:
        self.idle_timeout_s = idle_timeout_s
        super().__init__(f"no part of the upload arrived for {idle_timeout_s:g} seconds")


class UploadTooSlow(UploadStalled):
    """An upload's body arrived slower, on average, than the minimum rate (408).

    A trickle that never pauses for a whole idle timeout is refused as a stall
    is (an :class:`UploadStalled`: 408, audited, connection closed), under its
    own name in the audit trail.

    Parameters
    ----------
    min_bytes_per_s : int
        The slowest average rate accepted, in bytes per second.
    """

    def __init__(self, min_bytes_per_s: int) -> None:
        self.min_bytes_per_s = min_bytes_per_s
        # Not UploadStalled's own message: it would speak of a pause that did not happen.
        InvalidRequest.__init__(self, f"the upload arrived at under {min_bytes_per_s} bytes "
                                "per second on average")


def status_of(exc: BaseException) -> tuple[int, str]:
    """The HTTP status and code of an error.

    Parameters
    ----------
    exc : BaseException
        The error.

    Returns
    -------
    tuple of (int, str)
        Status and short code; ``(500, "internal_error")`` for anything unknown.
    """
    if isinstance(exc, BodyTooLarge):
        return 413, "too_large"
    if isinstance(exc, UploadBudgetExhausted):
        return 503, "uploads_busy"
    if isinstance(exc, UploadStalled):  # and UploadTooSlow; before InvalidRequest (400)
        return 408, "request_timeout"
    for cls, status, code in STATUS_MAP:
        if isinstance(exc, cls):
            return status, code
    return 500, "internal_error"


def problem(status: int, code: str, detail: str, *,
            errors: list[dict[str, Any]] | None = None,
            headers: dict[str, str] | None = None) -> JSONResponse:
    """An RFC 9457 problem response.

    Parameters
    ----------
    status : int
        HTTP status.
    code : str
        RadVault's short error code.
    detail : str
        A message for people (never PHI).
    errors : list of dict, optional
        Field errors (validation).
    headers : dict, optional
        Extra headers.

    Returns
    -------
    JSONResponse
        The response.
    """
    body: dict[str, Any] = {"type": f"urn:radvault:error:{code}",
                            "title": HTTPStatus(status).phrase, "status": status,
                            "detail": detail, "code": code}
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def _radvault_response(exc: RadVaultError) -> JSONResponse:
    status, code = status_of(exc)
    if isinstance(exc, UploadBudgetExhausted):  # load, not a fault: the client retries
        logger.warning("upload refused: %s", code)
        detail = _SERVER_MESSAGES[code]
    elif status >= 500:
        logger.error("request failed: %s (%s)", code, type(exc).__name__)
        detail = _SERVER_MESSAGES.get(code, "internal server error")
    else:
        detail = str(exc)[:500] or HTTPStatus(status).phrase
    headers = None
    if status == 401:
        headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
    elif isinstance(exc, UploadBudgetExhausted):
        headers = {"Retry-After": str(exc.retry_after_s)}
    errors = None
    if isinstance(exc, PasswordPolicyError):
        errors = [{"loc": ["password"], "msg": p} for p in exc.problems]
    elif isinstance(exc, UnknownModel):  # shaped as a request validation error's
        errors = [{"loc": ["body", "model"], "msg": detail, "type": code}]
    elif isinstance(exc, ImageInputError):  # which refusal: a class name, never a value
        errors = [{"loc": ["body", "file"], "msg": detail, "type": type(exc).__name__}]
    return problem(status, code, detail, errors=errors, headers=headers)


async def _on_radvault_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RadVaultError)
    return _radvault_response(exc)


async def _on_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")),
               "type": str(e.get("type", ""))} for e in exc.errors()[:20]]
    return problem(422, "validation_error", "the request is not valid", errors=errors)


_TRAVERSAL = ("..", "%2e", "%2f", "%5c", "\\", "\x00")


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = int(exc.status_code)
    if status == 404:
        raw = (request.scope.get("raw_path") or b"").decode("latin-1").lower()
        path = request.scope.get("path", "").lower()
        if any(marker in raw or marker in path for marker in _TRAVERSAL):
            _audit_traversal(request, raw or path)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(status).phrase
    code = HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    return problem(status, code, detail[:200], headers=getattr(exc, "headers", None))


def _audit_traversal(request: Request, path: str) -> None:
    service = getattr(request.app.state, "service", None)
    if service is None:
        return
    # The path is whatever the caller typed: the trail keeps only its keyed digest.
    service.vault.audit.append("anonymous", "request_refused", "refused",
                               details={"reason": "path traversal",
                                        "path_hmac": service.vault.audit_digest(path)})


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on ``app`` (RadVault errors, validation, HTTP errors).

    Parameters
    ----------
    app : FastAPI
        The application.
    """
    app.add_exception_handler(RadVaultError, _on_radvault_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)


class CatchAllMiddleware:
    """Outermost guard: an unexpected exception becomes a bare 500 problem.

    Only the exception's type and its stack frames (file:line:function) reach the
    log (:func:`radvault._diagnostics.log_unexpected`), never its message or values:
    those might quote patient data.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:  # the last line of defence: never a traceback out
            if isinstance(exc, RadVaultError):
                response = _radvault_response(exc)
            else:
                log_unexpected(logger, exc, f"{scope.get('method', '?')} request")
                response = problem(500, "internal_error", "internal server error")
            if not started:
                await response(scope, receive, send)

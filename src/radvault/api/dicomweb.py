"""DICOMweb routes under ``/dicomweb``: STOW-RS, QIDO-RS and WADO-RS (PS3.18).

Layout (ids are RadVault's pseudonymous ids, which are the de-identified UIDs)::

    POST /dicomweb/studies                                   STOW-RS (technologist)
    GET  /dicomweb/studies | /series | /instances            QIDO-RS (radiologist, physician)
    GET  /dicomweb/studies/{study}/series[/{series}/instances] | /studies/{study}/instances
    GET  /dicomweb/studies/{study}[/series/{series}[/instances/{instance}]]      WADO-RS
    GET  .../metadata  (the same three levels)               DICOM JSON, no bulk data
    GET  /dicomweb/studies/{study}/series/{series}/instances/{instance}/rendered  PNG/JPEG

The same bearer tokens, authorisation and audit as ``/api/v1``: each route
authenticates the token (a refusal is 401 and audited) and calls one use case
of :class:`~radvault.pipeline.clinical.ClinicalService`, which checks the
policy. Errors are the API's problem documents, plus 406 (nothing acceptable
can be produced) and 415 (a STOW-RS body that is not ``application/dicom``).

A STOW-RS body is parsed as it arrives, in memory only (never spooled to a
temporary file), and refused (413) the moment it passes the upload cap, or
(503, ``Retry-After``) when the uploads in flight leave too little memory for
it; the token and the right to upload are checked before a byte of it is read.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydicom.dataset import Dataset
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from radvault.access.principal import Principal
from radvault.api._deps import CurrentPrincipal, InstanceId, Service, StudyId, bearer_token
from radvault.api._errors import UploadBudgetExhausted, problem
from radvault.api._upload import LIMIT_RESPONSES, check_declared_length
from radvault.errors import ImageTooLarge
from radvault.pipeline._clinical_dicomweb import (
    COERCION_WARNING,
    EXPLICIT_VR_LITTLE_ENDIAN,
    DicomPart,
    NotAcceptable,
    SearchResult,
    StoreResult,
)
from radvault.pipeline.clinical import ClinicalService, InvalidRequest

__all__ = ["PREFIX", "STOW_PATH", "UnsupportedMediaType", "read_related", "router"]

PREFIX = "/dicomweb"
STOW_PATH = PREFIX + "/studies"
"""The STOW-RS path (exempt from the small-body limit: it enforces the upload cap)."""

DICOM_JSON = "application/dicom+json"
_MAX_PARTS = 5000
_MAX_HEADER = 1024
_MAX_FILTERS = 32
_MAX_VALUE = 1024
_RESERVED = frozenset({"limit", "offset", "includefield", "fuzzymatching"})
_FUZZY_WARNING = ('299 radvault "The fuzzymatching parameter is not supported. '
                  'Only literal matching has been performed."')
_MORE_WARNING = ('299 radvault "There are more matches than this page holds: ask again '
                 'with a larger offset."')

router = APIRouter(prefix=PREFIX, tags=["dicomweb"])

SeriesId = Annotated[str, Path(description="The series' pseudonymous id")]

_JSON_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {"content": {DICOM_JSON: {}}, "description": "DICOM JSON"}}
_MULTIPART_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {"content": {'multipart/related; type="application/dicom"': {}},
          "description": "The instances, one PS3.10 file per part"},
    406: {"description": "No accepted transfer syntax can be produced"}}


class UnsupportedMediaType(InvalidRequest):
    """A STOW-RS body that is not ``multipart/related; type="application/dicom"`` (415)."""


# --------------------------------------------------------------------------- multipart/related


class _RelatedCollector:
    """Callbacks of the streaming parser: collect the parts in memory, enforce the caps."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.parts: list[bytearray] = []
        self.total = 0
        self.ended = False
        self._field = bytearray()
        self._value = bytearray()
        self._headers: dict[bytes, bytes] = {}

    def callbacks(self) -> dict[str, object]:
        return {"on_part_begin": self.part_begin, "on_header_field": self.header_field,
                "on_header_value": self.header_value, "on_header_end": self.header_end,
                "on_headers_finished": self.headers_finished, "on_part_data": self.part_data,
                "on_end": self.end}

    def part_begin(self) -> None:
        if len(self.parts) >= _MAX_PARTS:
            raise InvalidRequest(f"more than {_MAX_PARTS} parts in one request")
        self._headers = {}
        self.parts.append(bytearray())

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]
        if len(self._field) > _MAX_HEADER:
            raise InvalidRequest("a part header is too long")

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]
        if len(self._value) > _MAX_HEADER:
            raise InvalidRequest("a part header is too long")

    def header_end(self) -> None:
        self._headers[bytes(self._field).strip().lower()] = bytes(self._value).strip()
        self._field.clear()
        self._value.clear()

    def headers_finished(self) -> None:
        declared = self._headers.get(b"content-type")
        if declared is not None:
            kind, _ = parse_options_header(declared)
            if kind != b"application/dicom":
                raise UnsupportedMediaType("every part must be application/dicom")

    def part_data(self, data: bytes, start: int, end: int) -> None:
        self.total += end - start
        if self.total > self.max_bytes:
            raise ImageTooLarge("request", f"over the upload cap of {self.max_bytes} bytes")
        self.parts[-1] += data[start:end]

    def end(self) -> None:
        self.ended = True

    def wipe(self) -> None:
        for part in self.parts:
            part[:] = b"\0" * len(part)


async def read_related(content_type: str | None, stream: AsyncIterator[bytes], *,
                       max_bytes: int) -> list[bytearray]:
    """Parse a ``multipart/related; type="application/dicom"`` body, in memory, capped.

    Parameters
    ----------
    content_type : str or None
        The request's Content-Type header (it carries the boundary).
    stream : async iterator of bytes
        The request body as it arrives.
    max_bytes : int
        The most bytes all parts together may hold.

    Returns
    -------
    list of bytearray
        The parts' bytes, in order (the caller wipes them when done).

    Raises
    ------
    UnsupportedMediaType
        If the body or a part is not ``application/dicom``.
    ImageTooLarge
        As soon as the parts pass ``max_bytes`` (the rest is not read).
    InvalidRequest
        If the body is not well-formed multipart, or holds too many parts.
    """
    kind, options = parse_options_header(content_type or "")
    if kind != b"multipart/related":
        raise UnsupportedMediaType('STOW-RS takes multipart/related; type="application/dicom"')
    if options.get(b"type", b"application/dicom").lower() != b"application/dicom":
        raise UnsupportedMediaType("only application/dicom parts are accepted (not JSON/XML "
                                   "metadata with bulk data)")
    boundary = options.get(b"boundary")
    if not boundary or len(boundary) > 70:
        raise InvalidRequest("the multipart body needs a boundary (1..70 characters)")
    collector = _RelatedCollector(max_bytes)
    try:
        parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
        async for chunk in stream:
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except (InvalidRequest, ImageTooLarge):
        collector.wipe()
        raise
    except (MultipartParseError, ValueError):
        collector.wipe()
        raise InvalidRequest("the multipart body is malformed") from None
    except BaseException:  # refused by the upload budget, a client gone: wipe what came
        collector.wipe()
        raise
    if not collector.ended:
        collector.wipe()
        raise InvalidRequest("the multipart body is incomplete (no closing boundary)")
    return collector.parts


# --------------------------------------------------------------------------- STOW-RS


# The body (multipart/related; type="application/dicom") is not declared in OpenAPI:
# no generic client or fuzzer can build one, and the route reads it itself.
@router.post("/studies", response_class=JSONResponse,
             responses={200: {"content": {DICOM_JSON: {}},
                              "description": "Every instance stored"},
                        202: {"description": "Some stored, some refused"},
                        409: {"description": "None stored"},
                        **LIMIT_RESPONSES,
                        415: {"description": "Not multipart/related application/dicom"}})
async def store_instances(request: Request, service: Service,
                          token: Annotated[str | None, Depends(bearer_token)]) -> Response:
    """STOW-RS: store DICOM instances into the caller's site (technologists).

    The body is ``multipart/related; type="application/dicom"``, one PS3.10
    file per part, at most the upload cap in all.

    Each instance is de-identified, sealed, cataloged and audited before the
    answer; the answer lists them (Referenced SOP Sequence, with the URL of
    the stored, de-identified instance and Warning Reason B000: coerced by
    de-identification) and the refused ones (Failed SOP Sequence, with the
    Failure Reason). 200: all stored; 202: some refused; 409: none stored.
    """
    principal: Principal = await run_in_threadpool(service.authenticate, token)
    await run_in_threadpool(service.authorize_upload, principal)
    cap: int = request.app.state.max_upload_bytes
    declared = request.headers.get("content-length")
    try:
        check_declared_length(declared, cap, "request")
        parts = await read_related(request.headers.get("content-type"), request.stream(),
                                   max_bytes=cap)
    except UnsupportedMediaType as exc:
        try:
            await run_in_threadpool(service.reject_upload, principal, exc)
        except UnsupportedMediaType:
            return problem(415, "unsupported_media_type", str(exc))
        raise  # pragma: no cover - reject_upload always raises
    except (ImageTooLarge, InvalidRequest, UploadBudgetExhausted) as exc:
        await run_in_threadpool(service.reject_upload, principal, exc)
        raise  # pragma: no cover - reject_upload always raises
    try:
        result = await run_in_threadpool(service.dicomweb_store, principal,
                                         [bytes(p) for p in parts])
    finally:
        for part in parts:
            part[:] = b"\0" * len(part)
    return _store_answer(_base(request), result)


def _store_answer(base: str, result: StoreResult) -> JSONResponse:
    referenced, failed = [], []
    for item in result.items:
        entry = Dataset()
        if item.sop_class_uid:
            entry.ReferencedSOPClassUID = item.sop_class_uid
        if item.sop_instance_uid:
            entry.ReferencedSOPInstanceUID = item.sop_instance_uid
        if item.ok:
            entry.RetrieveURL = (f"{base}/studies/{item.study_id}/series/{item.series_id}"
                                 f"/instances/{item.instance_id}")
            entry.WarningReason = COERCION_WARNING
            referenced.append(entry)
        else:
            entry.FailureReason = item.failure_reason
            failed.append(entry)
    answer = Dataset()
    studies = {i.study_id for i in result.stored}
    answer.RetrieveURL = f"{base}/studies/{studies.pop()}" if len(studies) == 1 else None
    if failed:
        answer.FailedSOPSequence = failed
    if referenced:
        answer.ReferencedSOPSequence = referenced
    status = 200 if not failed else 202 if referenced else 409
    return JSONResponse(answer.to_json_dict(), status_code=status, media_type=DICOM_JSON)


# --------------------------------------------------------------------------- QIDO-RS


def _search(request: Request, service: ClinicalService, principal: Principal, level: str,
            limit: int, offset: int, includefield: list[str] | None, fuzzymatching: bool,
            study_id: str | None = None, series_id: str | None = None) -> Response:
    filters: dict[str, list[str]] = {}
    for name, value in request.query_params.multi_items():
        if name in _RESERVED:
            continue
        if len(value) > _MAX_VALUE or len(name) > 64:
            raise InvalidRequest("a query parameter is too long")
        filters.setdefault(name, []).append(value)
    if len(filters) > _MAX_FILTERS:
        raise InvalidRequest(f"at most {_MAX_FILTERS} query attributes")
    include = [f.strip() for value in includefield or [] for f in value.split(",") if f.strip()]
    if len(include) > 64:
        raise InvalidRequest("at most 64 includefield attributes")
    result = service.dicomweb_search(principal, level, filters, study_id=study_id,
                                     series_id=series_id, include=include, limit=limit,
                                     offset=offset)
    return _search_answer(_base(request), result, fuzzymatching)


def _search_answer(base: str, result: SearchResult, fuzzy: bool) -> JSONResponse:
    body = []
    for ds in result.matches:
        url = f"{base}/studies/{ds.StudyInstanceUID}"
        if result.level != "study":
            url += f"/series/{ds.SeriesInstanceUID}"
        if result.level == "instance":
            url += f"/instances/{ds.SOPInstanceUID}"
        item = ds.to_json_dict()
        item["00081190"] = {"vr": "UR", "Value": [url]}
        body.append(dict(sorted(item.items())))
    warnings = [w for w, on in ((_FUZZY_WARNING, fuzzy), (_MORE_WARNING, result.more)) if on]
    headers = {"Warning": ", ".join(warnings)} if warnings else None
    return JSONResponse(body, media_type=DICOM_JSON, headers=headers)


_Limit = Annotated[int, Query(ge=1, le=1000, description="Matches per page")]
_Offset = Annotated[int, Query(ge=0, le=1_000_000, description="Matches to skip")]
_Include = Annotated[list[str] | None, Query(description="Extra attributes, or `all`")]
_Fuzzy = Annotated[bool, Query(description="Accepted and ignored (literal matching only)")]


@router.get("/studies", response_class=JSONResponse, responses=_JSON_ANSWER)
def search_studies(request: Request, service: Service, principal: CurrentPrincipal,
                   limit: _Limit = 100, offset: _Offset = 0, includefield: _Include = None,
                   fuzzymatching: _Fuzzy = False) -> Response:
    """QIDO-RS: the granted studies matching the query (attribute=value parameters)."""
    return _search(request, service, principal, "study", limit, offset, includefield,
                   fuzzymatching)


@router.get("/series", response_class=JSONResponse, responses=_JSON_ANSWER)
def search_all_series(request: Request, service: Service, principal: CurrentPrincipal,
                      limit: _Limit = 100, offset: _Offset = 0, includefield: _Include = None,
                      fuzzymatching: _Fuzzy = False) -> Response:
    """QIDO-RS: series of the granted studies matching the query."""
    return _search(request, service, principal, "series", limit, offset, includefield,
                   fuzzymatching)


@router.get("/instances", response_class=JSONResponse, responses=_JSON_ANSWER)
def search_all_instances(request: Request, service: Service, principal: CurrentPrincipal,
                         limit: _Limit = 100, offset: _Offset = 0,
                         includefield: _Include = None,
                         fuzzymatching: _Fuzzy = False) -> Response:
    """QIDO-RS: instances of the granted studies matching the query."""
    return _search(request, service, principal, "instance", limit, offset, includefield,
                   fuzzymatching)


@router.get("/studies/{study_id}/series", response_class=JSONResponse, responses=_JSON_ANSWER)
def search_series(request: Request, service: Service, principal: CurrentPrincipal,
                  study_id: StudyId, limit: _Limit = 100, offset: _Offset = 0,
                  includefield: _Include = None, fuzzymatching: _Fuzzy = False) -> Response:
    """QIDO-RS: the series of one granted study (403 if not granted, existing or not)."""
    return _search(request, service, principal, "series", limit, offset, includefield,
                   fuzzymatching, study_id)


@router.get("/studies/{study_id}/instances", response_class=JSONResponse,
            responses=_JSON_ANSWER)
def search_study_instances(request: Request, service: Service, principal: CurrentPrincipal,
                           study_id: StudyId, limit: _Limit = 100, offset: _Offset = 0,
                           includefield: _Include = None,
                           fuzzymatching: _Fuzzy = False) -> Response:
    """QIDO-RS: the instances of one granted study."""
    return _search(request, service, principal, "instance", limit, offset, includefield,
                   fuzzymatching, study_id)


@router.get("/studies/{study_id}/series/{series_id}/instances", response_class=JSONResponse,
            responses=_JSON_ANSWER)
def search_series_instances(request: Request, service: Service, principal: CurrentPrincipal,
                            study_id: StudyId, series_id: SeriesId, limit: _Limit = 100,
                            offset: _Offset = 0, includefield: _Include = None,
                            fuzzymatching: _Fuzzy = False) -> Response:
    """QIDO-RS: the instances of one series of a granted study."""
    return _search(request, service, principal, "instance", limit, offset, includefield,
                   fuzzymatching, study_id, series_id)


# --------------------------------------------------------------------------- WADO-RS


def _retrieve(request: Request, service: ClinicalService, principal: Principal, study_id: str,
              series_id: str | None = None, instance_id: str | None = None) -> Response:
    try:
        syntaxes = _transfer_syntaxes(request.headers.get("accept"))
        parts = service.dicomweb_retrieve(principal, study_id, series_id, instance_id,
                                          transfer_syntaxes=syntaxes)
    except NotAcceptable as exc:
        return problem(406, "not_acceptable", str(exc))
    boundary = secrets.token_hex(16)

    def body() -> Iterator[bytes]:
        for part in parts:
            yield _part_head(boundary, part)
            yield part.data
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode("ascii")

    return StreamingResponse(
        body(), media_type=f'multipart/related; type="application/dicom"; boundary={boundary}')


def _part_head(boundary: str, part: DicomPart) -> bytes:
    return (f"--{boundary}\r\nContent-Type: application/dicom; "
            f"transfer-syntax={part.transfer_syntax}\r\n\r\n").encode("ascii")


@router.get("/studies/{study_id}", response_class=StreamingResponse,
            responses=_MULTIPART_ANSWER)
def retrieve_study(request: Request, service: Service, principal: CurrentPrincipal,
                   study_id: StudyId) -> Response:
    """WADO-RS: every de-identified DICOM instance of a granted study (multipart)."""
    return _retrieve(request, service, principal, study_id)


@router.get("/studies/{study_id}/series/{series_id}", response_class=StreamingResponse,
            responses=_MULTIPART_ANSWER)
def retrieve_series(request: Request, service: Service, principal: CurrentPrincipal,
                    study_id: StudyId, series_id: SeriesId) -> Response:
    """WADO-RS: the de-identified DICOM instances of one series (multipart)."""
    return _retrieve(request, service, principal, study_id, series_id)


@router.get("/studies/{study_id}/series/{series_id}/instances/{instance_id}",
            response_class=StreamingResponse, responses=_MULTIPART_ANSWER)
def retrieve_instance(request: Request, service: Service, principal: CurrentPrincipal,
                      study_id: StudyId, series_id: SeriesId,
                      instance_id: InstanceId) -> Response:
    """WADO-RS: one de-identified DICOM instance (multipart with one part)."""
    return _retrieve(request, service, principal, study_id, series_id, instance_id)


def _metadata(service: ClinicalService, principal: Principal, study_id: str,
              series_id: str | None = None, instance_id: str | None = None) -> Response:
    found = service.dicomweb_metadata(principal, study_id, series_id, instance_id)
    return JSONResponse(found, media_type=DICOM_JSON)


@router.get("/studies/{study_id}/metadata", response_class=JSONResponse,
            responses=_JSON_ANSWER)
def study_metadata(service: Service, principal: CurrentPrincipal,
                   study_id: StudyId) -> Response:
    """WADO-RS: the de-identified attributes of every instance of a study (no bulk data)."""
    return _metadata(service, principal, study_id)


@router.get("/studies/{study_id}/series/{series_id}/metadata", response_class=JSONResponse,
            responses=_JSON_ANSWER)
def series_metadata(service: Service, principal: CurrentPrincipal, study_id: StudyId,
                    series_id: SeriesId) -> Response:
    """WADO-RS: the de-identified attributes of every instance of a series."""
    return _metadata(service, principal, study_id, series_id)


@router.get("/studies/{study_id}/series/{series_id}/instances/{instance_id}/metadata",
            response_class=JSONResponse, responses=_JSON_ANSWER)
def instance_metadata(service: Service, principal: CurrentPrincipal, study_id: StudyId,
                      series_id: SeriesId, instance_id: InstanceId) -> Response:
    """WADO-RS: the de-identified attributes of one instance (a one-item array)."""
    return _metadata(service, principal, study_id, series_id, instance_id)


@router.get("/studies/{study_id}/series/{series_id}/instances/{instance_id}/rendered",
            response_class=Response,
            responses={200: {"content": {"image/png": {}, "image/jpeg": {}},
                             "description": "The rendered image"},
                       406: {"description": "Neither PNG nor JPEG is accepted"}})
def instance_rendered(
    request: Request, service: Service, principal: CurrentPrincipal, study_id: StudyId,
    series_id: SeriesId, instance_id: InstanceId,
    window: Annotated[str | None, Query(max_length=64,
                                       description="center,width[,linear]")] = None,
    viewport: Annotated[str | None, Query(max_length=64,
                                          description="width,height (64..4096)")] = None,
    quality: Annotated[int | None, Query(ge=1, le=100)] = None,
) -> Response:
    """WADO-RS: the instance rendered as PNG (default) or JPEG, in memory."""
    try:
        media_type = _image_type(request.headers.get("accept"))
    except NotAcceptable as exc:
        return problem(406, "not_acceptable", str(exc))
    image = service.dicomweb_rendered(
        principal, study_id, series_id, instance_id, media_type=media_type,
        window=_window(window), viewport=_viewport(viewport), quality=quality)
    return Response(image, media_type=media_type)


# --------------------------------------------------------------------------- negotiation


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + PREFIX


def _media_ranges(accept: str) -> Iterator[tuple[str, dict[str, str]]]:
    """``(type, parameters)`` of each media range of an Accept header, q=0 ones left out."""
    for media_range in accept.split(","):
        kind, _, rest = media_range.partition(";")
        params = {}
        for param in rest.split(";"):
            name, _, value = param.partition("=")
            if name.strip():
                params[name.strip().lower()] = value.strip().strip('"')
        if params.get("q", "1").strip() in ("0", "0.0", "0.00", "0.000"):
            continue
        yield kind.strip().lower(), params


def _transfer_syntaxes(accept: str | None) -> tuple[str, ...]:
    """The transfer syntaxes a WADO-RS Accept header allows, in its order.

    No transfer-syntax parameter means Explicit VR Little Endian (PS3.18); ``*``
    means any.
    """
    if not accept or not accept.strip():
        return (EXPLICIT_VR_LITTLE_ENDIAN,)
    found: list[str] = []
    for kind, params in _media_ranges(accept):
        if kind == "multipart/related":
            if params.get("type", "application/dicom").lower() not in (
                    "application/dicom", "application/*", "*/*"):
                continue
        elif kind not in ("*/*", "multipart/*", "application/dicom"):
            continue
        syntax = params.get("transfer-syntax", EXPLICIT_VR_LITTLE_ENDIAN)
        if syntax == "*" or (syntax and len(syntax) <= 64
                             and all(c.isdigit() or c == "." for c in syntax)):
            found.append(syntax)
    if not found:
        raise NotAcceptable('instances are sent as multipart/related; type="application/dicom"')
    return tuple(found)


def _image_type(accept: str | None) -> str:
    if not accept or not accept.strip():
        return "image/png"
    for kind, _ in _media_ranges(accept):
        if kind in ("image/png", "image/jpeg"):
            return kind
        if kind in ("image/*", "*/*"):
            return "image/png"
    raise NotAcceptable("rendered images are image/png or image/jpeg")


def _numbers(text: str, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")[:2]]
    except ValueError:
        raise InvalidRequest(f"{what} must be numbers separated by commas") from None
    if len(values) != 2:
        raise InvalidRequest(f"{what} needs two numbers")
    return values


def _window(text: str | None) -> tuple[float, float] | None:
    """``window=center,width[,function]``; only the linear function is offered."""
    if text is None:
        return None
    fields = text.split(",")
    if len(fields) == 3 and fields[2].strip().lower() not in ("linear", "linear-exact"):
        raise InvalidRequest("only the linear window function is supported")
    if len(fields) not in (2, 3):
        raise InvalidRequest("window is center,width[,function]")
    center, width = _numbers(",".join(fields[:2]), "window")
    return center, width


def _viewport(text: str | None) -> int | None:
    """``viewport=vw,vh[,...]``: the image fits a square of the larger side."""
    if text is None:
        return None
    vw, vh = _numbers(text, "viewport")
    if not (vw.is_integer() and vh.is_integer()):
        raise InvalidRequest("viewport sizes are whole numbers of pixels")
    return int(max(vw, vh))

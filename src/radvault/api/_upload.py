"""Streamed, size-capped multipart upload, kept in memory (private).

Starlette's form parser spools files larger than 1 MiB to a temporary file,
and RadVault never lets image bytes touch the disk before they are sealed. So
uploads are parsed here, chunk by chunk as they arrive, with
``python-multipart``'s streaming parser, into memory only, and refused the
moment they pass the cap. The buffer is overwritten once the use case is done
with it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from radvault.errors import ImageTooLarge
from radvault.pipeline.clinical import InvalidRequest

__all__ = ["FORM_SLACK", "LIMIT_RESPONSES", "FormCollector", "UploadForm",
           "check_declared_length", "parse_form", "read_upload"]

FORM_SLACK = 64 * 1024
"""Room a body may take beyond the upload cap: boundaries, part headers, text fields."""

LIMIT_RESPONSES: dict[int | str, dict[str, str]] = {
    408: {"description": "The body stalled or trickled while holding upload memory "
                         "(upload_idle_timeout_s, upload_min_bytes_per_s)"},
    413: {"description": "Over the upload cap"},
    503: {"description": "Too many uploads in flight: try again after Retry-After seconds"},
}
"""The OpenAPI answers every upload route shares: the upload limits' refusals."""



def check_declared_length(declared: str | None, cap: int, what: str = "upload") -> None:
    """Refuse a body whose ``Content-Length`` already says it cannot fit under ``cap``.

    Raises
    ------
    ImageTooLarge
        If ``declared`` is over ``cap`` plus :data:`FORM_SLACK` (before a byte is read).
    """
    if declared is not None and declared.isdigit() and int(declared) > cap + FORM_SLACK:
        raise ImageTooLarge(what, f"over the upload cap of {cap} bytes")


FILE_FIELD = "file"
TEXT_FIELDS = ("modality", "body_part")
_TEXT_MAX = 128
_MAX_PARTS = 8


@dataclass
class UploadForm:
    """The parsed form: the file's bytes and name, and the optional text fields."""

    data: bytearray = field(repr=False)
    filename: str
    fields: dict[str, str]

    def wipe(self) -> None:
        """Overwrite the file's bytes (they may hold PHI until ingest de-identifies them)."""
        self.data[:] = b"\0" * len(self.data)


class FormCollector:
    """Callbacks of ``python-multipart``'s streaming parser: parts, headers, caps.

    Subclasses decide what each part means (:meth:`headers_finished`,
    :meth:`part_end`); the API's upload and the upload page share the rest.
    """

    def __init__(self, max_bytes: int, max_parts: int = _MAX_PARTS) -> None:
        self.max_bytes = max_bytes
        self.max_parts = max_parts
        self.file: bytearray | None = None
        self.filename: str | None = None
        self.fields: dict[str, str] = {}
        self.ended = False
        self._parts = 0
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._buffer = bytearray()
        self._is_file = False
        self._raw_filename = ""

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.part_begin,
            "on_header_field": self.header_field,
            "on_header_value": self.header_value,
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
            "on_part_data": self.part_data,
            "on_part_end": self.part_end,
            "on_end": self.end,
        }

    def part_begin(self) -> None:
        self._parts += 1
        if self._parts > self.max_parts:
            raise InvalidRequest("too many parts in the upload form")
        self._headers = {}
        self._name = None
        self._buffer = bytearray()
        self._is_file = False

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def part_name(self) -> str:
        """The finished part's field name (from its Content-Disposition)."""
        disposition, options = parse_options_header(self._headers.get(b"content-disposition"))
        if disposition != b"form-data" or b"name" not in options:
            raise InvalidRequest("each form part needs a Content-Disposition with a name")
        self._name = options[b"name"].decode("utf-8", "replace")
        raw = options.get(b"filename")
        self._raw_filename = raw.decode("utf-8", "replace") if raw is not None else ""
        return self._name

    def start_file(self) -> None:
        """Make the current part the form's one file."""
        if self.file is not None:
            raise InvalidRequest("give exactly one file")
        self._is_file = True
        self.filename = self._raw_filename
        self.file = self._buffer

    def headers_finished(self) -> None:
        raise NotImplementedError

    def part_data(self, data: bytes, start: int, end: int) -> None:
        size = len(self._buffer) + (end - start)
        if self._is_file and size > self.max_bytes:
            raise ImageTooLarge(self.filename or "upload",
                                f"over the upload cap of {self.max_bytes} bytes")
        if not self._is_file and size > _TEXT_MAX:
            raise InvalidRequest(f"form field is longer than {_TEXT_MAX} bytes")
        self._buffer += data[start:end]

    def text_value(self) -> str:
        """The finished text part's value."""
        try:
            return bytes(self._buffer).decode("utf-8").strip()
        except UnicodeDecodeError:
            raise InvalidRequest("form fields must be UTF-8 text") from None

    def part_end(self) -> None:
        raise NotImplementedError

    def end(self) -> None:
        self.ended = True


async def parse_form(content_type: str | None, stream: AsyncIterator[bytes],
                     collector: FormCollector,
                     passthrough: tuple[type[BaseException], ...] = ()) -> None:
    """Feed a ``multipart/form-data`` body to ``collector`` as it streams in.

    Raises
    ------
    InvalidRequest
        If it is not multipart/form-data with a boundary, or is malformed.
    """
    kind, options = parse_options_header(content_type or "")
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise InvalidRequest("the upload must be multipart/form-data with a boundary")
    try:
        parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
        async for chunk in stream:
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except (InvalidRequest, ImageTooLarge, *passthrough):
        raise
    except (MultipartParseError, ValueError):
        raise InvalidRequest("the upload form is malformed") from None


class _Collector(FormCollector):
    """The API's upload: one ``file`` part and the text fields ``modality``, ``body_part``."""

    def headers_finished(self) -> None:
        name = self.part_name()
        if name == FILE_FIELD:
            self.start_file()
        elif name not in TEXT_FIELDS:
            raise InvalidRequest("unknown form field (expected file, modality, body_part)")

    def part_end(self) -> None:
        if self._name in TEXT_FIELDS:
            self.fields[str(self._name)] = self.text_value()


async def read_upload(content_type: str | None, stream: AsyncIterator[bytes], *,
                      max_bytes: int) -> UploadForm:
    """Parse a ``multipart/form-data`` upload from a byte stream, in memory, capped.

    Parameters
    ----------
    content_type : str or None
        The request's Content-Type header (it carries the boundary).
    stream : async iterator of bytes
        The request body as it arrives.
    max_bytes : int
        The largest file accepted.

    Returns
    -------
    UploadForm
        The file and the text fields.

    Raises
    ------
    ImageTooLarge
        As soon as the file passes ``max_bytes`` (the rest is not read).
    InvalidRequest
        If the body is not a well-formed form with exactly one ``file`` part.
    """
    collector = _Collector(max_bytes)
    await parse_form(content_type, stream, collector)
    if not collector.ended or collector.file is None:
        raise InvalidRequest("the upload form has no complete file part")
    return UploadForm(collector.file, collector.filename or "", collector.fields)

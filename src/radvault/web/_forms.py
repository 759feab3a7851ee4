"""The upload form, parsed as it streams in, in memory, CSRF-checked first (private).

Like the API's upload (``radvault.api._upload``), a page's upload never
touches the disk before it is sealed: Starlette's form parser would spool a
file over 1 MiB to a temporary file. The page's form puts its CSRF token
first, so the token is checked before a byte of the file is kept, and a
forged post is refused without reading the image. The file is refused the
moment it passes the cap.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from radvault.errors import AccessDenied, ImageTooLarge, InvalidRequest

__all__ = ["PageUpload", "read_page_upload"]

CSRF_FIELD = "csrf_token"
FILE_FIELD = "file"
TEXT_FIELDS = frozenset({CSRF_FIELD, "modality", "body_part"})
_TEXT_MAX = 128
_MAX_PARTS = 6


@dataclass
class PageUpload:
    """The parsed form: the file's bytes and name, and the text fields (CSRF checked)."""

    data: bytearray = field(repr=False)
    filename: str
    fields: dict[str, str]

    def wipe(self) -> None:
        """Overwrite the file's bytes (they may hold PHI until ingest de-identifies them)."""
        self.data[:] = b"\0" * len(self.data)


class _Collector:
    """Callbacks of the streaming parser: the parts, the caps, the CSRF check."""

    def __init__(self, max_bytes: int, check_csrf: Callable[[str], None]) -> None:
        self.max_bytes = max_bytes
        self.check_csrf = check_csrf
        self.csrf_checked = False
        self.file: bytearray | None = None
        self.filename = ""
        self.fields: dict[str, str] = {}
        self.ended = False
        self._parts = 0
        self._field = bytearray()
        self._value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._name = ""
        self._buffer = bytearray()
        self._is_file = False

    def callbacks(self) -> dict[str, object]:
        return {"on_part_begin": self.part_begin, "on_header_field": self.header_field,
                "on_header_value": self.header_value, "on_header_end": self.header_end,
                "on_headers_finished": self.headers_finished, "on_part_data": self.part_data,
                "on_part_end": self.part_end, "on_end": self.end}

    def part_begin(self) -> None:
        self._parts += 1
        if self._parts > _MAX_PARTS:
            raise InvalidRequest("too many parts in the upload form")
        self._headers = {}
        self._buffer = bytearray()
        self._is_file = False

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def header_end(self) -> None:
        self._headers[bytes(self._field).lower()] = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get(b"content-disposition"))
        if disposition != b"form-data" or b"name" not in options:
            raise InvalidRequest("each form part needs a Content-Disposition with a name")
        self._name = options[b"name"].decode("utf-8", "replace")
        if self._name == FILE_FIELD:
            if not self.csrf_checked:  # a forged post: refuse before keeping the file
                self.check_csrf("")
                raise AccessDenied("the form's CSRF token must come before the file")
            if self.file is not None:
                raise InvalidRequest("give exactly one file")
            self._is_file = True
            raw = options.get(b"filename")
            self.filename = raw.decode("utf-8", "replace") if raw is not None else ""
            self.file = self._buffer
        elif self._name not in TEXT_FIELDS or self._name in self.fields:
            raise InvalidRequest("unexpected field in the upload form")

    def part_data(self, data: bytes, start: int, end: int) -> None:
        size = len(self._buffer) + (end - start)
        if self._is_file and size > self.max_bytes:
            raise ImageTooLarge(self.filename or "upload",
                                f"over the upload cap of {self.max_bytes} bytes")
        if not self._is_file and size > _TEXT_MAX:
            raise InvalidRequest(f"form field is longer than {_TEXT_MAX} bytes")
        self._buffer += data[start:end]

    def part_end(self) -> None:
        if self._is_file:
            return
        try:
            value = bytes(self._buffer).decode("utf-8").strip()
        except UnicodeDecodeError:
            raise InvalidRequest("form fields must be UTF-8 text") from None
        if self._name == CSRF_FIELD:
            self.check_csrf(value)
            self.csrf_checked = True
        else:
            self.fields[self._name] = value

    def end(self) -> None:
        self.ended = True


async def read_page_upload(content_type: str | None, stream: AsyncIterator[bytes], *,
                           max_bytes: int, check_csrf: Callable[[str], None]) -> PageUpload:
    """Parse the upload page's ``multipart/form-data`` post from its byte stream.

    Parameters
    ----------
    content_type : str or None
        The request's Content-Type (it carries the boundary).
    stream : async iterator of bytes
        The body as it arrives.
    max_bytes : int
        The largest file accepted.
    check_csrf : callable
        Called with the form's CSRF token; raises :class:`AccessDenied` to refuse.

    Returns
    -------
    PageUpload
        The file and the text fields.

    Raises
    ------
    AccessDenied
        If the CSRF token is missing, wrong or comes after the file.
    ImageTooLarge
        As soon as the file passes ``max_bytes`` (the rest is not read).
    InvalidRequest
        If the body is not a well-formed form with exactly one file.
    """
    kind, options = parse_options_header(content_type or "")
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise InvalidRequest("the upload must be multipart/form-data with a boundary")
    collector = _Collector(max_bytes, check_csrf)
    try:
        parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
        async for chunk in stream:
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except (AccessDenied, InvalidRequest, ImageTooLarge):
        raise
    except (MultipartParseError, ValueError):
        raise InvalidRequest("the upload form is malformed") from None
    if not collector.csrf_checked:
        collector.check_csrf("")
    if not collector.ended or collector.file is None:
        raise InvalidRequest("the upload form has no complete file part")
    if not collector.filename:
        raise InvalidRequest("choose a file to upload")
    return PageUpload(collector.file, collector.filename, collector.fields)

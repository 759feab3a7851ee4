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

from radvault.api.shared import FormCollector, parse_form
from radvault.errors import AccessDenied, InvalidRequest

__all__ = ["PageUpload", "read_page_upload"]

CSRF_FIELD = "csrf_token"
FILE_FIELD = "file"
TEXT_FIELDS = frozenset({CSRF_FIELD, "modality", "body_part"})
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


class _Collector(FormCollector):
    """The upload page: CSRF token first, then one file, ``modality`` and ``body_part``."""

    def __init__(self, max_bytes: int, check_csrf: Callable[[str], None]) -> None:
        super().__init__(max_bytes, _MAX_PARTS)
        self.check_csrf = check_csrf
        self.csrf_checked = False

    def headers_finished(self) -> None:
        name = self.part_name()
        if name == FILE_FIELD:
            if not self.csrf_checked:  # a forged post: refuse before keeping the file
                self.check_csrf("")
                raise AccessDenied("the form's CSRF token must come before the file")
            self.start_file()
        elif name not in TEXT_FIELDS or name in self.fields:
            raise InvalidRequest("unexpected field in the upload form")

    def part_end(self) -> None:
        if self._is_file:
            return
        value = self.text_value()
        if self._name == CSRF_FIELD:
            self.check_csrf(value)
            self.csrf_checked = True
        else:
            self.fields[str(self._name)] = value


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
    collector = _Collector(max_bytes, check_csrf)
    await parse_form(content_type, stream, collector, passthrough=(AccessDenied,))
    if not collector.csrf_checked:
        collector.check_csrf("")
    if not collector.ended or collector.file is None:
        raise InvalidRequest("the upload form has no complete file part")
    if not collector.filename:
        raise InvalidRequest("choose a file to upload")
    return PageUpload(collector.file, collector.filename, collector.fields)

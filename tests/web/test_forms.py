"""The upload page's form, parsed as it streams: CSRF first, capped, in memory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from radvault.errors import AccessDenied, ImageTooLarge, InvalidRequest
from radvault.web._forms import PageUpload, read_page_upload
from radvault.web._session import check_csrf

BOUNDARY = "----radvault-test-boundary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
TOKEN = "the-session-token"


def part(name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (
        f'; filename="{filename}"' if filename is not None else "")
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
    if filename is not None:
        head += "Content-Type: application/octet-stream\r\n"
    return head.encode() + b"\r\n" + value + b"\r\n"


def body(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


async def chunks(data: bytes, size: int = 7) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


class Checker:
    """Counts CSRF checks; the token must be the session's."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, token: str) -> None:
        self.calls.append(token)
        check_csrf(TOKEN, token)


def read(data: bytes, *, max_bytes: int = 1024, checker: Checker | None = None,
         content_type: str = CONTENT_TYPE) -> PageUpload:
    async def parse() -> PageUpload:
        return await read_page_upload(content_type, chunks(data), max_bytes=max_bytes,
                                      check_csrf=checker or Checker())

    # A thread of its own: Playwright's sync API keeps an event loop in the main thread.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, parse()).result()


def test_a_well_formed_upload_is_read_with_its_fields() -> None:
    checker = Checker()
    form = read(body(part("csrf_token", TOKEN.encode()), part("modality", b" DX "),
                     part("body_part", b"CHEST"), part("file", b"\x89PNG bytes", "x.png")),
                checker=checker)
    assert bytes(form.data) == b"\x89PNG bytes" and form.filename == "x.png"
    assert form.fields == {"modality": "DX", "body_part": "CHEST"}
    assert checker.calls == [TOKEN]
    form.wipe()
    assert bytes(form.data) == b"\0" * 10


def test_a_file_before_the_csrf_token_is_refused_before_it_is_kept() -> None:
    with pytest.raises(AccessDenied):
        read(body(part("file", b"secret pixels", "x.png"), part("csrf_token", TOKEN.encode())))


@pytest.mark.parametrize("token", [b"", b"guessed", TOKEN.encode() + b"x"])
def test_a_wrong_or_empty_csrf_token_is_refused(token: bytes) -> None:
    with pytest.raises(AccessDenied):
        read(body(part("csrf_token", token), part("file", b"data", "x.png")))


def test_a_form_without_any_csrf_token_is_refused() -> None:
    with pytest.raises(AccessDenied):
        read(body(part("modality", b"DX")))


def test_a_file_over_the_cap_is_refused_as_it_streams() -> None:
    with pytest.raises(ImageTooLarge):
        read(body(part("csrf_token", TOKEN.encode()), part("file", b"x" * 2000, "big.png")),
             max_bytes=1000)


@pytest.mark.parametrize("data", [
    body(part("csrf_token", TOKEN.encode()), part("password", b"x"),
         part("file", b"d", "x.png")),
    body(part("csrf_token", TOKEN.encode()), part("file", b"a", "a.png"),
         part("file", b"b", "b.png")),
    body(part("csrf_token", TOKEN.encode()), part("modality", b"M" * 200),
         part("file", b"d", "x.png")),
    body(part("csrf_token", TOKEN.encode())),
    body(part("csrf_token", TOKEN.encode()), part("file", b"", "")),
], ids=["unknown-field", "two-files", "long-field", "no-file", "no-file-chosen"])
def test_malformed_forms_are_refused(data: bytes) -> None:
    with pytest.raises(InvalidRequest):
        read(data)


def test_only_multipart_posts_are_read() -> None:
    with pytest.raises(InvalidRequest):
        read(b"csrf_token=x", content_type="application/x-www-form-urlencoded")

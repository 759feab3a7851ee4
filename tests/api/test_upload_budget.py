"""Uploads in flight share one memory budget: an upload that would pass it is refused 503
with Retry-After before its body is read, audited, and the budget is free again after. An
upload whose body stops arriving, or trickles in under the minimum rate, while it holds its
share is refused 408 and gives it back. The limits come from the [http] settings."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from apikit import UPLOAD_CAP, ServerThread, World
from PIL import Image

from radvault.api import ApiSettings, create_app
from radvault.api._middleware import UploadBudget
from radvault.api._upload import FORM_SLACK
from radvault.config import HttpSettings, Settings
from radvault.errors import ConfigurationError

UPLOAD = "/api/v1/uploads"
STOW = "/dicomweb/studies"
BUDGET = UPLOAD_CAP + FORM_SLACK  # the least allowed: room for one upload at the cap
IDLE_TIMEOUT = 0.5  # the small server's longest wait for the next part of a body


def noise_png(seed: int, shape: tuple[int, int]) -> bytes:
    """A PNG of random pixels: it does not compress, so its size is about rows x columns."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def form(data: bytes, name: str) -> tuple[bytes, dict[str, str]]:
    """The multipart body of an upload of ``data`` and its Content-Type and Content-Length."""
    request = httpx.Request("POST", "http://radvault.test/", files={"file": (name, data)},
                            data={"modality": "DX", "body_part": "CHEST"})
    body = request.read()
    return body, {"Content-Type": request.headers["Content-Type"],
                  "Content-Length": str(len(body))}


def wait_until(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not come true in time")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def small(world: World) -> Iterator[World]:
    """A second server over the shared service whose uploads in flight may hold one cap,
    and whose uploads may pause IDLE_TIMEOUT seconds at most."""
    api = ApiSettings(max_upload_bytes=UPLOAD_CAP, max_upload_bytes_in_flight=BUDGET,
                      upload_idle_timeout_s=IDLE_TIMEOUT, manage_service=False)
    server = ServerThread(create_app(world.settings, service=world.service, api=api)).start()
    try:
        yield World(world.settings, world.vault, world.service, server,
                    f"http://127.0.0.1:{server.port}", tokens=world.tokens)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def no_minimum(world: World) -> Iterator[World]:
    """Like ``small``, without a minimum upload rate."""
    api = ApiSettings(max_upload_bytes=UPLOAD_CAP, max_upload_bytes_in_flight=BUDGET,
                      upload_idle_timeout_s=IDLE_TIMEOUT, upload_min_bytes_per_s=0,
                      manage_service=False)
    server = ServerThread(create_app(world.settings, service=world.service, api=api)).start()
    try:
        yield World(world.settings, world.vault, world.service, server,
                    f"http://127.0.0.1:{server.port}", tokens=world.tokens)
    finally:
        server.stop()


def budget_of(world: World) -> UploadBudget:
    budget: UploadBudget = world.server.server.config.app.state.upload_budget
    return budget


def test_an_upload_at_the_cap_fits_the_smallest_budget(small: World) -> None:
    data = noise_png(10, (1000, 1040))
    assert UPLOAD_CAP - 10_000 < len(data) <= UPLOAD_CAP
    r = small.upload("tech-n", data, "wide.png", modality="DX")
    assert r.status_code == 201, r.text
    assert budget_of(small).in_use == 0


def test_concurrent_uploads_past_the_budget_refuse_one_and_store_the_other(small: World) -> None:
    first, first_headers = form(noise_png(11, (950, 950)), "first.png")
    second_data = noise_png(12, (950, 950))
    second, second_headers = form(second_data, "second.png")
    assert len(first) <= UPLOAD_CAP and len(second) <= UPLOAD_CAP < len(first) + len(second)
    budget = budget_of(small)
    gate = threading.Event()

    def first_body() -> Iterator[bytes]:  # half now, the rest once the second was refused
        half = len(first) // 2
        yield first[:half]
        sent = half
        while not gate.wait(0.1):  # a byte every 0.1 s meanwhile: never idle long enough
            yield first[sent:sent + 1]
            sent += 1
        yield first[sent:]

    def send_first() -> httpx.Response:
        with small.client() as c:
            return c.post(UPLOAD, content=first_body(),
                          headers={**small.auth("tech-n"), **first_headers})

    mark = small.mark()
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(send_first)
        try:
            wait_until(lambda: budget.in_use == len(first))
            # Only the second upload's headers go out: it is refused from its declared
            # length, before a byte of its body is read.
            answer = raw_answer(small, upload_head(small, second_headers))
        finally:
            gate.set()
        stored = held.result(timeout=60)
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert b"\r\nretry-after: 5\r\n" in answer.lower()
    assert b'"code":"uploads_busy"' in answer
    assert stored.status_code == 201, stored.text
    refused = small.audit_since(mark, "ingest_refused")
    assert [(e.actor, e.details) for e in refused] == [
        ("tech-n", {"error": "UploadBudgetExhausted"})]
    assert budget.in_use == 0  # given back before the answers went out
    again = small.upload("tech-n", second_data, "second.png", modality="DX")
    assert again.status_code == 201, again.text
    assert budget.in_use == 0


def test_an_upload_whose_client_goes_away_gives_its_share_back(small: World) -> None:
    body, headers = form(noise_png(13, (600, 600)), "gone.png")
    budget = budget_of(small)
    host, port = small.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(upload_head(small, headers) + body[:len(body) // 2])
        wait_until(lambda: budget.in_use == len(body))
    wait_until(lambda: budget.in_use == 0)


@pytest.mark.parametrize("body, status", [
    (b"--b\r\nContent-Disposition: form-data; name=\"nope\"\r\n\r\nx\r\n--b--\r\n", 400),
    (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n\r\n"
     + b"\0" * (UPLOAD_CAP + 1) + b"\r\n--b--\r\n", 413),
    (b"--b\r\nContent-Disposition: form-data; name=\"modality\"\r\n\r\nDX\r\n--b--\r\n"
     + b"epilogue" * (BUDGET // 8 + 1), 413),
], ids=["malformed", "over-the-cap", "over-the-budget-alone"])
def test_a_refused_upload_gives_its_share_back(small: World, body: bytes, status: int) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: reserved as it arrives
        for start in range(0, len(body), 65536):
            yield body[start:start + 65536]

    with small.client() as c:
        r = c.post(UPLOAD, content=chunks(), headers={
            **small.auth("tech-n"), "Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == status
    assert budget_of(small).in_use == 0


@pytest.mark.parametrize("path, content_type, part_head, seed", [
    (UPLOAD, "multipart/form-data; boundary=b",
     b'Content-Disposition: form-data; name="file"; filename="x.png"', 14),
    (STOW, 'multipart/related; type="application/dicom"; boundary=b',
     b"Content-Type: application/dicom", 16),
], ids=["upload", "stow-rs"])
def test_an_upload_that_stalls_is_refused_408_and_gives_its_share_back(
        small: World, path: str, content_type: str, part_head: bytes, seed: int) -> None:
    declared = 200_000
    budget = budget_of(small)
    head = upload_head(small, {"Content-Type": content_type,
                               "Content-Length": str(declared)}, path=path)
    mark = small.mark()
    host, port = small.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        start = time.monotonic()
        # Its headers and the start of its one part, then nothing more.
        sock.sendall(head + b"--b\r\n" + part_head + b"\r\n\r\n" + b"\0" * 5000)
        answer = read_answer(sock)
        waited = time.monotonic() - start
        closed = sock.recv(1) == b""  # the server hangs up: the rest is never read
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"\r\nconnection: close\r\n" in answer.lower()
    assert b"application/problem+json" in answer
    assert b'"code":"request_timeout"' in answer
    assert closed
    assert IDLE_TIMEOUT <= waited < IDLE_TIMEOUT + 5
    refused = small.audit_since(mark, "ingest_refused")
    assert [(e.actor, e.details) for e in refused] == [("tech-n", {"error": "UploadStalled"})]
    assert budget.in_use == 0
    again = small.upload("tech-n", noise_png(seed, (900, 900)), "after.png", modality="DX")
    assert again.status_code == 201, again.text
    assert budget.in_use == 0


def test_an_upload_that_pauses_under_the_idle_timeout_is_stored(small: World) -> None:
    body, headers = form(noise_png(15, (700, 700)), "slow.png")
    pieces = 4

    def slow_body() -> Iterator[bytes]:  # longer than the timeout in all, never idle that long
        step = len(body) // pieces + 1
        for start in range(0, len(body), step):
            if start:
                time.sleep(IDLE_TIMEOUT / 3)
            yield body[start:start + step]

    began = time.monotonic()
    with small.client() as c:
        r = c.post(UPLOAD, content=slow_body(), headers={**small.auth("tech-n"), **headers})
    assert r.status_code == 201, r.text
    assert time.monotonic() - began > IDLE_TIMEOUT
    assert budget_of(small).in_use == 0


@pytest.mark.parametrize("path, content_type, part_head, seed", [
    (UPLOAD, "multipart/form-data; boundary=b",
     b'Content-Disposition: form-data; name="file"; filename="x.png"', 17),
    (STOW, 'multipart/related; type="application/dicom"; boundary=b',
     b"Content-Type: application/dicom", 18),
], ids=["upload", "stow-rs"])
def test_an_upload_that_trickles_is_refused_408_and_gives_its_share_back(
        small: World, path: str, content_type: str, part_head: bytes, seed: int) -> None:
    declared = 200_000
    budget = budget_of(small)
    head = upload_head(small, {"Content-Type": content_type,
                               "Content-Length": str(declared)}, path=path)
    mark = small.mark()
    host, port = small.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        start = time.monotonic()
        sock.sendall(head + b"--b\r\n" + part_head + b"\r\n\r\n" + b"\0" * 1000)
        answer = b""
        while time.monotonic() - start < 10:  # without a minimum rate: never answered
            if select.select([sock], [], [], IDLE_TIMEOUT / 5)[0]:
                answer = read_answer(sock)
                break
            with contextlib.suppress(OSError):  # a byte well inside each idle timeout
                sock.sendall(b"\0")
        waited = time.monotonic() - start
        closed = sock.recv(1) == b"" if answer else False
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"\r\nconnection: close\r\n" in answer.lower()
    assert b'"code":"request_timeout"' in answer
    assert b"bytes per second on average" in answer
    assert closed
    assert IDLE_TIMEOUT <= waited < 2 * IDLE_TIMEOUT + 5  # the grace, then the next byte
    refused = small.audit_since(mark, "ingest_refused")
    assert [(e.actor, e.details) for e in refused] == [("tech-n", {"error": "UploadTooSlow"})]
    assert budget.in_use == 0
    again = small.upload("tech-n", noise_png(seed, (900, 900)), "after.png", modality="DX")
    assert again.status_code == 201, again.text
    assert budget.in_use == 0


def test_without_a_minimum_rate_a_trickled_upload_is_stored(no_minimum: World) -> None:
    body, headers = form(noise_png(19, (24, 24)), "trickle.png")
    step = len(body) // 8 + 1

    def trickle() -> Iterator[bytes]:  # about 1 KiB/s, for longer than the grace period
        for start in range(0, len(body), step):
            if start:
                time.sleep(IDLE_TIMEOUT / 4)
            yield body[start:start + step]

    began = time.monotonic()
    with no_minimum.client() as c:
        r = c.post(UPLOAD, content=trickle(), headers={**no_minimum.auth("tech-n"), **headers})
    assert r.status_code in (200, 201), r.text
    assert time.monotonic() - began > IDLE_TIMEOUT
    assert budget_of(no_minimum).in_use == 0


def test_the_minimum_rate_may_be_off_but_not_negative() -> None:
    with pytest.raises(ConfigurationError, match="upload_min_bytes_per_s"):
        ApiSettings(upload_min_bytes_per_s=-1)
    assert ApiSettings(upload_min_bytes_per_s=0).upload_min_bytes_per_s == 0
    assert ApiSettings().upload_min_bytes_per_s == 16 * 1024


def test_the_api_limits_are_the_http_settings() -> None:
    assert ApiSettings.from_settings(Settings()) == ApiSettings()
    http = HttpSettings(max_upload_bytes=UPLOAD_CAP, max_upload_bytes_in_flight=3 * BUDGET,
                        upload_idle_timeout_s=7.5, upload_min_bytes_per_s=2048,
                        max_body_bytes=4096)
    api = ApiSettings.from_settings(Settings(http=http), manage_service=False)
    assert api == ApiSettings(max_upload_bytes=UPLOAD_CAP, max_upload_bytes_in_flight=3 * BUDGET,
                              upload_idle_timeout_s=7.5, upload_min_bytes_per_s=2048,
                              max_body_bytes=4096, manage_service=False)
    default_budget = ApiSettings.from_settings(Settings(http=HttpSettings(
        max_upload_bytes=UPLOAD_CAP)))
    assert default_budget.max_upload_bytes_in_flight is None  # 0: four uploads at the cap
    assert default_budget.upload_budget_bytes(UPLOAD_CAP) == 4 * BUDGET


def test_an_app_built_without_api_settings_takes_them_from_settings(world: World) -> None:
    http = HttpSettings(max_upload_bytes=UPLOAD_CAP, upload_min_bytes_per_s=0)
    app = create_app(dataclasses.replace(world.settings, http=http), service=world.service)
    assert app.state.max_upload_bytes == UPLOAD_CAP
    assert app.state.upload_budget.total_bytes == 4 * BUDGET
    # The file cap still follows limits.max_file_bytes when it is smaller.
    limits = dataclasses.replace(world.settings.limits, max_file_bytes=UPLOAD_CAP // 2)
    app = create_app(dataclasses.replace(world.settings, http=http, limits=limits),
                     service=world.service)
    assert app.state.max_upload_bytes == UPLOAD_CAP // 2
    assert app.state.upload_budget.total_bytes == 4 * (UPLOAD_CAP // 2 + FORM_SLACK)


def test_the_idle_timeout_must_be_positive() -> None:
    for seconds in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigurationError, match="upload_idle_timeout_s"):
            ApiSettings(upload_idle_timeout_s=seconds)
    assert ApiSettings().upload_idle_timeout_s == 30


def test_the_budget_must_hold_one_upload_at_the_cap() -> None:
    with pytest.raises(ConfigurationError, match="at least max_upload_bytes"):
        ApiSettings(max_upload_bytes=UPLOAD_CAP, max_upload_bytes_in_flight=UPLOAD_CAP)
    assert ApiSettings(max_upload_bytes=UPLOAD_CAP).upload_budget_bytes(UPLOAD_CAP) == 4 * BUDGET


def upload_head(world: World, headers: dict[str, str], path: str = UPLOAD) -> bytes:
    """The request line and headers of a technologist's upload (the body follows)."""
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {world.token('tech-n')}\r\n"
            f"Content-Type: {headers['Content-Type']}\r\n"
            f"Content-Length: {headers['Content-Length']}\r\n\r\n").encode()


def raw_answer(world: World, request: bytes) -> bytes:
    """Send ``request`` over a fresh connection and read the answer's head and body."""
    host, port = world.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        return read_answer(sock)


def read_answer(sock: socket.socket) -> bytes:
    """Read an answer's head and body (as far as its Content-Length) from ``sock``."""
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        length = [int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                  if line.startswith(b"content-length:")]
        if length and len(body) >= length[0]:
            break
    return answer

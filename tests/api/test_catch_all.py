"""An unexpected error is a bare 500 for the client and a stack without values in the log."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from radvault.api._errors import CatchAllMiddleware


def failing_route(request: Request) -> None:
    patient = "DOE^JANE MRN55512345"  # a local a stack trace with values would show
    raise KeyError(patient)


def test_a_bug_logs_its_frames_but_never_its_message(caplog: pytest.LogCaptureFixture):
    app = CatchAllMiddleware(Starlette(routes=[Route("/boom", failing_route)]))

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/boom")

    with caplog.at_level(logging.ERROR, logger="radvault.api"), \
            ThreadPoolExecutor(1) as pool:  # its own thread: a browser test's loop may be here
        answer = pool.submit(anyio.run, get).result()
    assert answer.status_code == 500
    assert "MRN55512345" not in answer.text
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "GET request: unexpected KeyError" in logged
    assert "in failing_route" in logged and "test_catch_all.py:" in logged
    assert "MRN55512345" not in logged and "DOE" not in logged

"""ASGI middleware of the API (private): security headers, body limits, upload memory, metrics.

Plain ASGI classes rather than ``BaseHTTPMiddleware``, so request bodies
stream through untouched (the upload route reads its own, capped).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

import anyio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from radvault.api._errors import (
    BodyTooLarge,
    UploadBudgetExhausted,
    UploadStalled,
    UploadTooSlow,
    problem,
)
from radvault.errors import ConfigurationError, ImageTooLarge

__all__ = ["ApiMetrics", "BodyLimitMiddleware", "MetricsMiddleware", "SecurityHeadersMiddleware",
           "UploadBudget", "UploadBudgetMiddleware"]

API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
HSTS = "max-age=63072000; includeSubDomains"


class SecurityHeadersMiddleware:
    """Add the security headers to every response.

    ``Content-Security-Policy: default-src 'none'`` (a route may set its own,
    e.g. an HTML report that needs inline styles), ``nosniff``, no referrer,
    no framing, same-origin isolation, ``Cache-Control: no-store`` (API
    answers may carry PHI; nothing is cached) and, over TLS, HSTS.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        secure = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if "content-security-policy" not in headers:
                    headers["Content-Security-Policy"] = API_CSP
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "no-referrer"
                headers["X-Frame-Options"] = "DENY"
                headers["Cross-Origin-Opener-Policy"] = "same-origin"
                headers["Cross-Origin-Resource-Policy"] = "same-origin"
                headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
                headers["Cache-Control"] = "no-store"
                headers["Pragma"] = "no-cache"
                if secure:
                    headers["Strict-Transport-Security"] = HSTS
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` (413), by header or while reading.

    Paths in ``exempt`` (the upload route) enforce their own, larger cap.
    ``on_refused`` is told (to audit it) whenever a body is refused.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, exempt: frozenset[str] = frozenset(),
                 on_refused: Callable[[str], None] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = exempt
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.exempt:
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and length > self.max_bytes:
            self._refused(scope)
            response = problem(413, "too_large",
                               f"request body over the limit of {self.max_bytes} bytes")
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    self._refused(scope)
                    raise BodyTooLarge(f"request body over the limit of {self.max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)

    def _refused(self, scope: Scope) -> None:
        if self.on_refused is not None:
            self.on_refused(str(scope.get("method", "")))


class UploadBudget:
    """The bytes that upload bodies being read or held may take together, in one process.

    Each upload route keeps its body in memory (never on disk) up to the upload
    cap; this bounds what all of them hold at once. A request reserves bytes
    before it reads them and releases them when it is answered; a reservation
    that would pass the total is refused (:class:`UploadBudgetExhausted`).
    Thread-safe: test clients may drive one app from several event loops.

    Parameters
    ----------
    total_bytes : int
        The most bytes all uploads in flight may hold.
    retry_after_s : int
        Seconds a refused client is told to wait (``Retry-After``).

    Raises
    ------
    ConfigurationError
        If either is not positive.
    """

    def __init__(self, total_bytes: int, *, retry_after_s: int = 5) -> None:
        if total_bytes < 1 or retry_after_s < 1:
            raise ConfigurationError("the upload budget and its retry delay must be positive")
        self.total_bytes = total_bytes
        self.retry_after_s = retry_after_s
        self._in_use = 0
        self._lock = threading.Lock()

    @property
    def in_use(self) -> int:
        """Bytes reserved now."""
        return self._in_use

    def reserve(self, size: int) -> None:
        """Reserve ``size`` bytes, or refuse.

        Parameters
        ----------
        size : int
            Bytes about to be read.

        Raises
        ------
        UploadBudgetExhausted
            If the uploads in flight leave too little (nothing is reserved).
        """
        with self._lock:
            if self._in_use + size > self.total_bytes:
                raise UploadBudgetExhausted(self.retry_after_s)
            self._in_use += size

    def release(self, size: int) -> None:
        """Give back ``size`` bytes reserved earlier.

        Parameters
        ----------
        size : int
            Bytes no longer held.
        """
        with self._lock:
            self._in_use = max(0, self._in_use - size)


class UploadBudgetMiddleware:
    """Charge the bodies of the upload routes (``paths``) to an :class:`UploadBudget`.

    Nothing is reserved until the route first reads its body (after it checked
    the token and the right to upload). Then the declared ``Content-Length`` is
    reserved at once, so an upload that cannot fit is refused before a byte of
    its body is read; bytes beyond it (a chunked body) are reserved as they
    arrive. The refusal is raised from the body's stream into the route, which
    audits it; a body that could not fit even alone is :class:`ImageTooLarge`
    (413) rather than 503. Whatever the request reserved is released as its
    answer starts (the route has wiped the body by then), or when the request
    ends without one (a client gone, an error).

    While a request holds a reservation and its body is not complete, each wait
    for the next part of the body lasts at most ``idle_timeout_s``: a client
    that stops sending gets :class:`UploadStalled` raised into the route (which
    audits it and answers 408), its share back, and ``Connection: close`` on
    the answer (the rest of its body is never read). A client that keeps sending,
    but slowly, is refused the same way (:class:`UploadTooSlow`): once the body
    has been read for ``idle_timeout_s`` (a grace period), each part that arrives
    while it is not complete must bring the body so far to an average of at least
    ``min_bytes_per_s``, counted from the route's first read. So a client that
    trickles a byte just inside each idle timeout holds its share for about two
    idle timeouts, not for as long as it keeps that up; any body holds its share
    at most about ``max(idle_timeout_s, bytes received / min_bytes_per_s)`` plus
    one idle timeout.

    Parameters
    ----------
    app : ASGIApp
        The application.
    budget : UploadBudget
        The memory the uploads in flight share.
    paths : frozenset of str
        The upload routes' paths.
    idle_timeout_s : float
        The longest wait, in seconds, for the next part of a body holding a share;
        also the grace period before ``min_bytes_per_s`` applies.
    min_bytes_per_s : int
        The slowest average rate, in bytes per second, of a body holding a share
        after the grace period; 0: no minimum.

    Raises
    ------
    ConfigurationError
        If ``idle_timeout_s`` is not a positive, finite number of seconds, or
        ``min_bytes_per_s`` is negative.
    """

    def __init__(self, app: ASGIApp, *, budget: UploadBudget, paths: frozenset[str],
                 idle_timeout_s: float = 30.0, min_bytes_per_s: int = 16 * 1024) -> None:
        if not 0 < idle_timeout_s < math.inf:
            raise ConfigurationError("the upload idle timeout must be a positive number of "
                                     "seconds")
        if not min_bytes_per_s >= 0:
            raise ConfigurationError("the minimum upload rate must be 0 (none) or positive")
        self.app = app
        self.budget = budget
        self.paths = paths
        self.idle_timeout_s = idle_timeout_s
        self.min_bytes_per_s = min_bytes_per_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") not in self.paths:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        held = received = 0
        began = 0.0
        started = body_done = cut_off = False

        def take(size: int) -> None:
            nonlocal held
            if held + size > self.budget.total_bytes:
                raise ImageTooLarge("request", "over the memory set aside for uploads "
                                    f"({self.budget.total_bytes} bytes)")
            self.budget.reserve(size)
            held += size

        async def next_message() -> Message:
            nonlocal cut_off
            if held == 0 or body_done:  # holds nothing, or waits for a disconnect only
                return await receive()
            with anyio.move_on_after(self.idle_timeout_s):
                return await receive()
            # Cancelled while the server waited for data: its receive is still usable
            # (it answers the refusal below), and the connection closes after it.
            cut_off = True
            raise UploadStalled(self.idle_timeout_s)

        def check_rate() -> None:
            nonlocal cut_off
            if not self.min_bytes_per_s or held == 0 or body_done:
                return
            elapsed = time.monotonic() - began
            if elapsed > self.idle_timeout_s and received < self.min_bytes_per_s * elapsed:
                cut_off = True  # refused as a stall is: the rest of the body is not read
                raise UploadTooSlow(self.min_bytes_per_s)

        async def metered_receive() -> Message:
            nonlocal received, started, body_done, began
            if not started:
                started = True
                began = time.monotonic()
                if declared is not None and declared > 0:
                    take(declared)
            message = await next_message()
            if message["type"] == "http.request":
                body_done = not message.get("more_body", False)
                received += len(message.get("body", b""))
                if received > held:
                    take(received - held)
                check_rate()
            else:
                body_done = True
            return message

        def give_back() -> None:
            nonlocal held, received
            self.budget.release(held)
            held = received = 0

        async def releasing_send(message: Message) -> None:
            # The route is done with the body once it answers: give its share back
            # before the client can see the answer (and send its next upload).
            if message["type"] == "http.response.start":
                give_back()
                if cut_off:  # the rest of the body may still come: do not read it
                    MutableHeaders(scope=message)["Connection"] = "close"
            await send(message)

        try:
            await self.app(scope, metered_receive, releasing_send)
        finally:
            give_back()


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class ApiMetrics:
    """The API's Prometheus metrics, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("radvault_http_requests", "HTTP requests answered",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("radvault_http_request_duration_seconds",
                                 "Time to answer an HTTP request", ["method", "route"],
                                 registry=self.registry,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.in_flight = Gauge("radvault_http_requests_in_flight", "Requests being answered",
                               registry=self.registry)
        self.jobs = Gauge("radvault_jobs", "Jobs by status", ["status"], registry=self.registry)


class MetricsMiddleware:
    """Count requests and time them, labelled by route template (never the raw path)."""

    def __init__(self, app: ASGIApp, *, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.metrics.in_flight.dec()
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = str(scope.get("method", ""))
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - start)

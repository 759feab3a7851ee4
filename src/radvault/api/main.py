"""The API application: :func:`create_app` wires routers, handlers and middleware, nothing more.

Layout (all under ``/api/v1`` except ``/metrics``)::

    auth        POST /auth/token, POST /auth/logout, GET /auth/me, GET /auth/jwks.json
    studies     POST /uploads, GET /studies, GET /studies/{id}
    images      GET /studies/{id}/instances/{iid}/image | /heatmap
    analyses    POST /studies/{id}/analyses, GET /jobs/{job}, GET .../results | /result
    reports     GET /studies/{id}/report, POST .../instances/{iid}/signoff
    reidentify  POST /studies/{id}/reidentify, POST /studies/{id}/reidentify/report
    audit       GET /audit, GET /audit/verify
    admin       /admin/sites, /admin/users, /admin/users/{name}/grants ...
    health      GET /health, GET /metrics; OpenAPI at /api/v1/openapi.json
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from radvault import __version__
from radvault.api import (
    admin,
    analyses,
    audit,
    auth,
    dicomweb,
    health,
    images,
    reidentify,
    reports,
    studies,
)
from radvault.api._deps import API_PREFIX
from radvault.api._errors import CatchAllMiddleware, install_error_handlers
from radvault.api._middleware import (
    ApiMetrics,
    BodyLimitMiddleware,
    MetricsMiddleware,
    SecurityHeadersMiddleware,
    UploadBudget,
    UploadBudgetMiddleware,
)
from radvault.api._upload import FORM_SLACK
from radvault.config import Settings
from radvault.errors import ConfigurationError
from radvault.pipeline.clinical import ClinicalService

__all__ = ["ApiSettings", "create_app"]


@dataclass(frozen=True)
class ApiSettings:
    """Limits of the HTTP face.

    Parameters
    ----------
    max_upload_bytes : int
        Largest image upload (also capped by ``Settings.limits.max_file_bytes``).
    max_upload_bytes_in_flight : int or None
        The most bytes the bodies of all uploads being read or held in memory
        may take together (API uploads, STOW-RS, the upload page); an upload
        that would pass it is refused 503 with ``Retry-After``. ``None``: room
        for four uploads at the cap (4 x (cap + 64 KiB), about 1 GiB by
        default). At least ``max_upload_bytes`` plus 64 KiB (one upload at the
        cap must fit).
    upload_idle_timeout_s : float
        The longest wait, in seconds, for the next part of an upload's body
        while it holds a share of the uploads' memory (408 after it).
    upload_min_bytes_per_s : int
        The slowest average rate, in bytes per second over the body so far, at
        which an upload holding a share may arrive once it has taken
        ``upload_idle_timeout_s`` seconds (408 below it); 0: no minimum.
    max_body_bytes : int
        Largest body of every other request.
    manage_service : bool
        Start the service's job workers when the app starts and stop them when
        it stops.

    Raises
    ------
    ConfigurationError
        If a limit or the idle timeout is not positive, the minimum rate is
        negative, or the uploads in flight could not hold one upload at
        ``max_upload_bytes``.
    """

    max_upload_bytes: int = 256 * 1024 * 1024
    max_upload_bytes_in_flight: int | None = None
    upload_idle_timeout_s: float = 30.0
    upload_min_bytes_per_s: int = 16 * 1024
    max_body_bytes: int = 64 * 1024
    manage_service: bool = True

    def __post_init__(self) -> None:
        if self.max_upload_bytes < 1 or self.max_body_bytes < 1:
            raise ConfigurationError("API body limits must be positive")
        if not 0 < self.upload_idle_timeout_s < math.inf:
            raise ConfigurationError("upload_idle_timeout_s must be a positive number of seconds")
        if not self.upload_min_bytes_per_s >= 0:
            raise ConfigurationError("upload_min_bytes_per_s must be 0 (no minimum) or positive")
        in_flight = self.max_upload_bytes_in_flight
        if in_flight is not None and in_flight < self.max_upload_bytes + FORM_SLACK:
            raise ConfigurationError("max_upload_bytes_in_flight must hold one upload at the "
                                     "cap: at least max_upload_bytes + 64 KiB")

    @classmethod
    def from_settings(cls, settings: Settings, *, manage_service: bool = True) -> ApiSettings:
        """The limits an operator set in ``Settings.http`` (the ``[http]`` table of radvault.toml).

        Parameters
        ----------
        settings : Settings
            RadVault's settings.
        manage_service : bool
            Start and stop the service's job workers with the app.

        Returns
        -------
        ApiSettings
            The same limits; ``http.max_upload_bytes_in_flight = 0`` becomes ``None``
            (four uploads at the cap).

        Raises
        ------
        ConfigurationError
            If the limits are invalid (``Settings`` already refuses what this would).
        """
        http = settings.http
        return cls(max_upload_bytes=http.max_upload_bytes,
                   max_upload_bytes_in_flight=http.max_upload_bytes_in_flight or None,
                   upload_idle_timeout_s=http.upload_idle_timeout_s,
                   upload_min_bytes_per_s=http.upload_min_bytes_per_s,
                   max_body_bytes=http.max_body_bytes, manage_service=manage_service)

    def upload_budget_bytes(self, cap: int) -> int:
        """The bytes uploads in flight may hold together, given the effective upload cap.

        Parameters
        ----------
        cap : int
            The upload cap in force (``max_upload_bytes``, or less).

        Returns
        -------
        int
            ``max_upload_bytes_in_flight``, or four times ``cap`` plus the form's slack.
        """
        if self.max_upload_bytes_in_flight is not None:
            return self.max_upload_bytes_in_flight
        return 4 * (cap + FORM_SLACK)


def create_app(settings: Settings, *, service: ClinicalService,
               api: ApiSettings | None = None) -> FastAPI:
    """Build the FastAPI application over a clinical service.

    Parameters
    ----------
    settings : Settings
        RadVault's settings (the upload cap follows ``limits.max_file_bytes``).
    service : ClinicalService
        The use cases; the app never reaches past it.
    api : ApiSettings, optional
        Limits of the HTTP face; by default those of ``settings.http``
        (:meth:`ApiSettings.from_settings`).

    Returns
    -------
    FastAPI
        The application (OpenAPI at ``/api/v1/openapi.json``; no docs UI).
    """
    api = api or ApiSettings.from_settings(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if api.manage_service:
            await run_in_threadpool(service.start)
        try:
            yield
        finally:
            if api.manage_service:
                await run_in_threadpool(service.stop)

    app = FastAPI(
        title="RadVault API", version=__version__, lifespan=lifespan,
        description=("Secure, privacy-aware medical imaging analytics. Decision support for "
                     "research: not for clinical use."),
        openapi_url=f"{API_PREFIX}/openapi.json", docs_url=None, redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    app.state.service = service
    app.state.max_upload_bytes = cap = min(api.max_upload_bytes, settings.limits.max_file_bytes)
    app.state.upload_budget = budget = UploadBudget(api.upload_budget_bytes(cap))
    app.state.metrics = metrics = ApiMetrics()
    for module in (auth, studies, images, analyses, reports, reidentify, audit, admin, health,
                   dicomweb):
        app.include_router(module.router)
    app.include_router(health.metrics_router)
    from radvault.web import install_web  # here, not at the top: radvault.web imports radvault.api
    web_streamed = install_web(app)  # the clinicians' pages under /web
    install_error_handlers(app)

    def body_refused(method: str) -> None:
        service.vault.audit.append("anonymous", "request_refused", "refused",
                                   details={"reason": "body too large", "method": method[:10]})

    # Added innermost first: CatchAll ends up outermost of these.
    uploads = frozenset({API_PREFIX + studies.UPLOAD_PATH, dicomweb.STOW_PATH, *web_streamed})
    app.add_middleware(UploadBudgetMiddleware, budget=budget, paths=uploads,
                       idle_timeout_s=api.upload_idle_timeout_s,
                       min_bytes_per_s=api.upload_min_bytes_per_s)
    app.add_middleware(BodyLimitMiddleware, max_bytes=api.max_body_bytes, exempt=uploads,
                       on_refused=body_refused)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(CatchAllMiddleware)
    return app

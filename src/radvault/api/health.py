"""Health and Prometheus metrics (no authentication; counts only, never ids or PHI)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from radvault import __version__
from radvault.api._deps import API_PREFIX, Service
from radvault.api._schemas import HealthOut

__all__ = ["metrics_router", "router"]

router = APIRouter(prefix=API_PREFIX, tags=["health"])
metrics_router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthOut)
def health(service: Service) -> HealthOut:
    """Liveness, the version, and how many jobs are in each state."""
    counts = service.jobs.counts() if service.jobs is not None else {}
    return HealthOut(status="ok", version=__version__, jobs=dict(counts))


@metrics_router.get("/metrics", response_class=Response,
                    responses={200: {"content": {"text/plain": {}}}})
def metrics(request: Request, service: Service) -> Response:
    """Prometheus text exposition: requests, latency, jobs by state."""
    registry = request.app.state.metrics
    if service.jobs is not None:
        for status, n in service.jobs.counts().items():
            registry.jobs.labels(status).set(n)
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)

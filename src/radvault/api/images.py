"""Image routes: the de-identified image and the Grad-CAM overlay, rendered in memory as PNG."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from radvault.api._deps import API_PREFIX, CurrentPrincipal, InstanceId, Service, StudyId

__all__ = ["router"]

router = APIRouter(prefix=API_PREFIX + "/studies/{study_id}/instances/{instance_id}",
                   tags=["images"])

_PNG = {200: {"content": {"image/png": {}}, "description": "A PNG image"}}


@router.get("/image", response_class=Response, responses=_PNG)
def image(
    service: Service, principal: CurrentPrincipal, study_id: StudyId, instance_id: InstanceId,
    frame: Annotated[int | None, Query(ge=0, le=100_000)] = None,
    window_center: Annotated[float | None, Query(ge=-1e6, le=1e6)] = None,
    window_width: Annotated[float | None, Query(ge=1, le=1e6)] = None,
    max_size: Annotated[int, Query(ge=64, le=4096)] = 1024,
) -> Response:
    """The de-identified image (PNG), decrypted and rendered in memory.

    For CT and MR give ``window_center`` and ``window_width`` (in the image's
    units, e.g. Hounsfield units) to choose a window; otherwise the image's
    own window, else its full range, is shown.
    """
    png = service.render_image(principal, study_id, instance_id, frame=frame,
                               window_center=window_center, window_width=window_width,
                               max_size=max_size)
    return Response(png, media_type="image/png")


@router.get("/heatmap", response_class=Response, responses=_PNG)
def heatmap(service: Service, principal: CurrentPrincipal, study_id: StudyId,
            instance_id: InstanceId) -> Response:
    """The Grad-CAM overlay of the predicted class (PNG): over the image for whoever may view
    it, over the model's small input for a physician."""
    return Response(service.heatmap(principal, study_id, instance_id), media_type="image/png")

"""Analysis routes: start an analysis (202 and a job), follow the job, read results."""

from __future__ import annotations

from fastapi import APIRouter, Response

from radvault.api._deps import API_PREFIX, CurrentPrincipal, InstanceId, JobId, Service, StudyId
from radvault.api._schemas import AnalysisIn, JobOut, RelabelIn, ResultOut, StudyOut

__all__ = ["router"]

router = APIRouter(prefix=API_PREFIX, tags=["analyses"])


@router.post("/studies/{study_id}/analyses", status_code=202, response_model=JobOut,
             responses={422: {"description": "The body is not valid, or names a model the "
                                             "registry does not hold (unknown_model): "
                                             "nothing is queued"}})
def start_analysis(service: Service, principal: CurrentPrincipal, study_id: StudyId,
                   response: Response, body: AnalysisIn | None = None) -> JobOut:
    """Queue the analysis of a study, or of one of its images (idempotent).

    Answers 202 with the job; asking again for the same images and model
    returns the same job. Follow it at ``Location``. A model the registry does
    not hold is refused (422, audited) before anything is queued.
    """
    body = body or AnalysisIn()
    job = service.start_analysis(principal, study_id, instance_id=body.instance_id,
                                 model=body.model, after=body.after)
    response.headers["Location"] = f"{API_PREFIX}/jobs/{job.job_id}"
    return JobOut.of(job)


@router.post("/studies/{study_id}/relabel", response_model=StudyOut)
def relabel_study(service: Service, principal: CurrentPrincipal, study_id: StudyId,
                  body: RelabelIn) -> StudyOut:
    """Correct what a study was recorded as (radiologists who may analyse it; audited).

    For an image the image check takes for another kind than recorded
    (``image_unlike_declared``). Analyse it again for the right model's answer; earlier
    results stay. A value that is not a DICOM defined term is 400 (audited).
    """
    return StudyOut.of(service.relabel_study(principal, study_id, modality=body.modality,
                                             body_part=body.body_part))


@router.get("/jobs/{job_id}", response_model=JobOut)
def job_status(service: Service, principal: CurrentPrincipal, job_id: JobId) -> JobOut:
    """An analysis job: pending, running, succeeded (with result ids) or failed."""
    return JobOut.of(service.job(principal, job_id))


@router.get("/studies/{study_id}/instances/{instance_id}/results",
            response_model=list[ResultOut])
def results(service: Service, principal: CurrentPrincipal, study_id: StudyId,
            instance_id: InstanceId) -> list[ResultOut]:
    """Every analysis of one image, oldest first, each with its sign-off."""
    return [ResultOut.of(r) for r in service.results(principal, study_id, instance_id)]


@router.get("/studies/{study_id}/instances/{instance_id}/result", response_model=ResultOut)
def latest_result(service: Service, principal: CurrentPrincipal, study_id: StudyId,
                  instance_id: InstanceId) -> ResultOut:
    """The newest analysis: calibrated probabilities and the decision-support flag."""
    return ResultOut.of(service.latest_result(principal, study_id, instance_id))

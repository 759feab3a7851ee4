"""Job statuses and the running job's identity."""

from __future__ import annotations

from radvault.jobs import JobInfo, JobStatus, current_job
from radvault.jobs._job import running_job


def test_only_succeeded_and_failed_are_final() -> None:
    assert {s for s in JobStatus if s.final} == {JobStatus.SUCCEEDED, JobStatus.FAILED}
    assert JobStatus("pending") is JobStatus.PENDING


def test_current_job_is_set_only_inside_the_block() -> None:
    info = JobInfo(job_id="a" * 32, task="analyse", actor="u-1", attempt=2)
    assert current_job() is None
    with running_job(info):
        assert current_job() is info
    assert current_job() is None

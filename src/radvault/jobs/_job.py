"""What callers see of a job: a frozen :class:`Job` record and the running job's identity."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

__all__ = ["Job", "JobInfo", "JobStatus", "current_job"]


class JobStatus(StrEnum):
    """Where a job stands.

    ``pending`` (waiting, also between retries) -> ``running`` (claimed under a
    lease) -> ``succeeded`` or ``failed`` (final; never changed again).
    """

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        """``True`` for ``succeeded`` and ``failed``."""
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED)


@dataclass(frozen=True)
class Job:
    """A snapshot of one job, as stored (never a live database object).

    Attributes
    ----------
    job_id : str
        Random hex id.
    task : str
        The registered task name.
    payload : dict
        The JSON the task receives (pseudonymous ids only, never PHI).
    actor : str
        Who submitted it (a pseudonymous user id or ``"system"``).
    idempotency_key : str or None
        The key that makes re-submission return this job.
    status : JobStatus
        Where it stands.
    attempts : int
        How many times a worker has claimed it.
    max_attempts : int
        The attempt budget it was submitted with.
    result : dict or None
        What the task returned, once ``succeeded``.
    error : str or None
        ``"TypeName: message"`` of the last failed attempt (kept after a retry
        succeeds, cleared never), PHI-free.
    created_at, updated_at, available_at : datetime
        Submission, last change, and the earliest time it may run (back-off).
    started_at, finished_at : datetime or None
        Start of the latest attempt; time of the final outcome.
    """

    job_id: str
    task: str
    payload: dict[str, Any]
    actor: str
    idempotency_key: str | None
    status: JobStatus
    attempts: int
    max_attempts: int
    result: dict[str, Any] | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    available_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def done(self) -> bool:
        """``True`` once the job succeeded or failed for good."""
        return self.status.final


@dataclass(frozen=True)
class JobInfo:
    """The job a task function is running in (see :func:`current_job`).

    Attributes
    ----------
    job_id : str
        Stable across attempts: a task may use it as the id of what it writes,
        which makes a re-run after a crash find its own earlier work.
    task : str
        The task name.
    actor : str
        Who submitted the job, for the audit trail.
    attempt : int
        1 for the first attempt.
    """

    job_id: str
    task: str
    actor: str
    attempt: int


_CURRENT: contextvars.ContextVar[JobInfo | None] = contextvars.ContextVar(
    "radvault_current_job", default=None
)


def current_job() -> JobInfo | None:
    """The job the calling task function runs in, or ``None`` outside a job."""
    return _CURRENT.get()


@contextmanager
def running_job(info: JobInfo) -> Iterator[None]:
    """Make ``info`` what :func:`current_job` returns inside the block."""
    token = _CURRENT.set(info)
    try:
        yield
    finally:
        _CURRENT.reset(token)

"""Background jobs: the same task functions in-process (embedded) or on Celery workers.

A :class:`JobRunner` persists every job in the ``jobs_jobs`` table (own
metadata, :class:`JobsBase`, usually in the vault catalog's database), runs
registered task functions ``fn(context, payload) -> dict`` on a pool of
threads, retries transient failures with back-off, resumes pending and
abandoned jobs after a restart, and records each job's outcome exactly once.
:mod:`radvault.jobs.celery_app` runs the same functions on Celery workers; it
is the only module that imports Celery.

Errors (part of :mod:`radvault.errors`' tree)::

    RadVaultError
    └── JobError
        ├── TransientError            raise it from a task to ask for a retry
        ├── JobRejected(ValueError)   a malformed submission
        │   └── IdempotencyConflict   a key reused for another request
        └── JobTimeout(TimeoutError)  wait() ran out of time
"""

from radvault.jobs._errors import (
    IdempotencyConflict,
    JobError,
    JobRejected,
    JobTimeout,
    TransientError,
    is_transient,
)
from radvault.jobs._job import Job, JobInfo, JobStatus, current_job
from radvault.jobs._models import JobsBase
from radvault.jobs._registry import TaskFunction, TaskRegistry, TaskSpec, default_registry, task
from radvault.jobs._runner import Backoff, Dispatcher, JobRunner, exponential_backoff

__all__ = [
    "Backoff",
    "Dispatcher",
    "IdempotencyConflict",
    "Job",
    "JobError",
    "JobInfo",
    "JobRejected",
    "JobRunner",
    "JobStatus",
    "JobTimeout",
    "JobsBase",
    "TaskFunction",
    "TaskRegistry",
    "TaskSpec",
    "TransientError",
    "current_job",
    "default_registry",
    "exponential_backoff",
    "is_transient",
    "task",
]

"""Scale-out: the same registered task functions, run by Celery workers over Redis.

Celery only carries job ids. The job itself (payload, status, attempts,
lease, result) stays in the job table, so idempotency keys, retries with
back-off, exactly-once completion and :meth:`JobRunner.wait` behave as in the
embedded runner. Every process builds the same two objects::

    runner = JobRunner(catalog.engine, registry, context=services)
    app = create_celery_app("redis://redis:6379/0", runner)

The API process then calls ``runner.submit(...)`` (which stores the job and
sends its message); worker processes run ``celery -A that.module worker``,
and each message calls ``runner.run_job(job_id)``, which claims the job under
a lease and runs ``fn(context, payload)``. Call ``runner.recover()`` when a
worker starts and now and then (Celery beat) to re-send jobs whose message
was lost or whose worker died.

Celery is an optional dependency (``pip install "celery[redis]"``); only this
module imports it.
"""

from __future__ import annotations

import logging
from typing import Any

from radvault.errors import ConfigurationError
from radvault.jobs._runner import JobRunner

try:
    from celery import Celery
except ImportError:  # pragma: no cover - exercised only without the extra installed
    Celery = None

__all__ = ["CeleryDispatcher", "celery_task_name", "create_celery_app"]

log = logging.getLogger(__name__)

TASK_PREFIX = "radvault.jobs."


def celery_task_name(task: str) -> str:
    """The Celery name wrapping registered task ``task`` (``radvault.jobs.<task>``)."""
    return TASK_PREFIX + task


class CeleryDispatcher:
    """Sends a job's id to the Celery task that wraps its registered function.

    Parameters
    ----------
    app : celery.Celery
        The app built by :func:`create_celery_app`.
    queue : str
        The queue the workers consume.
    """

    def __init__(self, app: Any, queue: str) -> None:
        self.app = app
        self.queue = queue

    def __call__(self, job_id: str, task: str, delay_s: float) -> None:
        """Send the message, to run no sooner than ``delay_s`` seconds from now."""
        self.app.send_task(
            celery_task_name(task), args=[job_id], queue=self.queue,
            countdown=delay_s if delay_s > 0 else None,
        )


def create_celery_app(
    broker_url: str,
    runner: JobRunner,
    *,
    queue: str = "radvault",
    main: str = "radvault",
) -> Any:
    """Build a Celery app whose tasks are the runner's registered task functions.

    Each registered name becomes the Celery task ``radvault.jobs.<name>``,
    taking one argument, the job id, and calling ``runner.run_job``. The
    runner's dispatcher is set to send those messages, so ``runner.submit``
    (and retries after a transient failure) go through the broker from now on.

    Parameters
    ----------
    broker_url : str
        ``redis://host:6379/0`` (any Celery broker URL works).
    runner : JobRunner
        Holds the database, registry and task context; not started (Celery
        workers replace its threads).
    queue : str
        The queue messages go to and workers consume.
    main : str
        The Celery app's name.

    Returns
    -------
    celery.Celery
        The app (not set as Celery's current app).

    Raises
    ------
    ConfigurationError
        When Celery is not installed or the broker URL is empty.
    """
    if Celery is None:
        raise ConfigurationError('Celery scale-out needs the extra: pip install "celery[redis]"')
    if not broker_url:
        raise ConfigurationError("a Celery broker URL is required")
    app = Celery(main, broker=broker_url, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # results live in the job table
        task_acks_late=True,  # a message is acknowledged once its attempt was recorded
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    for spec in runner.registry:
        _wrap(app, runner, spec.name)
    runner.set_dispatcher(CeleryDispatcher(app, queue))
    log.info("celery app built for %d task(s)", len(runner.registry))
    return app


def _wrap(app: Any, runner: JobRunner, task: str) -> None:
    def run(job_id: str) -> str:
        return runner.run_job(job_id).status.value

    run.__name__ = run.__qualname__ = f"run_{task.replace('.', '_').replace('-', '_')}"
    run.__doc__ = f"Run one job of registered task {task!r} (by job id)."
    app.task(name=celery_task_name(task), shared=False)(run)

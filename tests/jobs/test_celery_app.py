"""Scale-out: the same task functions run by a real Celery worker over the live Redis."""

from __future__ import annotations

import os
import socket
import threading
import uuid
from urllib.parse import urlparse

import pytest

from radvault.errors import ConfigurationError
from radvault.jobs import JobRunner, JobStatus, TransientError, current_job

celery = pytest.importorskip("celery", reason="Celery is an optional extra (celery[redis])")
pytest.importorskip("redis", reason="the Redis client comes with celery[redis]")

from celery.contrib.testing.worker import start_worker  # noqa: E402

from radvault.jobs.celery_app import (  # noqa: E402
    CeleryDispatcher,
    celery_task_name,
    create_celery_app,
)

REDIS_URL = os.environ.get("RADVAULT_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")


def _redis_unreachable() -> str | None:
    where = urlparse(REDIS_URL)
    try:
        with socket.create_connection((where.hostname, where.port or 6379), timeout=1):
            return None
    except OSError as exc:
        return f"Redis test server unreachable ({type(exc).__name__})"


def test_every_registered_task_is_wrapped_and_submit_dispatches(sqlite_url, registry, calls
                                                                ) -> None:
    registry.register("analyse", lambda context, payload: {})
    registry.register("report.render", lambda context, payload: {})
    runner = JobRunner(sqlite_url, registry, context=calls)
    try:
        app = create_celery_app("memory://", runner, queue="q-test")
        assert {celery_task_name("analyse"), celery_task_name("report.render")} <= set(app.tasks)
        sent: list[tuple[str, str, float]] = []
        runner.set_dispatcher(lambda job_id, task, delay: sent.append((job_id, task, delay)))
        job = runner.submit("analyse", {"i": 1}, idempotency_key="k", actor="u-1")
        runner.submit("analyse", {"i": 1}, idempotency_key="k", actor="u-1")  # not re-sent
        assert sent == [(job.job_id, "analyse", 0.0)]
        assert runner.recover() == 1  # still pending: announced again
    finally:
        runner.close()


def test_an_empty_broker_url_is_refused(sqlite_url, registry) -> None:
    runner = JobRunner(sqlite_url, registry)
    try:
        with pytest.raises(ConfigurationError):
            create_celery_app("", runner)
    finally:
        runner.close()


def test_a_celery_worker_runs_jobs_and_retries_through_redis(sqlite_url, registry, calls
                                                             ) -> None:
    why = _redis_unreachable()
    if why:
        pytest.skip(why)
    failed_once = threading.Event()

    @registry.task("analyse")
    def analyse(context, payload):
        context.record(current_job().job_id, payload)
        return {"instance_id": payload["instance_id"], "attempt": current_job().attempt}

    @registry.task("flaky")
    def flaky(context, payload):
        context.record(current_job().job_id, payload)
        if not failed_once.is_set():
            failed_once.set()
            raise TransientError("broker hiccup")
        return {"ok": True}

    queue = f"radvault-test-{uuid.uuid4().hex[:12]}"
    runner = JobRunner(sqlite_url, registry, context=calls, poll_s=0.05,
                       backoff=lambda attempt: 0.0)
    app = create_celery_app(REDIS_URL, runner, queue=queue)
    assert isinstance(runner._dispatcher, CeleryDispatcher)
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10,
                          loglevel="WARNING"):
            job = runner.submit("analyse", {"instance_id": "i-9"}, actor="u-1")
            retried = runner.submit("flaky", {}, actor="u-1")
            done = runner.wait(job.job_id, timeout=15)
            again = runner.wait(retried.job_id, timeout=15)
    finally:
        runner.close()
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)
        app.close()

    assert done.status is JobStatus.SUCCEEDED
    assert done.result == {"instance_id": "i-9", "attempt": 1}
    assert again.status is JobStatus.SUCCEEDED and again.attempts == 2
    assert calls.by_job == {job.job_id: 1, retried.job_id: 2}

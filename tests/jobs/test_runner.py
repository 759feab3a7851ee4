"""The job runner: results, idempotency, retries, restarts, crashed workers, exactly-once."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import update

from radvault.errors import ObjectNotFound, VaultError
from radvault.jobs import (
    IdempotencyConflict,
    JobError,
    JobRejected,
    JobRunner,
    JobsBase,
    JobStatus,
    JobTimeout,
    TransientError,
    current_job,
    exponential_backoff,
)
from radvault.vault.catalog import Catalog

JOBS = JobsBase.metadata.tables["jobs_jobs"]


@pytest.fixture(autouse=True)
def tasks(registry, calls):
    """The task functions the tests submit (each counts its invocations in the context)."""

    @registry.task("echo")
    def echo(context, payload):
        context.record(current_job().job_id, payload)
        return {"echo": payload, "attempt": current_job().attempt}

    @registry.task("flaky")
    def flaky(context, payload):
        n = context.record(current_job().job_id, payload)
        if n <= payload["fail_times"]:
            raise TransientError("the model server is busy")
        return {"succeeded_on": n}

    @registry.task("broken")
    def broken(context, payload):
        context.record(current_job().job_id, payload)
        raise ValueError("patient Jane Doe born 1970-01-01")  # a library message with PHI

    @registry.task("refused")
    def refused(context, payload):
        context.record(current_job().job_id, payload)
        raise VaultError("object o-1 cannot be opened")

    return registry


# ------------------------------------------------------------------ submit / run / result


def test_submitted_job_runs_and_its_result_is_stored(db_url, make_runner, calls) -> None:
    runner = make_runner(db_url)
    runner.start()
    job = runner.submit("echo", {"instance_id": "i-1", "n": [1, 2]}, actor="u-7")
    assert job.status is JobStatus.PENDING and job.attempts == 0 and job.actor == "u-7"

    done = runner.wait(job.job_id, timeout=10)

    assert done.status is JobStatus.SUCCEEDED
    assert done.result == {"echo": {"instance_id": "i-1", "n": [1, 2]}, "attempt": 1}
    assert done.attempts == 1 and done.error is None
    assert done.created_at <= done.started_at <= done.finished_at
    assert runner.get(job.job_id) == done
    assert calls.by_job == {job.job_id: 1}
    assert runner.counts() == {"pending": 0, "running": 0, "succeeded": 1, "failed": 0}


def test_task_gets_the_runner_context_and_a_copy_of_the_payload(sqlite_url, make_runner, registry
                                                                 ) -> None:
    seen = {}

    @registry.task("mutate")
    def mutate(context, payload):
        seen["context"] = context
        payload["added"] = True
        return {}

    marker = object()
    runner = make_runner(sqlite_url, context=marker)
    job = runner.submit("mutate", {"a": 1}, actor="system")
    runner.run_pending()
    assert seen["context"] is marker
    assert runner.get(job.job_id).payload == {"a": 1}
    assert current_job() is None  # only inside a task


def test_submission_is_checked(sqlite_url, make_runner) -> None:
    runner = make_runner(sqlite_url)
    with pytest.raises(ObjectNotFound):
        runner.submit("no-such-task", {}, actor="u-1")
    for bad in ({"when": {1, 2}}, {"x": float("nan")}, ["not", "a", "dict"], {1: "int key"}):
        with pytest.raises(JobRejected):
            runner.submit("echo", bad, actor="u-1")
    with pytest.raises(JobRejected):
        runner.submit("echo", {"blob": "x" * 70_000}, actor="u-1")
    with pytest.raises(JobRejected):
        runner.submit("echo", {}, actor="Jane Doe")  # spaces: not a pseudonymous id
    with pytest.raises(JobRejected):
        runner.submit("echo", {}, actor="u-1", idempotency_key="has space")
    assert runner.counts()["pending"] == 0


def test_wait_times_out_and_unknown_jobs_are_not_found(sqlite_url, make_runner) -> None:
    runner = make_runner(sqlite_url)  # never started
    job = runner.submit("echo", {}, actor="u-1")
    started = time.monotonic()
    with pytest.raises(JobTimeout):
        runner.wait(job.job_id, timeout=0.1)
    assert time.monotonic() - started < 2
    with pytest.raises(ObjectNotFound):
        runner.wait("0" * 32, timeout=0.1)
    with pytest.raises(ObjectNotFound):
        runner.get("0" * 32)


# ------------------------------------------------------------------ idempotency


def test_same_idempotency_key_returns_the_same_job_and_runs_once(db_url, make_runner, calls
                                                                 ) -> None:
    runner = make_runner(db_url)
    first = runner.submit("echo", {"i": 1}, idempotency_key="analyse:i-1:m-1", actor="u-1")
    again = runner.submit("echo", {"i": 1}, idempotency_key="analyse:i-1:m-1", actor="u-1")
    assert again.job_id == first.job_id
    runner.run_pending()
    after = runner.submit("echo", {"i": 1}, idempotency_key="analyse:i-1:m-1", actor="u-1")
    runner.run_pending()

    assert after.job_id == first.job_id and after.status is JobStatus.SUCCEEDED
    assert calls.by_job == {first.job_id: 1}
    assert runner.counts()["succeeded"] == 1
    other = runner.submit("echo", {"i": 1}, idempotency_key="analyse:i-2:m-1", actor="u-1")
    assert other.job_id != first.job_id


def test_reusing_a_key_for_another_request_is_refused(db_url, make_runner) -> None:
    runner = make_runner(db_url)
    runner.submit("echo", {"i": 1}, idempotency_key="k-1", actor="u-1")
    with pytest.raises(IdempotencyConflict):
        runner.submit("echo", {"i": 2}, idempotency_key="k-1", actor="u-1")
    with pytest.raises(IdempotencyConflict):
        runner.submit("flaky", {"i": 1}, idempotency_key="k-1", actor="u-1")
    assert sum(runner.counts().values()) == 1


def test_concurrent_submissions_with_one_key_make_one_job(db_url, make_runner) -> None:
    runners = [make_runner(db_url) for _ in range(2)]
    ids: list[str] = []
    barrier = threading.Barrier(8)

    def submit(i: int) -> None:
        barrier.wait()
        job = runners[i % 2].submit("echo", {"i": 1}, idempotency_key="same", actor="u-1")
        ids.append(job.job_id)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 8 and len(set(ids)) == 1
    assert sum(runners[0].counts().values()) == 1


# ------------------------------------------------------------------ retries


def test_transient_failure_is_retried_until_it_succeeds(db_url, make_runner, calls) -> None:
    runner = make_runner(db_url, max_attempts=3)
    runner.start()
    job = runner.submit("flaky", {"fail_times": 2}, actor="u-1")
    done = runner.wait(job.job_id, timeout=10)
    assert done.status is JobStatus.SUCCEEDED
    assert done.result == {"succeeded_on": 3} and done.attempts == 3
    assert done.error == "TransientError: the model server is busy"  # the last failure, kept
    assert calls.by_job[job.job_id] == 3


def test_retry_waits_out_the_backoff(sqlite_url, make_runner, clock, calls) -> None:
    runner = make_runner(sqlite_url, clock=clock, backoff=lambda attempt: 30.0 * attempt)
    job = runner.submit("flaky", {"fail_times": 1}, actor="u-1")
    assert runner.run_pending() == 1
    waiting = runner.get(job.job_id)
    assert waiting.status is JobStatus.PENDING and waiting.attempts == 1
    assert waiting.available_at == clock() + timedelta(seconds=30)
    assert runner.run_pending() == 0  # not due yet
    clock.advance(31)
    assert runner.run_pending() == 1
    assert runner.get(job.job_id).status is JobStatus.SUCCEEDED
    assert calls.by_job[job.job_id] == 2


def test_transient_failures_stop_at_max_attempts(sqlite_url, make_runner, calls) -> None:
    runner = make_runner(sqlite_url, max_attempts=3)
    job = runner.submit("flaky", {"fail_times": 99}, actor="u-1")
    assert runner.run_pending() == 3
    failed = runner.get(job.job_id)
    assert failed.status is JobStatus.FAILED and failed.attempts == 3
    assert failed.error == "TransientError: the model server is busy"
    assert calls.by_job[job.job_id] == 3


def test_permanent_failure_is_not_retried_and_keeps_phi_out(db_url, make_runner, calls) -> None:
    runner = make_runner(db_url, max_attempts=5)
    job = runner.submit("broken", {}, actor="u-1")
    assert runner.run_pending() == 1
    failed = runner.get(job.job_id)
    assert failed.status is JobStatus.FAILED and failed.attempts == 1
    assert failed.error == "ValueError"  # a library's message may carry PHI: type only
    assert "Jane" not in repr(failed)
    assert calls.by_job[job.job_id] == 1


def test_radvault_errors_are_final_and_keep_their_message(sqlite_url, make_runner) -> None:
    runner = make_runner(sqlite_url)
    job = runner.submit("refused", {}, actor="u-1")
    runner.run_pending()
    failed = runner.get(job.job_id)
    assert (failed.status, failed.attempts) == (JobStatus.FAILED, 1)
    assert failed.error == "VaultError: object o-1 cannot be opened"


def test_a_result_that_is_not_json_fails_the_job(sqlite_url, make_runner, registry) -> None:
    registry.register("bad-result", lambda context, payload: {"when": object()})
    runner = make_runner(sqlite_url)
    job = runner.submit("bad-result", {}, actor="u-1")
    runner.run_pending()
    failed = runner.get(job.job_id)
    assert failed.status is JobStatus.FAILED and failed.attempts == 1
    assert failed.error.startswith(f"{JobError.__name__}: task 'bad-result': task result")


def test_task_declared_transient_exceptions_are_retried(sqlite_url, make_runner, registry
                                                        ) -> None:
    class ServiceBusy(Exception):
        pass

    attempts = []

    def busy_once(context, payload):
        attempts.append(1)
        if len(attempts) == 1:
            raise ServiceBusy
        return {"ok": True}

    registry.register("busy", busy_once, transient=(ServiceBusy,))
    runner = make_runner(sqlite_url)
    job = runner.submit("busy", {}, actor="u-1")
    runner.run_pending()
    assert runner.get(job.job_id).status is JobStatus.SUCCEEDED and len(attempts) == 2


def test_exponential_backoff_doubles_up_to_the_cap() -> None:
    backoff = exponential_backoff(base_s=1.0, factor=2.0, max_s=5.0, jitter=0.0)
    assert [backoff(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]
    jittered = exponential_backoff(base_s=10.0, jitter=0.5)
    assert all(5.0 <= jittered(1) <= 15.0 for _ in range(50))


# ------------------------------------------------------------------ restarts and crashes


def test_pending_jobs_survive_a_restart(db_url, make_runner, registry, calls) -> None:
    gate = threading.Event()

    @registry.task("gated")
    def gated(context, payload):
        context.record(current_job().job_id, payload)
        gate.wait(5)
        return {"n": payload["n"]}

    first = make_runner(db_url, workers=1)
    jobs = [first.submit("gated", {"n": n}, actor="u-1") for n in range(5)]
    first.start()
    while calls.total == 0:  # one attempt in progress, four pending
        time.sleep(0.01)
    first.stop(drain=False)
    gate.set()
    assert first.stop(drain=True, timeout=5)  # the attempt in progress is recorded
    first.close()

    second = make_runner(db_url, workers=2)
    assert second.counts()["pending"] >= 3  # left over by the stopped runner
    second.start()
    finished = [second.wait(job.job_id, timeout=10) for job in jobs]
    assert [j.result for j in finished] == [{"n": n} for n in range(5)]
    assert all(j.status is JobStatus.SUCCEEDED for j in finished)
    assert calls.by_job == {job.job_id: 1 for job in jobs}


def _abandon(runner: JobRunner, job_id: str, *, attempts: int, lease_until) -> None:
    """Leave the job as a worker that crashed mid-task would: running, leased, never finished."""
    with runner.engine.begin() as conn:
        conn.execute(
            update(JOBS).where(JOBS.c.job_id == job_id).values(
                status="running", attempts=attempts, lease_owner="dead-runner/0",
                lease_expires_at=lease_until,
            )
        )


def test_a_crashed_workers_job_is_rerun_once_after_its_lease_expires(db_url, make_runner, clock,
                                                                     calls) -> None:
    runner = make_runner(db_url, clock=clock, lease_s=60)
    job = runner.submit("echo", {"i": 1}, actor="u-1")
    _abandon(runner, job.job_id, attempts=1, lease_until=clock() + timedelta(seconds=30))

    assert runner.run_pending() == 0  # the lease is still live: not stolen
    clock.advance(31)
    assert runner.run_pending() == 1
    assert runner.run_pending() == 0

    done = runner.get(job.job_id)
    assert done.status is JobStatus.SUCCEEDED and done.attempts == 2
    assert calls.by_job == {job.job_id: 1}


def test_a_job_abandoned_on_its_last_attempt_fails(db_url, make_runner, clock, calls) -> None:
    runner = make_runner(db_url, clock=clock, max_attempts=2)
    job = runner.submit("echo", {}, actor="u-1")
    _abandon(runner, job.job_id, attempts=2, lease_until=clock() - timedelta(seconds=1))
    assert runner.run_pending() == 0
    failed = runner.get(job.job_id)
    assert failed.status is JobStatus.FAILED and failed.attempts == 2
    assert failed.error.startswith("LeaseExpired")
    assert calls.total == 0


def test_a_late_worker_cannot_complete_a_job_taken_over(db_url, make_runner, registry, clock,
                                                        calls) -> None:
    started = [threading.Event(), threading.Event()]
    release = [threading.Event(), threading.Event()]

    @registry.task("stalls")
    def stalls(context, payload):
        n = context.record(current_job().job_id, payload)
        started[n - 1].set()
        release[n - 1].wait(5)
        return {"by": f"worker {n}"}

    late = make_runner(db_url, clock=clock, lease_s=60, workers=1)
    other = make_runner(db_url, clock=clock, lease_s=60, workers=1)
    job = late.submit("stalls", {}, actor="u-1")
    late.start()
    assert started[0].wait(5)
    clock.advance(120)  # the first worker's lease expires (its heartbeat would run at 20 s)
    other.start()
    assert started[1].wait(5)  # the job was taken over and runs again

    release[0].set()  # the late worker finishes while the second one holds the lease
    assert late.stop(drain=True, timeout=5)
    assert late.get(job.job_id).status is JobStatus.RUNNING  # its outcome was discarded
    release[1].set()
    done = other.wait(job.job_id, timeout=5)

    assert done.status is JobStatus.SUCCEEDED and done.result == {"by": "worker 2"}
    assert done.attempts == 2 and calls.by_job[job.job_id] == 2


def test_two_runners_never_both_complete_a_job(db_url, make_runner, registry, calls) -> None:
    completions: list[str] = []
    lock = threading.Lock()

    @registry.task("count")
    def count(context, payload):
        context.record(current_job().job_id, payload)
        time.sleep(0.005)
        with lock:
            completions.append(current_job().job_id)
        return {"i": payload["i"]}

    a = make_runner(db_url, workers=2)
    b = make_runner(db_url, workers=2)
    jobs = [(a if i % 2 else b).submit("count", {"i": i}, actor="u-1") for i in range(24)]
    a.start()
    b.start()
    finished = [a.wait(job.job_id, timeout=20) for job in jobs]

    assert all(j.status is JobStatus.SUCCEEDED and j.attempts == 1 for j in finished)
    assert sorted(completions) == sorted(job.job_id for job in jobs)  # each exactly once
    assert calls.total == 24


def test_the_lease_is_renewed_while_a_long_task_runs(sqlite_url, make_runner, registry, calls
                                                     ) -> None:
    @registry.task("long")
    def long(context, payload):
        context.record(current_job().job_id, payload)
        time.sleep(0.6)
        return {}

    worker = make_runner(sqlite_url, lease_s=0.3, workers=1)
    thief = make_runner(sqlite_url, lease_s=0.3)
    job = worker.submit("long", {}, actor="u-1")
    worker.start()
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        thief.run_pending()  # must never find the job claimable
        time.sleep(0.05)
    done = worker.wait(job.job_id, timeout=5)
    assert done.status is JobStatus.SUCCEEDED and done.attempts == 1
    assert calls.by_job[job.job_id] == 1


# ------------------------------------------------------------------ lifecycle and databases


def test_stop_with_drain_waits_for_the_attempt_in_progress(sqlite_url, make_runner, registry
                                                           ) -> None:
    started = threading.Event()

    @registry.task("nap")
    def nap(context, payload):
        started.set()
        time.sleep(0.2)
        return {"slept": True}

    runner = make_runner(sqlite_url, workers=1)
    job = runner.submit("nap", {}, actor="u-1")
    runner.start()
    assert runner.running
    assert started.wait(5)
    assert runner.stop(drain=True, timeout=5)
    assert not runner.running
    assert runner.get(job.job_id).status is JobStatus.SUCCEEDED


def test_run_job_runs_a_given_job_once(sqlite_url, make_runner, calls) -> None:
    runner = make_runner(sqlite_url)
    job = runner.submit("echo", {}, actor="u-1")
    assert runner.run_job(job.job_id).status is JobStatus.SUCCEEDED
    assert runner.run_job(job.job_id).status is JobStatus.SUCCEEDED  # a duplicate message
    assert calls.by_job == {job.job_id: 1}


def test_runner_shares_the_vault_catalog_database(db_url, make_runner, calls) -> None:
    with Catalog.create(db_url) as catalog:
        runner = make_runner(catalog.engine)
        job = runner.submit("echo", {"i": 1}, actor="u-1")
        runner.run_pending()
        assert runner.get(job.job_id).status is JobStatus.SUCCEEDED
        catalog.add_patient("p-1")  # the catalog's own tables are untouched and usable
        assert catalog.get_patient("p-1").pseudonym == "p-1"
    assert all(name.startswith("jobs_") for name in JobsBase.metadata.tables)


def test_bad_settings_are_refused(sqlite_url) -> None:
    from radvault.errors import ConfigurationError

    for kwargs in ({"workers": 0}, {"max_attempts": 0}, {"lease_s": 0}, {"poll_s": -1}):
        with pytest.raises(ConfigurationError):
            JobRunner(sqlite_url, **kwargs)
    with pytest.raises(ConfigurationError):
        JobRunner("mysql://nobody@db.invalid/jobs")
    with pytest.raises(ConfigurationError):
        exponential_backoff(factor=0.5)


def test_in_memory_sqlite_runs_in_the_calling_thread_only(make_runner, calls) -> None:
    from radvault.errors import ConfigurationError

    runner = make_runner("sqlite://")
    job = runner.submit("echo", {}, actor="u-1")
    assert runner.run_pending() == 1 and runner.get(job.job_id).status is JobStatus.SUCCEEDED
    with pytest.raises(ConfigurationError):
        runner.start()

"""When the runner itself fails: bugs fail the job at once with a PHI-free stack logged,
database trouble leaves the job to its lease, and worker threads keep serving."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from sqlalchemy import exc as sa_exc

from radvault.errors import VaultError
from radvault.jobs import JobRunner, JobStatus, TransientError, current_job

MRN = "MRN-4711-DOE"  # planted: must never reach a log record
RUNNER_LOG = "radvault.jobs._runner"


@pytest.fixture(autouse=True)
def tasks(registry, calls):
    @registry.task("echo")
    def echo(context, payload):
        context.record(current_job().job_id, payload)
        return {"attempt": current_job().attempt}

    @registry.task("flaky")
    def flaky(context, payload):
        if context.record(current_job().job_id, payload) <= payload["fail_times"]:
            raise TransientError("the model server is busy")
        return {}

    @registry.task("buggy")
    def buggy_task(context, payload):
        context.record(current_job().job_id, payload)
        patient = {"PatientID": MRN}  # a local holding PHI
        raise ValueError(f"no modality for {patient['PatientID']}")  # a message holding PHI

    @registry.task("refused")
    def refused(context, payload):
        raise VaultError("object o-1 cannot be opened")

    return registry


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="radvault.jobs")
    return caplog


def _unexpected(logs: pytest.LogCaptureFixture) -> list[str]:
    """The messages of the stack records the runner logged."""
    messages = [r.getMessage() for r in logs.records
                if r.name == RUNNER_LOG and r.levelno == logging.ERROR]
    return [m for m in messages if ": unexpected " in m.partition("\n")[0]]


def _no_phi(logs: pytest.LogCaptureFixture) -> None:
    text = logs.text + "".join(repr(r.args) for r in logs.records)
    assert MRN not in text
    assert all(r.exc_info is None for r in logs.records if r.name.startswith("radvault"))


def broken_backoff(attempt: int) -> float:
    """A back-off with a bug: the runner calls it after claiming and running the job."""
    detail = f"{MRN} attempt {attempt}"
    raise ZeroDivisionError(detail)


def _db_error() -> sa_exc.OperationalError:
    return sa_exc.OperationalError("UPDATE jobs_jobs ...", {}, Exception("database is locked"))


# ------------------------------------------------------------------ bugs around an attempt


def test_a_bug_after_the_claim_fails_the_job_at_once_and_the_worker_goes_on(
    db_url, make_runner, calls, logs
) -> None:
    runner = make_runner(db_url, workers=1, lease_s=60, backoff=broken_backoff)
    runner.start()
    job = runner.submit("flaky", {"fail_times": 1}, actor="u-1")

    failed = runner.wait(job.job_id, timeout=10)  # not left leased for the 60 s lease

    assert failed.status is JobStatus.FAILED and failed.attempts == 1
    assert failed.error == "ZeroDivisionError"
    [stack] = _unexpected(logs)
    assert stack.startswith(f"job {job.job_id} attempt 1 (task flaky): unexpected "
                            "ZeroDivisionError\n")
    own, _, context = stack.partition("\nraised while handling: ")
    assert " in _attempt\n" in own and own.endswith(" in broken_backoff")
    assert context.startswith("radvault.errors.TransientError\n")  # the chain is followed
    assert context.endswith(" in flaky")
    assert "radvault/jobs/_runner.py:" in stack
    assert "test_runner_failures.py:" in stack
    assert "database error" not in logs.text

    nxt = runner.submit("echo", {}, actor="u-1")  # the same worker thread serves the next job
    assert runner.wait(nxt.job_id, timeout=10).status is JobStatus.SUCCEEDED
    assert runner.running
    assert calls.by_job == {job.job_id: 1, nxt.job_id: 1}
    _no_phi(logs)


def test_a_bug_after_the_claim_fails_the_job_in_run_pending(sqlite_url, make_runner, calls,
                                                            logs) -> None:
    runner = make_runner(sqlite_url, backoff=lambda attempt: None)  # float(None): a TypeError
    job = runner.submit("flaky", {"fail_times": 1}, actor="u-1")
    after = runner.submit("echo", {}, actor="u-1")

    assert runner.run_pending() == 2  # the bug did not escape to the caller

    failed = runner.get(job.job_id)
    assert (failed.status, failed.attempts, failed.error) == (JobStatus.FAILED, 1, "TypeError")
    assert runner.get(after.job_id).status is JobStatus.SUCCEEDED
    [stack] = _unexpected(logs)
    assert "unexpected TypeError\n" in stack
    assert stack.partition("\nraised while handling: ")[0].endswith(" in _attempt")


def test_a_bug_after_the_claim_fails_the_job_in_run_job(sqlite_url, make_runner, logs) -> None:
    runner = make_runner(sqlite_url, backoff=broken_backoff)
    job = runner.submit("flaky", {"fail_times": 1}, actor="u-1")

    done = runner.run_job(job.job_id)  # a Celery worker's entry

    assert (done.status, done.error) == (JobStatus.FAILED, "ZeroDivisionError")
    assert len(_unexpected(logs)) == 1
    _no_phi(logs)


def test_a_bug_outside_any_job_is_logged_and_the_worker_survives(
    sqlite_url, make_runner, monkeypatch, logs
) -> None:
    runner = make_runner(sqlite_url, workers=1)
    claim = runner._store.claim
    broke = threading.Event()

    def claim_with_a_bug(*args: Any, **kwargs: Any):
        if not broke.is_set():
            broke.set()
            raise AttributeError(MRN)
        return claim(*args, **kwargs)

    monkeypatch.setattr(runner._store, "claim", claim_with_a_bug)
    runner.start()
    job = runner.submit("echo", {}, actor="u-1")

    assert runner.wait(job.job_id, timeout=10).status is JobStatus.SUCCEEDED
    assert broke.is_set()
    [stack] = _unexpected(logs)
    assert stack.startswith(f"job worker {runner.name}-worker-0: unexpected AttributeError\n")
    assert " in _run_one\n" in stack and stack.endswith(" in claim_with_a_bug")
    assert "database error" not in logs.text
    _no_phi(logs)


def test_a_bug_in_lease_renewal_is_logged_and_the_job_still_finishes(
    sqlite_url, make_runner, registry, monkeypatch, logs
) -> None:
    done_once = threading.Event()

    @registry.task("slow")
    def slow(context, payload):
        done_once.wait(2)
        return {}

    runner = make_runner(sqlite_url, workers=1, lease_s=0.3)

    def renew_with_a_bug(*args: Any) -> bool:
        done_once.set()
        raise KeyError(MRN)

    monkeypatch.setattr(runner._store, "renew", renew_with_a_bug)
    job = runner.submit("slow", {}, actor="u-1")
    assert runner.run_pending() == 1
    assert runner.get(job.job_id).status is JobStatus.SUCCEEDED
    stacks = _unexpected(logs)
    assert stacks and stacks[0].startswith(f"job {job.job_id}: lease renewal: unexpected KeyError")
    _no_phi(logs)


# ------------------------------------------------------------------ task failures


def test_a_permanent_task_failure_logs_its_stack_without_phi(db_url, make_runner, logs) -> None:
    runner = make_runner(db_url, max_attempts=3)
    job = runner.submit("buggy", {}, actor="u-1")
    runner.run_pending()

    failed = runner.get(job.job_id)
    assert (failed.status, failed.attempts, failed.error) == (JobStatus.FAILED, 1, "ValueError")
    [stack] = _unexpected(logs)
    assert stack.startswith(f"job {job.job_id} attempt 1 (task buggy): unexpected ValueError\n")
    assert stack.endswith(" in buggy_task")
    assert "no modality" not in stack
    _no_phi(logs)


def test_expected_failures_and_retries_log_no_stack(sqlite_url, make_runner, logs) -> None:
    runner = make_runner(sqlite_url, max_attempts=3)
    refused = runner.submit("refused", {}, actor="u-1")
    flaky = runner.submit("flaky", {"fail_times": 1}, actor="u-1")
    runner.run_pending()

    assert runner.get(refused.job_id).error == "VaultError: object o-1 cannot be opened"
    assert runner.get(flaky.job_id).status is JobStatus.SUCCEEDED
    assert _unexpected(logs) == []


def test_a_transient_failure_on_the_last_attempt_logs_its_stack(sqlite_url, make_runner,
                                                                registry, logs) -> None:
    @registry.task("disk")
    def disk(context, payload):
        raise OSError(28, "No space left on device", f"/scratch/{MRN}.dcm")

    runner = make_runner(sqlite_url, max_attempts=2)
    job = runner.submit("disk", {}, actor="u-1")
    assert runner.run_pending() == 2

    assert runner.get(job.job_id).status is JobStatus.FAILED
    [stack] = _unexpected(logs)  # only the final attempt's
    assert stack.startswith(f"job {job.job_id} attempt 2 (task disk): unexpected OSError\n")
    _no_phi(logs)


# ------------------------------------------------------------------ database trouble


def test_a_database_error_while_claiming_takes_the_retry_path(
    db_url, make_runner, monkeypatch, calls, logs
) -> None:
    runner = make_runner(db_url, workers=1)
    claim = runner._store.claim
    failures = iter(range(2))

    def flaky_claim(*args: Any, **kwargs: Any):
        if next(failures, None) is not None:
            raise _db_error()
        return claim(*args, **kwargs)

    monkeypatch.setattr(runner._store, "claim", flaky_claim)
    runner.start()
    job = runner.submit("echo", {}, actor="u-1")

    done = runner.wait(job.job_id, timeout=10)

    assert done.status is JobStatus.SUCCEEDED and done.attempts == 1
    assert logs.text.count("job worker: database error (OperationalError); retrying") == 2
    assert _unexpected(logs) == []
    assert runner.running


def test_a_database_error_after_the_claim_leaves_the_job_to_its_lease(
    sqlite_url, make_runner, monkeypatch, clock, calls, logs
) -> None:
    runner: JobRunner = make_runner(sqlite_url, clock=clock, lease_s=60)
    succeed = runner._store.succeed
    lost = iter([True])

    def succeed_once_unreachable(*args: Any, **kwargs: Any) -> bool:
        if next(lost, False):
            raise _db_error()
        return succeed(*args, **kwargs)

    monkeypatch.setattr(runner._store, "succeed", succeed_once_unreachable)
    job = runner.submit("echo", {}, actor="u-1")

    with pytest.raises(sa_exc.OperationalError):  # nothing could be recorded
        runner.run_pending()
    leased = runner.get(job.job_id)
    assert (leased.status, leased.attempts, leased.error) == (JobStatus.RUNNING, 1, None)
    assert runner.run_pending() == 0  # the lease still holds it
    clock.advance(61)
    assert runner.run_pending() == 1  # claimable again, as after a crashed worker

    done = runner.get(job.job_id)
    assert done.status is JobStatus.SUCCEEDED and done.attempts == 2
    assert calls.by_job[job.job_id] == 2
    assert _unexpected(logs) == []

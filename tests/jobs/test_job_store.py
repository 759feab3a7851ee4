"""The job table's claims and compare-and-set writes, straight on the store."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import event

from radvault.jobs import JobStatus
from radvault.jobs._store import JobStore, engine_from


@pytest.fixture
def store(db_url, clock):
    engine, close = engine_from(db_url)
    store = JobStore(engine, clock=clock)
    store.create_tables()
    store.create_tables()  # idempotent
    yield store
    close()


def add(store: JobStore, n: int = 0, max_attempts: int = 3):
    job, created = store.insert("echo", {"n": n}, actor="u-1", idempotency_key=None,
                                max_attempts=max_attempts)
    assert created
    return job


def test_claim_takes_the_oldest_due_job_under_a_lease(store, clock) -> None:
    first, second = add(store, 1), add(store, 2)
    clock.advance(1)
    job = store.claim("me/1", lease_s=60)
    assert job is not None and job.job_id == first.job_id
    assert job.status is JobStatus.RUNNING and job.attempts == 1 and job.started_at == clock()
    assert store.claim("me/2", lease_s=60).job_id == second.job_id
    assert store.claim("me/3", lease_s=60) is None


def test_only_the_lease_holder_can_renew_or_finish(store, clock) -> None:
    job = add(store)
    store.claim("holder/1", lease_s=60)
    assert not store.renew(job.job_id, "intruder/1", 60)
    assert not store.succeed(job.job_id, "intruder/1", {"x": 1})
    assert not store.fail(job.job_id, "intruder/1", "Boom", None)
    assert store.renew(job.job_id, "holder/1", 60)
    assert store.succeed(job.job_id, "holder/1", {"x": 2})
    assert not store.succeed(job.job_id, "holder/1", {"x": 3})  # recorded once
    done = store.get(job.job_id)
    assert done.status is JobStatus.SUCCEEDED and done.result == {"x": 2}


def test_an_expired_lease_passes_to_the_next_claimer(store, clock) -> None:
    job = add(store)
    store.claim("dead/1", lease_s=10)
    assert store.claim("live/1", lease_s=10) is None
    clock.advance(11)
    again = store.claim("live/1", lease_s=10)
    assert again.job_id == job.job_id and again.attempts == 2
    assert not store.succeed(job.job_id, "dead/1", {"by": "dead"})
    assert store.succeed(job.job_id, "live/1", {"by": "live"})


def test_a_retry_is_not_claimable_before_its_time(store, clock) -> None:
    job = add(store)
    store.claim("w/1", lease_s=10)
    assert store.fail(job.job_id, "w/1", "TransientError", clock() + timedelta(seconds=5))
    pending = store.get(job.job_id)
    assert pending.status is JobStatus.PENDING and pending.error == "TransientError"
    assert store.claim("w/2", lease_s=10) is None
    assert [j.job_id for j in store.due()] == []
    clock.advance(5)
    assert [j.job_id for j in store.due()] == [job.job_id]
    assert store.claim("w/2", lease_s=10).attempts == 2


def test_concurrent_claimers_never_take_the_same_job(store) -> None:
    jobs = {add(store, n).job_id for n in range(12)}
    taken: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(6)

    def claimer(i: int) -> None:
        barrier.wait()
        while (job := store.claim(f"c{i}/{len(taken)}", lease_s=60)) is not None:
            with lock:
                taken.append(job.job_id)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == sorted(jobs)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # SKIP LOCKED is PostgreSQL's
def test_postgresql_claims_skip_locked_rows(store) -> None:
    assert store.engine.dialect.name == "postgresql"
    seen: list[str] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", capture)
    try:
        add(store)
        assert store.claim("w/1", lease_s=10) is not None
    finally:
        event.remove(store.engine, "before_cursor_execute", capture)
    claims = [s for s in seen if s.lstrip().upper().startswith("UPDATE")]
    assert claims and all("FOR UPDATE SKIP LOCKED" in s for s in claims)


def test_timestamps_come_back_aware_and_in_utc(store, clock) -> None:
    job = add(store)
    stored = store.get(job.job_id)
    assert stored.created_at == clock() and stored.created_at.tzinfo is not None

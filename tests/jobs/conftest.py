"""Shared fixtures: a job database on SQLite and on PostgreSQL, a movable clock, a task log."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from radvault.jobs import JobRunner, TaskRegistry


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'catalog.sqlite3'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """A fresh job database: a SQLite file, or a throwaway PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.sqlite3'}"
        return
    yield request.getfixturevalue("pg_schema_url")


class FakeClock:
    """A clock that moves only when told (shared by runners that must agree on time)."""

    def __init__(self) -> None:
        self._now = datetime(2030, 1, 1, tzinfo=UTC)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class Calls:
    """Counts task invocations per job id (the context object handed to tasks)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_job: Counter[str] = Counter()
        self.payloads: list[dict[str, Any]] = []

    def record(self, job_id: str, payload: dict[str, Any]) -> int:
        with self.lock:
            self.by_job[job_id] += 1
            self.payloads.append(payload)
            return self.by_job[job_id]

    @property
    def total(self) -> int:
        with self.lock:
            return sum(self.by_job.values())


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def registry() -> TaskRegistry:
    return TaskRegistry()


@pytest.fixture
def make_runner(registry: TaskRegistry, calls: Calls) -> Iterator[Callable[..., JobRunner]]:
    """Build runners (fast polling, no back-off by default) and close them all afterwards."""
    made: list[JobRunner] = []

    def make(url: str, **kwargs: Any) -> JobRunner:
        kwargs.setdefault("context", calls)
        kwargs.setdefault("poll_s", 0.02)
        kwargs.setdefault("backoff", lambda attempt: 0.0)
        runner = JobRunner(url, registry, **kwargs)
        made.append(runner)
        return runner

    yield make
    for runner in made:
        runner.stop(drain=False)
    for runner in made:
        runner.close()

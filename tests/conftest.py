"""Fixtures every test folder shares: a throwaway schema on the test PostgreSQL server,
and a way to start several workers at the same instant; and, in CI, a skip is a failure.

Tests skip with a reason when a peer they need is missing (PostgreSQL, Redis, DCMTK,
Orthanc, Chromium, the shared data, the shipped models), so that a developer's laptop
can run what it can. In CI (``CI=true``, or ``RADVAULT_TEST_STRICT_SKIPS=1``) every one of
those is installed, so a skip there means a backend went untested while the run stayed
green: it is reported as a failure instead, unless the test is marked
``@pytest.mark.optional`` (needs what CI does not have, such as a CUDA GPU).
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest

from _strict_skips import pytest_runtest_makereport  # noqa: F401  (a hook)

#: The test server (CI runs PostgreSQL on loopback with trust auth and database ``test``).
PG_URL = os.environ.get("RADVAULT_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_unreachable() -> str | None:
    """Why the test server cannot be used, or ``None``."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed"
    try:
        with psycopg.connect(PG_URL, connect_timeout=2):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL test server unreachable ({type(exc).__name__})"


@pytest.fixture
def pg_schema_url() -> Iterator[str]:
    """A URL whose search path is a new schema, dropped after the test (skips if no server).

    Each test gets its own schema, so parallel runs never meet.
    """
    why = _pg_unreachable()
    if why:
        pytest.skip(why)
    import psycopg

    schema = f"rv_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def _run_at_once(n: int, work: Callable[[int], object]) -> list[BaseException]:
    """Run ``work(0)`` ... ``work(n - 1)`` on ``n`` threads released together by a
    barrier; return what they raised (empty when all went well)."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            barrier.wait()
            work(k)
        except BaseException as exc:  # handed back to the test
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


@pytest.fixture
def run_at_once() -> Callable[[int, Callable[[int], object]], list[BaseException]]:
    """``run_at_once(n, work)``: race ``n`` workers; returns their exceptions."""
    return _run_at_once

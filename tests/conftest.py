"""Fixtures every test folder shares: a throwaway schema on the test PostgreSQL server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

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

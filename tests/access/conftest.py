"""Shared fixtures of the access tests: a fake clock, an audit recorder, stores, services."""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from radvault.access.passwords import make_hasher
from radvault.access.store import AccessStore
from radvault.access.tokens import TokenService
from radvault.access.users import Accounts

PG_URL = os.environ.get(
    "RADVAULT_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
PASSWORD = "Vivid-Lantern-42!"
ISSUER = "https://radvault.test"
AUDIENCE = "radvault-api"


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 3, 1, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


# What the vault's AuditLog.append accepts (docs/audit.md): a fake that is
# laxer than the real log would let incompatible events through.
_ACTOR = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
_ACTION = re.compile(r"[a-z][a-z0-9_.]{0,63}")
_OBJECT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")


@dataclass
class AuditRecorder:
    """A list-appending fake of the vault's AuditLog.append, as strict as the real one."""

    events: list[tuple[str, str, str, list[str], dict[str, Any]]] = field(default_factory=list)

    def __call__(self, actor: str, action: str, outcome: str,
                 object_ids: Sequence[str], details: Mapping[str, Any]) -> None:
        assert _ACTOR.fullmatch(actor), actor
        assert _ACTION.fullmatch(action), action
        assert outcome in {"ok", "refused", "error"}, outcome
        assert all(_OBJECT_ID.fullmatch(i) for i in object_ids), object_ids
        encoded = json.dumps(dict(details), sort_keys=True)
        assert len(encoded) <= 2048 and json.loads(encoded) == dict(details), details
        self.events.append((actor, action, outcome, list(object_ids), dict(details)))

    def of(self, action: str) -> list[tuple[str, str, str, list[str], dict[str, Any]]]:
        return [e for e in self.events if e[1] == action]

    def text(self) -> str:
        return repr(self.events)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def audit() -> AuditRecorder:
    return AuditRecorder()


@pytest.fixture(scope="session")
def hasher():
    return make_hasher(time_cost=1, memory_cost_kib=8, parallelism=1)


@pytest.fixture
def store() -> Iterator[AccessStore]:
    s = AccessStore.create("sqlite://")
    yield s
    s.close()


def _postgres_engine() -> Iterator[Engine]:
    pytest.importorskip("psycopg", reason="psycopg is not installed")
    engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            pass
    except SQLAlchemyError:
        engine.dispose()
        pytest.skip(f"PostgreSQL is not reachable at {PG_URL}")
    schema = f"access_test_{uuid.uuid4().hex[:12]}"
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield engine.execution_options(schema_translate_map={None: schema})
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture
def pg_engine() -> Iterator[Engine]:
    """An engine on PostgreSQL, confined to a fresh schema dropped afterwards."""
    yield from _postgres_engine()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_engine(request, tmp_path) -> Iterator[Engine]:
    """An engine on a file SQLite database, then on PostgreSQL in a private schema."""
    if request.param == "sqlite":
        engine = create_engine(f"sqlite:///{tmp_path / 'access.sqlite3'}")
        yield engine
        engine.dispose()
    else:
        yield from _postgres_engine()


@pytest.fixture
def backend_store(backend_engine) -> AccessStore:
    return AccessStore.create(backend_engine)


def make_accounts(store: AccessStore, hasher, audit, clock) -> Accounts:
    accounts = Accounts(store, hasher=hasher, audit=audit, clock=clock)
    accounts.add_site("setup", "north")
    accounts.add_site("setup", "south")
    audit.events.clear()
    return accounts


@pytest.fixture
def accounts(store, hasher, audit, clock) -> Accounts:
    return make_accounts(store, hasher, audit, clock)


@pytest.fixture(scope="session")
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def tokens(accounts, signing_key) -> TokenService:
    return TokenService(accounts, signing_key, issuer=ISSUER, audience=AUDIENCE,
                        leeway=timedelta(seconds=5))


@pytest.fixture
def backend_accounts(backend_store, hasher, audit, clock) -> Accounts:
    return make_accounts(backend_store, hasher, audit, clock)

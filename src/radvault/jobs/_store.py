"""Persistence of jobs: short transactions, every worker write a compare-and-set.

Claiming is one ``UPDATE ... WHERE job_id = (SELECT ... LIMIT 1) RETURNING``
statement. On PostgreSQL the inner select carries ``FOR UPDATE SKIP LOCKED``,
so concurrent claimers pass over each other's rows instead of queueing; on
SQLite the statement runs under the database's single write lock (taken at
the statement's start, so a busy timeout applies rather than a failed lock
upgrade). Results, failures and lease renewals apply only while the row still
carries the claimer's lease token.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, insert, or_, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import URL

from radvault.errors import ConfigurationError, ObjectNotFound
from radvault.jobs._errors import IdempotencyConflict, JobError, JobRejected
from radvault.jobs._job import Job, JobStatus
from radvault.jobs._models import JobRow, JobsBase

__all__ = ["JobStore", "utcnow"]

log = logging.getLogger(__name__)

PAYLOAD_MAX_BYTES = 64 * 1024
RESULT_MAX_BYTES = 1024 * 1024
_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")  # printable ASCII, no spaces
_ACTOR = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")
_TABLE = JobRow.__table__
_C = _TABLE.c

Clock = Callable[[], datetime]

LEASE_EXPIRED_ERROR = "LeaseExpired: the worker stopped before finishing the last attempt"


def utcnow() -> datetime:
    """The current time as an aware UTC datetime (the default clock)."""
    return datetime.now(UTC)


def json_object(value: Any, what: str, limit: int) -> dict[str, Any]:
    """Return a JSON round-trip copy of a mapping, refusing anything else.

    Raises
    ------
    TypeError
        When ``value`` is not a mapping of JSON values (NaN included) or its
        JSON exceeds ``limit`` bytes.
    """
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a JSON object, not {type(value).__name__}")
    if not _string_keys(value):
        raise TypeError(f"{what} has an object key that is not a string")
    try:
        text = json.dumps(dict(value), allow_nan=False, sort_keys=True)
    except (TypeError, ValueError):
        raise TypeError(f"{what} is not JSON data (only str, numbers, bool, None, "
                        "lists and objects with string keys)") from None
    if len(text.encode()) > limit:
        raise TypeError(f"{what} is larger than {limit} bytes of JSON")
    copy: dict[str, Any] = json.loads(text)
    return copy


def _string_keys(value: Any) -> bool:
    """``True`` if every mapping inside ``value`` has only string keys (JSON would coerce them)."""
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _string_keys(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_string_keys(v) for v in value)
    return True


def _to_job(row: Mapping[str, Any]) -> Job:
    return Job(
        job_id=row["job_id"],
        task=row["task"],
        payload=dict(row["payload"]),
        actor=row["actor"],
        idempotency_key=row["idempotency_key"],
        status=JobStatus(row["status"]),
        attempts=int(row["attempts"]),
        max_attempts=int(row["max_attempts"]),
        result=None if row["result"] is None else dict(row["result"]),
        error=row["error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        available_at=row["available_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


def _eligible(now: datetime) -> Any:
    """Jobs a worker may claim now: due pending ones, and running ones whose lease expired."""
    return or_(
        and_(_C.status == JobStatus.PENDING.value, _C.available_at <= now),
        and_(
            _C.status == JobStatus.RUNNING.value,
            _C.lease_expires_at < now,
            _C.attempts < _C.max_attempts,
        ),
    )


def _abandoned(now: datetime) -> Any:
    """Running jobs whose lease expired on their last allowed attempt."""
    return and_(
        _C.status == JobStatus.RUNNING.value,
        _C.lease_expires_at < now,
        _C.attempts >= _C.max_attempts,
    )


class JobStore:
    """The ``jobs_jobs`` table, seen through short transactions.

    Parameters
    ----------
    engine : sqlalchemy.Engine
        SQLite or PostgreSQL.
    clock : callable
        Returns the current aware UTC time; every timestamp and lease
        comparison uses it (tests inject a clock to expire leases).

    Raises
    ------
    ConfigurationError
        When the database is neither SQLite nor PostgreSQL.
    """

    def __init__(self, engine: Engine, *, clock: Clock = utcnow) -> None:
        if engine.dialect.name not in ("sqlite", "postgresql"):
            raise ConfigurationError(
                f"unsupported job database {engine.dialect.name!r} (sqlite, postgresql)"
            )
        self.engine = engine
        self._clock = clock
        self._dialect = pg_dialect if engine.dialect.name == "postgresql" else sqlite_dialect

    def now(self) -> datetime:
        """The store's clock, checked to be timezone-aware."""
        now = self._clock()
        if now.tzinfo is None:
            raise ConfigurationError("the job runner's clock must return aware datetimes")
        return now

    def create_tables(self) -> None:
        """Create the ``jobs_`` tables if missing (idempotent).

        Raises
        ------
        JobError
            When the database cannot be reached.
        """
        try:
            JobsBase.metadata.create_all(self.engine)
        except sa_exc.OperationalError as exc:
            raise JobError(f"job database cannot be opened ({type(exc.orig).__name__})") from None

    # ------------------------------------------------------------------ submit / read

    def insert(
        self,
        task: str,
        payload: Mapping[str, Any],
        *,
        actor: str,
        idempotency_key: str | None,
        max_attempts: int,
    ) -> tuple[Job, bool]:
        """Store a new pending job, or return the one already stored under the key.

        Returns
        -------
        (Job, bool)
            The job, and whether it was created now.

        Raises
        ------
        JobRejected
            When the payload is not a JSON object (or too large), or the actor
            or key is malformed.
        IdempotencyConflict
            When the key already names a job of another task or payload.
        """
        try:
            body = json_object(payload, "payload", PAYLOAD_MAX_BYTES)
        except TypeError as exc:
            raise JobRejected(str(exc)) from None
        if not isinstance(actor, str) or not _ACTOR.match(actor):
            raise JobRejected("actor must be 1-128 characters of letters, digits and '_.:@-'")
        if idempotency_key is not None and (
            not isinstance(idempotency_key, str) or not _KEY.match(idempotency_key)
        ):
            raise JobRejected("idempotency key must be 1-200 printable ASCII characters")
        now = self.now()
        values = {
            "job_id": uuid.uuid4().hex,
            "task": task,
            "payload": body,
            "actor": actor,
            "idempotency_key": idempotency_key,
            "status": JobStatus.PENDING.value,
            "attempts": 0,
            "max_attempts": max_attempts,
            "created_at": now,
            "updated_at": now,
            "available_at": now,
        }
        with self.engine.begin() as conn:
            if idempotency_key is None:
                conn.execute(insert(_TABLE).values(values))
                created = True
            else:
                stmt = (
                    self._dialect.insert(_TABLE)
                    .values(values)
                    .on_conflict_do_nothing(index_elements=["idempotency_key"])
                )
                created = conn.execute(stmt).rowcount == 1
            row = conn.execute(
                select(_TABLE).where(
                    _C.job_id == values["job_id"]
                    if created
                    else _C.idempotency_key == idempotency_key
                )
            ).mappings().one()
        job = _to_job(row)
        if not created and (job.task != task or job.payload != body):
            raise IdempotencyConflict(
                f"idempotency key already used by job {job.job_id} for another request"
            )
        return job, created

    def get(self, job_id: str) -> Job:
        """Return the job.

        Raises
        ------
        ObjectNotFound
            When no job has this id.
        """
        with self.engine.connect() as conn:
            row = conn.execute(select(_TABLE).where(_C.job_id == job_id)).mappings().first()
        if row is None:
            raise ObjectNotFound(f"no job {job_id!r}")
        return _to_job(row)

    def counts(self) -> dict[str, int]:
        """How many jobs are in each status (every status present, zeros included)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(_C.status, func.count()).group_by(_C.status)).all()
        found = {status: int(n) for status, n in rows}
        return {s.value: found.get(s.value, 0) for s in JobStatus}

    def due(self, limit: int = 1000) -> list[Job]:
        """Jobs a worker could claim now (oldest first), for re-dispatch."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(_TABLE)
                .where(_eligible(self.now()))
                .order_by(_C.available_at, _C.created_at)
                .limit(limit)
            ).mappings()
            return [_to_job(r) for r in rows]

    # ------------------------------------------------------------------ workers

    def _has_work(self, conn: Connection, now: datetime, job_id: str | None) -> bool:
        query = select(_C.job_id).where(or_(_eligible(now), _abandoned(now)))
        if job_id is not None:
            query = query.where(_C.job_id == job_id)
        return conn.execute(query.limit(1)).first() is not None

    def claim(self, owner: str, lease_s: float, job_id: str | None = None) -> Job | None:
        """Atomically take the next claimable job (or the given one) under a new lease.

        Running jobs whose lease expired on their last allowed attempt are
        first marked failed (``LeaseExpired``); other expired ones are claimable.

        Parameters
        ----------
        owner : str
            A token unique to this claim; later writes must present it.
        lease_s : float
            Seconds until the lease expires unless renewed.
        job_id : str, optional
            Claim this job only (a Celery worker handling its message).

        Returns
        -------
        Job or None
            The claimed job (``running``, attempts incremented), or ``None``
            when nothing is claimable.
        """
        now = self.now()
        with self.engine.connect() as conn:  # read first: idle polling takes no write lock
            if not self._has_work(conn, now, job_id):
                return None
        with self.engine.begin() as conn:
            reap = select(_C.job_id).where(_abandoned(now))
            if job_id is not None:
                reap = reap.where(_C.job_id == job_id)
            reaped = conn.execute(
                update(_TABLE)
                .where(_C.job_id.in_(reap.with_for_update(skip_locked=True)), _abandoned(now))
                .values(
                    status=JobStatus.FAILED.value, error=LEASE_EXPIRED_ERROR, finished_at=now,
                    updated_at=now, lease_owner=None, lease_expires_at=None,
                )
            ).rowcount
            if reaped:
                log.warning("%d job(s) failed: worker lost on their last attempt", reaped)
            if job_id is None:
                target: Any = (
                    select(_C.job_id)
                    .where(_eligible(now))
                    .order_by(_C.available_at, _C.created_at)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                    .scalar_subquery()
                )
            else:
                target = job_id
            row = conn.execute(
                update(_TABLE)
                .where(_C.job_id == target, _eligible(now))
                .values(
                    status=JobStatus.RUNNING.value,
                    attempts=_C.attempts + 1,
                    lease_owner=owner,
                    lease_expires_at=now + timedelta(seconds=lease_s),
                    started_at=now,
                    updated_at=now,
                )
                .returning(*_TABLE.c)
            ).mappings().first()
        return None if row is None else _to_job(row)

    def renew(self, job_id: str, owner: str, lease_s: float) -> bool:
        """Extend the lease if ``owner`` still holds it; ``False`` when it was lost."""
        now = self.now()
        with self.engine.begin() as conn:
            done = conn.execute(
                update(_TABLE)
                .where(_C.job_id == job_id, _C.lease_owner == owner,
                       _C.status == JobStatus.RUNNING.value)
                .values(lease_expires_at=now + timedelta(seconds=lease_s), updated_at=now)
            )
            return done.rowcount == 1

    def succeed(self, job_id: str, owner: str, result: dict[str, Any]) -> bool:
        """Record the result if ``owner`` still holds the lease (exactly-once completion).

        Returns
        -------
        bool
            ``True`` if recorded; ``False`` if another worker took the job over.
        """
        now = self.now()
        return self._finish(
            job_id, owner,
            status=JobStatus.SUCCEEDED.value, result=result, finished_at=now, updated_at=now,
        )

    def fail(self, job_id: str, owner: str, error: str, retry_at: datetime | None) -> bool:
        """Record a failed attempt: back to ``pending`` until ``retry_at``, or ``failed``.

        Returns
        -------
        bool
            ``True`` if recorded; ``False`` if another worker took the job over.
        """
        now = self.now()
        if retry_at is None:
            return self._finish(
                job_id, owner, status=JobStatus.FAILED.value, error=error,
                finished_at=now, updated_at=now,
            )
        return self._finish(
            job_id, owner, status=JobStatus.PENDING.value, error=error,
            available_at=retry_at, updated_at=now,
        )

    def _finish(self, job_id: str, owner: str, **values: Any) -> bool:
        with self.engine.begin() as conn:
            done = conn.execute(
                update(_TABLE)
                .where(_C.job_id == job_id, _C.lease_owner == owner,
                       _C.status == JobStatus.RUNNING.value)
                .values(lease_owner=None, lease_expires_at=None, **values)
            )
            return done.rowcount == 1

    def __repr__(self) -> str:
        return f"JobStore({self.engine.dialect.name})"


def engine_from(target: Engine | str | URL) -> tuple[Engine, Callable[[], None] | None]:
    """An engine for ``target``, and how to close it when this layer opened it.

    A URL opens the database the way the vault catalog does (WAL, busy
    timeout and foreign keys on SQLite; psycopg 3 for ``postgresql://``).

    Raises
    ------
    ConfigurationError
        When the URL is malformed or names an unsupported database.
    """
    if isinstance(target, Engine):
        return target, None
    from radvault.vault.catalog import Catalog  # the catalog owns how databases are opened

    catalog = Catalog(target)
    return catalog.engine, catalog.close

"""SQLAlchemy model of the job table (private: callers use :class:`radvault.jobs.JobRunner`).

The table has metadata of its own (:class:`JobsBase`) so it can be created in
the vault catalog's database, or any other, without touching the catalog's
tables. Its name starts with ``jobs_``. No column holds PHI: payloads and
results are pseudonymous JSON, errors are an exception type and a short
message that the package guarantees PHI-free.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Index,
    Integer,
    MetaData,
    String,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from radvault._sqltypes import UTCDateTime

__all__ = ["JobRow", "JobsBase", "UTCDateTime"]

_NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class JobsBase(DeclarativeBase):
    """Declarative base of the jobs layer; ``JobsBase.metadata`` holds only ``jobs_`` tables."""

    metadata = MetaData(naming_convention=_NAMING)


class JobRow(JobsBase):
    """One submitted job: what to run, its state, its lease and its outcome.

    ``lease_owner`` is a token unique to one claim (runner name plus random
    hex); every state change made by a worker compares it, so a worker whose
    lease was taken over can never record an outcome.
    """

    __tablename__ = "jobs_jobs"

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    task: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    actor: Mapped[str] = mapped_column(String(128))
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(String(400))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    available_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lease_owner: Mapped[str | None] = mapped_column(String(96))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_jobs_jobs_status_available", "status", "available_at"),
        Index("ix_jobs_jobs_status_lease", "status", "lease_expires_at"),
    )

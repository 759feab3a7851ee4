"""SQLAlchemy models of the catalog (private: callers use :mod:`radvault.vault.catalog`).

Every table is declared here, including the audit trail's, so that one
``metadata.create_all`` builds a complete catalog on SQLite or PostgreSQL.
No column holds PHI: ids are pseudonyms or de-identified UIDs, digests are of
de-identified or sealed bytes, and the only identifying values live inside the
sealed ``patients.identity_blob``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from radvault._sqltypes import UTCDateTime

__all__ = [
    "AuditCheckpointRow",
    "AuditEntryRow",
    "Base",
    "InstanceRow",
    "ObjectRow",
    "PatientRow",
    "ResultRow",
    "SeriesRow",
    "StudyRow",
    "UTCDateTime",
    "utcnow",
]


def utcnow() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


_NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with stable constraint names (for future migrations)."""

    metadata = MetaData(naming_convention=_NAMING)


class PatientRow(Base):
    """A pseudonymous patient; identifying values only inside the sealed blob."""

    __tablename__ = "patients"

    pseudonym: Mapped[str] = mapped_column(String(128), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    identity_blob: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    identity_kek_id: Mapped[str | None] = mapped_column(String(128), nullable=True)


class StudyRow(Base):
    """A study, keyed by its de-identified StudyInstanceUID."""

    __tablename__ = "studies"

    study_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    patient_pseudonym: Mapped[str] = mapped_column(
        String(128), ForeignKey("patients.pseudonym", ondelete="RESTRICT"), index=True
    )
    site: Mapped[str] = mapped_column(String(64), default="default")
    modality: Mapped[str | None] = mapped_column(String(16), nullable=True)
    body_part: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    status: Mapped[str] = mapped_column(String(16), default="active")
    shredded_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (Index("ix_studies_site_created", "site", "created_at"),)


class SeriesRow(Base):
    """A series, keyed by its de-identified SeriesInstanceUID."""

    __tablename__ = "series"

    series_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    study_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("studies.study_id", ondelete="RESTRICT"), index=True
    )
    modality: Mapped[str | None] = mapped_column(String(16), nullable=True)
    body_part: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class InstanceRow(Base):
    """One image: a de-identified SOP instance, or a PNG/JPEG by content id."""

    __tablename__ = "instances"

    instance_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    series_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("series.series_id", ondelete="RESTRICT"), index=True
    )
    study_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("studies.study_id", ondelete="RESTRICT"), index=True
    )
    # Keyed digests (HMAC-SHA256, hex) of the file as received and of the decoded
    # pixels: Vault.source_digest / Vault.pixel_digest. Rows of vaults written
    # before digests were keyed hold the plain sha-256 instead; the names stay.
    source_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    source_format: Mapped[str] = mapped_column(String(16))
    rows: Mapped[int] = mapped_column(Integer)
    cols: Mapped[int] = mapped_column(Integer)
    frames: Mapped[int] = mapped_column(Integer, default=1)
    pixel_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ObjectRow(Base):
    """One sealed blob of an instance and the wrapped data key that opens it."""

    __tablename__ = "objects"

    object_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    instance_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("instances.instance_id", ondelete="RESTRICT"), index=True
    )
    kind: Mapped[str] = mapped_column(String(32))
    blob_key: Mapped[str] = mapped_column(String(255), unique=True)
    plain_size: Mapped[int] = mapped_column(BigInteger)
    sealed_size: Mapped[int] = mapped_column(BigInteger)
    sealed_sha256: Mapped[str] = mapped_column(String(64))
    kek_id: Mapped[str] = mapped_column(String(128), index=True)
    wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    record_signature: Mapped[bytes] = mapped_column(LargeBinary)
    signer_key_id: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (UniqueConstraint("instance_id", "kind", name="uq_objects_instance_kind"),)


class ResultRow(Base):
    """An analysis result for one instance (probabilities, model id, explanation refs)."""

    __tablename__ = "results"

    result_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    instance_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("instances.instance_id", ondelete="RESTRICT"), index=True
    )
    model_id: Mapped[str] = mapped_column(String(128))
    payload: Mapped[Any] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: The vault's signature over :func:`result_record_message` (added in session 10;
    #: a vault opened since signs its older rows once, so none stays unsigned).
    signature: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    signer_key_id: Mapped[str | None] = mapped_column(String(128), nullable=True)


class CatalogMetaRow(Base):
    """One fact about the catalog itself, e.g. whether older results still await signing."""

    __tablename__ = "catalog_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))


class AuditEntryRow(Base):
    """One hash-chained audit entry; ``object_ids`` and ``details`` hold canonical JSON."""

    __tablename__ = "audit_entries"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    ts: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(128), index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    outcome: Mapped[str] = mapped_column(String(16))
    object_ids: Mapped[str] = mapped_column(Text)
    details: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    entry_hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpointRow(Base):
    """A signature over the audit chain head at ``seq``."""

    __tablename__ = "audit_checkpoints"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    head_hash: Mapped[str] = mapped_column(String(64))
    signature: Mapped[bytes] = mapped_column(LargeBinary)
    signer_key_id: Mapped[str] = mapped_column(String(128))
    ts: Mapped[str] = mapped_column(String(32))

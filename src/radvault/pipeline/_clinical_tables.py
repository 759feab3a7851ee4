"""Tables of the clinical use cases (private: callers use :mod:`radvault.pipeline.clinical`).

The clinical layer keeps three small tables of its own, in their own
declarative metadata (:class:`ClinicalBase`) so they can live in the vault
catalog's database without the vault knowing of them. Every name starts with
``clinical_``:

``clinical_signoffs``
    A radiologist's sign-off of one analysis result: accepted or overridden,
    the final label, a comment sealed under the vault's identity key (free text
    may identify a patient), and an Ed25519 signature by the vault key over
    every field, so an edited row is detected on read.
``clinical_analysis_runs``
    Which result an analysis job stored for which instance, so a job re-run
    after a crash finds its own earlier work instead of storing a second result.
``clinical_reidentifications``
    Every re-identification: who, when, which study, and the stated reason,
    sealed under the identity key (the audit trail records only its length).

No column holds PHI in the clear.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Index,
    LargeBinary,
    MetaData,
    String,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from radvault._sqltypes import UTCDateTime

__all__ = [
    "AnalysisRunRow",
    "ClinicalBase",
    "ReidentificationRow",
    "SignOffRow",
    "UTCDateTime",
]

ID_LENGTH = 128
NAME_LENGTH = 128


_NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class ClinicalBase(DeclarativeBase):
    """Declarative base of the clinical tables (only ``clinical_`` tables)."""

    metadata = MetaData(naming_convention=_NAMING)


class SignOffRow(ClinicalBase):
    """One sign-off of one analysis result; the newest per instance is the current one."""

    __tablename__ = "clinical_signoffs"

    signoff_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    study_id: Mapped[str] = mapped_column(String(ID_LENGTH), index=True)
    instance_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    result_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    decision: Mapped[str] = mapped_column(String(16))
    predicted_label: Mapped[str] = mapped_column(String(NAME_LENGTH))
    final_label: Mapped[str] = mapped_column(String(NAME_LENGTH))
    sealed_comment: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    signed_by: Mapped[str] = mapped_column(String(NAME_LENGTH))
    signed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    signature: Mapped[bytes] = mapped_column(LargeBinary)
    signer_key_id: Mapped[str] = mapped_column(String(NAME_LENGTH))

    __table_args__ = (Index("ix_clinical_signoffs_instance", "instance_id", "signed_at"),)


class AnalysisRunRow(ClinicalBase):
    """The result one analysis job stored for one instance."""

    __tablename__ = "clinical_analysis_runs"

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    instance_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    result_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ReidentificationRow(ClinicalBase):
    """One re-identification and its sealed reason."""

    __tablename__ = "clinical_reidentifications"

    request_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    study_id: Mapped[str] = mapped_column(String(ID_LENGTH), index=True)
    requested_by: Mapped[str] = mapped_column(String(NAME_LENGTH))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime())
    purpose: Mapped[str] = mapped_column(String(16))
    sealed_reason: Mapped[bytes] = mapped_column(LargeBinary)

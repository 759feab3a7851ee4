"""SQLAlchemy tables of the identity and authorisation core (private).

The tables live in their own declarative metadata, :class:`AccessBase`, so
that they can share a database with the vault catalog without either package
importing the other. Every table name starts with ``access_`` so the two sets
never collide. No column holds a password or a token: passwords are stored as
argon2id hashes and refresh tokens as SHA-256 digests of 256-bit random strings.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from radvault._sqltypes import UTCDateTime

__all__ = [
    "AccessBase",
    "GrantRow",
    "RefreshTokenRow",
    "RevokedTokenRow",
    "SiteRow",
    "UTCDateTime",
    "UserRow",
]

NAME_LENGTH = 64
STUDY_ID_LENGTH = 128


_NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class AccessBase(DeclarativeBase):
    """Declarative base of the access tables, with stable constraint names."""

    metadata = MetaData(naming_convention=_NAMING)


class SiteRow(AccessBase):
    """A hospital or imaging centre; studies and users belong to one."""

    __tablename__ = "access_sites"

    name: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class UserRow(AccessBase):
    """A user account; removed users are kept (``deleted_at``) so names are never reused."""

    __tablename__ = "access_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    site: Mapped[str | None] = mapped_column(
        String(NAME_LENGTH), ForeignKey("access_sites.name", ondelete="RESTRICT"), nullable=True
    )
    password_hash: Mapped[str | None] = mapped_column(String(256), nullable=True)
    failed_attempts: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    locked_by_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class GrantRow(AccessBase):
    """A grant of one user to one study, or to every study of one site."""

    __tablename__ = "access_grants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("access_users.id", ondelete="CASCADE"), index=True
    )
    study_id: Mapped[str | None] = mapped_column(String(STUDY_ID_LENGTH), nullable=True)
    site: Mapped[str | None] = mapped_column(
        String(NAME_LENGTH), ForeignKey("access_sites.name", ondelete="RESTRICT"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    # Exactly one target. Duplicates are refused in code: NULLs never collide
    # in a unique constraint, on SQLite or PostgreSQL.
    __table_args__ = (
        CheckConstraint("(study_id IS NULL) <> (site IS NULL)", name="study_or_site"),
    )


class RefreshTokenRow(AccessBase):
    """One refresh token, known only by the SHA-256 of its value.

    All tokens descended from one login share a ``family_id``; presenting a
    revoked member again revokes the whole family (theft detection).
    """

    __tablename__ = "access_refresh_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    family_id: Mapped[str] = mapped_column(String(64), index=True)
    user_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("access_users.id", ondelete="CASCADE"), index=True
    )
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime())
    family_started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_reason: Mapped[str | None] = mapped_column(String(16), nullable=True)

    __table_args__ = (Index("ix_access_refresh_tokens_expires", "expires_at"),)


class RevokedTokenRow(AccessBase):
    """A revoked access token's ``jti``, kept until the token would have expired."""

    __tablename__ = "access_revoked_tokens"

    jti: Mapped[str] = mapped_column(String(128), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)

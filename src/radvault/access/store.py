"""Where accounts, grants and token state live: a SQLAlchemy database.

:class:`AccessStore` owns nothing but an engine and a session factory over the
``access_*`` tables (:mod:`radvault.access._models`). It may share a database,
and even an engine, with the vault catalog: the tables use their own metadata,
so neither side imports the other. SQLite (the embedded default) and
PostgreSQL (scale-out) behave the same.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, MetaData, create_engine, event, inspect, make_url, select
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from radvault.access._models import AccessBase, GrantRow, SiteRow, UserRow
from radvault.errors import ConfigurationError

__all__ = ["AccessStore"]

logger = logging.getLogger(__name__)


def _enable_sqlite_foreign_keys(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class AccessStore:
    """The access tables in one database.

    Build it with :meth:`create`; it makes the tables when they are missing.

    Parameters
    ----------
    engine : sqlalchemy.Engine
        An engine whose database already holds the access tables.
    owns_engine : bool
        Whether :meth:`close` should dispose of the engine (true when the store
        built it from a URL).
    """

    def __init__(self, engine: Engine, *, owns_engine: bool = False) -> None:
        self.engine = engine
        self._owns_engine = owns_engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def create(cls, engine_or_url: Engine | str) -> AccessStore:
        """Open (and, when needed, initialise) the access tables.

        Parameters
        ----------
        engine_or_url : sqlalchemy.Engine or str
            An engine to share (for instance the catalog's) or a database URL
            such as ``sqlite:///path/vault.sqlite3`` or
            ``postgresql://user@host/db`` (read with psycopg 3). ``sqlite://``
            gives a private in-memory database shared by all sessions of this store.

        Returns
        -------
        AccessStore
            A store whose tables exist.

        Raises
        ------
        ConfigurationError
            If the URL is invalid or the database cannot be reached or initialised.
        """
        owns = isinstance(engine_or_url, str)
        if isinstance(engine_or_url, str):
            engine = _engine_from_url(engine_or_url)
        else:
            engine = engine_or_url
        for attempt in (1, 2):
            try:
                AccessBase.metadata.create_all(engine)
                break
            except SQLAlchemyError as exc:
                if attempt == 1:
                    # Another process may have been creating them at the same instant
                    # (PostgreSQL: a duplicate type or table): look again, once.
                    continue
                if owns:
                    engine.dispose()
                raise ConfigurationError(
                    f"cannot initialise the access tables ({type(exc).__name__})"
                ) from None
        logger.debug("access tables ready on %s", engine.dialect.name)
        return cls(engine, owns_engine=owns)

    @property
    def metadata(self) -> MetaData:
        """The metadata of the access tables (for migrations and tests)."""
        return AccessBase.metadata

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error.

        Yields
        ------
        sqlalchemy.orm.Session
            The open session.

        Raises
        ------
        Exception
            Whatever the body raises, after the rollback.
        """
        with self._sessions() as session, session.begin():
            yield session

    def grants_of(self, username: str) -> tuple[frozenset[str], frozenset[str]]:
        """The sites and study ids a live account is granted.

        Parameters
        ----------
        username : str
            The account name.

        Returns
        -------
        tuple of (frozenset of str, frozenset of str)
            Granted site names and granted study ids; both empty for an unknown
            or removed account.
        """
        with self.session() as session:
            rows = session.execute(
                select(GrantRow.site, GrantRow.study_id)
                .join(UserRow, UserRow.id == GrantRow.user_id)
                .where(UserRow.username == username, UserRow.deleted_at.is_(None))
            ).all()
        sites = frozenset(site for site, _ in rows if site is not None)
        studies = frozenset(study for _, study in rows if study is not None)
        return sites, studies

    def has_site(self, name: str) -> bool:
        """Whether a site of this name exists.

        Safe on a database whose access tables were never made (a vault the
        clinical service never opened): then no site exists, and nothing is created.

        Parameters
        ----------
        name : str
            The site's name.

        Returns
        -------
        bool
            True when the site exists.
        """
        translate = self.engine.get_execution_options().get("schema_translate_map") or {}
        if not inspect(self.engine).has_table(SiteRow.__tablename__, schema=translate.get(None)):
            return False
        with self.session() as session:
            return session.get(SiteRow, name) is not None

    def close(self) -> None:
        """Dispose of the engine if this store created it."""
        if self._owns_engine:
            self.engine.dispose()

    def __repr__(self) -> str:
        return f"AccessStore(dialect={self.engine.dialect.name!r})"


def _engine_from_url(url: str) -> Engine:
    try:
        parsed = make_url(url)
        if parsed.drivername == "postgresql":
            # psycopg (3) is the driver RadVault uses; SQLAlchemy would pick psycopg2.
            parsed = parsed.set(drivername="postgresql+psycopg")
        if parsed.drivername.startswith("sqlite") and parsed.database in {None, "", ":memory:"}:
            engine = create_engine(
                parsed, poolclass=StaticPool, connect_args={"check_same_thread": False}
            )
        else:
            engine = create_engine(parsed)
    except (ArgumentError, ImportError, ValueError) as exc:
        raise ConfigurationError(f"invalid access database URL ({type(exc).__name__})") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _enable_sqlite_foreign_keys)
    return engine

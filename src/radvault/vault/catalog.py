"""The catalog: what the vault holds, where, under which keys, and with which digests.

A :class:`Catalog` is a small repository over SQLAlchemy 2. It runs on SQLite
(the embedded default: WAL journal, foreign keys on, a busy timeout, secure
delete) and on PostgreSQL by changing the URL only. Callers receive frozen
dataclass records, never live ORM objects, so no session ever leaks out.

Tables (see :mod:`radvault.vault._catalog_models`): ``patients`` (pseudonym and
a sealed identity record), ``studies``, ``series``, ``instances`` (one image,
unique by the sha-256 of the original file, which makes ingest idempotent),
``objects`` (one sealed blob each, with its wrapped data key and a signature
over the fields that must never change), ``results``, and the audit trail's
``audit_entries`` and ``audit_checkpoints`` (written by
:class:`radvault.vault.audit.AuditLog`).

Nothing here holds PHI: ids are pseudonyms or de-identified UIDs, and the only
identifying values are inside the sealed ``identity_blob``, which this module
stores but cannot open.

Batched writes (:class:`CatalogWriter`, from :meth:`Catalog.writing`) live in
:mod:`radvault.vault._catalog_writer`; the table handles, prebuilt statements
and row conversions both use live in :mod:`radvault.vault._catalog_sql`.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, func, insert, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from radvault.errors import (
    ConfigurationError,
    ObjectNotFound,
    VaultError,
)
from radvault.vault._catalog_models import (
    Base,
    CatalogMetaRow,
    InstanceRow,
    ObjectRow,
    PatientRow,
    ResultRow,
    StudyRow,
    utcnow,
)
from radvault.vault._catalog_records import (
    ID,
    KEY_ID,
    OBJECT_RECORD_TYPE,
    OBJECT_RECORD_TYPE_V1,
    STUDY_ACTIVE,
    STUDY_SHREDDED,
    AddInstanceResult,
    InstanceRecord,
    NewInstance,
    NewObject,
    ObjectRecord,
    PatientRecord,
    ResultRecord,
    Signer,
    StudyBinding,
    StudyRecord,
    Verifier,
    canonical_json,
    check,
    check_size,
    object_record_message,
    record_message,
    record_message_v2,
    result_record_message,
    verify_object_record,
    verify_result_record,
)
from radvault.vault._catalog_sql import (
    INSTANCE_BY_SOURCE,
    OBJECT_WITH_BINDING,
    existing,
    instance_record,
    to_instance,
    to_object,
    to_patient,
    to_result,
)
from radvault.vault._catalog_writer import CatalogWriter

__all__ = [
    "OBJECT_RECORD_TYPE",
    "OBJECT_RECORD_TYPE_V1",
    "STUDY_ACTIVE",
    "STUDY_SHREDDED",
    "AddInstanceResult",
    "Catalog",
    "CatalogWriter",
    "InstanceRecord",
    "NewInstance",
    "NewObject",
    "ObjectRecord",
    "PatientRecord",
    "ResultRecord",
    "Signer",
    "StudyBinding",
    "StudyRecord",
    "Verifier",
    "canonical_json",
    "object_record_message",
    "record_message",
    "record_message_v2",
    "result_record_message",
    "verify_object_record",
    "verify_result_record",
]

logger = logging.getLogger(__name__)

#: The catalog_meta key of the one-time signing of results stored before session 10.
_SIGNING_KEY = "results_signing"


# --------------------------------------------------------------------------- the repository


def _normalise_url(url: str | URL) -> URL:
    try:
        parsed = make_url(url)
    except (sa_exc.ArgumentError, ValueError):
        raise ConfigurationError("catalog URL is not a valid database URL") from None
    backend = parsed.get_backend_name()
    if backend == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if backend not in ("sqlite", "postgresql"):
        raise ConfigurationError(f"unsupported catalog database {backend!r} (sqlite, postgresql)")
    return parsed


def _make_engine(url: URL, busy_timeout_s: float, synchronous: str) -> Engine:
    if url.get_backend_name() == "postgresql":
        return create_engine(url, pool_pre_ping=True)
    in_memory = url.database in (None, "", ":memory:")
    kwargs: dict[str, Any] = {"connect_args": {"timeout": busy_timeout_s}}
    if in_memory:
        # One shared connection: tests and throwaway catalogs only (no concurrency).
        kwargs["poolclass"] = StaticPool
        kwargs["connect_args"]["check_same_thread"] = False
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # SQLAlchemy, not the sqlite3 module, decides when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute("PRAGMA secure_delete = ON")  # shredded keys are zeroed on disk
            cursor.execute(f"PRAGMA synchronous = {synchronous}")
            if not in_memory:
                cursor.execute("PRAGMA journal_mode = WAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writers take the write lock up front, so a read-then-write transaction
        # never fails half-way on a lock upgrade and two writers never interleave.
        immediate = conn.get_execution_options().get("radvault_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine



def _owner_only_sqlite_file(url: URL) -> None:
    """Make a SQLite catalog file readable by its owner only (0600), as the key file and
    audit log are: created so when missing (SQLite gives its WAL and shared-memory files
    the database file's permissions), tightened when an older one was not."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return
    path = url.database
    try:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        os.chmod(path, 0o600)
    except OSError:
        # Not ours to change (a read-only copy or file system), no such folder, not a
        # file: the engine then reports what matters in its own words.
        pass


class Catalog:
    """Repository over the vault's catalog database.

    Parameters
    ----------
    url : str or sqlalchemy.engine.URL
        ``sqlite:///path/catalog.sqlite3`` (embedded default) or
        ``postgresql://user@host/db`` (psycopg 3 is used for a bare
        ``postgresql://``). Credentials in the URL are never logged.
    busy_timeout_s : float
        How long a SQLite writer waits for another writer before failing.
    synchronous : {"FULL", "NORMAL"}
        SQLite's ``synchronous`` setting. ``FULL`` (the default) flushes the
        WAL at every commit; ``NORMAL`` only at checkpoints, which loses
        nothing when a process is killed and never corrupts the database, but
        may lose the last commits to an OS crash or power cut. PostgreSQL
        ignores it (its own ``synchronous_commit`` rules there).

    Raises
    ------
    ConfigurationError
        When the URL is malformed, names an unsupported database, or
        ``synchronous`` is not one of the two values.

    Notes
    -----
    ``Catalog(url)`` opens an existing catalog; :meth:`create` also creates the
    tables. Every method runs in its own short transaction; writes on SQLite
    use ``BEGIN IMMEDIATE``.
    """

    def __init__(self, url: str | URL, *, busy_timeout_s: float = 30.0,
                 synchronous: str = "FULL") -> None:
        self._url = _normalise_url(url)
        if synchronous not in ("FULL", "NORMAL"):
            raise ConfigurationError("catalog synchronous must be FULL or NORMAL")
        try:
            self._engine = _make_engine(self._url, busy_timeout_s, synchronous)
        except (sa_exc.NoSuchModuleError, ImportError):
            raise ConfigurationError(
                f"no database driver for {self._url.drivername!r} "
                "(PostgreSQL needs the psycopg[binary] package)"
            ) from None
        self._read = sessionmaker(self._engine, expire_on_commit=False)
        self._write_engine = self._engine.execution_options(radvault_write=True)
        self._write = sessionmaker(self._write_engine, expire_on_commit=False)

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def create(cls, url: str | URL, *, busy_timeout_s: float = 30.0,
               synchronous: str = "FULL") -> Catalog:
        """Open the catalog at ``url``, creating any missing tables.

        Raises
        ------
        ConfigurationError
            When the URL is malformed or names an unsupported database.
        VaultError
            When the database cannot be reached or the tables cannot be created.
        """
        _owner_only_sqlite_file(_normalise_url(url))
        catalog = cls(url, busy_timeout_s=busy_timeout_s, synchronous=synchronous)
        catalog.create_tables()
        return catalog

    def create_tables(self) -> None:
        """Create any missing catalog and audit tables (idempotent).

        Raises
        ------
        VaultError
            When the database cannot be reached or the tables cannot be created.
        """
        try:
            self._create_all()
            self._add_result_signature_columns()
        except sa_exc.OperationalError as exc:
            raise VaultError(
                f"catalog database cannot be opened ({type(exc.orig).__name__})"
            ) from None

    def iter_results(self, batch_size: int = 500) -> Iterator[ResultRecord]:
        """Yield every analysis result by id, a batch per short transaction (for verify)."""
        check_size("batch_size", batch_size, minimum=1)
        after = ""
        while True:
            with self._reading() as session:
                batch = [to_result(r) for r in session.scalars(
                    select(ResultRow).where(ResultRow.result_id > after)
                    .order_by(ResultRow.result_id).limit(batch_size))]
            yield from batch
            if len(batch) < batch_size:
                return
            after = batch[-1].result_id

    def result_signing_pending(self) -> bool:
        """Whether results stored before session 10 still await their one-time signing.

        Set when the signature columns are added to an older catalog, cleared by
        :meth:`sign_results`; a catalog made since never has it, so a result whose
        signature was removed is never signed again, only refused.
        """
        with self._reading() as session:
            row = session.get(CatalogMetaRow, _SIGNING_KEY)
            return row is not None and row.value == "pending"

    def unsigned_results(self) -> list[ResultRecord]:
        """Results stored without a signature (by a RadVault before session 10)."""
        with self._reading() as session:
            rows = session.scalars(select(ResultRow).where(ResultRow.signature.is_(None)))
            return [to_result(r) for r in rows]

    def sign_results(self, signatures: Sequence[tuple[str, bytes, str]]) -> None:
        """Store ``(result_id, signature, signer_key_id)`` for results stored unsigned, and
        mark the one-time signing done, in one transaction."""
        with self._write_engine.begin() as conn:
            for result_id, signature, key_id in signatures:
                conn.execute(update(ResultRow).where(ResultRow.result_id == result_id,
                                                     ResultRow.signature.is_(None))
                             .values(signature=signature, signer_key_id=key_id))
            conn.execute(update(CatalogMetaRow).where(CatalogMetaRow.key == _SIGNING_KEY)
                         .values(value="done"))

    def _create_all(self) -> None:
        """``create_all``, tolerating another process that creates a table at the same time
        (PostgreSQL then reports the table or its row type as already existing)."""
        for attempt in range(3):
            try:
                Base.metadata.create_all(self._write_engine)
                return
            except (sa_exc.ProgrammingError, sa_exc.IntegrityError) as exc:
                if "already exists" not in str(exc.orig) or attempt == 2:
                    raise

    def _add_result_signature_columns(self) -> None:
        """Give a catalog made before session 10 the results' signature columns.

        ``create_all`` makes missing tables only; this is the one column change the
        schema has had, so it is written out here rather than with a migration tool.
        """
        from sqlalchemy import inspect, text

        present = {c["name"] for c in inspect(self._write_engine).get_columns("results")}
        postgres = self.dialect_name == "postgresql"
        missing = [(name, kind) for name, kind in (("signature", "BYTEA" if postgres else "BLOB"),
                                                   ("signer_key_id", "VARCHAR(128)"))
                   if name not in present]
        if not missing:
            return
        # Several processes may open an older catalog at once (API, workers, DICOM):
        # adding a column another has just added is not an error.
        if_absent = "IF NOT EXISTS " if postgres else ""
        for name, kind in missing:
            try:
                with self._write_engine.begin() as conn:
                    conn.execute(text(f"ALTER TABLE results ADD COLUMN {if_absent}{name} {kind}"))
            except sa_exc.OperationalError as exc:
                if "duplicate column" not in str(exc.orig).lower():
                    raise
        try:
            with self._write_engine.begin() as conn:
                conn.execute(insert(CatalogMetaRow).values(key=_SIGNING_KEY, value="pending"))
        except sa_exc.IntegrityError:
            pass  # another process marked it first

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (shared with the audit log)."""
        return self._engine

    @property
    def dialect_name(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._engine.dialect.name

    def write_engine(self) -> Engine:
        """An engine view whose transactions take the write lock at BEGIN (SQLite)."""
        return self._write_engine

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Catalog({self.dialect_name})"

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        with self._write.begin() as session:
            yield session

    @contextmanager
    def _reading(self) -> Iterator[Session]:
        with self._read.begin() as session:
            yield session

    def _insert_ignore(self, session: Session, model: type[Any], values: Mapping[str, Any],
                       key: str) -> None:
        dialect = pg_dialect if self.dialect_name == "postgresql" else sqlite_dialect
        stmt = dialect.insert(model).values(**values).on_conflict_do_nothing(index_elements=[key])
        session.execute(stmt)

    # ------------------------------------------------------------------ patients

    def add_patient(self, pseudonym: str) -> PatientRecord:
        """Create the patient if new and return it (idempotent, race-safe).

        Raises
        ------
        ValueError
            When the pseudonym is malformed.
        """
        check(ID, "pseudonym", pseudonym)
        with self._writing() as session:
            self._insert_ignore(
                session, PatientRow, {"pseudonym": pseudonym, "created_at": utcnow()}, "pseudonym"
            )
            row = session.get(PatientRow, pseudonym)
            assert row is not None
            return to_patient(row)

    def get_patient(self, pseudonym: str) -> PatientRecord:
        """Return the patient.

        Raises
        ------
        ObjectNotFound
            When no patient has this pseudonym.
        """
        with self._reading() as session:
            row = session.get(PatientRow, pseudonym)
            if row is None:
                raise ObjectNotFound(f"no patient {pseudonym!r}")
            return to_patient(row)

    def set_identity(self, pseudonym: str, identity_blob: bytes, identity_kek_id: str) -> None:
        """Store (or replace) the sealed identity record of a patient.

        The blob must already be sealed under the identity key: this module
        never sees identifying values in the clear.

        Raises
        ------
        ObjectNotFound
            When no patient has this pseudonym.
        ValueError
            When the blob is empty or the key id malformed.
        """
        if not isinstance(identity_blob, bytes) or not identity_blob:
            raise ValueError("identity_blob must be non-empty bytes")
        check(KEY_ID, "identity_kek_id", identity_kek_id)
        with self._writing() as session:
            done = session.execute(
                update(PatientRow)
                .where(PatientRow.pseudonym == pseudonym)
                .values(identity_blob=identity_blob, identity_kek_id=identity_kek_id)
            )
            if done.rowcount != 1:  # type: ignore[attr-defined]
                raise ObjectNotFound(f"no patient {pseudonym!r}")

    def patients_with_identity_kek_other_than(
        self, kek_id: str, limit: int = 1000
    ) -> list[PatientRecord]:
        """Patients whose identity record is sealed under another key (for rotation)."""
        with self._reading() as session:
            rows = session.scalars(
                select(PatientRow)
                .where(PatientRow.identity_blob.is_not(None), PatientRow.identity_kek_id != kek_id)
                .order_by(PatientRow.pseudonym)
                .limit(limit)
            )
            return [to_patient(r) for r in rows]

    # ------------------------------------------------------------------ ingest

    def add_instance_with_objects(
        self,
        instance: NewInstance,
        objects: Sequence[NewObject],
        *,
        signer: Signer | None = None,
    ) -> AddInstanceResult:
        """Catalog one image and its sealed objects in a single transaction.

        The patient, study and series are created if new. If the same input
        file (``source_sha256``) or the same de-identified instance is already
        cataloged, nothing is written and the existing records are returned
        with ``created=False``; a concurrent duplicate that loses the race gets
        the same clean answer instead of a unique-constraint error.

        Parameters
        ----------
        instance : NewInstance
            The image.
        objects : sequence of NewObject
            Its sealed blobs (at most one per kind).
        signer : Signer, optional
            When given, signs each object's :func:`record_message`, replacing
            any signature already set; without it every object must carry one.

        Raises
        ------
        ValueError
            When an object carries no signature and no signer is given, or two
            objects share a kind or id.
        VaultError
            When the study or series already belongs to another patient or
            study, or an object id or blob key is already used elsewhere.
        """
        try:
            with self.writing() as writer:
                return writer.add_instance_with_objects(instance, objects, signer=signer)
        except sa_exc.IntegrityError as exc:
            # A concurrent ingest of the same file won the race, or an id clashed.
            logger.debug("catalog insert refused: %s", type(exc.orig).__name__)
            with self._read_engine_begin() as conn:
                found = existing(conn, instance)
            if found is not None:
                return found
            raise VaultError(
                f"instance {instance.instance_id}: an object id or blob key is already cataloged"
            ) from None

    @contextmanager
    def writing(self) -> Iterator[CatalogWriter]:
        """One write transaction for many catalog changes (group commit).

        Everything done through the yielded :class:`CatalogWriter` commits
        together when the block ends, or not at all. On SQLite the transaction
        holds the database's write lock from its start (``BEGIN IMMEDIATE``),
        so the audit trail can append in it too
        (:meth:`radvault.vault.audit.AuditLog.appending`, entered first).

        Raises
        ------
        VaultError
            When the database cannot be reached.
        sqlalchemy.exc.IntegrityError
            When a write clashed with a concurrent one (PostgreSQL); the whole
            transaction is rolled back.
        """
        with self._write_engine.begin() as conn:
            yield CatalogWriter(self.dialect_name, conn)

    def _read_engine_begin(self) -> Any:
        return self._engine.begin()

    # ------------------------------------------------------------------ look-ups

    def find_instance_by_source_sha256(self, source_sha256: str) -> InstanceRecord | None:
        """Return the instance whose row records this source digest, if any.

        The value is matched as stored: ``Vault.source_digest`` (keyed) for rows
        written now, the file's plain sha-256 for rows of older vaults
        (``Vault.find_instance_by_source`` tries both).
        """
        with self._engine.connect() as conn:
            row = conn.execute(INSTANCE_BY_SOURCE, {"source_sha256": source_sha256}).first()
            conn.rollback()
        return None if row is None else instance_record(row)

    def _study_query(self) -> Any:
        n = (
            select(func.count(InstanceRow.instance_id))
            .where(InstanceRow.study_id == StudyRow.study_id)
            .correlate(StudyRow)
            .scalar_subquery()
        )
        return select(StudyRow, n)

    @staticmethod
    def _to_study(row: StudyRow, n: int) -> StudyRecord:
        return StudyRecord(
            study_id=row.study_id,
            patient_pseudonym=row.patient_pseudonym,
            site=row.site,
            modality=row.modality,
            body_part=row.body_part,
            created_at=row.created_at,
            status=row.status,
            shredded_at=row.shredded_at,
            n_instances=int(n),
        )

    def get_study(self, study_id: str) -> StudyRecord:
        """Return the study.

        Raises
        ------
        ObjectNotFound
            When no study has this id.
        """
        with self._reading() as session:
            hit = session.execute(
                self._study_query().where(StudyRow.study_id == study_id)
            ).first()
            if hit is None:
                raise ObjectNotFound(f"no study {study_id!r}")
            return self._to_study(hit[0], hit[1])

    def list_studies(
        self, limit: int = 100, offset: int = 0, site: str | None = None
    ) -> list[StudyRecord]:
        """Return studies, newest first, a page at a time (optionally of one site)."""
        check_size("limit", limit)
        check_size("offset", offset)
        query = self._study_query()
        if site is not None:
            query = query.where(StudyRow.site == site)
        query = query.order_by(StudyRow.created_at.desc(), StudyRow.study_id).limit(limit)
        with self._reading() as session:
            return [self._to_study(r, n) for r, n in session.execute(query.offset(offset))]

    def get_instance(self, instance_id: str) -> InstanceRecord:
        """Return the instance.

        Raises
        ------
        ObjectNotFound
            When no instance has this id.
        """
        with self._reading() as session:
            row = session.get(InstanceRow, instance_id)
            if row is None:
                raise ObjectNotFound(f"no instance {instance_id!r}")
            return to_instance(row)

    def instances_of_study(self, study_id: str) -> list[InstanceRecord]:
        """Return the study's instances, in creation order (empty if none)."""
        with self._reading() as session:
            rows = session.scalars(
                select(InstanceRow)
                .where(InstanceRow.study_id == study_id)
                .order_by(InstanceRow.created_at, InstanceRow.instance_id)
            )
            return [to_instance(r) for r in rows]

    @staticmethod
    def _objects_where(session: Session, *criteria: Any, limit: int | None = None
                       ) -> list[ObjectRecord]:
        query = OBJECT_WITH_BINDING.where(*criteria).order_by(ObjectRow.object_id)
        if limit is not None:
            query = query.limit(limit)
        return [to_object(hit, hit, hit) for hit in session.execute(query)]

    def objects_of_instance(self, instance_id: str) -> list[ObjectRecord]:
        """Return the instance's sealed objects (empty if none)."""
        with self._reading() as session:
            return self._objects_where(session, ObjectRow.instance_id == instance_id)

    def objects_of_instances(self, instance_ids: Sequence[str], *,
                             kinds: Sequence[str] | None = None
                             ) -> dict[str, list[ObjectRecord]]:
        """The sealed objects of many instances in one query (instances without any are absent).

        ``kinds`` keeps only objects of those kinds (e.g. the model inputs a batch
        analysis opens), which halves the rows read and built.
        """
        out: dict[str, list[ObjectRecord]] = {}
        if not instance_ids:
            return out
        criteria = [ObjectRow.instance_id.in_(list(instance_ids))]
        if kinds is not None:
            criteria.append(ObjectRow.kind.in_(list(kinds)))
        with self._reading() as session:
            for obj in self._objects_where(session, *criteria):
                out.setdefault(obj.instance_id, []).append(obj)
        return out

    def get_object(self, object_id: str) -> ObjectRecord:
        """Return the object.

        Raises
        ------
        ObjectNotFound
            When no object has this id.
        """
        with self._reading() as session:
            found = self._objects_where(session, ObjectRow.object_id == object_id)
            if not found:
                raise ObjectNotFound(f"no object {object_id!r}")
            return found[0]

    def iter_objects(self, batch_size: int = 500) -> Iterator[ObjectRecord]:
        """Yield every object by id, a batch per short transaction (for verify scans)."""
        check_size("batch_size", batch_size, minimum=1)
        after = ""
        while True:
            with self._reading() as session:
                batch = self._objects_where(session, ObjectRow.object_id > after, limit=batch_size)
            yield from batch
            if len(batch) < batch_size:
                return
            after = batch[-1].object_id

    # ------------------------------------------------------------------ keys

    def objects_with_kek_other_than(self, kek_id: str, limit: int = 1000) -> list[ObjectRecord]:
        """Objects still wrapped under another key-encryption key (shredded ones excluded).

        Rotation calls this until it returns nothing, rewrapping each batch, so
        an interrupted rotation resumes where it stopped.
        """
        check_size("limit", limit, minimum=1)
        with self._reading() as session:
            return self._objects_where(
                session, ObjectRow.kek_id != kek_id, ObjectRow.wrapped_key.is_not(None),
                limit=limit,
            )

    def update_wrapped_key(
        self,
        object_id: str,
        wrapped: bytes,
        kek_id: str,
        *,
        expected_kek_id: str | None = None,
    ) -> bool:
        """Replace an object's wrapped data key (rotation).

        Never brings a shredded key back: the update applies only while the
        stored key is not ``NULL`` (and, if ``expected_kek_id`` is given, still
        wrapped under that key), so a shred that races a rotation wins.

        Returns
        -------
        bool
            ``True`` if the key was replaced, ``False`` if the object was
            shredded or rewrapped by someone else meanwhile.

        Raises
        ------
        ObjectNotFound
            When no object has this id.
        ValueError
            When ``wrapped`` is empty or ``kek_id`` malformed.
        """
        if not isinstance(wrapped, bytes) or not wrapped:
            raise ValueError("wrapped key must be non-empty bytes")
        check(KEY_ID, "kek_id", kek_id)
        criteria = [ObjectRow.object_id == object_id, ObjectRow.wrapped_key.is_not(None)]
        if expected_kek_id is not None:
            criteria.append(ObjectRow.kek_id == expected_kek_id)
        with self._writing() as session:
            done = session.execute(
                update(ObjectRow).where(*criteria).values(wrapped_key=wrapped, kek_id=kek_id)
            )
            if done.rowcount == 1:  # type: ignore[attr-defined]
                return True
            if session.get(ObjectRow, object_id) is None:
                raise ObjectNotFound(f"no object {object_id!r}")
            return False

    def shred_study(self, study_id: str) -> int:
        """Destroy the wrapped data keys of every object of a study (crypto-shredding).

        The study is marked ``shredded`` (the first shredding time is kept).
        On SQLite, ``secure_delete`` zeroes the old key bytes and the WAL is
        checkpointed and truncated afterwards so no copy stays in the journal.

        Returns
        -------
        int
            How many keys were destroyed now (0 when already shredded).

        Raises
        ------
        ObjectNotFound
            When no study has this id.

        Notes
        -----
        Copies outside the live database are out of reach: PostgreSQL keeps the
        old row version until VACUUM reuses its space (and in WAL archives), and
        backups of either database keep the wrapped keys. A key rotation after
        shredding, retiring the old KEK, makes every such copy useless.
        """
        with self._writing() as session:
            study = session.get(StudyRow, study_id)
            if study is None:
                raise ObjectNotFound(f"no study {study_id!r}")
            ids = select(InstanceRow.instance_id).where(InstanceRow.study_id == study_id)
            done = session.execute(
                update(ObjectRow)
                .where(ObjectRow.instance_id.in_(ids), ObjectRow.wrapped_key.is_not(None))
                .values(wrapped_key=None)
                .execution_options(synchronize_session=False)
            )
            count = int(done.rowcount)  # type: ignore[attr-defined]
            study.status = STUDY_SHREDDED
            if study.shredded_at is None:
                study.shredded_at = utcnow()
        self._flush_journal()
        logger.info("shredded %d data keys of one study", count)
        return count

    def relabel_study(self, study_id: str, *, modality: str | None, body_part: str | None,
                      signer: Signer) -> tuple[str | None, str | None]:
        """Record another modality and body part for a study, and sign its objects again,
        in a transaction of its own (:meth:`CatalogWriter.relabel_study` says more).

        Raises
        ------
        ObjectNotFound, ObjectShredded
            An unknown or shredded study.
        """
        with self.writing() as writer:
            before = writer.relabel_study(study_id, modality=modality, body_part=body_part,
                                          signer=signer)
        logger.info("relabelled one study")
        return before

    def _flush_journal(self) -> None:
        if self.dialect_name != "sqlite":
            return
        raw = self._engine.raw_connection()
        try:
            busy = raw.driver_connection.execute(  # type: ignore[union-attr]
                "PRAGMA wal_checkpoint(TRUNCATE)"
            ).fetchone()
            if busy and busy[0]:
                logger.warning("WAL checkpoint blocked by readers; retried at next shred")
        finally:
            raw.close()

    # ------------------------------------------------------------------ results

    def add_result(
        self,
        instance_id: str,
        model_id: str,
        payload: Mapping[str, Any],
        *,
        signer: Signer,
        result_id: str | None = None,
    ) -> ResultRecord:
        """Store an analysis result for an instance, signed by ``signer`` (the vault's).

        Reads through the vault refuse a result without the vault's signature.

        Raises
        ------
        ObjectNotFound
            When no instance has this id.
        ValueError
            When the payload is not JSON data or an id is malformed.
        """
        result_id = result_id or uuid.uuid4().hex
        check(ID, "result_id", result_id)
        check(ID, "model_id", model_id)
        body = json.loads(canonical_json(dict(payload)))
        try:
            with self._writing() as session:
                if session.get(InstanceRow, instance_id) is None:
                    raise ObjectNotFound(f"no instance {instance_id!r}")
                record = ResultRecord(result_id, instance_id, model_id, body, utcnow())
                row = ResultRow(
                    result_id=result_id, instance_id=instance_id, model_id=model_id,
                    payload=body, created_at=record.created_at,
                    signature=signer.sign(result_record_message(record)),
                    signer_key_id=signer.key_id,
                )
                session.add(row)
                session.flush()
                return to_result(row)
        except sa_exc.IntegrityError:
            raise VaultError(f"result {result_id} already exists") from None

    def results_of_instance(self, instance_id: str) -> list[ResultRecord]:
        """Return the instance's results, oldest first, as stored (signatures unchecked:
        :meth:`~radvault.vault.vault.Vault.results_of_instance` checks them)."""
        with self._reading() as session:
            rows = session.scalars(
                select(ResultRow)
                .where(ResultRow.instance_id == instance_id)
                .order_by(ResultRow.created_at, ResultRow.result_id)
            )
            return [to_result(r) for r in rows]

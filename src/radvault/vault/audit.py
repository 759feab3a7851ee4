"""The tamper-evident audit trail: a hash chain with signed checkpoints.

Every security-relevant event becomes one :class:`AuditEntry` in the catalog
table ``audit_entries``. Each entry carries ``prev_hash`` (the previous entry's
hash) and ``entry_hash = sha256(prev_hash || canonical JSON of its fields)``,
sequence number included, so an edited, removed, inserted or reordered entry
breaks the chain. Every ``checkpoint_every`` entries, and on :meth:`AuditLog.checkpoint`
and :meth:`AuditLog.close`, the vault key signs ``(seq, head_hash)`` into
``audit_checkpoints``: without the key nobody can rewrite the chain up to a
checkpoint unnoticed. :meth:`AuditLog.verify` reports each problem precisely.

Each entry and checkpoint is also appended as one JSON line to an optional
file (``RADVAULT_HOME/audit.log``, opened ``O_APPEND``, fsynced at every
checkpoint). The two copies fail differently: a database edit does not edit
the file, and truncating the database tail past the last checkpoint (which the
chain alone cannot prove) still leaves the file's lines as evidence. See
``docs/audit.md`` for the threat model, the residual risks and how to anchor
checkpoints outside the vault (:meth:`AuditLog.export_checkpoints`).

Entries never hold PHI: actors, actions and object ids are checked against
strict patterns, and ``details`` is limited to short JSON. Callers must only
put pseudonymous ids, counts, codes and reasons there; text a user typed that
the vault does not know (a login name, an id not in the catalog, a path) goes
in only as its keyed :class:`AuditDigest` (``Vault.audit_digest``).
"""


from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Engine, Table, func, insert, select
from sqlalchemy import exc as sa_exc

from radvault.errors import AuditChainError, ConfigurationError, VaultError
from radvault.vault._audit_digest import AUDIT_DIGEST_HEX, AUDIT_DIGEST_INFO, AuditDigest
from radvault.vault._audit_format import (
    ANCHORS_TYPE,
    CHECKPOINT_TYPE,
    ENTRY_TYPE,
    GENESIS_HASH,
    HEX64,
    AuditEntry,
    AuditReport,
    Checkpoint,
    checkpoint_message,
    entry_hash,
    entry_message,
    load_anchors,
    now_iso,
)
from radvault.vault._audit_verify import read_file_copy, verify_chain
from radvault.vault._catalog_models import AuditCheckpointRow, AuditEntryRow, Base
from radvault.vault.catalog import Catalog, Signer, Verifier, canonical_json

__all__ = [
    "ANCHORS_TYPE",
    "AUDIT_DIGEST_HEX",
    "AUDIT_DIGEST_INFO",
    "CHECKPOINT_TYPE",
    "ENTRY_TYPE",
    "GENESIS_HASH",
    "MAX_DETAILS_BYTES",
    "Action",
    "AuditAppender",
    "AuditDigest",
    "AuditEntry",
    "AuditLog",
    "AuditReport",
    "Checkpoint",
    "EntryDraft",
    "Outcome",
    "checkpoint_message",
    "entry_hash",
    "entry_message",
    "load_anchors",
]

logger = logging.getLogger(__name__)

MAX_DETAILS_BYTES: Final = 2048
"""The longest ``details`` an entry may carry, as canonical JSON."""
MAX_OBJECT_IDS: Final = 10_000

_ACTOR = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
_ACTION = re.compile(r"[a-z][a-z0-9_.]{0,63}")
_OBJECT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")
_BATCH = 5000

_ENTRIES: Table = AuditEntryRow.__table__  # type: ignore[assignment]
_CHECKPOINTS: Table = AuditCheckpointRow.__table__  # type: ignore[assignment]
_INSERT_ENTRY = insert(_ENTRIES)  # one statement, compiled once and cached


class Action(StrEnum):
    """The audit vocabulary. Other lower-case dotted names are accepted too."""

    INIT = "init"
    LOGIN = "login"
    LOGIN_FAILED = "login_failed"
    LOGOUT = "logout"
    UNLOCK = "unlock"
    UNLOCK_FAILED = "unlock_failed"
    INGEST = "ingest"
    INGEST_REFUSED = "ingest_refused"
    READ = "read"
    EXPORT = "export"
    ANALYSE = "analyse"
    REPORT = "report"
    REIDENTIFY = "reidentify"
    DELETE = "delete"
    SHRED = "shred"
    KEY_ROTATE = "key_rotate"
    GRANT = "grant"
    REVOKE = "revoke"
    ACCESS_DENIED = "access_denied"
    INTEGRITY_FAILURE = "integrity_failure"
    VERIFY = "verify"
    AUDIT_VERIFY = "audit_verify"
    MODEL_LOAD = "model_load"


class Outcome(StrEnum):
    """How an audited action ended."""

    OK = "ok"
    REFUSED = "refused"
    ERROR = "error"



# --------------------------------------------------------------------------- argument checks


def _check_actor(actor: str) -> str:
    if not isinstance(actor, str) or _ACTOR.fullmatch(actor) is None:
        raise ValueError(f"audit actor must match {_ACTOR.pattern!r}")
    return actor


def _check_action(action: str) -> str:
    value = str(action.value) if isinstance(action, Action) else action
    if not isinstance(value, str) or _ACTION.fullmatch(value) is None:
        raise ValueError(f"audit action must match {_ACTION.pattern!r}")
    return value


def _check_object_ids(object_ids: Iterable[str]) -> tuple[str, ...]:
    if isinstance(object_ids, str | bytes):
        raise TypeError("object_ids must be a sequence of ids, not one string")
    ids = tuple(object_ids)
    if len(ids) > MAX_OBJECT_IDS:
        raise ValueError(f"at most {MAX_OBJECT_IDS} object ids per audit entry")
    for oid in ids:
        if not isinstance(oid, str) or _OBJECT_ID.fullmatch(oid) is None:
            raise ValueError(f"audit object ids must match {_OBJECT_ID.pattern!r}")
    return ids


def _check_details(details: Mapping[str, Any] | None) -> dict[str, Any]:
    if details is None:
        return {}
    if not isinstance(details, Mapping):
        raise TypeError("audit details must be a mapping")
    plain = dict(details)
    try:
        text = canonical_json(plain)
    except (TypeError, ValueError):
        raise ValueError("audit details must be plain JSON data") from None
    if len(text) > MAX_DETAILS_BYTES:
        raise ValueError(f"audit details must encode to at most {MAX_DETAILS_BYTES} bytes")
    if json.loads(text) != plain:
        raise ValueError("audit details must survive a JSON round trip (str keys, lists)")
    return plain


# --------------------------------------------------------------------------- the log


class AuditLog:
    """Append-only, hash-chained audit trail stored in the catalog database.

    Parameters
    ----------
    catalog : Catalog or sqlalchemy.Engine
        Where the chain lives. A bare engine works for PostgreSQL; for SQLite
        pass the :class:`~radvault.vault.catalog.Catalog` (its engine takes the
        write lock at ``BEGIN``, which keeps concurrent writers from forking
        the chain).
    signer : Signer
        Signs checkpoints (``sign(bytes) -> bytes``, ``key_id``).
    verifier : Verifier
        Checks checkpoint signatures (``verify(message, signature)``, raising
        :class:`~radvault.errors.IntegrityError` on mismatch).
    checkpoint_every : int
        Sign the chain head every this many entries.
    file_path : str or Path, optional
        The append-only JSON-lines copy (``RADVAULT_HOME/audit.log``).
    clock : callable, optional
        Returns the entry time as an ISO string (tests inject fixed clocks).
    read_only : bool
        Inspect only: appends and checkpoints are refused (``VaultError``) and
        :meth:`close` signs nothing; reading and :meth:`verify` work as ever.

    Raises
    ------
    ConfigurationError
        When ``checkpoint_every`` is not positive or a bare SQLite engine is given
        that cannot be reopened.
    VaultError
        When the audit tables cannot be created or reached.
    """

    def __init__(
        self,
        catalog: Catalog | Engine,
        signer: Signer,
        verifier: Verifier,
        checkpoint_every: int = 100,
        *,
        file_path: str | os.PathLike[str] | None = None,
        clock: Callable[[], str] | None = None,
        read_only: bool = False,
    ) -> None:
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or (
            checkpoint_every < 1
        ):
            raise ConfigurationError("audit checkpoint_every must be a positive integer")
        self._owned: Catalog | None = None  # a catalog opened here, closed with the log
        if isinstance(catalog, Catalog):
            self._engine = catalog.engine
            self._write_engine = catalog.write_engine()
        elif catalog.dialect.name == "sqlite":
            if catalog.url.database in (None, "", ":memory:"):
                raise ConfigurationError("an in-memory SQLite audit log needs the Catalog itself")
            self._owned = Catalog(catalog.url)
            self._engine = self._owned.engine
            self._write_engine = self._owned.write_engine()
        else:
            self._engine = catalog
            self._write_engine = catalog
        self._signer = signer
        self._verifier = verifier
        self._every = checkpoint_every
        self._clock = clock or now_iso
        self._lock = threading.Lock()
        self._path = Path(file_path) if file_path is not None else None
        self._fd: int | None = None
        self._closed = False
        self.read_only = read_only
        if read_only:
            return
        try:
            Base.metadata.create_all(self._write_engine, tables=[_ENTRIES, _CHECKPOINTS])
        except (sa_exc.OperationalError, sa_exc.ProgrammingError) as exc:
            raise VaultError(
                f"audit tables cannot be opened ({type(exc.orig).__name__})"
            ) from None

    # ------------------------------------------------------------------ writing

    def append(
        self,
        actor: str,
        action: Action | str,
        outcome: Outcome | str = Outcome.OK,
        object_ids: Iterable[str] = (),
        details: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """Append one entry to the chain (and a checkpoint every N entries).

        Safe from many threads and processes: the head is read and the entry
        inserted in one transaction that holds the chain's write lock
        (``BEGIN IMMEDIATE`` on SQLite, a table lock on PostgreSQL).

        Parameters
        ----------
        actor : str
            Who acted: a user name or ``system``; never a patient identifier.
        action : Action or str
            What was done (:class:`Action`, or another lower-case dotted name).
        outcome : Outcome or str
            ``ok``, ``refused`` or ``error``.
        object_ids : iterable of str
            Pseudonymous ids the action touched (studies, instances, objects).
        details : mapping, optional
            Short JSON (at most 2 KB): codes, counts, reasons. Never PHI.

        Raises
        ------
        ValueError, TypeError
            When an argument is malformed, details are not plain JSON or too long.
        AuditChainError
            When the chain was truncated below its last checkpoint (appending
            would overwrite the evidence), or the log is closed.
        VaultError
            When the log was opened read-only.
        """
        with self.appending() as chain, self._write_engine.begin() as conn:
            return chain.append(conn, actor, action, outcome, object_ids, details)

    @contextmanager
    def appending(self) -> Iterator[AuditAppender]:
        """Append entries inside a caller's transaction (group commit).

        Take this *before* beginning the transaction (the lock order is: this
        log's thread lock, then the database's write lock), pass the
        transaction's connection to each :meth:`AuditAppender.append`, and
        commit before leaving the block. Once the block ends without an
        error, the entries go to the file copy (after the commit, as ever); on
        an error they are dropped, since the transaction rolled back::

            with audit.appending() as chain, catalog.write_engine().begin() as conn:
                ...  # the caller's own writes on conn
                chain.append(conn, "system", Action.INGEST, object_ids=[...])

        The chain stays serialised: the connection must hold the database's
        write lock (``BEGIN IMMEDIATE`` from the :class:`Catalog`'s write
        engine on SQLite; on PostgreSQL the first append locks the table).

        Raises
        ------
        AuditChainError
            When the log is closed.
        VaultError
            When the log was opened read-only.
        """
        if self.read_only:
            raise VaultError("the audit log was opened read-only: nothing can be appended")
        with self._lock:
            if self._closed:
                raise AuditChainError("the audit log is closed")
            appender = AuditAppender(self)
            yield appender
            appender._done = True
            self._write_lines(appender._lines, None, sync=appender._signed)

    def checkpoint(self) -> Checkpoint | None:
        """Sign the current chain head now (no-op if it is already signed).

        Returns
        -------
        Checkpoint or None
            The checkpoint covering the head, or ``None`` for an empty log.

        Raises
        ------
        AuditChainError
            When the chain was truncated below its last checkpoint.
        VaultError
            When the log was opened read-only.
        """
        if self.read_only:
            raise VaultError("the audit log was opened read-only: no checkpoint can be signed")
        with self._lock:
            with self._write_engine.begin() as conn:
                self._lock_chain(conn)
                head_seq, head_hash = self._head(conn)
                if head_seq == 0:
                    return None
                last = conn.execute(
                    select(_CHECKPOINTS).order_by(_CHECKPOINTS.c.seq.desc()).limit(1)
                ).first()
                if last is not None and last.seq > head_seq:
                    raise AuditChainError(
                        f"audit trail truncated below checkpoint {last.seq}; run audit verify"
                    )
                if last is not None and last.seq == head_seq:
                    return Checkpoint(last.seq, last.head_hash, bytes(last.signature),
                                      last.signer_key_id, last.ts)
                checkpoint = self._sign_head(conn, head_seq, head_hash)
            self._write_lines([], checkpoint)
            return checkpoint

    def close(self, *, checkpoint: bool = True) -> None:
        """Checkpoint the head, fsync and close the file copy (idempotent).

        Parameters
        ----------
        checkpoint : bool
            Sign the chain head first (the default, at every clean shutdown).

        Raises
        ------
        AuditChainError
            When the final checkpoint finds the chain truncated (the log is
            closed all the same).
        """
        if self._closed:
            return
        try:
            if checkpoint and not self.read_only:
                self.checkpoint()
        finally:
            with self._lock:
                self._closed = True
                if self._fd is not None:
                    os.fsync(self._fd)
                    os.close(self._fd)
                    self._fd = None
                if self._owned is not None:
                    self._owned.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _lock_chain(self, conn: Any) -> None:
        if conn.dialect.name == "postgresql":
            # Self-conflicting, yet plain SELECTs (verify, tail) still run alongside.
            name = conn.dialect.identifier_preparer.format_table(_ENTRIES)
            conn.exec_driver_sql(f"LOCK TABLE {name} IN SHARE ROW EXCLUSIVE MODE")

    @staticmethod
    def _head(conn: Any) -> tuple[int, str]:
        row = conn.execute(
            select(_ENTRIES.c.seq, _ENTRIES.c.entry_hash).order_by(_ENTRIES.c.seq.desc()).limit(1)
        ).first()
        return (0, GENESIS_HASH) if row is None else (int(row.seq), row.entry_hash)

    def _sign_head(self, conn: Any, seq: int, head_hash: str) -> Checkpoint:
        ts = self._clock()
        signature = self._signer.sign(checkpoint_message(seq, head_hash, ts))
        conn.execute(
            insert(_CHECKPOINTS).values(
                seq=seq, head_hash=head_hash, signature=signature,
                signer_key_id=self._signer.key_id, ts=ts,
            )
        )
        return Checkpoint(seq, head_hash, signature, self._signer.key_id, ts)

    def _write_lines(self, records: list[dict[str, Any]], checkpoint: Checkpoint | None,
                     *, sync: bool = False) -> None:
        """Append to the file copy after the commit (the database stays the primary copy)."""
        if self._path is None or not (records or checkpoint):
            return
        if checkpoint is not None:
            records = [*records, {"type": "checkpoint", **checkpoint.to_dict()}]
        try:
            if self._fd is None:
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
                self._fd = os.open(self._path, flags, 0o600)
            data = b"".join(canonical_json(r) + b"\n" for r in records)
            os.write(self._fd, data)  # one write: O_APPEND keeps lines whole across processes
            if checkpoint is not None or sync:
                os.fsync(self._fd)
        except OSError as exc:
            logger.error("audit file copy not written (%s); the catalog copy is intact",
                         type(exc).__name__)

    # ------------------------------------------------------------------ reading

    @staticmethod
    def _to_entry(row: Any) -> AuditEntry:
        try:
            ids = tuple(json.loads(row.object_ids))
            details = json.loads(row.details)
        except (json.JSONDecodeError, TypeError):
            ids, details = (), {"unreadable": True}
        return AuditEntry(int(row.seq), row.ts, row.actor, row.action, row.outcome, ids,
                          details, row.prev_hash, row.entry_hash)

    def tail(self, n: int = 20) -> list[AuditEntry]:
        """Return the last ``n`` entries, oldest first."""
        if n < 1:
            return []
        with self._engine.connect() as conn:
            rows = conn.execute(select(_ENTRIES).order_by(_ENTRIES.c.seq.desc()).limit(n)).all()
        return [self._to_entry(r) for r in reversed(rows)]

    def query(
        self,
        actor: str | None = None,
        action: Action | str | None = None,
        object_id: str | None = None,
        since: datetime | str | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        """Return matching entries, newest first.

        Parameters
        ----------
        actor, action, object_id : str, optional
            Exact matches (``object_id``: one of the entry's ids).
        since : datetime or str, optional
            Only entries at or after this time (naive datetimes are UTC).
        limit : int
            At most this many entries.
        """
        query = select(_ENTRIES).order_by(_ENTRIES.c.seq.desc())
        if actor is not None:
            query = query.where(_ENTRIES.c.actor == actor)
        if action is not None:
            query = query.where(_ENTRIES.c.action == _check_action(action))
        if since is not None:
            if isinstance(since, datetime):
                aware = since if since.tzinfo else since.replace(tzinfo=UTC)
                since = aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            query = query.where(_ENTRIES.c.ts >= since)
        if object_id is not None:
            # A coarse filter in SQL, the exact match below.
            needle = json.dumps(object_id)
            escaped = needle.replace("\\", "\\\\").replace("%", r"\%").replace("_", r"\_")
            query = query.where(_ENTRIES.c.object_ids.like(f"%{escaped}%", escape="\\"))
        out: list[AuditEntry] = []
        with self._engine.connect() as conn:
            for row in conn.execute(query.execution_options(yield_per=500)):
                entry = self._to_entry(row)
                if object_id is None or object_id in entry.object_ids:
                    out.append(entry)
                    if len(out) >= limit:
                        break
        return out

    def checkpoints(self) -> list[Checkpoint]:
        """Return every checkpoint stored in the catalog, by sequence number."""
        with self._engine.connect() as conn:
            rows = conn.execute(select(_CHECKPOINTS).order_by(_CHECKPOINTS.c.seq)).all()
        return [Checkpoint(r.seq, r.head_hash, bytes(r.signature), r.signer_key_id, r.ts)
                for r in rows]

    def export_checkpoints(self, since_seq: int = 0) -> str:
        """Export checkpoints as a JSON document to keep outside the vault.

        Print it, mail it, put it on WORM storage or have it timestamped
        (RFC 3161): later, :meth:`verify` with ``anchors=`` proves the chain up
        to the newest exported checkpoint, even against someone who deleted
        both the entries and the checkpoints from the catalog.
        """
        items = [c.to_dict() for c in self.checkpoints() if c.seq > since_seq]
        doc = {"type": ANCHORS_TYPE, "exported_at": now_iso(), "checkpoints": items}
        return json.dumps(doc, indent=1, sort_keys=True)

    # ------------------------------------------------------------------ verification

    def verify(
        self,
        anchors: str | bytes | Iterable[Checkpoint | Mapping[str, Any]] | None = None,
        *,
        check_file: bool = True,
    ) -> AuditReport:
        """Check the whole chain, its checkpoints, external anchors and the file copy.

        Read-only, and run on one consistent snapshot of the catalog. Reports
        entries altered ("entry 17: hash mismatch (altered)"), removed
        ("entries 40-41 missing"), moved ("entry 12 out of order", "entries
        12 and 13 swapped"), forged or inserted ("entry 30: not on the signed
        chain"), broken links, a tail truncated up to the newest checkpoint,
        anchor or file line, bad or missing checkpoints, and differences from
        the file copy. Entries after the last checkpoint are counted in
        ``notes``: nothing signed covers them yet.

        Parameters
        ----------
        anchors : str, bytes or iterable, optional
            Checkpoints kept outside the vault: an :meth:`export_checkpoints`
            document, or :class:`Checkpoint` objects or their dicts.
        check_file : bool
            Also compare the JSON-lines file copy, when there is one.

        Returns
        -------
        AuditReport
            ``ok`` is ``False`` when any problem was found.

        Raises
        ------
        AuditChainError
            When ``anchors`` is malformed (tampering is reported, not raised:
            see :meth:`AuditReport.raise_for_problems`).
        """
        external: list[Checkpoint] | None = None
        if anchors is not None:
            if isinstance(anchors, str | bytes):
                external = load_anchors(anchors)
            else:
                external = [a if isinstance(a, Checkpoint) else Checkpoint.from_dict(a)
                            for a in anchors]
        copy = None
        if check_file and self._path is not None and self._path.exists():
            copy = read_file_copy(self._path)
        with self._snapshot() as conn:
            stored = self._checkpoints(conn)
            return verify_chain(self._rows(conn), stored, self._verifier, anchors=external,
                                copy=copy)

    def _snapshot(self) -> Any:
        conn = self._engine.connect()
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        return _Snapshot(conn)

    @staticmethod
    def _rows(conn: Any) -> Iterator[Any]:
        after = 0
        first = True
        while True:
            query = select(_ENTRIES).order_by(_ENTRIES.c.seq).limit(_BATCH)
            if not first:
                query = query.where(_ENTRIES.c.seq > after)
            batch = conn.execute(query).all()
            yield from batch
            if len(batch) < _BATCH:
                return
            first = False
            after = int(batch[-1].seq)

    @staticmethod
    def _checkpoints(conn: Any) -> list[Checkpoint]:
        rows = conn.execute(select(_CHECKPOINTS).order_by(_CHECKPOINTS.c.seq)).all()
        return [Checkpoint(r.seq, r.head_hash, bytes(r.signature), r.signer_key_id, r.ts)
                for r in rows]

    def __iter__(self) -> Iterator[AuditEntry]:
        """Iterate over every entry, oldest first."""
        after = 0
        while True:
            with self._engine.connect() as conn:
                rows = conn.execute(
                    select(_ENTRIES).where(_ENTRIES.c.seq > after)
                    .order_by(_ENTRIES.c.seq).limit(_BATCH)
                ).all()
            yield from (self._to_entry(r) for r in rows)
            if len(rows) < _BATCH:
                return
            after = int(rows[-1].seq)



@dataclass(frozen=True)
class EntryDraft:
    """An audit entry to append: its fields before the chain numbers and hashes it."""

    actor: str
    action: Action | str
    outcome: Outcome | str = Outcome.OK
    object_ids: Iterable[str] = ()
    details: Mapping[str, Any] | None = None


class AuditAppender:
    """Appends entries inside one caller's transaction; made by :meth:`AuditLog.appending`.

    The chain head is read once, on the first append, and carried forward, so
    a batch of entries costs one look-up; the truncation check runs there too.
    """

    def __init__(self, log: AuditLog) -> None:
        self._log = log
        self._head: tuple[int, str] | None = None
        self._lines: list[dict[str, Any]] = []  # for the file copy, in chain order
        self._signed = False  # a checkpoint was made: the file copy gets fsynced
        self._done = False

    def append(
        self,
        conn: Any,
        actor: str,
        action: Action | str,
        outcome: Outcome | str = Outcome.OK,
        object_ids: Iterable[str] = (),
        details: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """Insert the next entry on ``conn`` (see :meth:`AuditLog.append` for the fields).

        Parameters
        ----------
        conn : sqlalchemy.engine.Connection
            The caller's connection, inside its write transaction.
        actor, action, outcome, object_ids, details
            As for :meth:`AuditLog.append`.

        Raises
        ------
        ValueError, TypeError
            When an argument is malformed, details are not plain JSON or too long.
        AuditChainError
            When the chain was truncated below its last checkpoint, or this
            appender's block has ended.
        """
        return self.append_many(conn, [EntryDraft(actor, action, outcome, object_ids,
                                                  details)])[0]

    def append_many(self, conn: Any, drafts: Sequence[EntryDraft]) -> list[AuditEntry]:
        """Insert several entries, in order, with one multi-row insert (as :meth:`append`).

        Every draft is checked before anything is inserted: a malformed one
        raises and none of them is appended.
        """
        checked = [(_check_actor(d.actor), _check_action(d.action), Outcome(d.outcome).value,
                    _check_object_ids(d.object_ids), _check_details(d.details))
                   for d in drafts]
        if self._done:
            raise AuditChainError("this audit appender's transaction has ended")
        if not checked:
            return []
        log = self._log
        head_seq, head_hash = self._chain_head(conn)
        entries: list[AuditEntry] = []
        rows: list[dict[str, Any]] = []
        for actor, action_name, outcome_name, ids, body in checked:
            seq = head_seq + 1
            ts = log._clock()
            digest = entry_hash(
                head_hash,
                entry_message(seq=seq, ts=ts, actor=actor, action=action_name,
                              outcome=outcome_name, object_ids=ids, details=body),
            )
            rows.append({"seq": seq, "ts": ts, "actor": actor, "action": action_name,
                         "outcome": outcome_name,
                         "object_ids": canonical_json(list(ids)).decode("utf-8"),
                         "details": canonical_json(body).decode("utf-8"),
                         "prev_hash": head_hash, "entry_hash": digest})
            entry = AuditEntry(seq, ts, actor, action_name, outcome_name, ids, body,
                               head_hash, digest)
            entries.append(entry)
            self._lines.append({"type": "entry", **entry.to_dict()})
            head_seq, head_hash = self._head = (seq, digest)
            if seq % log._every == 0:  # the checkpoint signs entries already inserted
                conn.execute(_INSERT_ENTRY, rows)
                rows = []
                checkpoint = log._sign_head(conn, seq, digest)
                self._lines.append({"type": "checkpoint", **checkpoint.to_dict()})
                self._signed = True
        if rows:
            conn.execute(_INSERT_ENTRY, rows)
        return entries

    def _chain_head(self, conn: Any) -> tuple[int, str]:
        """The chain head: read (and checked) on the first append, then carried forward."""
        if self._head is None:
            log = self._log
            log._lock_chain(conn)
            head_seq, head_hash = log._head(conn)
            last_cp = conn.scalar(select(func.max(_CHECKPOINTS.c.seq))) or 0
            if last_cp > head_seq:
                raise AuditChainError(
                    f"audit trail truncated below checkpoint {last_cp}; run audit verify"
                )
            if HEX64.fullmatch(head_hash) is None:
                raise AuditChainError("audit chain head is malformed; run audit verify")
            self._head = (head_seq, head_hash)
        return self._head


class _Snapshot:
    """One read transaction (REPEATABLE READ on PostgreSQL) around a connection."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._tx: Any = None

    def __enter__(self) -> Any:
        self._tx = self._conn.begin()
        return self._conn

    def __exit__(self, *exc_info: object) -> None:
        try:
            self._tx.rollback()  # read-only: nothing to keep
        finally:
            self._conn.close()

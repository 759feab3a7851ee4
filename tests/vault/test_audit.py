"""The audit trail: appends, checkpoints, and tampering that verify must name precisely.

Most tamper tests start from one 50-entry SQLite log (checkpoints at 20 and 40,
entries 41-50 unsigned, plus the JSON-lines file copy), copied afresh for
each test and then attacked with plain SQL, as someone with database access
but without the vault's signing key would.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import text
from sqlalchemy.exc import NoResultFound

from radvault.errors import AuditChainError, ConfigurationError, IntegrityError, VaultLocked
from radvault.vault.audit import (
    AUDIT_DIGEST_INFO,
    GENESIS_HASH,
    MAX_DETAILS_BYTES,
    Action,
    AuditDigest,
    AuditLog,
    Checkpoint,
    EntryDraft,
    Outcome,
    checkpoint_message,
    entry_hash,
    entry_message,
    load_anchors,
)
from radvault.vault.catalog import Catalog
from radvault.vault.keys import InMemoryKeyProvider

SEED = bytes(range(32))


class Ed25519Signer:
    """A tiny signer/verifier pair with the vault's duck types."""

    def __init__(self, seed: bytes = SEED, key_id: str = "audit-key-1") -> None:
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self.key_id = key_id

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def verify(self, message: bytes, signature: bytes) -> None:
        try:
            self._key.public_key().verify(signature, message)
        except InvalidSignature:
            raise IntegrityError("signature mismatch") from None


KEY = Ed25519Signer()
MALLORY = Ed25519Signer(seed=b"m" * 32, key_id="audit-key-1")


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.sqlite3'}"
        return
    yield request.getfixturevalue("pg_schema_url")


def fill(log: AuditLog, n: int, start: int = 1) -> None:
    actions = [Action.INGEST, Action.READ, Action.EXPORT, Action.ANALYSE]
    for i in range(start, start + n):
        log.append(("alice", "bob", "system")[i % 3], actions[i % 4],
                   object_ids=[f"2.25.{i}"], details={"n": i})


# --------------------------------------------------------------------------- a vault to attack


@dataclass
class Vault:
    catalog: Catalog
    log: AuditLog
    file: Path

    def sql(self, statement: str, **params: object) -> None:
        with self.catalog.engine.begin() as conn:
            conn.execute(text(statement), params)

    def row(self, seq: int) -> dict:
        with self.catalog.engine.connect() as conn:
            return dict(conn.execute(text("SELECT * FROM audit_entries WHERE seq = :s"),
                                     {"s": seq}).mappings().one())

    def forge(self, seq: int, prev_hash: str, actor: str = "mallory") -> str:
        """Write an entry at ``seq`` whose hash is right, as an attacker knowing the format can."""
        fields = {"ts": "2026-01-01T00:00:00.000000Z", "actor": actor, "action": "read",
                  "outcome": "ok", "object_ids": ["2.25.999"], "details": {}}
        digest = entry_hash(prev_hash, entry_message(seq=seq, **fields))
        self.sql("INSERT INTO audit_entries VALUES (:seq, :ts, :actor, :action, :outcome, "
                 ":ids, :details, :prev, :hash)", seq=seq, ids='["2.25.999"]', details="{}",
                 prev=prev_hash, hash=digest, **{k: fields[k] for k in
                                                 ("ts", "actor", "action", "outcome")})
        return digest

    def rehash_from(self, start: int) -> None:
        """Recompute every hash from ``start`` on, as an attacker covering an edit would."""
        prev = self.row(start - 1)["entry_hash"] if start > 1 else GENESIS_HASH
        seq = start
        while True:
            try:
                row = self.row(seq)
            except NoResultFound:  # past the last entry
                return
            fields = {k: row[k] for k in ("ts", "actor", "action", "outcome")}
            fields |= {"object_ids": json.loads(row["object_ids"]),
                       "details": json.loads(row["details"])}
            digest = entry_hash(prev, entry_message(seq=seq, **fields))
            self.sql("UPDATE audit_entries SET prev_hash = :p, entry_hash = :h WHERE seq = :s",
                     p=prev, h=digest, s=seq)
            prev, seq = digest, seq + 1

    def problems(self, **kwargs: object) -> tuple[str, ...]:
        return self.log.verify(**kwargs).problems


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("audit-template")
    catalog = Catalog.create(f"sqlite:///{home / 'catalog.sqlite3'}")
    log = AuditLog(catalog, KEY, KEY, checkpoint_every=20, file_path=home / "audit.log")
    fill(log, 50)
    log.close(checkpoint=False)
    catalog.close()
    return home


@pytest.fixture
def vault(template: Path, tmp_path: Path) -> Iterator[Vault]:
    home = tmp_path / "home"
    shutil.copytree(template, home)
    catalog = Catalog(f"sqlite:///{home / 'catalog.sqlite3'}")
    log = AuditLog(catalog, KEY, KEY, checkpoint_every=20, file_path=home / "audit.log")
    yield Vault(catalog, log, home / "audit.log")
    log.close(checkpoint=False)
    catalog.close()


# --------------------------------------------------------------------------- clean logs


def test_a_clean_log_verifies_and_counts_its_unsigned_tail(vault: Vault) -> None:
    report = vault.log.verify()
    assert report.ok and report.problems == ()
    assert (report.entries_checked, report.checkpoints_checked, report.head_seq,
            report.last_checkpoint_seq) == (50, 2, 50, 40)
    assert report.notes == (
        "10 entries after the last signed checkpoint (entries 41-50): normal, the next "
        "checkpoint signs them (one is written when the vault closes); until then their "
        "removal would show only in the audit file copy or against an external anchor",
    )
    report.raise_for_problems()


def test_close_signs_the_head(vault: Vault) -> None:
    vault.log.close()
    assert [c.seq for c in vault.log.checkpoints()] == [20, 40, 50]
    report = vault.log.verify()
    assert report.ok and report.notes == () and report.last_checkpoint_seq == 50
    with pytest.raises(AuditChainError, match="closed"):
        vault.log.append("alice", Action.READ)


def test_verify_changes_nothing(vault: Vault) -> None:
    before = (vault.log.tail(100), vault.log.checkpoints(), vault.file.read_bytes())
    vault.log.verify(anchors=vault.log.export_checkpoints())
    assert (vault.log.tail(100), vault.log.checkpoints(), vault.file.read_bytes()) == before


def test_entries_link_by_hash_in_a_pinned_format(vault: Vault) -> None:
    first, second = vault.log.tail(50)[:2]
    message = entry_message(seq=1, ts=first.ts, actor=first.actor, action=first.action,
                            outcome=first.outcome, object_ids=first.object_ids,
                            details=first.details)
    assert message == (
        b'{"action":"read","actor":"bob","details":{"n":1},"object_ids":["2.25.1"],'
        b'"outcome":"ok","seq":1,"ts":"' + first.ts.encode()
        + b'","type":"radvault.audit-entry/1"}'
    )
    assert first.prev_hash == GENESIS_HASH
    assert first.entry_hash == hashlib.sha256(bytes(32) + message).hexdigest()
    assert second.prev_hash == first.entry_hash


def test_the_file_copy_is_private_json_lines_with_checkpoints(vault: Vault) -> None:
    assert stat.S_IMODE(vault.file.stat().st_mode) == 0o600
    records = [json.loads(line) for line in vault.file.read_text().splitlines()]
    assert [r["seq"] for r in records if r["type"] == "entry"] == list(range(1, 51))
    assert [r["seq"] for r in records if r["type"] == "checkpoint"] == [20, 40]
    assert records[5] == {"type": "entry", **vault.log.tail(50)[5].to_dict()}


# --------------------------------------------------------------------------- tampering


@pytest.mark.parametrize(
    ("column", "value"),
    [("actor", "mallory"), ("action", "delete"), ("outcome", "refused"),
     ("ts", "2020-01-01T00:00:00.000000Z"), ("object_ids", '["2.25.4"]'),
     ("details", '{"n":0}'), ("details", "not json")],
)
def test_an_edited_field_is_named(vault: Vault, column: str, value: str) -> None:
    vault.sql(f"UPDATE audit_entries SET {column} = :v WHERE seq = 17", v=value)
    assert vault.problems() == ("entry 17: hash mismatch (altered)",)


def test_an_edit_covered_by_a_new_hash_breaks_the_next_link(vault: Vault) -> None:
    vault.sql("UPDATE audit_entries SET actor = 'mallory' WHERE seq = 17")
    old = vault.row(17)
    digest = entry_hash(old["prev_hash"], entry_message(
        seq=17, ts=old["ts"], actor="mallory", action=old["action"], outcome=old["outcome"],
        object_ids=json.loads(old["object_ids"]), details=json.loads(old["details"])))
    vault.sql("UPDATE audit_entries SET entry_hash = :h WHERE seq = 17", h=digest)
    assert vault.problems(check_file=False) == (
        "entry 18: chain broken (does not follow entry 17; an entry before it was inserted, "
        "replaced or removed)",
    )
    assert "entry 17: differs from the audit file copy" in vault.problems()


def test_a_chain_rewritten_from_an_edit_on_fails_at_the_checkpoints(vault: Vault) -> None:
    vault.sql("UPDATE audit_entries SET actor = 'mallory' WHERE seq = 17")
    vault.rehash_from(17)
    assert vault.problems(check_file=False) == (
        "checkpoint at 20: signed chain head not found (entries up to 20 were rewritten)",
        "checkpoint at 40: signed chain head not found (entries up to 40 were rewritten)",
    )
    assert "entries 17-50: differ from the audit file copy" in vault.problems()


def test_deleted_entries_are_named(vault: Vault) -> None:
    vault.sql("DELETE FROM audit_entries WHERE seq IN (25, 26, 33)")
    assert vault.problems() == ("entries 25-26 missing", "entry 33 missing")


def test_a_forged_entry_inserted_by_renumbering_is_named(vault: Vault) -> None:
    vault.sql("UPDATE audit_entries SET seq = seq + 1000 WHERE seq >= 30")
    vault.sql("UPDATE audit_entries SET seq = seq - 999 WHERE seq >= 1000")
    vault.forge(30, vault.row(29)["entry_hash"])
    assert vault.problems() == (
        "entry 30: not on the signed chain (forged or inserted)",
        "entries 31-51 out of order (renumbered by +1; their hashes are valid as entries "
        "30-50)",
    )


def test_a_forged_entry_replacing_a_deleted_one_is_caught(vault: Vault) -> None:
    vault.sql("DELETE FROM audit_entries WHERE seq = 30")
    vault.forge(30, vault.row(29)["entry_hash"])
    problems = vault.problems()
    assert problems[0] == ("entry 30: differs from the audit file copy")
    assert problems[1].startswith("entry 31: chain broken (does not follow entry 30")


def test_two_swapped_entries_are_named(vault: Vault) -> None:
    vault.sql("UPDATE audit_entries SET seq = -1 WHERE seq = 12")
    vault.sql("UPDATE audit_entries SET seq = 12 WHERE seq = 13")
    vault.sql("UPDATE audit_entries SET seq = 13 WHERE seq = -1")
    assert vault.problems() == (
        "entries 12 and 13 swapped (each one's hash is valid only at the other's position)",
    )


def test_an_entry_moved_to_the_end_is_named(vault: Vault) -> None:
    vault.sql("UPDATE audit_entries SET seq = 51 WHERE seq = 12")
    assert vault.problems() == (
        "entry 12 missing",
        "entry 51 out of order (its hash is valid only as entry 12)",
    )


def test_a_tail_deleted_past_a_checkpoint_is_proven_missing(vault: Vault) -> None:
    vault.sql("DELETE FROM audit_entries WHERE seq > 30")
    assert vault.problems(check_file=False) == (
        "entries 31-40 missing (log truncated; checkpoint at 40 proves they existed)",
    )
    assert vault.problems() == (
        "entries 31-50 missing (log truncated; checkpoint at 40 and the audit file copy "
        "prove they existed)",
    )
    with pytest.raises(AuditChainError, match="truncated below checkpoint 40"):
        vault.log.append("alice", Action.READ)


def test_a_tail_deleted_with_its_checkpoint_needs_an_anchor_or_the_file(vault: Vault) -> None:
    anchors = vault.log.export_checkpoints()  # shipped off the machine earlier
    vault.sql("DELETE FROM audit_entries WHERE seq > 30")
    vault.sql("DELETE FROM audit_checkpoints WHERE seq = 40")
    alone = vault.log.verify(check_file=False)
    assert alone.ok  # the documented residual risk: nothing inside the catalog proves it
    assert alone.notes[0].startswith("10 entries after the last signed checkpoint")
    assert vault.problems(anchors=anchors, check_file=False) == (
        "entries 31-40 missing (log truncated; checkpoint at 40 proves they existed)",
        "checkpoint at 40: missing from the catalog (kept by the external anchor)",
    )
    assert vault.problems() == (
        "entries 31-50 missing (log truncated; checkpoint at 40 and the audit file copy "
        "prove they existed)",
        "checkpoint at 40: missing from the catalog (kept by the audit file copy)",
    )


def test_a_forged_checkpoint_signature_is_named(vault: Vault) -> None:
    cp = vault.log.checkpoints()[0]
    fake = MALLORY.sign(checkpoint_message(cp.seq, cp.head_hash, cp.ts))
    vault.sql("UPDATE audit_checkpoints SET signature = :s WHERE seq = 20", s=fake)
    assert vault.problems(check_file=False) == ("checkpoint at 20: bad signature",)
    assert vault.problems() == (
        "checkpoint at 20: differs from the audit file copy",
        "checkpoint at 20: bad signature",
    )


def test_a_checkpoint_forged_over_a_rewritten_chain_is_refused(vault: Vault) -> None:
    vault.sql("UPDATE audit_entries SET actor = 'mallory' WHERE seq = 45")
    vault.rehash_from(45)
    head = vault.row(50)
    ts = "2026-01-01T00:00:00.000000Z"
    vault.sql("INSERT INTO audit_checkpoints VALUES (50, :h, :s, 'audit-key-1', :ts)",
              h=head["entry_hash"], ts=ts,
              s=MALLORY.sign(checkpoint_message(50, head["entry_hash"], ts)))
    assert vault.problems(check_file=False) == ("checkpoint at 50: bad signature",)


def test_an_unreadable_file_line_is_named(vault: Vault) -> None:
    with vault.file.open("ab") as fh:
        fh.write(b"not json\n")
    assert vault.problems() == ("audit file copy line 53: unreadable (file altered)",)


def test_malformed_anchors_are_refused(vault: Vault) -> None:
    for bad in ("nonsense", json.dumps({"type": "something else"}),
                json.dumps({"type": "radvault.audit-anchors/1", "checkpoints": [{"seq": 1}]})):
        with pytest.raises(AuditChainError):
            vault.log.verify(anchors=bad)


def test_anchors_round_trip(vault: Vault) -> None:
    exported = load_anchors(vault.log.export_checkpoints())
    assert exported == vault.log.checkpoints()
    assert [Checkpoint.from_dict(c.to_dict()) for c in exported] == exported
    assert load_anchors(vault.log.export_checkpoints(since_seq=20)) == exported[1:]


# --------------------------------------------------------------------------- appending


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"details": {"when": {1, 2}}}, ValueError, "audit details must be plain JSON data"),
        ({"details": {"reason": "x" * MAX_DETAILS_BYTES}}, ValueError,
         f"audit details must encode to at most {MAX_DETAILS_BYTES} bytes"),
        ({"details": {"pair": (1, 2)}}, ValueError,
         "audit details must survive a JSON round trip"),
        ({"details": {1: "int key"}}, ValueError, "audit details must be plain JSON data"),
        ({"details": {"ratio": float("nan")}}, ValueError,
         "audit details must be plain JSON data"),
        ({"details": ["not", "a", "mapping"]}, TypeError, "audit details must be a mapping"),
        ({"object_ids": "2.25.1"}, TypeError, "object_ids must be a sequence of ids"),
        ({"object_ids": ["has space"]}, ValueError, "audit object ids must match"),
        ({"actor": "Jane Doe"}, ValueError, "audit actor must match"),
        ({"action": "Read"}, ValueError, "audit action must match"),
        ({"outcome": "maybe"}, ValueError, "'maybe' is not a valid Outcome"),
    ],
)
def test_malformed_entries_are_refused_and_nothing_is_written(tmp_path: Path, kwargs: dict,
                                                              error: type, message: str) -> None:
    with Catalog.create(f"sqlite:///{tmp_path / 'c.sqlite3'}") as catalog:
        log = AuditLog(catalog, KEY, KEY)
        call = {"actor": "alice", "action": Action.READ, **kwargs}
        with pytest.raises(error, match=message):
            log.append(**call)
        assert log.tail() == []
        log.close()


def test_a_batch_of_entries_is_one_chain_with_checkpoints_where_due(catalog_url: str) -> None:
    with Catalog.create(catalog_url) as catalog:
        log = AuditLog(catalog, KEY, KEY, checkpoint_every=5)
        log.append("alice", Action.READ)
        drafts = [EntryDraft("bob", Action.INGEST, object_ids=[f"2.25.{i}"], details={"n": i})
                  for i in range(11)]
        with log.appending() as chain, catalog.writing() as writer:
            entries = chain.append_many(writer.connection, drafts)

        assert [e.seq for e in entries] == list(range(2, 13))
        assert [e.prev_hash for e in entries[1:]] == [e.entry_hash for e in entries[:-1]]
        assert [e.details["n"] for e in log.tail(11)] == list(range(11))
        report = log.verify()
        assert report.ok and report.checkpoints_checked == 2  # at 5 and 10, inside the batch
        log.close()


def test_a_batch_with_one_malformed_entry_appends_none(tmp_path: Path) -> None:
    with Catalog.create(f"sqlite:///{tmp_path / 'c.sqlite3'}") as catalog:
        log = AuditLog(catalog, KEY, KEY)
        drafts = [EntryDraft("alice", Action.READ), EntryDraft("Jane Doe", Action.READ)]
        with (pytest.raises(ValueError, match="audit actor must match"),
              log.appending() as chain, catalog.writing() as writer):
            chain.append_many(writer.connection, drafts)
        assert log.tail() == []
        assert log.verify().ok
        log.close()


def test_other_action_names_are_accepted(tmp_path: Path) -> None:
    with Catalog.create(f"sqlite:///{tmp_path / 'c.sqlite3'}") as catalog:
        log = AuditLog(catalog, KEY, KEY)
        entry = log.append("system", "jobs.retry", Outcome.ERROR, details={"attempt": 2})
        assert (entry.action, entry.outcome, entry.seq) == ("jobs.retry", "error", 1)
        log.close()


def test_checkpoint_interval_must_be_positive(tmp_path: Path) -> None:
    catalog = Catalog.create(f"sqlite:///{tmp_path / 'c.sqlite3'}")
    with catalog, pytest.raises(ConfigurationError):
        AuditLog(catalog, KEY, KEY, checkpoint_every=0)


def test_tail_and_query(tmp_path: Path) -> None:
    times = iter(f"2026-03-0{d}T12:00:00.000000Z" for d in range(1, 10))
    with Catalog.create(f"sqlite:///{tmp_path / 'c.sqlite3'}") as catalog:
        log = AuditLog(catalog, KEY, KEY, clock=lambda: next(times))
        log.append("alice", Action.INGEST, object_ids=["2.25.1", "2.25.2"])
        log.append("bob", Action.READ, object_ids=["2.25.1"])
        log.append("alice", Action.EXPORT, Outcome.REFUSED, object_ids=["a_b"])
        log.append("carol", Action.READ, object_ids=["axb"])
        assert [e.seq for e in log.tail(2)] == [3, 4]
        assert [e.seq for e in log.query(actor="alice")] == [3, 1]
        assert [e.seq for e in log.query(action=Action.READ)] == [4, 2]
        assert [e.seq for e in log.query(object_id="2.25.1")] == [2, 1]
        assert [e.seq for e in log.query(object_id="a_b")] == [3]
        assert [e.seq for e in log.query(since="2026-03-02T00:00:00Z")] == [4, 3, 2]
        assert [e.seq for e in log.query(limit=1)] == [4]
        assert log.query(actor="alice", action="export")[0].outcome == "refused"
        log.close(checkpoint=False)


def test_a_bare_sqlite_engine_is_reopened_with_write_locks(tmp_path: Path) -> None:
    with Catalog.create(f"sqlite:///{tmp_path / 'c.sqlite3'}") as catalog:
        log = AuditLog(catalog.engine, KEY, KEY, checkpoint_every=2)
        fill(log, 3)
        log.close()
        assert log.verify().ok and [c.seq for c in log.checkpoints()] == [2, 3]


# --------------------------------------------------------------------------- concurrency


def test_four_threads_with_their_own_connections_keep_one_chain(catalog_url: str,
                                                               tmp_path: Path,
                                                               run_at_once) -> None:
    Catalog.create(catalog_url).close()
    log_file = tmp_path / "audit.log"
    catalogs = [Catalog(catalog_url) for _ in range(4)]
    logs = [AuditLog(c, KEY, KEY, checkpoint_every=10, file_path=log_file) for c in catalogs]

    def worker(k: int) -> None:
        for i in range(25):
            logs[k].append(f"worker{k}", Action.READ, object_ids=[f"2.25.{k}.{i}"])

    errors = run_at_once(4, worker)
    assert errors == []
    report = logs[0].verify()
    assert report.ok, report.problems
    assert report.entries_checked == 100 and report.notes == ()
    assert [c.seq for c in logs[0].checkpoints()] == list(range(10, 101, 10))
    assert sorted(e.actor for e in logs[0].query(limit=1000)) == sorted(
        f"worker{k}" for k in range(4) for _ in range(25))
    for log, catalog in zip(logs, catalogs, strict=True):
        log.close()
        catalog.close()


def test_one_log_shared_by_four_threads_keeps_one_chain(tmp_path: Path) -> None:
    with Catalog.create(f"sqlite:///{tmp_path / 'c.sqlite3'}") as catalog:
        log = AuditLog(catalog, KEY, KEY, checkpoint_every=7)
        threads = [threading.Thread(target=fill, args=(log, 20, 100 * k)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        log.close()
        report = log.verify()
        assert report.ok and report.entries_checked == 80 and report.last_checkpoint_seq == 80


_WRITER = textwrap.dedent(
    """
    import sys
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from radvault.vault.audit import AuditLog
    from radvault.vault.catalog import Catalog

    class Key:
        key_id = "audit-key-1"
        def __init__(self):
            self._k = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(sys.argv[3]))
        def sign(self, m):
            return self._k.sign(m)
        def verify(self, m, s):
            self._k.public_key().verify(s, m)

    key = Key()
    log = AuditLog(Catalog(sys.argv[1]), key, key, checkpoint_every=10, file_path=sys.argv[2])
    sys.stdin.readline()  # start together
    for i in range(40):
        log.append("proc" + sys.argv[4], "read", object_ids=[f"2.25.{i}"])
    log.close(checkpoint=False)
    """
)


def test_two_processes_appending_to_one_sqlite_log_keep_one_chain(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.sqlite3'}"
    Catalog.create(url).close()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, url, str(tmp_path / "audit.log"), SEED.hex(), str(k)],
            stdin=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        for k in range(2)
    ]
    for p in procs:
        p.stdin.write(b"go\n")
        p.stdin.flush()
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
    with Catalog(url) as catalog:
        log = AuditLog(catalog, KEY, KEY, checkpoint_every=10, file_path=tmp_path / "audit.log")
        report = log.verify()
        assert report.ok, report.problems
        assert report.entries_checked == 80 and report.last_checkpoint_seq == 80
        assert {e.actor for e in log.tail(80)} == {"proc0", "proc1"}
        log.close(checkpoint=False)


def test_a_postgres_or_sqlite_log_detects_an_edit(catalog_url: str) -> None:
    with Catalog.create(catalog_url) as catalog:
        log = AuditLog(catalog, KEY, KEY, checkpoint_every=5)
        fill(log, 12)
        assert log.verify().ok
        with catalog.engine.begin() as conn:
            conn.execute(text("UPDATE audit_entries SET details = '{}' WHERE seq = 7"))
        assert log.verify().problems == ("entry 7: hash mismatch (altered)",)
        log.close(checkpoint=False)


# ---------------------------------------------------------------- keyed digests of typed text


def test_a_typed_text_digest_is_keyed_stable_and_short() -> None:
    keys = InMemoryKeyProvider()
    digest = AuditDigest.from_secrets(keys)
    typed = "Summer2024!Quib"
    assert digest(typed) == digest(typed) == AuditDigest.from_secrets(keys)(typed)
    assert len(digest(typed)) == 16 and int(digest(typed), 16) >= 0
    assert digest(typed) != hashlib.sha256(typed.encode()).hexdigest()[:16]
    assert digest(typed) != digest("Summer2024!Quic")
    assert AuditDigest.from_secrets(InMemoryKeyProvider())(typed) != digest(typed)
    assert "key" in repr(digest) and keys.deid_secret().hex() not in repr(digest)


def test_the_digest_key_is_derived_apart_from_the_deidentification_secret() -> None:
    keys = InMemoryKeyProvider()
    secret = keys.deid_secret()
    typed = "ACC77331"
    direct = hmac.new(secret, typed.encode(), hashlib.sha256).hexdigest()[:16]
    assert AuditDigest.from_secrets(keys)(typed) != direct
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                   info=AUDIT_DIGEST_INFO).derive(secret)
    assert AuditDigest.from_secrets(keys)(typed) == AuditDigest(derived)(typed)


def test_a_closed_key_provider_gives_no_digest() -> None:
    keys = InMemoryKeyProvider()
    keys.close()
    with pytest.raises(VaultLocked):
        AuditDigest.from_secrets(keys)
    with pytest.raises(ValueError, match="32 bytes"):
        AuditDigest(b"short")

"""Tampering with anything the vault stores is caught on read and by ``verify``.

Each test copies a small vault (a DICOM, a PNG and a JPEG, closed with a
signed audit checkpoint), changes it the way an attacker with write access to
the files would (blob bytes, catalog rows and audit rows through plain
SQLite, but never the passphrase-protected keys), then unlocks it and checks:

* every read of the touched data raises :class:`IntegrityError`, and the
  refusal is itself audited;
* ``verify_vault`` reports the change precisely (which object, what is wrong)
  and nothing about the objects that were left alone;
* ``AuditLog.verify`` catches every change to the audit trail (image reads do
  not walk the chain; they refuse once the trail was cut below a checkpoint).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from radvault.errors import AuditChainError, IntegrityError, VaultError
from radvault.pipeline.ingest import MODEL_INPUT_KIND
from radvault.pipeline.maintenance import VerifyReport, verify_vault
from radvault.pipeline.retrieve import open_image, open_model_input
from radvault.vault.audit import Action, AuditLog, Outcome, entry_hash, entry_message
from radvault.vault.catalog import Catalog, ObjectRecord, record_message, verify_object_record
from radvault.vault.sealing import seal
from radvault.vault.signing import Verifier
from radvault.vault.vault import Vault

if TYPE_CHECKING:
    from conftest import Kit

ACTOR = "tester"
READERS: dict[str, Callable[..., Any]] = {"image": open_image, "model": open_model_input}


@pytest.fixture
def home(kit: Kit, template_home: dict[str, Any], tmp_path: Path) -> Path:
    """A private copy of the template vault."""
    return kit.copy_home(template_home, tmp_path)


@pytest.fixture
def open_vault(kit: Kit, home: Path) -> Iterator[Callable[[], Vault]]:
    """Unlock the copied vault (after the test has tampered with it); closed at teardown."""
    opened: list[Vault] = []

    def _open() -> Vault:
        opened.append(Vault.open(kit.new_settings(home), kit.PASSPHRASE))
        return opened[-1]

    yield _open
    for v in opened:
        with contextlib.suppress(AuditChainError):  # closing a vault whose trail was cut
            v.close()


def _obj(template: dict[str, Any], name: str, kind: str) -> ObjectRecord:
    objects = template["objects"][name]
    if kind == MODEL_INPUT_KIND:
        return objects[MODEL_INPUT_KIND]
    return next(o for k, o in objects.items() if k != MODEL_INPUT_KIND)


def _reader_of(obj: ObjectRecord) -> str:
    return "model" if obj.kind == MODEL_INPUT_KIND else "image"


def assert_read_refused(vault: Vault, instance_id: str, reader: str, *audited_ids: str) -> None:
    """The read raises IntegrityError and an integrity refusal naming the ids is audited."""
    before = vault.audit.tail(1)[0].seq
    with pytest.raises(IntegrityError) as caught:
        READERS[reader](vault, instance_id, actor=ACTOR)
    assert "Traceback" not in str(caught.value)
    refusals = [e for e in vault.audit
                if e.seq > before and e.action == Action.INTEGRITY_FAILURE
                and e.outcome == Outcome.REFUSED and e.actor == ACTOR]
    assert refusals, "the refused read was not audited"
    named = {oid for e in refusals for oid in e.object_ids}
    assert set(audited_ids) <= named, (audited_ids, named)


def assert_verify_finds(vault: Vault, *fragments: str, only_about: set[str] | None = None
                        ) -> VerifyReport:
    """verify fails with one problem containing every fragment, and only about the given ids."""
    report = verify_vault(vault, actor=ACTOR)
    assert not report.ok
    assert any(all(f in p for f in fragments) for p in report.problems), report.problems
    if only_about is not None:
        for problem in report.problems:
            assert any(oid in problem for oid in only_about), problem
    return report


def assert_untouched_still_open(vault: Vault, template: dict[str, Any], *skip: str) -> None:
    for name, iid in template["ids"].items():
        if name not in skip:
            open_image(vault, iid, actor=ACTOR)
            open_model_input(vault, iid, actor=ACTOR)


# --------------------------------------------------------------------------- clean


def test_a_clean_vault_verifies_clean_and_reads(
    template_home: dict[str, Any], open_vault: Callable[[], Vault]
) -> None:
    vault = open_vault()
    report = verify_vault(vault, actor=ACTOR)
    assert report.ok, report.problems
    assert report.objects_checked == 6
    assert report.blobs_seen == 6
    assert not [n for n in report.notes if "blob" in n]
    assert_untouched_still_open(vault, template_home)
    assert vault.audit.verify().ok


# --------------------------------------------------------------------------- blobs


def _flip(path: Path, where: str) -> None:
    data = bytearray(path.read_bytes())
    offset = {"header": 12, "ciphertext": len(data) // 2, "tag": len(data) - 1}[where]
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


BLOB_TAMPERS: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "flip bit in header": (lambda p: _flip(p, "header"), ("sha-256 mismatch",)),
    "flip bit in ciphertext": (lambda p: _flip(p, "ciphertext"), ("sha-256 mismatch",)),
    "flip bit in tag": (lambda p: _flip(p, "tag"), ("sha-256 mismatch",)),
    "truncate": (lambda p: p.write_bytes(p.read_bytes()[:-16]), ("blob size",)),
    "extend": (lambda p: p.write_bytes(p.read_bytes() + b"\0"), ("blob size",)),
    "extend by a chunk": (lambda p: p.write_bytes(p.read_bytes() * 2), ("blob size",)),
    "delete": (lambda p: p.unlink(), ("blob missing",)),
    "empty": (lambda p: p.write_bytes(b""), ("blob size",)),
}


@pytest.mark.parametrize("name", ["dicom", "png"])
@pytest.mark.parametrize("kind", ["stored file", MODEL_INPUT_KIND])
@pytest.mark.parametrize("tamper", sorted(BLOB_TAMPERS))
def test_a_damaged_blob_is_refused_on_read_and_reported_by_verify(
    kit: Kit, template_home: dict[str, Any], home: Path, open_vault: Callable[[], Vault],
    tamper: str, kind: str, name: str,
) -> None:
    obj = _obj(template_home, name, kind)
    change, expected = BLOB_TAMPERS[tamper]
    change(kit.blob_path(home, obj.blob_key))
    vault = open_vault()

    assert_read_refused(vault, template_home["ids"][name], _reader_of(obj), obj.object_id)
    assert_verify_finds(vault, obj.object_id, *expected, only_about={obj.object_id})
    other = "model" if _reader_of(obj) == "image" else "image"
    READERS[other](vault, template_home["ids"][name], actor=ACTOR)  # its sibling is intact
    assert_untouched_still_open(vault, template_home, name)


@pytest.mark.parametrize("kind", ["stored file", MODEL_INPUT_KIND])
def test_swapped_blobs_of_two_objects_are_refused_and_reported(
    kit: Kit, template_home: dict[str, Any], home: Path, open_vault: Callable[[], Vault],
    kind: str,
) -> None:
    a, b = _obj(template_home, "dicom", kind), _obj(template_home, "jpeg", kind)
    path_a, path_b = kit.blob_path(home, a.blob_key), kit.blob_path(home, b.blob_key)
    blob_a, blob_b = path_a.read_bytes(), path_b.read_bytes()
    path_a.write_bytes(blob_b)
    path_b.write_bytes(blob_a)
    vault = open_vault()

    assert_read_refused(vault, template_home["ids"]["dicom"], _reader_of(a), a.object_id)
    assert_read_refused(vault, template_home["ids"]["jpeg"], _reader_of(b), b.object_id)
    report = assert_verify_finds(vault, a.object_id, "swapped", only_about={a.object_id,
                                                                             b.object_id})
    assert any(b.object_id in p and "sha-256 mismatch" in p for p in report.problems)
    assert_untouched_still_open(vault, template_home, "dicom", "jpeg")


def test_sibling_blobs_swapped_within_one_instance_are_refused(
    kit: Kit, template_home: dict[str, Any], home: Path, open_vault: Callable[[], Vault],
) -> None:
    a, b = _obj(template_home, "png", "stored file"), _obj(template_home, "png", MODEL_INPUT_KIND)
    path_a, path_b = kit.blob_path(home, a.blob_key), kit.blob_path(home, b.blob_key)
    blob_a, blob_b = path_a.read_bytes(), path_b.read_bytes()
    path_a.write_bytes(blob_b)
    path_b.write_bytes(blob_a)
    vault = open_vault()

    iid = template_home["ids"]["png"]
    assert_read_refused(vault, iid, "image", a.object_id)
    assert_read_refused(vault, iid, "model", b.object_id)
    assert_verify_finds(vault, a.object_id, "swapped")


def _reseal(vault: Vault, obj: ObjectRecord, plaintext: bytes) -> tuple[bytes, bytes]:
    """Seal ``plaintext`` again as ``obj`` (a valid blob under a fresh data key)."""
    sealed = seal(plaintext, object_id=obj.object_id, provider=vault.keys)
    return sealed.blob, sealed.wrapped_key.to_bytes()


def test_a_replayed_blob_of_the_same_object_is_refused_and_reported(
    kit: Kit, template_home: dict[str, Any], home: Path, open_vault: Callable[[], Vault],
) -> None:
    # Another, equally valid seal of the very same object (same id, same plaintext),
    # as a backup of an earlier version would hold: blob and wrapped key both replayed.
    obj = _obj(template_home, "dicom", MODEL_INPUT_KIND)
    with open_vault() as vault:
        plain = bytes(vault.open_object(vault.catalog.get_object(obj.object_id), actor=ACTOR))
        blob, wrapped = _reseal(vault, obj, plain)
    kit.blob_path(home, obj.blob_key).write_bytes(blob)
    kit.sql(home, "UPDATE objects SET wrapped_key = ? WHERE object_id = ?",
            (wrapped, obj.object_id))
    vault = open_vault()

    assert_read_refused(vault, template_home["ids"]["dicom"], "model", obj.object_id)
    assert_verify_finds(vault, obj.object_id, "sha-256 mismatch", only_about={obj.object_id})


def test_a_replayed_blob_without_its_key_is_refused_and_reported(
    kit: Kit, template_home: dict[str, Any], home: Path, open_vault: Callable[[], Vault],
) -> None:
    obj = _obj(template_home, "png", "stored file")
    with open_vault() as vault:
        blob, _ = _reseal(vault, obj, b"an older version of this object")
    kit.blob_path(home, obj.blob_key).write_bytes(blob)
    vault = open_vault()

    assert_read_refused(vault, template_home["ids"]["png"], "image", obj.object_id)
    assert_verify_finds(vault, obj.object_id, "sha-256 mismatch", only_about={obj.object_id})


def test_a_valid_sealed_object_of_other_content_with_a_rewritten_row_is_refused(
    kit: Kit, template_home: dict[str, Any], home: Path, open_vault: Callable[[], Vault],
) -> None:
    # The strongest blob attack short of the signing key: a well-formed object under
    # the right id and a working data key, and the row's digest and sizes made to match.
    target, donor = _obj(template_home, "dicom", "stored file"), _obj(template_home, "jpeg",
                                                                        "stored file")
    with open_vault() as vault:
        other = bytes(vault.open_object(vault.catalog.get_object(donor.object_id), actor=ACTOR))
        sealed = seal(other, object_id=target.object_id, provider=vault.keys)
    kit.blob_path(home, target.blob_key).write_bytes(sealed.blob)
    kit.sql(home, "UPDATE objects SET wrapped_key = ?, sealed_sha256 = ?, sealed_size = ?, "
            "plain_size = ? WHERE object_id = ?",
            (sealed.wrapped_key.to_bytes(), sealed.sealed_sha256, len(sealed.blob),
             sealed.plain_size, target.object_id))
    vault = open_vault()

    assert_read_refused(vault, template_home["ids"]["dicom"], "image", target.object_id)
    assert_verify_finds(vault, target.object_id, "signature invalid",
                        only_about={target.object_id})


# --------------------------------------------------------------------------- catalog rows


ROW_EDITS: dict[str, tuple[str, Any]] = {
    "sealed_sha256": ("sealed_sha256", "0" * 64),
    "sealed_size": ("sealed_size", 12345),
    "plain_size": ("plain_size", 1),
    "kind": ("kind", "thumbnail"),
    "record_signature": ("record_signature", b"\0" * 64),
}


@pytest.mark.parametrize("edit", sorted(ROW_EDITS))
def test_an_edited_object_row_is_refused_and_reported(
    kit: Kit, template_home: dict[str, Any], home: Path, open_vault: Callable[[], Vault],
    edit: str,
) -> None:
    obj = _obj(template_home, "png", MODEL_INPUT_KIND)
    column, value = ROW_EDITS[edit]
    kit.sql(home, f"UPDATE objects SET {column} = ? WHERE object_id = ?",
            (value, obj.object_id))
    vault = open_vault()

    iid = template_home["ids"]["png"]
    # a renamed kind hides the model input: its absence is refused as tampering too
    assert_read_refused(vault, iid, "model", iid if edit == "kind" else obj.object_id)
    assert_verify_finds(vault, obj.object_id, "signature invalid", only_about={obj.object_id})


def test_an_object_row_moved_to_another_instance_is_refused_and_reported(
    kit: Kit, template_home: dict[str, Any], home: Path, open_vault: Callable[[], Vault],
) -> None:
    moved, dropped = _obj(template_home, "png", MODEL_INPUT_KIND), _obj(template_home, "jpeg",
                                                                         MODEL_INPUT_KIND)
    kit.sql(home, "DELETE FROM objects WHERE object_id = ?", (dropped.object_id,))
    kit.sql(home, "UPDATE objects SET instance_id = ? WHERE object_id = ?",
            (template_home["ids"]["jpeg"], moved.object_id))
    vault = open_vault()

    assert_read_refused(vault, template_home["ids"]["jpeg"], "model", moved.object_id)
    assert_read_refused(vault, template_home["ids"]["png"], "model", template_home["ids"]["png"])
    report = assert_verify_finds(vault, moved.object_id, "signature invalid")
    assert any(dropped.object_id in p and "missing from the catalog" in p
               for p in report.problems), report.problems


def test_a_corrupted_wrapped_key_is_refused_and_reported(
    kit: Kit, template_home: dict[str, Any], home: Path, open_vault: Callable[[], Vault],
) -> None:
    obj = _obj(template_home, "jpeg", "stored file")
    wrapped = bytearray(kit.sql(home, "SELECT wrapped_key FROM objects WHERE object_id = ?",
                                (obj.object_id,))[0][0])
    wrapped[-1] ^= 0x80
    kit.sql(home, "UPDATE objects SET wrapped_key = ? WHERE object_id = ?",
            (bytes(wrapped), obj.object_id))
    vault = open_vault()

    assert_read_refused(vault, template_home["ids"]["jpeg"], "image", obj.object_id)
    assert_verify_finds(vault, obj.object_id, "data key does not unwrap",
                        only_about={obj.object_id})


def test_wrapped_keys_swapped_between_objects_are_refused_and_reported(
    kit: Kit, template_home: dict[str, Any], home: Path, open_vault: Callable[[], Vault],
) -> None:
    a, b = _obj(template_home, "dicom", "stored file"), _obj(template_home, "png", "stored file")
    rows = dict(kit.sql(home, "SELECT object_id, wrapped_key FROM objects WHERE object_id IN "
                        "(?, ?)", (a.object_id, b.object_id)))
    kit.sql(home, "UPDATE objects SET wrapped_key = ? WHERE object_id = ?",
            (rows[b.object_id], a.object_id))
    kit.sql(home, "UPDATE objects SET wrapped_key = ? WHERE object_id = ?",
            (rows[a.object_id], b.object_id))
    vault = open_vault()

    assert_read_refused(vault, template_home["ids"]["dicom"], "image", a.object_id)
    assert_read_refused(vault, template_home["ids"]["png"], "image", b.object_id)
    report = assert_verify_finds(vault, a.object_id, "data key does not unwrap",
                                 only_about={a.object_id, b.object_id})
    assert any(b.object_id in p and "data key" in p for p in report.problems)


def test_a_deleted_object_row_is_refused_and_reported(
    kit: Kit, template_home: dict[str, Any], home: Path, open_vault: Callable[[], Vault],
) -> None:
    obj = _obj(template_home, "dicom", MODEL_INPUT_KIND)
    kit.sql(home, "DELETE FROM objects WHERE object_id = ?", (obj.object_id,))
    vault = open_vault()

    iid = template_home["ids"]["dicom"]
    assert_read_refused(vault, iid, "model", iid)
    report = assert_verify_finds(vault, obj.object_id, "missing from the catalog",
                                 only_about={obj.object_id})
    # its blob is not waved through as a harmless leftover either
    assert not [n for n in report.notes if obj.blob_key in n]
    open_image(vault, iid, actor=ACTOR)  # the sibling object is intact


def test_a_deleted_instance_is_reported_by_verify(
    kit: Kit, template_home: dict[str, Any], home: Path, open_vault: Callable[[], Vault],
) -> None:
    # With foreign keys off (plain sqlite3), the instance row and both object rows go.
    iid = template_home["ids"]["png"]
    kit.sql(home, "DELETE FROM objects WHERE instance_id = ?", (iid,))
    kit.sql(home, "DELETE FROM instances WHERE instance_id = ?", (iid,))
    vault = open_vault()

    report = assert_verify_finds(vault, iid, "missing from the catalog")
    missing = {o.object_id for o in template_home["objects"]["png"].values()}
    assert {oid for oid in missing if any(oid in p for p in report.problems)} == missing


def test_an_instance_moved_to_another_study_is_reported_by_verify(
    kit: Kit, template_home: dict[str, Any], home: Path, open_vault: Callable[[], Vault],
) -> None:
    # Study membership is bound twice: by both objects' signed rows (record format 2)
    # and by the audit trail's ingest entry, which names the study.
    iid, other_study = template_home["ids"]["png"], template_home["studies"]["jpeg"]
    kit.sql(home, "UPDATE instances SET study_id = ? WHERE instance_id = ?", (other_study, iid))
    vault = open_vault()

    assert_read_refused(vault, iid, "image")
    assert_read_refused(vault, iid, "model")
    report = assert_verify_finds(vault, iid, f"in study {other_study}",
                                 template_home["studies"]["png"], only_about={iid})
    assert sum("signature invalid" in p for p in report.problems) == 2
    assert len(report.problems) == 3


def test_an_edited_pixel_digest_is_refused_and_reported(
    kit: Kit, template_home: dict[str, Any], home: Path, open_vault: Callable[[], Vault],
) -> None:
    iid = template_home["ids"]["dicom"]
    kit.sql(home, "UPDATE instances SET pixel_sha256 = ? WHERE instance_id = ?", ("f" * 64, iid))
    vault = open_vault()

    objects = template_home["objects"]["dicom"].values()
    assert_read_refused(vault, iid, "image", *(o.object_id for o in objects
                                               if o.kind != MODEL_INPUT_KIND))
    assert_read_refused(vault, iid, "model")
    report = assert_verify_finds(vault, "signature invalid",
                                 only_about={o.object_id for o in objects})
    assert len(report.problems) == 2  # both objects' signed rows cover the pixel digest
    assert_untouched_still_open(vault, template_home, "dicom")


# --------------------------------------------------------------------------- audit trail


def _entries(home: Path, kit: Kit) -> list[dict[str, Any]]:
    cols = ["seq", "ts", "actor", "action", "outcome", "object_ids", "details", "prev_hash",
            "entry_hash"]
    rows = kit.sql(home, f"SELECT {', '.join(cols)} FROM audit_entries ORDER BY seq")
    return [dict(zip(cols, r, strict=True)) for r in rows]


def _rechain(home: Path, kit: Kit, start_seq: int) -> None:
    """Recompute every hash from ``start_seq`` on, as an attacker without the key can."""
    entries = _entries(home, kit)
    prev = next((e["entry_hash"] for e in entries if e["seq"] == start_seq - 1), None)
    for e in entries:
        if e["seq"] < start_seq:
            continue
        assert prev is not None
        digest = entry_hash(prev, entry_message(
            seq=e["seq"], ts=e["ts"], actor=e["actor"], action=e["action"],
            outcome=e["outcome"], object_ids=tuple(json.loads(e["object_ids"])),
            details=json.loads(e["details"])))
        kit.sql(home, "UPDATE audit_entries SET prev_hash = ?, entry_hash = ? WHERE seq = ?",
                (prev, digest, e["seq"]))
        prev = digest


def _insert_forged(home: Path, kit: Kit, at: int) -> None:
    kit.sql(home, "UPDATE audit_entries SET seq = -(seq + 1) WHERE seq >= ?", (at,))
    kit.sql(home, "UPDATE audit_entries SET seq = -seq WHERE seq < 0")
    before = next(e for e in _entries(home, kit) if e["seq"] == at - 1)
    fields = {"ts": before["ts"], "actor": "intruder", "action": "read", "outcome": "ok",
              "object_ids": (), "details": {}}
    digest = entry_hash(before["entry_hash"], entry_message(seq=at, **fields))
    kit.sql(home, "INSERT INTO audit_entries (seq, ts, actor, action, outcome, object_ids, "
            "details, prev_hash, entry_hash) VALUES (?, ?, ?, ?, ?, '[]', '{}', ?, ?)",
            (at, fields["ts"], "intruder", "read", "ok", before["entry_hash"], digest))


def _swap(home: Path, kit: Kit, a: int, b: int) -> None:
    kit.sql(home, "UPDATE audit_entries SET seq = -1 WHERE seq = ?", (a,))
    kit.sql(home, "UPDATE audit_entries SET seq = ? WHERE seq = ?", (a, b))
    kit.sql(home, "UPDATE audit_entries SET seq = ? WHERE seq = -1", (b,))


AUDIT_TAMPERS: dict[str, tuple[Callable[[Path, Kit], None], str]] = {
    "edit an actor": (
        lambda h, k: k.sql(h, "UPDATE audit_entries SET actor = 'nobody' WHERE seq = 2"),
        "entry 2: hash mismatch (altered)"),
    "edit details": (
        lambda h, k: k.sql(h, "UPDATE audit_entries SET details = '{}' WHERE seq = 3"),
        "entry 3: hash mismatch (altered)"),
    "edit and rechain": (
        lambda h, k: (k.sql(h, "UPDATE audit_entries SET outcome = 'refused' WHERE seq = 2"),
                      _rechain(h, k, 2)),
        "signed chain head not found"),
    "delete an entry": (
        lambda h, k: k.sql(h, "DELETE FROM audit_entries WHERE seq = 3"),
        "entry 3 missing"),
    "insert an entry": (lambda h, k: _insert_forged(h, k, 3), "out of order"),
    "insert and rechain": (
        lambda h, k: (_insert_forged(h, k, 3), _rechain(h, k, 4)),
        "signed chain head not found"),
    "reorder two entries": (lambda h, k: _swap(h, k, 2, 3), "entries 2 and 3 swapped"),
    "forge a checkpoint": (
        lambda h, k: k.sql(h, "UPDATE audit_checkpoints SET signature = ? ", (b"\1" * 64,)),
        "bad signature"),
}


@pytest.mark.parametrize("tamper", sorted(AUDIT_TAMPERS))
def test_audit_trail_tampering_is_reported_by_audit_verify_and_verify(
    kit: Kit, template_home: dict[str, Any], home: Path, open_vault: Callable[[], Vault],
    tamper: str,
) -> None:
    change, expected = AUDIT_TAMPERS[tamper]
    # init, the default site (registered on first ingest) + 3 ingests, signed at close
    assert len(_entries(home, kit)) == 5
    change(home, kit)
    vault = open_vault()

    audit = vault.audit.verify()
    assert not audit.ok
    assert any(expected in p for p in audit.problems), audit.problems
    report = verify_vault(vault, actor=ACTOR)
    assert not report.ok
    assert any(p.startswith("audit: ") and expected in p for p in report.problems), \
        report.problems
    assert all(p.startswith("audit: ") for p in report.problems), report.problems


class _NoSigner:
    key_id = "none"

    def sign(self, message: bytes) -> bytes:
        raise AssertionError("verification must not sign anything")


def _audit_verify_without_unlocking(home: Path) -> list[str]:
    """``AuditLog.verify`` straight on the files (the vault itself refuses to open)."""
    verifier = Verifier(bytes.fromhex((home / "vault.pub").read_text("ascii").strip()))
    with Catalog(f"sqlite:///{home / 'catalog.sqlite3'}") as catalog:
        log = AuditLog(catalog, _NoSigner(), verifier, 100, file_path=home / "audit.log")
        try:
            return list(log.verify().problems)
        finally:
            log.close(checkpoint=False)


def _delete_and_renumber(home: Path, kit: Kit) -> None:
    kit.sql(home, "DELETE FROM audit_entries WHERE seq = 3")
    kit.sql(home, "UPDATE audit_entries SET seq = seq - 1 WHERE seq > 3")
    _rechain(home, kit, 3)


@pytest.mark.parametrize("cut", ["cut the tail", "delete and renumber"])
def test_a_trail_cut_below_its_checkpoint_refuses_every_further_action(
    kit: Kit, template_home: dict[str, Any], home: Path, open_vault: Callable[[], Vault],
    cut: str,
) -> None:
    if cut == "cut the tail":
        kit.sql(home, "DELETE FROM audit_entries WHERE seq >= 5")
    else:
        _delete_and_renumber(home, kit)

    with pytest.raises(AuditChainError, match="truncated below checkpoint 5"):
        open_vault()  # not even the unlock can be audited, so nothing else happens

    problems = _audit_verify_without_unlocking(home)
    assert any("entry 5 missing (log truncated" in p for p in problems), problems

    # A read-only open reports the damage without appending anything.
    before = kit.file_digests(home)
    with Vault.open(kit.new_settings(home), kit.PASSPHRASE, read_only=True) as vault:
        report = verify_vault(vault, actor=ACTOR)
        with pytest.raises(VaultError, match="read-only"):
            vault.audit.append(ACTOR, Action.READ)
    assert not report.ok
    assert any("entry 5 missing (log truncated" in p for p in report.problems), report.problems
    assert any("not audited" in n for n in report.notes), report.notes
    assert kit.file_digests(home) == before  # nothing appended, no checkpoint signed


def test_the_verify_commands_report_a_cut_trail_instead_of_failing_to_open(
    kit: Kit, home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from radvault.cli import main

    kit.sql(home, "DELETE FROM audit_entries WHERE seq >= 5")
    monkeypatch.setenv("RADVAULT_HOME", str(home))
    monkeypatch.setenv("RADVAULT_PASSPHRASE", kit.PASSPHRASE)
    monkeypatch.setenv("COLUMNS", "200")
    before = kit.file_digests(home)

    for command in (["verify", "--json"], ["audit", "verify", "--json"]):
        capsys.readouterr()
        code = main(command)
        out = capsys.readouterr().out
        assert code == 5, out  # integrity
        report = json.loads(out)
        assert report["ok"] is False
        assert any("entry 5 missing (log truncated" in p for p in report["problems"]), report
    assert kit.file_digests(home) == before


# --------------------------------------------------------------------------- placement binding


def _study_of(template: dict[str, Any], name: str) -> str:
    return str(template["studies"][name])


@pytest.mark.parametrize("edit", ["site", "patient", "modality", "rows", "frames", "series"])
def test_an_object_moved_or_reshaped_behind_the_vaults_back_is_refused_and_reported(
    kit: Kit, template_home: dict[str, Any], home: Path, open_vault: Callable[[], Vault],
    edit: str,
) -> None:
    # Authorisation relies on the study's site and patient: both are bound by each
    # object's signed row (format 2), as are the series and the image's geometry.
    iid, study = template_home["ids"]["png"], _study_of(template_home, "png")
    other = _study_of(template_home, "jpeg")
    statements = {
        "site": ("UPDATE studies SET site = 'other-hospital' WHERE study_id = ?", (study,)),
        "patient": ("UPDATE studies SET patient_pseudonym = (SELECT patient_pseudonym FROM "
                    "studies WHERE study_id = ?) WHERE study_id = ?", (other, study)),
        "modality": ("UPDATE studies SET modality = 'CT' WHERE study_id = ?", (study,)),
        "rows": ("UPDATE instances SET rows = rows + 1 WHERE instance_id = ?", (iid,)),
        "frames": ("UPDATE instances SET frames = 2 WHERE instance_id = ?", (iid,)),
        "series": ("UPDATE instances SET series_id = (SELECT series_id FROM instances WHERE "
                   "study_id = ?) WHERE instance_id = ?", (other, iid)),
    }
    statement, params = statements[edit]
    kit.sql(home, statement, params)
    vault = open_vault()

    objects = template_home["objects"]["png"].values()
    assert_read_refused(vault, iid, "image", *(o.object_id for o in objects
                                               if o.kind != MODEL_INPUT_KIND))
    assert_read_refused(vault, iid, "model")
    report = assert_verify_finds(vault, "signature invalid",
                                 only_about={o.object_id for o in objects})
    assert len(report.problems) == 2
    assert_untouched_still_open(vault, template_home, "png")


def test_records_signed_in_format_1_still_verify_and_are_noted(
    kit: Kit, template_home: dict[str, Any], home: Path, open_vault: Callable[[], Vault],
) -> None:
    # A vault written before format 2: re-sign one object's row the old way, with the
    # vault's own key (as the earlier RadVault did), and it must keep opening.
    obj = _obj(template_home, "jpeg", "image")
    with Vault.open(kit.new_settings(home), kit.PASSPHRASE) as vault:
        old = vault.signer.sign(record_message(
            object_id=obj.object_id, instance_id=obj.instance_id, kind=obj.kind,
            blob_key=obj.blob_key, plain_size=obj.plain_size, sealed_size=obj.sealed_size,
            sealed_sha256=obj.sealed_sha256, pixel_sha256=obj.pixel_sha256))
    kit.sql(home, "UPDATE objects SET record_signature = ? WHERE object_id = ?",
            (old, obj.object_id))
    vault = open_vault()

    assert verify_object_record(vault.catalog.get_object(obj.object_id), vault.verifier) == 1
    current = vault.catalog.get_object(_obj(template_home, "jpeg", MODEL_INPUT_KIND).object_id)
    assert verify_object_record(current, vault.verifier) == 2
    open_image(vault, template_home["ids"]["jpeg"], actor=ACTOR)
    report = verify_vault(vault, actor=ACTOR)
    assert report.ok, report.problems
    assert report.legacy_records == 1
    assert any("format 1" in n for n in report.notes), report.notes


def test_a_format_2_signature_never_passes_as_format_1(
    kit: Kit, template_home: dict[str, Any], home: Path, open_vault: Callable[[], Vault],
) -> None:
    # Moving the study leaves every format-1 field intact; the signature still fails,
    # since it was made over the format-2 message (its own type tag).
    study = _study_of(template_home, "dicom")
    kit.sql(home, "UPDATE studies SET site = 'elsewhere' WHERE study_id = ?", (study,))
    vault = open_vault()

    for obj in template_home["objects"]["dicom"].values():
        with pytest.raises(IntegrityError, match=obj.object_id):
            verify_object_record(vault.catalog.get_object(obj.object_id), vault.verifier)

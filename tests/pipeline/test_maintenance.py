"""Maintenance: verify reads only, key rotation keeps every object readable, shredding is final."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from radvault.errors import KeyProviderError, ObjectNotFound, ObjectShredded
from radvault.pipeline.ingest import Ingestor
from radvault.pipeline.maintenance import rotate_keys, shred_study, verify_vault
from radvault.pipeline.retrieve import open_image, open_model_input
from radvault.vault.audit import Action
from radvault.vault.keys import WrappedKey
from radvault.vault.sealing import key_context
from radvault.vault.vault import Vault

if TYPE_CHECKING:
    from conftest import Kit

ACTOR = "keeper"


@pytest.fixture
def filled(kit: Kit, vault: Vault, ingestor: Ingestor, tmp_path: Path) -> dict[str, str]:
    """Three studies in the test vault: name -> instance id."""
    return {
        "dicom": kit.stored(ingestor.ingest_file(kit.ct_small())),
        "png": kit.stored(ingestor.ingest_file(kit.make_raster(tmp_path / "a.png", 21),
                                               modality="MR")),
        "jpeg": kit.stored(ingestor.ingest_file(kit.make_raster(tmp_path / "b.jpg", 22),
                                                modality="DX")),
    }


def _read_all(vault: Vault, ids: dict[str, str]) -> None:
    for iid in ids.values():
        open_image(vault, iid, actor=ACTOR)
        open_model_input(vault, iid, actor=ACTOR)


def _blob_digests(kit: Kit, home: Path) -> dict[str, str]:
    return {k: v for k, v in kit.file_digests(home).items() if k.startswith("blobs/")}


# --------------------------------------------------------------------------- verify


def test_verify_a_clean_vault(kit: Kit, vault: Vault, filled: dict[str, str]) -> None:
    report = verify_vault(vault, actor=ACTOR)

    assert report.ok and report.problems == []
    assert (report.objects_checked, report.objects_shredded, report.blobs_seen) == (6, 0, 6)
    assert report.audit["ok"] is True
    document = report.as_dict()
    assert json.loads(json.dumps(document)) == document
    assert document["ok"] is True
    entry = [e for e in vault.audit if e.action == Action.VERIFY][-1]
    assert entry.details == {"objects": 6, "problems": 0}


def test_verify_changes_nothing_but_its_own_audit_entry(
    kit: Kit, vault: Vault, filled: dict[str, str]
) -> None:
    home = vault.settings.home
    before = kit.file_digests(home)
    objects_before = kit.sql(home, "SELECT * FROM objects ORDER BY object_id")
    entries_before = kit.count_rows(home, "audit_entries")

    verify_vault(vault, actor=ACTOR)

    after = kit.file_digests(home)
    assert {k: v for k, v in after.items() if not k.startswith(("catalog", "audit"))} == \
        {k: v for k, v in before.items() if not k.startswith(("catalog", "audit"))}
    assert kit.sql(home, "SELECT * FROM objects ORDER BY object_id") == objects_before
    assert kit.count_rows(home, "audit_entries") == entries_before + 1


def test_a_leftover_blob_is_a_note_not_a_problem(
    kit: Kit, vault: Vault, filled: dict[str, str]
) -> None:
    vault.seal_object(b"sealed, then the process died before cataloging", kind="source")

    report = verify_vault(vault, actor=ACTOR)

    assert report.ok
    assert report.blobs_seen == 7
    assert len([n for n in report.notes if "not in the catalog" in n]) == 1


# --------------------------------------------------------------------------- rotation


def test_rotation_rewraps_every_key_without_touching_blobs(
    kit: Kit, vault: Vault, filled: dict[str, str]
) -> None:
    home = vault.settings.home
    old_kek = vault.keys.current_kek_id
    blobs_before = _blob_digests(kit, home)
    wrapped_before = dict(kit.sql(home, "SELECT object_id, wrapped_key FROM objects"))

    report = rotate_keys(vault, actor=ACTOR)

    assert report.new_kek_id != old_kek == "kek-0001"
    assert report.rewrapped == 6 and report.retired == ()
    assert _blob_digests(kit, home) == blobs_before
    rows = kit.sql(home, "SELECT object_id, kek_id, wrapped_key FROM objects")
    assert {kek for _, kek, _ in rows} == {report.new_kek_id}
    assert all(wrapped != wrapped_before[oid] for oid, _, wrapped in rows)
    _read_all(vault, filled)
    assert verify_vault(vault, actor=ACTOR).ok
    phases = [e.details["phase"] for e in vault.audit if e.action == Action.KEY_ROTATE]
    assert phases == ["start", "done"]


def test_objects_stay_readable_after_rotation_in_a_new_session(
    kit: Kit, vault: Vault, filled: dict[str, str]
) -> None:
    rotate_keys(vault, actor=ACTOR)
    vault.close()
    with Vault.open(vault.settings, kit.PASSPHRASE) as reopened:
        _read_all(reopened, filled)
        assert len(reopened.keys.kek_ids()) == 2


def test_retiring_old_keys_after_rotation(
    kit: Kit, vault: Vault, filled: dict[str, str]
) -> None:
    old = vault.catalog.objects_of_instance(filled["png"])[0]

    report = rotate_keys(vault, actor=ACTOR, retire_old=True)

    assert report.retired == ("kek-0001",)
    assert vault.keys.kek_ids() == [report.new_kek_id]
    _read_all(vault, filled)
    assert old.wrapped_key is not None
    with pytest.raises(KeyProviderError):  # the old wrapping is useless now
        vault.keys.unwrap(WrappedKey.from_bytes(old.wrapped_key),
                          context=key_context(old.object_id))


def test_an_interrupted_rotation_resumes_and_nothing_is_lost_meanwhile(
    kit: Kit, vault: Vault, filled: dict[str, str]
) -> None:
    done = 0

    def crash_after_two() -> None:
        nonlocal done
        done += 1
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rotate_keys(vault, actor=ACTOR, on_object=crash_after_two)
    keks = {kek for (kek,) in kit.sql(vault.settings.home, "SELECT kek_id FROM objects")}
    assert len(keks) == 2  # half way: some rewrapped, some not
    _read_all(vault, filled)

    report = rotate_keys(vault, actor=ACTOR, retire_old=True)

    assert report.rewrapped == 6
    assert len(report.retired) == 2
    _read_all(vault, filled)
    assert verify_vault(vault, actor=ACTOR).ok


# --------------------------------------------------------------------------- shredding


def test_shredding_destroys_the_keys_for_good_and_verify_stays_clean(
    kit: Kit, vault: Vault, filled: dict[str, str]
) -> None:
    home = vault.settings.home
    study = vault.catalog.get_instance(filled["dicom"]).study_id
    objects = vault.catalog.objects_of_instance(filled["dicom"])
    wrapped = [o.wrapped_key for o in objects]
    assert all(wrapped)

    count = shred_study(vault, study, actor=ACTOR)

    assert count == 2
    for reader in (open_image, open_model_input):
        with pytest.raises(ObjectShredded):
            reader(vault, filled["dicom"], actor=ACTOR)
    assert vault.catalog.get_study(study).shredded_at is not None
    for obj in objects:
        assert not kit.blob_path(home, obj.blob_key).exists()
    # no copy of a destroyed wrapped key is left in the database files
    for db_file in home.glob("catalog.sqlite3*"):
        data = db_file.read_bytes()
        assert not [w for w in wrapped if w and w in data], db_file.name
    report = verify_vault(vault, actor=ACTOR)
    assert report.ok, report.problems
    assert report.objects_shredded == 2
    _read_all(vault, {k: v for k, v in filled.items() if k != "dicom"})
    entry = [e for e in vault.audit if e.action == Action.SHRED][-1]
    assert entry.object_ids == (study,) and entry.details == {"objects": 2}
    assert shred_study(vault, study, actor=ACTOR) == 0  # again: nothing left to destroy


def test_a_shredded_study_stays_shredded_after_rotation(
    kit: Kit, vault: Vault, filled: dict[str, str]
) -> None:
    study = vault.catalog.get_instance(filled["png"]).study_id
    shred_study(vault, study, actor=ACTOR)

    report = rotate_keys(vault, actor=ACTOR, retire_old=True)

    assert report.rewrapped == 4
    with pytest.raises(ObjectShredded):
        open_image(vault, filled["png"], actor=ACTOR)
    assert verify_vault(vault, actor=ACTOR).ok


def test_shredding_an_unknown_study_is_not_found(vault: Vault) -> None:
    with pytest.raises(ObjectNotFound):
        shred_study(vault, "2.25.42", actor=ACTOR)


def test_verify_reports_a_shredded_objects_row_edit(
    kit: Kit, vault: Vault, filled: dict[str, str]
) -> None:
    study = vault.catalog.get_instance(filled["jpeg"]).study_id
    shred_study(vault, study, actor=ACTOR)
    obj = vault.catalog.objects_of_instance(filled["jpeg"])[0]
    kit.sql(vault.settings.home, "UPDATE objects SET sealed_size = 1 WHERE object_id = ?",
            (obj.object_id,))

    report = verify_vault(vault, actor=ACTOR)

    assert not report.ok
    assert any(obj.object_id in p and "signature invalid" in p for p in report.problems)


def _fake_shred(kit: Kit, home: Path, *, instance_id: str | None = None,
                study_id: str | None = None) -> None:
    """What an attacker with write access to the catalog does to hide a study."""
    if instance_id is not None:
        kit.sql(home, "UPDATE objects SET wrapped_key = NULL WHERE instance_id = ?",
                (instance_id,))
    if study_id is not None:
        kit.sql(home, "UPDATE studies SET shredded_at = '2026-01-01 00:00:00.000000' "
                "WHERE study_id = ?", (study_id,))


def test_verify_reports_a_shred_faked_in_the_catalog(
    kit: Kit, vault: Vault, filled: dict[str, str]
) -> None:
    instance = filled["png"]
    study = vault.catalog.get_instance(instance).study_id
    objects = {o.object_id for o in vault.catalog.objects_of_instance(instance)}

    _fake_shred(kit, vault.settings.home, instance_id=instance, study_id=study)
    report = verify_vault(vault, actor=ACTOR)

    assert not report.ok
    assert report.objects_shredded == 2
    unaudited = [p for p in report.problems if "no audit entry records its shredding" in p]
    assert {o for o in objects if any(o in p for p in unaudited)} == objects
    assert any(p.startswith(f"study {study}:") for p in unaudited)
    assert len(unaudited) == 3
    entry = [e for e in vault.audit if e.action == Action.VERIFY][-1]
    assert entry.outcome == "error" and entry.details["problems"] == len(report.problems)


def test_verify_reports_erased_keys_alone_and_a_shredded_mark_alone(
    kit: Kit, vault: Vault, filled: dict[str, str]
) -> None:
    home = vault.settings.home
    dicom_study = vault.catalog.get_instance(filled["dicom"]).study_id
    jpeg_study = vault.catalog.get_instance(filled["jpeg"]).study_id

    _fake_shred(kit, home, instance_id=filled["dicom"])
    _fake_shred(kit, home, study_id=jpeg_study)
    problems = verify_vault(vault, actor=ACTOR).problems

    assert len(problems) == 3, problems
    assert sum(f"(instance {filled['dicom']}" in p for p in problems) == 2
    assert any(p.startswith(f"study {jpeg_study}: marked shredded") for p in problems)
    assert not any(dicom_study in p for p in problems)


def test_a_real_shred_does_not_vouch_for_a_faked_one(
    kit: Kit, vault: Vault, filled: dict[str, str]
) -> None:
    shred_study(vault, vault.catalog.get_instance(filled["dicom"]).study_id, actor=ACTOR)
    faked = vault.catalog.get_instance(filled["png"]).study_id

    _fake_shred(kit, vault.settings.home, instance_id=filled["png"], study_id=faked)
    report = verify_vault(vault, actor=ACTOR)

    assert report.objects_shredded == 4
    assert len(report.problems) == 3, report.problems
    assert all(filled["png"] in p or faked in p for p in report.problems)


def test_an_audited_delete_accounts_for_a_shred(
    kit: Kit, vault: Vault, filled: dict[str, str]
) -> None:
    study = vault.catalog.get_instance(filled["png"]).study_id
    vault.catalog.shred_study(study)  # the catalog's own shred, as a delete use case calls it
    assert not verify_vault(vault, actor=ACTOR).ok

    vault.audit.append(ACTOR, Action.DELETE, "ok", object_ids=[study])

    report = verify_vault(vault, actor=ACTOR)
    assert report.ok, report.problems
    assert report.objects_shredded == 2


def test_a_new_passphrase_opens_everything_and_the_old_one_nothing(
    kit: Kit, vault: Vault, filled: dict[str, str], settings,
) -> None:
    from radvault.errors import ConfigurationError, VaultLocked

    with pytest.raises(ConfigurationError, match="12 characters"):
        vault.change_passphrase("too short", actor=ACTOR)
    vault.change_passphrase("a brand new vault passphrase", actor=ACTOR)
    assert vault.audit.query(action="passphrase_change")
    vault.close()
    with pytest.raises(VaultLocked):
        Vault.open(settings, kit.PASSPHRASE)
    with Vault.open(settings, "a brand new vault passphrase") as reopened:
        _read_all(reopened, filled)
        assert verify_vault(reopened).ok


def test_the_public_key_alone_verifies_the_audit_trail_and_writes_nothing(
    kit: Kit, vault: Vault, filled: dict[str, str], settings,
) -> None:
    from radvault.vault.vault import verify_audit_with_public_key

    vault.close()
    home = settings.home
    public = (home / "vault.pub").read_text()
    before = kit.file_digests(home)
    report = verify_audit_with_public_key(settings, public)
    assert report.ok and report.entries_checked > 0
    after = kit.file_digests(home)
    assert {k: after.get(k) for k in before} == before  # nothing appended, signed or changed
    other = "11" * 32
    assert not verify_audit_with_public_key(settings, other).ok

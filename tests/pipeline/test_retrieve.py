"""Retrieval: back-verified reads in memory, audited exports, and a vault that will not unlock."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
import pytest

from radvault.errors import IntegrityError, ObjectNotFound, ObjectShredded, VaultLocked
from radvault.imaging.preprocess import Preprocessor
from radvault.imaging.reading import read_image
from radvault.imaging.records import ImageRecord
from radvault.pipeline.ingest import Ingestor
from radvault.pipeline.maintenance import shred_study
from radvault.pipeline.model_input import MAGIC
from radvault.pipeline.retrieve import export_study, open_image, open_model_input
from radvault.vault.audit import Action, Outcome
from radvault.vault.vault import Vault

if TYPE_CHECKING:
    from conftest import Kit

ACTOR = "reader"


def _last(vault: Vault, action: str) -> Any:
    return next(e for e in reversed(list(vault.audit)) if e.action == action)


def test_open_image_returns_the_verified_image_and_audits_the_read(
    kit: Kit, vault: Vault, ingestor: Ingestor, tmp_path: Path
) -> None:
    png = kit.make_raster(tmp_path / "a.png", seed=5)
    iid = kit.stored(ingestor.ingest_file(png, modality="US"))

    image = open_image(vault, iid, actor=ACTOR)

    assert isinstance(image, ImageRecord)
    assert np.array_equal(image.pixels, read_image(png).pixels)
    entry = _last(vault, Action.READ)
    assert (entry.actor, entry.outcome, entry.object_ids) == (ACTOR, Outcome.OK, (iid,))


def test_open_model_input_returns_what_preprocessing_made(
    kit: Kit, vault: Vault, ingestor: Ingestor
) -> None:
    iid = kit.stored(ingestor.ingest_file(kit.ct_small()))

    model_input = open_model_input(vault, iid, actor=ACTOR)

    expected = Preprocessor(vault.settings.preprocess)(read_image(kit.ct_small()))
    assert model_input.array.dtype == np.float32
    assert np.array_equal(model_input.array, expected)
    assert model_input.settings["size"] == vault.settings.preprocess.size


def test_unknown_ids_are_not_found(vault: Vault) -> None:
    with pytest.raises(ObjectNotFound):
        open_image(vault, "2.25.1", actor=ACTOR)
    with pytest.raises(ObjectNotFound):
        open_model_input(vault, "2.25.1", actor=ACTOR)
    with pytest.raises(ObjectNotFound):
        export_study(vault, "2.25.1", Path("unused"), actor=ACTOR)


def test_a_signed_but_wrong_pixel_digest_is_caught_after_decoding(
    kit: Kit, vault: Vault, ingestor: Ingestor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if a faulty writer had recorded (and signed) the digest of other pixels:
    # the row and blob check out, and only the recomputed pixel digest differs.
    with monkeypatch.context() as patch:
        patch.setattr(Vault, "pixel_digest", lambda self, message: "0" * 64)
        iid = kit.stored(ingestor.ingest_file(kit.make_raster(tmp_path / "a.png", seed=6)))

    with pytest.raises(IntegrityError, match="pixels do not match"):
        open_image(vault, iid, actor=ACTOR)
    entry = _last(vault, Action.INTEGRITY_FAILURE)
    assert entry.outcome == Outcome.REFUSED and iid in entry.object_ids


def test_export_writes_the_deidentified_files_and_audits_it(
    kit: Kit, vault: Vault, ingestor: Ingestor, tmp_path: Path
) -> None:
    png = kit.make_raster(tmp_path / "in" / "a.png", seed=8)
    dicom_outcome = ingestor.ingest_file(kit.ct_small())
    png_outcome = ingestor.ingest_file(png, modality="DX")
    out = tmp_path / "export"

    dicom_files = export_study(vault, dicom_outcome.study_id, out, actor=ACTOR)
    png_files = export_study(vault, png_outcome.study_id, out, actor=ACTOR)

    assert [f.path.name for f in dicom_files] == [f"{dicom_outcome.instance_id}.dcm"]
    assert [f.path.name for f in png_files] == [f"{png_outcome.instance_id}.png"]
    assert png_files[0].path.read_bytes() == png.read_bytes()  # PNG/JPEG are kept as given
    ds = pydicom.dcmread(dicom_files[0].path)
    original = pydicom.dcmread(kit.ct_small())
    assert ds.SOPInstanceUID == dicom_outcome.instance_id != original.SOPInstanceUID
    assert str(ds.get("PatientName", "")) != str(original.PatientName)
    assert hashlib.sha256(ds.PixelData).digest() == hashlib.sha256(original.PixelData).digest()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [dicom_files[0].path.name, png_files[0].path.name])  # no temporary file left
    exports = [e for e in vault.audit if e.action == Action.EXPORT]
    assert [e.object_ids[0] for e in exports] == [dicom_outcome.study_id, png_outcome.study_id]


def test_export_of_a_tampered_study_writes_nothing(
    kit: Kit, vault: Vault, ingestor: Ingestor, tmp_path: Path
) -> None:
    outcome = ingestor.ingest_file(kit.make_raster(tmp_path / "a.png", seed=9), modality="MR")
    source = next(o for o in vault.catalog.objects_of_instance(outcome.instance_id)
                  if o.kind == "source")
    blob = kit.blob_path(vault.settings.home, source.blob_key)
    data = blob.read_bytes()
    blob.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit of the last chunk's tag
    out = tmp_path / "export"

    with pytest.raises(IntegrityError):
        export_study(vault, outcome.study_id, out, actor=ACTOR)

    assert not out.exists() or list(out.iterdir()) == []
    assert not [e for e in vault.audit if e.action == Action.EXPORT]


def test_a_shredded_study_cannot_be_read_or_exported(
    kit: Kit, vault: Vault, ingestor: Ingestor, tmp_path: Path
) -> None:
    outcome = ingestor.ingest_file(kit.ct_small())
    shred_study(vault, outcome.study_id, actor=ACTOR)

    with pytest.raises(ObjectNotFound, match="shredded"):
        export_study(vault, outcome.study_id, tmp_path / "out", actor=ACTOR)
    with pytest.raises(ObjectShredded):
        open_image(vault, outcome.instance_id, actor=ACTOR)
    with pytest.raises(ObjectShredded):
        open_model_input(vault, outcome.instance_id, actor=ACTOR)


# --------------------------------------------------------------------------- locked vaults

TABLES = ("patients", "studies", "series", "instances", "objects", "results",
          "audit_entries", "audit_checkpoints")


def _tables(kit: Kit, home: Path) -> dict[str, list[tuple[object, ...]]]:
    return {t: kit.sql(home, f"SELECT * FROM {t} ORDER BY 1") for t in TABLES}


@pytest.fixture
def locked_home(kit: Kit, template_home: dict[str, object], tmp_path: Path) -> Path:
    return kit.copy_home(template_home, tmp_path)


@pytest.mark.parametrize("damage", ["wrong passphrase", "missing key file", "corrupt key file",
                                    "truncated key file", "key file of another vault"])
def test_a_vault_that_cannot_be_unlocked_says_why_and_changes_nothing(
    kit: Kit, locked_home: Path, tmp_path: Path, damage: str
) -> None:
    home = locked_home
    key_file = home / "keys.json"
    good_keys = key_file.read_bytes()
    passphrase = kit.PASSPHRASE
    if damage == "wrong passphrase":
        passphrase = "not the passphrase at all"
    elif damage == "missing key file":
        key_file.unlink()
    elif damage == "corrupt key file":
        data = bytearray(good_keys)
        data[len(data) // 2] ^= 0x20
        key_file.write_bytes(bytes(data))
    elif damage == "truncated key file":
        key_file.write_bytes(good_keys[:40])
    else:
        other = kit.new_settings(tmp_path / "other")
        kit.init_vault(other).close()
        key_file.write_bytes((other.home / "keys.json").read_bytes())
    files_before, tables_before = kit.file_digests(home), _tables(kit, home)
    audit_before = (home / "audit.log").read_bytes()
    expected = {"wrong passphrase": "wrong passphrase", "missing key file": "not found",
                "corrupt key file": "corrupt", "truncated key file": "corrupt",
                "key file of another vault": "vault.pub"}[damage]
    error: type[Exception] = (IntegrityError if damage == "key file of another vault"
                              else VaultLocked)

    with pytest.raises(error, match=expected) as caught:
        Vault.open(kit.new_settings(home), passphrase)

    message = str(caught.value)
    assert passphrase not in message and "\n" not in message
    files_after, tables_after = kit.file_digests(home), _tables(kit, home)
    if damage == "key file of another vault":
        assert files_after == files_before  # refused before anything was written
        return
    # The failed unlock is audited, and that one entry is the only change.
    changed = {k for k in files_before.keys() | files_after.keys()
               if files_before.get(k) != files_after.get(k)}
    assert changed <= {"catalog.sqlite3", "catalog.sqlite3-wal", "catalog.sqlite3-shm",
                       "audit.log"}, changed
    new_entries = tables_after["audit_entries"][len(tables_before["audit_entries"]):]
    assert tables_after["audit_entries"][:len(tables_before["audit_entries"])] == \
        tables_before["audit_entries"]
    assert [e[2:5] for e in new_entries] == [("system", "unlock_failed", "refused")]
    assert {t: rows for t, rows in tables_after.items() if t != "audit_entries"} == \
        {t: rows for t, rows in tables_before.items() if t != "audit_entries"}
    audit_after = (home / "audit.log").read_bytes()
    assert audit_after.startswith(audit_before)
    added = audit_after[len(audit_before):]
    assert added.count(b"\n") == 1 and b"unlock_failed" in added
    # With the right key file and passphrase back, the vault is whole and its chain intact.
    key_file.write_bytes(good_keys)
    with Vault.open(kit.new_settings(home), kit.PASSPHRASE) as vault:
        assert vault.audit.verify().ok
        study = vault.catalog.list_studies()[0]
        open_image(vault, vault.catalog.instances_of_study(study.study_id)[0].instance_id,
                   actor=ACTOR)


def test_no_vault_at_all_is_a_clear_error(kit: Kit, tmp_path: Path) -> None:
    with pytest.raises(VaultLocked, match="radvault init"):
        Vault.open(kit.new_settings(tmp_path / "nothing"), kit.PASSPHRASE)
    assert not (tmp_path / "nothing").exists()


def test_a_greyscale_image_is_stored_as_one_replicated_float32_channel(
    kit: Kit, vault: Vault, ingestor: Ingestor
) -> None:
    iid = kit.stored(ingestor.ingest_file(kit.ct_small()))
    obj = next(o for o in vault.catalog.objects_of_instance(iid) if o.kind == "model_input")
    plain = vault.open_object(obj, actor=ACTOR)
    header_len = int.from_bytes(plain[8:12], "little")
    assert bytes(plain[:5]) == MAGIC + b"\x02"
    header = json.loads(bytes(plain[12:12 + header_len]))
    assert (header["dtype"], header["replicated"]) == ("<f4", True)
    channels, size, _ = header["shape"]
    assert channels == 3 and obj.plain_size == 12 + header_len + 4 * size * size
    array = open_model_input(vault, iid, actor=ACTOR).array
    assert array.shape == (3, size, size)
    assert np.array_equal(array[0], array[1]) and np.array_equal(array[0], array[2])

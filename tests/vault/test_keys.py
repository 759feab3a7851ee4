"""Key providers wrap data keys, rotate KEKs, and keep the vault's secrets in a locked file."""

from __future__ import annotations

import base64
import json
import stat
import unicodedata
from pathlib import Path

import pytest

from radvault.errors import (
    ConfigurationError,
    IntegrityError,
    KeyProviderError,
    VaultError,
    VaultLocked,
)
from radvault.vault import _atomic, _keyfile
from radvault.vault.keys import (
    InMemoryKeyProvider,
    KdfParams,
    KeyProvider,
    LocalKeyFile,
    VaultSecrets,
    WrappedKey,
    rewrap,
)
from radvault.vault.signing import canonical_json

PASSPHRASE = "correct horse battery staple"
DATA_KEY = bytes(range(32))
CTX = b"obj-0001"


@pytest.fixture
def key_path(tmp_path) -> Path:
    return tmp_path / "vault" / "keys.json"


@pytest.fixture
def keyfile(key_path):
    provider = LocalKeyFile.create(key_path, PASSPHRASE, kdf=KdfParams.fast())
    yield provider
    provider.close()


@pytest.fixture(params=["memory", "file"])
def provider(request, tmp_path):
    if request.param == "memory":
        made = InMemoryKeyProvider()
    else:
        made = LocalKeyFile.create(tmp_path / "keys.json", PASSPHRASE, kdf=KdfParams.fast())
    yield made
    made.close()


# -- WrappedKey -----------------------------------------------------------------------


def test_wrapped_key_round_trips_through_bytes():
    wrapped = WrappedKey("kek-0003", b"\x01" + b"\xaa" * 60)
    assert WrappedKey.from_bytes(wrapped.to_bytes()) == wrapped
    assert "aa" not in repr(wrapped)


@pytest.mark.parametrize(
    "record",
    [b"", b"RVWK", b"XXXX\x01\x03kekblob", b"RVWK\x02\x03kekblob", b"RVWK\x01\x09kek",
     b"RVWK\x01\x00x"],
    ids=["empty", "header-only", "magic", "version", "short-id", "empty-id"],
)
def test_a_malformed_wrapped_key_record_is_an_integrity_error(record):
    with pytest.raises(IntegrityError, match="malformed"):
        WrappedKey.from_bytes(record)


@pytest.mark.parametrize(
    ("kek_id", "blob", "message"),
    [("", b"x", "a KEK id is"), ("has space", b"x", "a KEK id is"),
     ("k" * 129, b"x", "a KEK id is"), ("kek-1", b"", "a wrapped key blob is"),
     ("kek-1", b"x" * 4097, "a wrapped key blob is")],
)
def test_a_wrapped_key_checks_itself_when_built(kek_id, blob, message):
    with pytest.raises(ValueError, match=message):
        WrappedKey(kek_id, blob)


# -- wrap / unwrap ---------------------------------------------------------------------


def test_both_local_providers_implement_both_interfaces(provider):
    assert isinstance(provider, KeyProvider)
    assert isinstance(provider, VaultSecrets)


def test_wrap_then_unwrap_returns_the_data_key_in_a_bytearray(provider):
    wrapped = provider.wrap(bytearray(DATA_KEY), context=CTX)
    assert wrapped.kek_id == provider.current_kek_id == "kek-0001"
    assert DATA_KEY not in wrapped.blob
    unwrapped = provider.unwrap(wrapped, context=CTX)
    assert isinstance(unwrapped, bytearray)
    assert unwrapped == DATA_KEY


def test_wrapping_twice_gives_different_blobs(provider):
    assert provider.wrap(DATA_KEY, context=CTX) != provider.wrap(DATA_KEY, context=CTX)


def test_a_wrapped_key_moved_to_another_object_does_not_unwrap(provider):
    wrapped = provider.wrap(DATA_KEY, context=b"obj-0001")
    with pytest.raises(IntegrityError, match="kek-0001"):
        provider.unwrap(wrapped, context=b"obj-0002")


def test_a_tampered_wrapped_key_does_not_unwrap(provider):
    wrapped = provider.wrap(DATA_KEY, context=CTX)
    for position in (0, 5, len(wrapped.blob) - 1):
        blob = bytearray(wrapped.blob)
        blob[position] ^= 0x80
        with pytest.raises(IntegrityError):
            provider.unwrap(WrappedKey(wrapped.kek_id, bytes(blob)), context=CTX)
    with pytest.raises(IntegrityError):
        provider.unwrap(WrappedKey(wrapped.kek_id, wrapped.blob[:-1]), context=CTX)


def test_another_vaults_kek_with_the_same_id_does_not_unwrap(provider):
    other = InMemoryKeyProvider()
    wrapped = other.wrap(DATA_KEY, context=CTX)
    assert wrapped.kek_id == provider.current_kek_id
    with pytest.raises(IntegrityError):
        provider.unwrap(wrapped, context=CTX)


def test_an_unknown_kek_is_a_key_provider_error(provider):
    wrapped = provider.wrap(DATA_KEY, context=CTX)
    with pytest.raises(KeyProviderError, match="kek-0042"):
        provider.unwrap(WrappedKey("kek-0042", wrapped.blob), context=CTX)


def test_context_must_be_bytes(provider):
    with pytest.raises(TypeError, match="context must be bytes"):
        provider.wrap(DATA_KEY, context="obj-0001")  # type: ignore[arg-type]


def test_empty_or_huge_data_keys_are_refused(provider):
    for bad in (b"", b"x" * 1025):
        with pytest.raises(KeyProviderError):
            provider.wrap(bad, context=CTX)


# -- rotation ----------------------------------------------------------------------------


def test_rotation_keeps_old_keys_unwrappable_and_rewrap_moves_them(provider):
    old = provider.wrap(DATA_KEY, context=CTX)
    new_id = provider.rotate()
    assert new_id == provider.current_kek_id == "kek-0002"
    assert provider.kek_ids() == ["kek-0001", "kek-0002"]
    assert provider.unwrap(old, context=CTX) == DATA_KEY

    moved = rewrap(old, provider, context=CTX)
    assert moved.kek_id == "kek-0002"
    assert provider.unwrap(moved, context=CTX) == DATA_KEY
    assert rewrap(moved, provider, context=CTX) is moved  # resumable: nothing to do twice

    provider.retire("kek-0001")
    assert provider.kek_ids() == ["kek-0002"]
    assert provider.unwrap(moved, context=CTX) == DATA_KEY
    with pytest.raises(KeyProviderError, match="kek-0001"):
        provider.unwrap(old, context=CTX)


def test_rewrap_checks_the_context(provider):
    old = provider.wrap(DATA_KEY, context=CTX)
    provider.rotate()
    with pytest.raises(IntegrityError):
        rewrap(old, provider, context=b"obj-0002")


def test_the_current_kek_cannot_be_retired_nor_an_unknown_one(provider):
    with pytest.raises(KeyProviderError, match="current"):
        provider.retire("kek-0001")
    with pytest.raises(KeyProviderError, match="kek-0009"):
        provider.retire("kek-0009")
    assert provider.kek_ids() == ["kek-0001"]


def test_kek_ids_are_never_reused_after_retirement(provider):
    provider.rotate()
    provider.rotate()
    provider.retire("kek-0002")
    assert provider.rotate() == "kek-0004"


# -- vault secrets -----------------------------------------------------------------------


def test_identity_records_open_only_for_their_own_patient(provider):
    sealed = provider.seal_identity(b"DOE^JANE|1970-01-01", context=b"patient-p1")
    assert b"DOE" not in sealed
    assert provider.open_identity(sealed, context=b"patient-p1") == b"DOE^JANE|1970-01-01"
    with pytest.raises(IntegrityError, match="other patient"):
        provider.open_identity(sealed, context=b"patient-p2")
    damaged = bytearray(sealed)
    damaged[-3] ^= 1
    with pytest.raises(IntegrityError):
        provider.open_identity(bytes(damaged), context=b"patient-p1")
    with pytest.raises(IntegrityError, match="malformed"):
        provider.open_identity(b"\x01", context=b"patient-p1")


def test_identity_records_survive_kek_rotation(provider):
    sealed = provider.seal_identity(b"SMITH^JOHN", context=b"p")
    provider.rotate()
    assert provider.open_identity(sealed, context=b"p") == b"SMITH^JOHN"
    assert provider.identity_key_id == "identity-0001"


def test_signer_and_deid_secret_are_stable_and_per_vault(provider):
    assert provider.signer().key_id == provider.signer().key_id
    assert len(provider.deid_secret()) == 32
    assert provider.deid_secret() == provider.deid_secret()
    other = InMemoryKeyProvider()
    assert other.deid_secret() != provider.deid_secret()
    assert other.signer().key_id != provider.signer().key_id


def test_a_closed_provider_is_locked(provider):
    provider.close()
    for call in (
        lambda: provider.current_kek_id,
        lambda: provider.wrap(DATA_KEY, context=CTX),
        lambda: provider.signer(),
        lambda: provider.deid_secret(),
        lambda: provider.seal_identity(b"x", context=b"p"),
    ):
        with pytest.raises(VaultLocked, match="closed"):
            call()
    provider.close()  # idempotent


# -- LocalKeyFile: the file itself ------------------------------------------------------


def test_default_kdf_is_memory_hard_and_validated():
    params = KdfParams()
    assert (params.name, params.time_cost, params.memory_cost_kib, params.parallelism) == (
        "argon2id", 3, 65536, 4,
    )
    with pytest.raises(ConfigurationError):
        KdfParams(memory_cost_kib=4, parallelism=1)
    with pytest.raises(ConfigurationError):
        KdfParams(time_cost=0)


def test_the_key_file_is_private_versioned_and_records_its_kdf(keyfile, key_path):
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    document = json.loads(key_path.read_text())
    assert document["format"] == "radvault-keyfile"
    assert document["version"] == 1
    assert document["kdf"]["name"] == "argon2id"
    assert document["kdf"]["time_cost"] == 1
    assert document["kdf"]["memory_cost_kib"] == 64
    assert len(base64.b64decode(document["kdf"]["salt"])) == 16
    assert keyfile.kdf_params == KdfParams.fast()
    assert not list(key_path.parent.glob(_atomic.PARTIAL_PREFIX + "*"))


def test_the_key_file_holds_no_secret_in_clear(keyfile, key_path):
    raw = key_path.read_bytes()
    material = keyfile._mat()
    secrets = [*material.keks.values(), material.identity_key, material.signing_seed,
               material.deid_secret]
    for secret in secrets:
        assert bytes(secret) not in raw
        assert base64.b64encode(bytes(secret)) not in raw
        assert bytes(secret).hex().encode() not in raw


def test_reopening_gives_the_same_secrets(keyfile, key_path):
    wrapped = keyfile.wrap(DATA_KEY, context=CTX)
    identity = keyfile.seal_identity(b"DOE^JANE", context=b"p1")
    with LocalKeyFile.open(key_path, PASSPHRASE) as again:
        assert again.unwrap(wrapped, context=CTX) == DATA_KEY
        assert again.open_identity(identity, context=b"p1") == b"DOE^JANE"
        assert again.signer().public_key_bytes == keyfile.signer().public_key_bytes
        assert again.deid_secret() == keyfile.deid_secret()
        assert again.kek_ids() == ["kek-0001"]


def test_passphrases_are_unicode_normalised(key_path):
    composed = unicodedata.normalize("NFC", "mot de passe élève")
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    LocalKeyFile.create(key_path, composed, kdf=KdfParams.fast()).close()
    LocalKeyFile.open(key_path, decomposed).close()
    LocalKeyFile.open(key_path, composed.encode()).close()


def test_creating_over_an_existing_file_is_refused_and_changes_nothing(keyfile, key_path):
    before = key_path.read_bytes()
    with pytest.raises(VaultError, match="already exists"):
        LocalKeyFile.create(key_path, "another", kdf=KdfParams.fast())
    assert key_path.read_bytes() == before


def test_an_empty_passphrase_is_refused_at_creation(key_path):
    with pytest.raises(ConfigurationError):
        LocalKeyFile.create(key_path, "", kdf=KdfParams.fast())
    assert not key_path.exists()


# -- LocalKeyFile: refusing to unlock ---------------------------------------------------


@pytest.mark.parametrize("wrong", ["Correct horse battery staple", "", b"\xff\xfe"])
def test_a_wrong_passphrase_is_refused_and_changes_nothing(keyfile, key_path, wrong):
    before = key_path.read_bytes()
    with pytest.raises(VaultLocked, match=r"^wrong passphrase") as caught:
        LocalKeyFile.open(key_path, wrong)
    assert str(key_path) in str(caught.value)
    assert key_path.read_bytes() == before


def test_a_missing_key_file_names_its_path(tmp_path):
    missing = tmp_path / "nowhere" / "keys.json"
    with pytest.raises(VaultLocked, match="key file not found") as caught:
        LocalKeyFile.open(missing, PASSPHRASE)
    assert str(missing) in str(caught.value)
    assert not missing.parent.exists()


def _edit(document: dict, field: str, value) -> dict:
    edited = json.loads(json.dumps(document))
    target = edited
    *parents, leaf = field.split(".")
    for name in parents:
        target = target[name]
    target[leaf] = value
    return edited


def _flip_b64(text: str) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[len(raw) // 2] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def _reseal_checksum(document: dict) -> dict:
    rest = {k: v for k, v in document.items() if k != "checksum"}
    import hashlib

    return {**rest, "checksum": hashlib.sha256(canonical_json(rest)).hexdigest()}


CORRUPTIONS = {
    "empty": lambda raw, doc: b"",
    "truncated": lambda raw, doc: raw[: len(raw) // 2],
    "not-json": lambda raw, doc: b"\x00\x01binary garbage",
    "not-a-keyfile": lambda raw, doc: b'{"hello": "world"}',
    "ciphertext-bit": lambda raw, doc: json.dumps(
        _edit(doc, "ciphertext", _flip_b64(doc["ciphertext"]))).encode(),
    "nonce-bit": lambda raw, doc: json.dumps(_edit(doc, "nonce", _flip_b64(doc["nonce"]))).encode(),
    "salt-edited": lambda raw, doc: json.dumps(
        _edit(doc, "kdf.salt", _flip_b64(doc["kdf"]["salt"]))).encode(),
    "kdf-edited": lambda raw, doc: json.dumps(_edit(doc, "kdf.time_cost", 2)).encode(),
    "field-dropped": lambda raw, doc: json.dumps(
        {k: v for k, v in doc.items() if k != "nonce"}).encode(),
    "absurd-kdf": lambda raw, doc: json.dumps(
        _reseal_checksum(_edit(doc, "kdf.memory_cost_kib", 1 << 40))).encode(),
    # A deliberate forgery that also fixes the checksum still fails the AEAD tag.
    "forged-ciphertext": lambda raw, doc: json.dumps(
        _reseal_checksum(_edit(doc, "ciphertext", _flip_b64(doc["ciphertext"])))).encode(),
    "forged-cipher-name": lambda raw, doc: json.dumps(
        _reseal_checksum(_edit(doc, "cipher", "ROT13"))).encode(),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_corrupt_key_file_is_refused_and_left_as_it_is(keyfile, key_path, corruption):
    document = json.loads(key_path.read_text())
    damaged = CORRUPTIONS[corruption](key_path.read_bytes(), document)
    key_path.write_bytes(damaged)
    with pytest.raises(VaultLocked, match="key file is corrupt") as caught:
        LocalKeyFile.open(key_path, PASSPHRASE)
    assert str(key_path) in str(caught.value)
    assert key_path.read_bytes() == damaged


def test_a_forged_header_with_a_fixed_checksum_still_never_unlocks(keyfile, key_path):
    # Changing the KDF inputs changes the derived key, so this reads as a wrong
    # passphrase: either way the vault stays locked and the file untouched.
    document = json.loads(key_path.read_text())
    forged = json.dumps(_reseal_checksum(_edit(document, "kdf.time_cost", 2))).encode()
    key_path.write_bytes(forged)
    with pytest.raises(VaultLocked):
        LocalKeyFile.open(key_path, PASSPHRASE)
    assert key_path.read_bytes() == forged


def test_a_key_file_from_a_future_version_is_refused_clearly(keyfile, key_path):
    document = json.loads(key_path.read_text())
    key_path.write_text(json.dumps({**document, "version": 2}))
    with pytest.raises(VaultLocked, match="version 2 is not supported"):
        LocalKeyFile.open(key_path, PASSPHRASE)


def test_a_folder_in_place_of_the_key_file_is_refused(tmp_path):
    (tmp_path / "keys.json").mkdir()
    with pytest.raises(VaultLocked, match="folder"):
        LocalKeyFile.open(tmp_path / "keys.json", PASSPHRASE)


def test_a_corrupt_secret_payload_is_refused():
    good = _keyfile.KeyMaterial.generate().encode()
    for damaged, message in ((good[:-1], "truncated payload"),
                             (good + b"\x00", "incomplete payload"),
                             (b"XXXX" + good[4:], "bad payload magic"),
                             (good[:7], "malformed payload")):
        with pytest.raises(ValueError, match=message):
            _keyfile.KeyMaterial.decode(bytearray(damaged))


# -- LocalKeyFile: changes are persisted safely -----------------------------------------


def test_rotation_and_retirement_are_persisted(keyfile, key_path):
    old = keyfile.wrap(DATA_KEY, context=CTX)
    keyfile.rotate()
    with LocalKeyFile.open(key_path, PASSPHRASE) as again:
        assert again.kek_ids() == ["kek-0001", "kek-0002"]
        assert again.current_kek_id == "kek-0002"
        assert again.unwrap(old, context=CTX) == DATA_KEY
    moved = rewrap(old, keyfile, context=CTX)
    keyfile.retire("kek-0001")
    with LocalKeyFile.open(key_path, PASSPHRASE) as again:
        assert again.kek_ids() == ["kek-0002"]
        assert again.unwrap(moved, context=CTX) == DATA_KEY
        with pytest.raises(KeyProviderError):
            again.unwrap(old, context=CTX)


def test_two_processes_sharing_the_file_never_lose_each_others_keks(keyfile, key_path):
    other = LocalKeyFile.open(key_path, PASSPHRASE)
    assert keyfile.rotate() == "kek-0002"
    under_new = keyfile.wrap(DATA_KEY, context=CTX)
    assert other.unwrap(under_new, context=CTX) == DATA_KEY  # picks up the new KEK
    assert other.rotate() == "kek-0003"  # re-reads before writing: kek-0002 survives
    with LocalKeyFile.open(key_path, PASSPHRASE) as again:
        assert again.kek_ids() == ["kek-0001", "kek-0002", "kek-0003"]
    other.close()


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_a_failed_rotation_changes_neither_file_nor_memory(keyfile, key_path, monkeypatch, failing):
    before = key_path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(_atomic.os, failing, fail)
    with pytest.raises(KeyProviderError, match="cannot rewrite key file"):
        keyfile.rotate()
    monkeypatch.undo()
    assert key_path.read_bytes() == before
    assert keyfile.current_kek_id == "kek-0001"
    assert keyfile.kek_ids() == ["kek-0001"]
    assert not list(key_path.parent.glob(_atomic.PARTIAL_PREFIX + "*"))


def test_change_passphrase_keeps_every_secret(keyfile, key_path):
    wrapped = keyfile.wrap(DATA_KEY, context=CTX)
    keyfile.change_passphrase("a brand new passphrase")
    with pytest.raises(VaultLocked, match="wrong passphrase"):
        LocalKeyFile.open(key_path, PASSPHRASE)
    with LocalKeyFile.open(key_path, "a brand new passphrase") as again:
        assert again.unwrap(wrapped, context=CTX) == DATA_KEY
        assert again.deid_secret() == keyfile.deid_secret()
    keyfile.rotate()  # the open handle carries on under the new passphrase
    with LocalKeyFile.open(key_path, "a brand new passphrase") as again:
        assert again.current_kek_id == "kek-0002"


def test_a_handle_whose_file_was_rekeyed_elsewhere_must_reopen(keyfile, key_path):
    other = LocalKeyFile.open(key_path, PASSPHRASE)
    other.change_passphrase("elsewhere")
    with pytest.raises(VaultLocked, match="open it again"):
        keyfile.rotate()
    other.close()

"""Sealed objects round-trip, and every kind of tampering fails with IntegrityError."""

from __future__ import annotations

import hashlib
import os
import struct

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from radvault.errors import IntegrityError, KeyProviderError
from radvault.vault import sealing
from radvault.vault.keys import InMemoryKeyProvider, KeyProvider, WrappedKey, rewrap
from radvault.vault.sealing import (
    Sealed,
    key_context,
    open_sealed,
    read_header,
    seal,
)

CHUNK = 64
OID = "obj-0001"
NONCE, TAG = 12, 16


@pytest.fixture(scope="module")
def provider() -> InMemoryKeyProvider:
    return InMemoryKeyProvider()


def _secret_plaintext(size: int) -> bytes:
    """Recognisable plaintext, so a test can check it never leaks into messages."""
    pattern = b"PATIENT^SECRET-PIXELS-"
    return (pattern * (size // len(pattern) + 1))[:size]


def _chunk_spans(blob: bytes, chunk_size: int) -> list[tuple[int, int]]:
    """(start, end) of each chunk record (nonce | ciphertext | tag) in a v1 blob."""
    header = read_header(blob)
    spans, pos = [], header.header_size
    for index in range(header.chunk_count):
        length = min(chunk_size, header.plain_size - index * chunk_size)
        spans.append((pos, pos + NONCE + length + TAG))
        pos += NONCE + length + TAG
    return spans


def _open(blob: bytes, sealed: Sealed, provider: KeyProvider, object_id: str = OID) -> bytearray:
    return open_sealed(blob, object_id=object_id, wrapped_key=sealed.wrapped_key, provider=provider)


def _with_header(blob: bytes, *, count: int | None = None, size: int | None = None) -> bytes:
    """Rewrite the header's chunk count / plaintext length (what a forger would do)."""
    fixed = sealing._FIXED
    fields = list(fixed.unpack_from(blob))
    if count is not None:
        fields[5] = count
    if size is not None:
        fields[6] = size
    return fixed.pack(*fields) + blob[fixed.size:]


# -- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "chunk_size"),
    [(0, CHUNK), (1, CHUNK), (CHUNK, CHUNK), (CHUNK + 1, CHUNK), (5 * CHUNK - 3, CHUNK),
     (3 * (1 << 20) + 5, sealing.DEFAULT_CHUNK_SIZE)],
    ids=["empty", "one-byte", "one-chunk", "chunk-plus-one", "several-chunks", "several-MiB"],
)
def test_round_trip(provider, size, chunk_size):
    plaintext = os.urandom(size)
    sealed = seal(plaintext, object_id=OID, provider=provider, chunk_size=chunk_size)
    assert sealed.plain_size == size
    assert type(sealed.blob) is bytes
    assert sealed.sealed_sha256 == hashlib.sha256(sealed.blob).hexdigest()
    assert sealed.wrapped_key.kek_id == provider.current_kek_id
    header = read_header(sealed.blob)
    assert (header.object_id, header.plain_size, header.chunk_size) == (OID, size, chunk_size)
    assert header.chunk_count == max(1, -(-size // chunk_size))
    assert len(sealed.blob) == header.sealed_size
    opened = _open(sealed.blob, sealed, provider)
    assert isinstance(opened, bytearray)
    assert opened == plaintext


_HYPOTHESIS_PROVIDER = InMemoryKeyProvider()


@settings(max_examples=60, deadline=None)
@given(plaintext=st.binary(max_size=700), chunk_size=st.sampled_from([16, 17, 64, 1000]))
def test_round_trip_any_bytes(plaintext, chunk_size):
    provider = _HYPOTHESIS_PROVIDER
    sealed = seal(plaintext, object_id="obj-h", provider=provider, chunk_size=chunk_size)
    assert _open(sealed.blob, sealed, provider, "obj-h") == plaintext


def test_any_contiguous_buffer_can_be_sealed(provider):
    pixels = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    for source in (pixels, memoryview(pixels), bytearray(pixels.tobytes())):
        sealed = seal(source, object_id=OID, provider=provider, chunk_size=1000)
        assert _open(sealed.blob, sealed, provider) == pixels.tobytes()
    with pytest.raises(TypeError, match="plaintext must be a contiguous buffer"):
        seal(pixels[:, ::2], object_id=OID, provider=provider)


def test_sealing_the_same_bytes_twice_gives_unrelated_blobs(provider):
    first = seal(b"same pixels", object_id=OID, provider=provider)
    second = seal(b"same pixels", object_id=OID, provider=provider)
    assert first.blob != second.blob
    assert first.wrapped_key != second.wrapped_key
    assert b"same pixels" not in first.blob


def test_bad_arguments_are_refused(provider):
    for bad_id, message in (("", "object_id must be a non-empty string"),
                            ("x" * 1025, "object_id is longer than 1024 bytes")):
        with pytest.raises(ValueError, match=message):
            seal(b"x", object_id=bad_id, provider=provider)
    for bad_size in (0, 15, (1 << 30) + 1):
        with pytest.raises(ValueError, match=r"chunk_size must be within 16\.\.1073741824"):
            seal(b"x", object_id=OID, provider=provider, chunk_size=bad_size)


# -- the documented layout ---------------------------------------------------------------


class _FixedKeyProvider(KeyProvider):
    """Unwraps every key to one known data key: lets a test build a blob by hand."""

    def __init__(self, data_key: bytes) -> None:
        self._data_key = data_key

    @property
    def current_kek_id(self) -> str:
        return "fixed"

    def kek_ids(self) -> list[str]:
        return ["fixed"]

    def wrap(self, data_key, *, context):
        return WrappedKey("fixed", b"\x00")

    def unwrap(self, wrapped, *, context):
        return bytearray(self._data_key)

    def rotate(self) -> str:
        raise KeyProviderError("fixed")

    def retire(self, kek_id: str) -> None:
        raise KeyProviderError("fixed")


def test_a_blob_written_by_hand_from_docs_sealed_format_opens():
    # Independent writer of format v1, straight from docs/sealed-format.md: if the
    # code's layout ever drifts from the documented one, objects sealed today
    # would stop opening, and this test fails.
    data_key = bytes(range(32))
    object_id = "doc-example"
    plaintext = b"0123456789" * 5  # 50 bytes in chunks of 20: 20, 20, 10
    chunk_size, count = 20, 3
    header = (
        b"RVSEAL" + struct.pack(">HHHIIQ", 1, 1, len(object_id), chunk_size, count, 50)
        + object_id.encode()
    )
    body = b""
    for index in range(count):
        nonce = bytes([index]) * 12
        chunk = plaintext[index * chunk_size:(index + 1) * chunk_size]
        aad = header + struct.pack(">IB", index, index == count - 1)
        body += nonce + AESGCM(data_key).encrypt(nonce, chunk, aad)
    opened = open_sealed(
        header + body,
        object_id=object_id,
        wrapped_key=WrappedKey("fixed", b"\x00"),
        provider=_FixedKeyProvider(data_key),
    )
    assert opened == plaintext


# -- tampering ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def victim(provider):
    """A four-chunk object (64, 64, 64, 30 bytes) of recognisable plaintext."""
    return seal(_secret_plaintext(3 * CHUNK + 30), object_id=OID, provider=provider,
                chunk_size=CHUNK)


def _assert_refused(blob, sealed, provider, object_id=OID):
    with pytest.raises(IntegrityError) as caught:
        _open(blob, sealed, provider, object_id)
    message = str(caught.value)
    assert repr(object_id) in message
    assert "PATIENT" not in message and "SECRET" not in message
    return message


def test_a_bit_flip_anywhere_in_the_header_is_detected(victim, provider):
    header_size = read_header(victim.blob).header_size
    for position in range(header_size):
        for bit in (0x01, 0x80):
            blob = bytearray(victim.blob)
            blob[position] ^= bit
            _assert_refused(bytes(blob), victim, provider)


@pytest.mark.parametrize("part", ["nonce", "ciphertext", "tag"])
@pytest.mark.parametrize("chunk", [0, 2, 3])
def test_a_bit_flip_in_any_chunk_part_is_detected(victim, provider, part, chunk):
    start, end = _chunk_spans(victim.blob, CHUNK)[chunk]
    position = {"nonce": start + 5, "ciphertext": start + NONCE + 7, "tag": end - 1}[part]
    blob = bytearray(victim.blob)
    blob[position] ^= 0x04
    message = _assert_refused(bytes(blob), victim, provider)
    assert f"chunk {chunk}" in message


def test_truncating_by_a_chunk_is_detected(victim, provider):
    spans = _chunk_spans(victim.blob, CHUNK)
    _assert_refused(victim.blob[: spans[-1][0]], victim, provider)
    _assert_refused(victim.blob[:-1], victim, provider)
    _assert_refused(victim.blob[:10], victim, provider)


def test_dropping_the_last_chunk_and_fixing_the_header_is_detected(victim, provider):
    spans = _chunk_spans(victim.blob, CHUNK)
    shortened = _with_header(victim.blob[: spans[-1][0]], count=3, size=3 * CHUNK)
    _assert_refused(shortened, victim, provider)


def test_appending_a_chunk_is_detected(victim, provider):
    start, end = _chunk_spans(victim.blob, CHUNK)[1]
    extended = victim.blob + victim.blob[start:end]
    _assert_refused(extended, victim, provider)
    _assert_refused(_with_header(extended, count=5, size=4 * CHUNK + 30), victim, provider)


def test_swapping_two_chunks_is_detected(victim, provider):
    spans = _chunk_spans(victim.blob, CHUNK)
    (a0, a1), (b0, b1) = spans[0], spans[1]
    blob = victim.blob
    swapped = blob[:a0] + blob[b0:b1] + blob[a0:a1] + blob[b1:]
    assert len(swapped) == len(blob)
    _assert_refused(swapped, victim, provider)


def test_a_chunk_from_another_object_is_detected(victim, provider):
    other = seal(os.urandom(3 * CHUNK + 30), object_id="obj-0002", provider=provider,
                 chunk_size=CHUNK)
    start, end = _chunk_spans(victim.blob, CHUNK)[1]
    ostart, oend = _chunk_spans(other.blob, CHUNK)[1]
    spliced = victim.blob[:start] + other.blob[ostart:oend] + victim.blob[end:]
    _assert_refused(spliced, victim, provider)


def test_another_objects_blob_under_this_objects_name_is_detected(victim, provider):
    other = seal(b"x" * 50, object_id="obj-0002", provider=provider, chunk_size=CHUNK)
    _assert_refused(other.blob, victim, provider)  # header names obj-0002
    # Even with the header relabelled, the chunks were sealed under obj-0002's header.
    relabelled = other.blob.replace(b"obj-0002", OID.encode(), 1)
    _assert_refused(relabelled, victim, provider)


def test_replaying_an_older_seal_of_the_same_object_is_detected(provider):
    old = seal(_secret_plaintext(2 * CHUNK + 5), object_id=OID, provider=provider,
               chunk_size=CHUNK)
    new = seal(_secret_plaintext(2 * CHUNK + 5), object_id=OID, provider=provider,
               chunk_size=CHUNK)
    _assert_refused(old.blob, new, provider)  # old blob, current catalog row
    start, end = _chunk_spans(new.blob, CHUNK)[0]
    mixed = new.blob[:start] + old.blob[start:end] + new.blob[end:]
    _assert_refused(mixed, new, provider)


def test_a_wrapped_key_moved_from_another_object_is_detected(victim, provider):
    other = seal(b"y" * 10, object_id="obj-0002", provider=provider)
    message = _assert_refused(victim.blob, other, provider)
    assert "data key does not open" in message


def test_a_wrong_kek_is_detected(victim):
    stranger = InMemoryKeyProvider()  # same kek id "kek-0001", different key
    assert stranger.current_kek_id == victim.wrapped_key.kek_id
    _assert_refused(victim.blob, victim, stranger)


def test_a_retired_kek_is_a_key_provider_error():
    provider = InMemoryKeyProvider()
    sealed = seal(b"pixels", object_id=OID, provider=provider)
    provider.rotate()
    provider.retire("kek-0001")
    with pytest.raises(KeyProviderError, match="kek-0001"):
        _open(sealed.blob, sealed, provider)


@pytest.mark.parametrize(
    "blob",
    [b"", b"RVSEAL", b"NOTSEAL" + bytes(40), b"RVSEAL\x00\x02" + bytes(40)],
    ids=["empty", "magic-only", "other-magic", "future-version"],
)
def test_blobs_that_are_not_sealed_objects_are_refused(victim, provider, blob):
    _assert_refused(blob, victim, provider)
    with pytest.raises(IntegrityError):
        read_header(blob)


def test_a_failed_open_wipes_what_it_had_decrypted(victim, provider, monkeypatch):
    wiped: list[int] = []
    real_zeroize = sealing.zeroize

    def spy(buf):
        wiped.append(len(buf))
        real_zeroize(buf)

    monkeypatch.setattr(sealing, "zeroize", spy)
    _, end = _chunk_spans(victim.blob, CHUNK)[3]
    blob = bytearray(victim.blob)
    blob[end - 1] ^= 1  # last chunk: chunks 0..2 were already decrypted
    with pytest.raises(IntegrityError):
        _open(bytes(blob), victim, provider)
    assert victim.plain_size in wiped  # the whole output buffer, not just the key


# -- rotation ----------------------------------------------------------------------------


def test_rotation_rewraps_keys_without_touching_blobs():
    provider = InMemoryKeyProvider()
    plaintext = _secret_plaintext(500)
    sealed = seal(plaintext, object_id=OID, provider=provider, chunk_size=CHUNK)
    provider.rotate()
    assert _open(sealed.blob, sealed, provider) == plaintext  # old KEK still unwraps
    moved = rewrap(sealed.wrapped_key, provider, context=key_context(OID))
    assert moved.kek_id == "kek-0002"
    provider.retire("kek-0001")
    assert open_sealed(sealed.blob, object_id=OID, wrapped_key=moved, provider=provider) == (
        plaintext
    )
    assert key_context(OID) == OID.encode()


def test_readers_dispatch_on_the_format_version(victim, provider, monkeypatch):
    # A later RadVault adds a version-2 entry next to version 1: both must open.
    seen = []

    def parse_v2(blob, expected_id, label):
        seen.append("parse")
        return sealing.SealedHeader(2, 1, expected_id, 16, 1, 0, len(blob))

    def open_v2(view, header, cipher):
        seen.append("open")
        return bytearray(b"v2 plaintext")

    monkeypatch.setitem(sealing._FORMATS, 2, (parse_v2, open_v2))
    v2_blob = b"RVSEAL\x00\x02" + bytes(40)
    assert _open(v2_blob, victim, provider) == b"v2 plaintext"
    assert seen == ["parse", "open"]
    assert _open(victim.blob, victim, provider) == _secret_plaintext(3 * CHUNK + 30)

"""Envelope encryption of stored objects: chunked AES-256-GCM under a per-object data key.

:func:`seal` draws a fresh 256-bit data key, encrypts the plaintext in chunks
(1 MiB by default) with a fresh random 96-bit nonce each, and has the key
provider wrap the data key bound to the object id. Every chunk's associated
data is the object's whole header (magic, format version, algorithm, object
id, chunk size, chunk count, plaintext length) followed by the chunk's index
and a final-chunk flag, so a chunk that is altered, swapped, reordered,
dropped, appended, or taken from another object or another seal of the same
object fails to open. :func:`open_sealed` checks all of that and raises
:class:`~radvault.errors.IntegrityError` naming the object id (never content).

The byte layout is documented in docs/sealed-format.md. Readers dispatch on
the format version, so objects sealed today stay readable by later versions.

Throughput: the output blob is built in place (each chunk is encrypted
straight into its slot of one preallocated buffer that becomes the returned
``bytes`` without a copy) and hashed chunk by chunk while still in cache;
opening decrypts straight into the caller's bytearray. ``benchmarks/seal.py``
measures both against raw ``AESGCM``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from radvault.errors import IntegrityError
from radvault.vault.keys import KeyProvider, WrappedKey
from radvault.vault.secure_memory import random_secret, zeroize

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FORMAT_VERSION",
    "Sealed",
    "SealedHeader",
    "key_context",
    "open_sealed",
    "read_header",
    "seal",
]

_log = logging.getLogger(__name__)

MAGIC = b"RVSEAL"
FORMAT_VERSION = 1
ALG_AES_256_GCM = 1
DEFAULT_CHUNK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 16
MAX_CHUNK_SIZE = 1 << 30
MAX_OBJECT_ID_BYTES = 1024
NONCE_SIZE = 12
TAG_SIZE = 16
DATA_KEY_SIZE = 32
_FIXED = struct.Struct(">6sHHHIIQ")  # magic, version, alg, id length, chunk size, count, length
_CHUNK_AAD = struct.Struct(">IB")  # chunk index, final flag


def key_context(object_id: str) -> bytes:
    """The context an object's data key is wrapped with: its id in UTF-8.

    Use it with :func:`radvault.vault.keys.rewrap` when rotating.

    Parameters
    ----------
    object_id : str
        The object's id.

    Returns
    -------
    bytes
        ``object_id.encode("utf-8")``.
    """
    return object_id.encode("utf-8")


@dataclass(frozen=True)
class SealedHeader:
    """The plaintext header of a sealed object, readable without any key.

    ``radvault verify`` uses it to check, without the passphrase, that a blob
    claims the object id and sizes its catalog row says.
    """

    version: int
    algorithm: int
    object_id: str
    chunk_size: int
    chunk_count: int
    plain_size: int
    header_size: int

    @property
    def sealed_size(self) -> int:
        """The exact blob length this header implies."""
        return self.header_size + self.plain_size + self.chunk_count * (NONCE_SIZE + TAG_SIZE)


@dataclass(frozen=True)
class Sealed:
    """The result of :func:`seal`.

    Attributes
    ----------
    blob : bytes
        The self-describing sealed object, to store as is.
    wrapped_key : WrappedKey
        The data key, wrapped by the provider's current KEK for this object id.
    sealed_sha256 : str
        Hex SHA-256 of ``blob`` (for the signed catalog record).
    plain_size : int
        Length of the plaintext.
    """

    blob: bytes
    wrapped_key: WrappedKey
    sealed_sha256: str
    plain_size: int

    def __repr__(self) -> str:
        return (
            f"Sealed(blob=<{len(self.blob)} bytes>, wrapped_key={self.wrapped_key!r}, "
            f"sealed_sha256={self.sealed_sha256!r}, plain_size={self.plain_size})"
        )


def _chunk_count(plain_size: int, chunk_size: int) -> int:
    # An empty object still has one (empty) chunk, so it still carries a tag.
    return max(1, -(-plain_size // chunk_size))


def _encode_header(object_id: bytes, chunk_size: int, count: int, plain_size: int) -> bytes:
    fixed = _FIXED.pack(
        MAGIC, FORMAT_VERSION, ALG_AES_256_GCM, len(object_id), chunk_size, count, plain_size
    )
    return fixed + object_id


def _check_object_id(object_id: str) -> bytes:
    if not isinstance(object_id, str) or not object_id:
        raise ValueError("object_id must be a non-empty string")
    raw = object_id.encode("utf-8")
    if len(raw) > MAX_OBJECT_ID_BYTES:
        raise ValueError(f"object_id is longer than {MAX_OBJECT_ID_BYTES} bytes")
    return raw


def seal(
    plaintext: bytes | bytearray | memoryview,
    *,
    object_id: str,
    provider: KeyProvider,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Sealed:
    """Encrypt ``plaintext`` as object ``object_id`` under a fresh data key.

    Parameters
    ----------
    plaintext : bytes-like
        Any contiguous buffer (bytes, bytearray, memoryview, numpy array).
        It is only read; the caller still wipes it.
    object_id : str
        The object's pseudonymous id (no PHI: it is stored in clear in the header).
    provider : KeyProvider
        Wraps the data key with its current KEK.
    chunk_size : int, default 1 MiB
        Plaintext bytes per chunk (16 B .. 1 GiB).

    Returns
    -------
    Sealed
        The blob, the wrapped key, the blob's SHA-256 and the plaintext size.

    Raises
    ------
    ValueError
        If ``object_id`` or ``chunk_size`` is invalid.
    TypeError
        If ``plaintext`` is not a contiguous buffer.
    KeyProviderError
        If the provider cannot wrap the data key.
    VaultLocked
        If the provider is closed.
    """
    raw_id = _check_object_id(object_id)
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be within {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}")
    with memoryview(plaintext) as source_view:
        if not source_view.c_contiguous:
            raise TypeError("plaintext must be a contiguous buffer")
        with source_view.cast("B") as source:
            return _seal_v1(source, raw_id, object_id, provider, chunk_size)


def _seal_v1(
    source: memoryview, raw_id: bytes, object_id: str, provider: KeyProvider, chunk_size: int
) -> Sealed:
    plain_size = source.nbytes
    count = _chunk_count(plain_size, chunk_size)
    header = _encode_header(raw_id, chunk_size, count, plain_size)
    total = len(header) + plain_size + count * (NONCE_SIZE + TAG_SIZE)

    data_key = random_secret(DATA_KEY_SIZE)
    try:
        wrapped = provider.wrap(data_key, context=raw_id)
        cipher = AESGCM(data_key)
    finally:
        zeroize(data_key)

    # The output is built in place, with no second copy (CPython): bytes(total) is
    # calloc'ed (pages are only faulted in as chunks are written), a BytesIO
    # around it shares that buffer and lends a writable view of it, and
    # getvalue() hands the very same object back. Correct on any Python; on
    # another implementation it may merely copy once.
    out = io.BytesIO(bytes(total))
    digest = hashlib.sha256()
    with out.getbuffer() as target:
        target[: len(header)] = header
        digest.update(header)
        pos = len(header)
        for index in range(count):
            start = index * chunk_size
            end = min(start + chunk_size, plain_size)
            nonce = os.urandom(NONCE_SIZE)
            slot_end = pos + NONCE_SIZE + (end - start) + TAG_SIZE
            target[pos:pos + NONCE_SIZE] = nonce
            aad = header + _CHUNK_AAD.pack(index, index == count - 1)
            cipher.encrypt_into(nonce, source[start:end], aad, target[pos + NONCE_SIZE:slot_end])
            digest.update(target[pos:slot_end])
            pos = slot_end
    blob = out.getvalue()
    return Sealed(
        blob=blob,
        wrapped_key=wrapped,
        sealed_sha256=digest.hexdigest(),
        plain_size=plain_size,
    )


_PREFIX = struct.Struct(">6sH")  # magic, format version: the same in every version


def _parse_header(blob: memoryview, expected_id: str | None) -> SealedHeader:
    """Check magic and version, then hand over to that version's header parser."""
    label = repr(expected_id) if expected_id is not None else "(unknown id)"
    if blob.nbytes < _PREFIX.size:
        raise IntegrityError(f"sealed object {label} is truncated (no header)")
    magic, version = _PREFIX.unpack_from(blob)
    if magic != MAGIC:
        raise IntegrityError(f"sealed object {label} is not a RadVault sealed object")
    if version not in _FORMATS:
        raise IntegrityError(f"sealed object {label} has unknown format version {version}")
    return _FORMATS[version][0](blob, expected_id, label)


def _parse_header_v1(blob: memoryview, expected_id: str | None, label: str) -> SealedHeader:
    if blob.nbytes < _FIXED.size:
        raise IntegrityError(f"sealed object {label} is truncated (no header)")
    _, version, alg, id_len, chunk_size, count, plain_size = _FIXED.unpack_from(blob)
    if alg != ALG_AES_256_GCM:
        raise IntegrityError(f"sealed object {label} names unknown algorithm {alg}")
    header_size = _FIXED.size + id_len
    if not 0 < id_len <= MAX_OBJECT_ID_BYTES or blob.nbytes < header_size:
        raise IntegrityError(f"sealed object {label} has a malformed header")
    try:
        object_id = bytes(blob[_FIXED.size:header_size]).decode("utf-8")
    except UnicodeDecodeError:
        raise IntegrityError(f"sealed object {label} has a malformed header") from None
    if expected_id is not None and object_id != expected_id:
        raise IntegrityError(f"sealed object {label} carries the header of another object")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE or count != _chunk_count(
        plain_size, chunk_size
    ):
        raise IntegrityError(f"sealed object {label} has an inconsistent header")
    header = SealedHeader(version, alg, object_id, chunk_size, count, plain_size, header_size)
    if blob.nbytes != header.sealed_size:
        raise IntegrityError(
            f"sealed object {label} is truncated or extended "
            f"({blob.nbytes} bytes, header says {header.sealed_size})"
        )
    return header


def read_header(blob: bytes) -> SealedHeader:
    """Parse and sanity-check a sealed object's header without opening it.

    This checks structure only (magic, version, sizes against the blob
    length); authenticity needs :func:`open_sealed` or the catalog's digest.

    Parameters
    ----------
    blob : bytes
        A sealed object.

    Returns
    -------
    SealedHeader
        What the header claims.

    Raises
    ------
    IntegrityError
        If the blob is not a well-formed sealed object.
    """
    with memoryview(blob) as view:
        return _parse_header(view, None)


def open_sealed(
    blob: bytes, *, object_id: str, wrapped_key: WrappedKey, provider: KeyProvider
) -> bytearray:
    """Decrypt and authenticate a sealed object.

    Parameters
    ----------
    blob : bytes
        The sealed object as stored.
    object_id : str
        The id the caller expects (from the catalog); it must match the one
        the object was sealed as.
    wrapped_key : WrappedKey
        The object's wrapped data key (from the catalog).
    provider : KeyProvider
        Holds the KEK named by ``wrapped_key``.

    Returns
    -------
    bytearray
        The plaintext; the caller wipes it with
        :func:`~radvault.vault.secure_memory.zeroize` when done.

    Raises
    ------
    IntegrityError
        If anything fails to authenticate: header, any chunk, their order or
        number, or the wrapped key (moved from another object, wrong KEK).
        The message names ``object_id``; no partial plaintext is returned.
    KeyProviderError
        If the wrapped key's KEK is not available (retired, unknown).
    VaultLocked
        If the provider is closed.
    """
    raw_id = _check_object_id(object_id)
    with memoryview(blob) as view:
        if view.format != "B" or view.ndim != 1:
            raise TypeError("blob must be bytes")
        header = _parse_header(view, object_id)
        reader = _FORMATS[header.version][1]
        try:
            data_key = provider.unwrap(wrapped_key, context=raw_id)
        except IntegrityError:
            raise IntegrityError(
                f"sealed object {object_id!r}: its data key does not open "
                "(wrapped key of another object, wrong key-encryption key, or tampered)"
            ) from None
        try:
            if len(data_key) != DATA_KEY_SIZE:
                raise IntegrityError(f"sealed object {object_id!r}: data key has the wrong size")
            cipher = AESGCM(data_key)
        finally:
            zeroize(data_key)
        return reader(view, header, cipher)


def _open_v1(view: memoryview, header: SealedHeader, cipher: AESGCM) -> bytearray:
    out = bytearray(header.plain_size)
    header_bytes = bytes(view[: header.header_size])
    pos = header.header_size
    count = header.chunk_count
    with memoryview(out) as target:
        for index in range(count):
            start = index * header.chunk_size
            end = min(start + header.chunk_size, header.plain_size)
            ct_start = pos + NONCE_SIZE
            ct_end = ct_start + (end - start) + TAG_SIZE
            aad = header_bytes + _CHUNK_AAD.pack(index, index == count - 1)
            try:
                cipher.decrypt_into(
                    view[pos:ct_start], view[ct_start:ct_end], aad, target[start:end]
                )
            except InvalidTag:
                zeroize(out)
                _log.warning("sealed object failed authentication at chunk %d", index)
                raise IntegrityError(
                    f"sealed object {header.object_id!r} failed authentication at chunk {index} "
                    "(tampered, reordered, replayed or opened with another object's key)"
                ) from None
            pos = ct_end
    return out


_HeaderParser = Callable[[memoryview, str | None, str], SealedHeader]
_Opener = Callable[[memoryview, SealedHeader, AESGCM], bytearray]

#: (header parser, opener) by format version. A new version adds an entry; old
#: entries are never removed, so every object ever sealed stays readable.
_FORMATS: dict[int, tuple[_HeaderParser, _Opener]] = {1: (_parse_header_v1, _open_v1)}

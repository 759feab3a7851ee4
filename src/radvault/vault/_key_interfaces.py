"""Key interfaces: the wrapped-key record, the two provider interfaces and ``rewrap``.

Holds :data:`KEK_ID_PATTERN` and the record constants, :class:`WrappedKey` (a
data key encrypted by a KEK, and its serialised record), ``_context_bytes``,
the abstract interfaces every key provider implements (:class:`KeyProvider`
for KEKs, :class:`VaultSecrets` for the identity key, signer and
pseudonymisation secret) and :func:`rewrap`, which moves a wrapped key onto
the current KEK. The module overview is in :mod:`radvault.vault.keys`.
Private: use ``radvault.vault.keys``.
"""

from __future__ import annotations

import abc
import re
import struct
from dataclasses import dataclass

from radvault.errors import IntegrityError
from radvault.vault.secure_memory import wiping
from radvault.vault.signing import Signer

#: KEK ids: printable, no spaces, short enough for a catalog column (AWS KMS ARNs fit).
KEK_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+=-]{0,127}")
_RECORD_MAGIC = b"RVWK"
_RECORD_VERSION = 1


@dataclass(frozen=True)
class WrappedKey:
    """A data key encrypted by a KEK, and the id of that KEK.

    ``blob`` is opaque to callers: its layout belongs to the provider that made
    it. Store ``kek_id`` next to it (the catalog indexes it, so a rotation can
    find the rows still under an old KEK), or store :meth:`to_bytes`.

    Parameters
    ----------
    kek_id : str
        The KEK that wrapped the key (matches :data:`KEK_ID_PATTERN`).
    blob : bytes
        The provider's ciphertext (1..4096 bytes).

    Raises
    ------
    ValueError
        If ``kek_id`` or ``blob`` is malformed.
    """

    kek_id: str
    blob: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.kek_id, str) or not KEK_ID_PATTERN.fullmatch(self.kek_id):
            raise ValueError("a KEK id is 1..128 printable characters without spaces")
        if isinstance(self.blob, bytearray | memoryview):
            object.__setattr__(self, "blob", bytes(self.blob))
        if not isinstance(self.blob, bytes) or not 1 <= len(self.blob) <= 4096:
            raise ValueError("a wrapped key blob is 1..4096 bytes")

    def to_bytes(self) -> bytes:
        """Serialise as ``b"RVWK" | version | len(kek_id) | kek_id | blob``.

        Returns
        -------
        bytes
            A self-contained record for one database column.
        """
        raw_id = self.kek_id.encode("ascii")
        return _RECORD_MAGIC + struct.pack(">BB", _RECORD_VERSION, len(raw_id)) + raw_id + self.blob

    @classmethod
    def from_bytes(cls, data: bytes) -> WrappedKey:
        """Parse a record written by :meth:`to_bytes`.

        Parameters
        ----------
        data : bytes
            The stored record.

        Returns
        -------
        WrappedKey
            The wrapped key.

        Raises
        ------
        IntegrityError
            If the record is malformed (damaged or edited).
        """
        data = bytes(data)
        try:
            if data[:4] != _RECORD_MAGIC or data[4] != _RECORD_VERSION:
                raise ValueError("bad header")
            id_len = data[5]
            kek_id = data[6:6 + id_len].decode("ascii")
            if len(kek_id) != id_len:
                raise ValueError("short id")
            return cls(kek_id, data[6 + id_len:])
        except (IndexError, UnicodeDecodeError, ValueError):
            raise IntegrityError("wrapped key record is malformed") from None

    def __repr__(self) -> str:
        return f"WrappedKey(kek_id={self.kek_id!r}, blob=<{len(self.blob)} bytes>)"


def _context_bytes(context: bytes | bytearray | memoryview) -> bytes:
    if not isinstance(context, bytes | bytearray | memoryview):
        raise TypeError("context must be bytes (e.g. sealing.key_context(object_id))")
    return bytes(context)


class KeyProvider(abc.ABC):
    """Holds key-encryption keys and wraps/unwraps data keys with them.

    Implementations: :class:`LocalKeyFile`, :class:`InMemoryKeyProvider`; an
    external KMS adapter subclasses this too (docs/keys.md).
    """

    @property
    @abc.abstractmethod
    def current_kek_id(self) -> str:
        """The id of the KEK that :meth:`wrap` uses now."""

    @abc.abstractmethod
    def kek_ids(self) -> list[str]:
        """The ids of every KEK that can still unwrap, oldest first.

        Returns
        -------
        list of str
            KEK ids; the last one is current.
        """

    @abc.abstractmethod
    def wrap(self, data_key: bytes | bytearray, *, context: bytes) -> WrappedKey:
        """Encrypt ``data_key`` under the current KEK, bound to ``context``.

        Parameters
        ----------
        data_key : bytes or bytearray
            The key to protect; the caller still owns and wipes it.
        context : bytes
            Associated data that must be given again to unwrap (the object id).

        Returns
        -------
        WrappedKey
            The wrapped key and the KEK id.

        Raises
        ------
        KeyProviderError
            If the key cannot be wrapped.
        VaultLocked
            If the provider is closed.
        """

    @abc.abstractmethod
    def unwrap(self, wrapped: WrappedKey, *, context: bytes) -> bytearray:
        """Decrypt a wrapped key.

        Parameters
        ----------
        wrapped : WrappedKey
            As returned by :meth:`wrap` (possibly long ago, under an older KEK).
        context : bytes
            The same context given to :meth:`wrap`.

        Returns
        -------
        bytearray
            The data key; the caller wipes it (:func:`~radvault.vault.secure_memory.zeroize`).

        Raises
        ------
        IntegrityError
            If the wrapped key does not authenticate: other context, wrong KEK, tampering.
        KeyProviderError
            If the KEK named by ``wrapped.kek_id`` is not available (retired, unknown).
        VaultLocked
            If the provider is closed.
        """

    @abc.abstractmethod
    def rotate(self) -> str:
        """Create a new KEK and make it current; old KEKs still unwrap.

        Returns
        -------
        str
            The new current KEK id.

        Raises
        ------
        KeyProviderError
            If the provider cannot rotate (or the change cannot be saved).
        """

    @abc.abstractmethod
    def retire(self, kek_id: str) -> None:
        """Destroy an old KEK: keys still wrapped under it can never be unwrapped.

        Call it only after every wrapped key has been moved off it (:func:`rewrap`).

        Parameters
        ----------
        kek_id : str
            A KEK that is not current.

        Raises
        ------
        KeyProviderError
            If ``kek_id`` is current or unknown, or the change cannot be saved.
        """


class VaultSecrets(abc.ABC):
    """The vault's secrets other than KEKs: identity sealing, signing, pseudonymisation."""

    @property
    @abc.abstractmethod
    def identity_key_id(self) -> str:
        """The id of the key that seals patient-identity records."""

    @abc.abstractmethod
    def seal_identity(self, plaintext: bytes | bytearray, *, context: bytes) -> bytes:
        """Encrypt a patient-identity record under the identity key.

        Parameters
        ----------
        plaintext : bytes or bytearray
            The identifying values (the caller wipes its copy).
        context : bytes
            Associated data, e.g. the patient's pseudonym, so a record cannot be
            moved to another patient.

        Returns
        -------
        bytes
            The sealed record.

        Raises
        ------
        VaultLocked
            If the provider is closed.
        """

    @abc.abstractmethod
    def open_identity(self, sealed: bytes, *, context: bytes) -> bytearray:
        """Decrypt a record made by :meth:`seal_identity`.

        Parameters
        ----------
        sealed : bytes
            The sealed record.
        context : bytes
            The same context given when sealing.

        Returns
        -------
        bytearray
            The plaintext; the caller wipes it.

        Raises
        ------
        IntegrityError
            If the record is malformed, tampered, or bound to another context.
        KeyProviderError
            If the record names an identity key this provider does not hold.
        VaultLocked
            If the provider is closed.
        """

    @abc.abstractmethod
    def signer(self) -> Signer:
        """The vault's Ed25519 signer (catalog records, audit checkpoints).

        Returns
        -------
        Signer
            The signer.

        Raises
        ------
        VaultLocked
            If the provider is closed.
        """

    @abc.abstractmethod
    def deid_secret(self) -> bytes:
        """The 32-byte secret keying pseudonyms and UID remapping in de-identification.

        Returns
        -------
        bytes
            The secret (stable for the life of the vault).

        Raises
        ------
        VaultLocked
            If the provider is closed.
        """


def rewrap(wrapped: WrappedKey, provider: KeyProvider, *, context: bytes) -> WrappedKey:
    """Move a wrapped key onto the provider's current KEK; the sealed blob is unchanged.

    Idempotent: a key already under the current KEK is returned as is, so a
    rotation that iterates the catalog can be interrupted and simply run again.

    Parameters
    ----------
    wrapped : WrappedKey
        The stored wrapped key.
    provider : KeyProvider
        Holds both the old KEK and the current one.
    context : bytes
        The context the key was wrapped with (``sealing.key_context(object_id)``).

    Returns
    -------
    WrappedKey
        The key wrapped under ``provider.current_kek_id``.

    Raises
    ------
    IntegrityError
        If the old wrapped key does not authenticate.
    KeyProviderError
        If its KEK is no longer available.
    """
    if wrapped.kek_id == provider.current_kek_id:
        return wrapped
    with wiping(provider.unwrap(wrapped, context=context)) as data_key:
        return provider.wrap(data_key, context=context)

"""The local key providers: KEKs and secrets held in this process's memory.

Holds ``_LocalKeys`` (the in-memory implementation of both
:class:`~radvault.vault.keys.KeyProvider` and
:class:`~radvault.vault.keys.VaultSecrets`: AES-256-GCM wrapping and identity
sealing, rotation, retirement), its two subclasses :class:`InMemoryKeyProvider`
(tests, throwaway vaults) and :class:`LocalKeyFile` (the passphrase-protected
key file, format in ``_keyfile``), ``_warn_if_shared`` and the wrap and
identity record constants only they use. Private: use ``radvault.vault.keys``.
"""

from __future__ import annotations

import logging
import os
import stat
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Self, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from radvault.errors import (
    ConfigurationError,
    IntegrityError,
    KeyProviderError,
    VaultError,
    VaultLocked,
)
from radvault.vault._key_interfaces import KeyProvider, VaultSecrets, WrappedKey, _context_bytes
from radvault.vault._keyfile import (
    FileKey,
    KdfParams,
    KeyMaterial,
    normalise_passphrase,
    read_keyfile,
    write_keyfile,
    writer_lock,
)
from radvault.vault.secure_memory import zeroize
from radvault.vault.signing import Signer

# The logger keeps the name it had before the split, so logging configuration
# and filters written for "radvault.vault.keys" still apply.
_log = logging.getLogger("radvault.vault.keys")

_T = TypeVar("_T")

_WRAP_VERSION = 1
_WRAP_AAD = b"radvault/wrap/v1\x00"
_IDENTITY_VERSION = 1
_IDENTITY_AAD = b"radvault/identity/v1\x00"
_NONCE = 12
_TAG = 16
_MAX_DATA_KEY = 1024
_MAX_IDENTITY_RECORD = 1 << 20


class _LocalKeys(KeyProvider, VaultSecrets):
    """KEKs and secrets held in this process's memory (shared by both local providers)."""

    def __init__(self, material: KeyMaterial) -> None:
        self._material: KeyMaterial | None = material
        self._lock = threading.RLock()
        self._ciphers: dict[str, AESGCM] = {}
        self._signer: Signer | None = None

    # -- state -------------------------------------------------------------
    def _mat(self) -> KeyMaterial:
        if self._material is None:
            raise VaultLocked("the key provider is closed")
        return self._material

    def _install(self, material: KeyMaterial) -> None:
        """Swap in new material (under the lock) and wipe the old one."""
        old, self._material = self._material, material
        self._ciphers.clear()
        self._signer = None
        if old is not None and old is not material:
            old.wipe()

    def _update(self, change: Callable[[KeyMaterial], _T]) -> _T:
        """Apply ``change`` to a copy of the material and keep it if it succeeds."""
        with self._lock:
            fresh = self._mat().copy()
            try:
                result = change(fresh)
            except BaseException:
                fresh.wipe()
                raise
            self._install(fresh)
            return result

    def _reload(self) -> bool:
        """Hook: pick up KEKs added by another process. Returns whether anything changed."""
        return False

    def close(self) -> None:
        """Wipe every secret from memory; later calls raise :class:`VaultLocked`."""
        with self._lock:
            if self._material is not None:
                self._material.wipe()
            self._material = None
            self._ciphers.clear()
            self._signer = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- KeyProvider -------------------------------------------------------
    @property
    def current_kek_id(self) -> str:
        with self._lock:
            return self._mat().current_kek_id

    def kek_ids(self) -> list[str]:
        with self._lock:
            return list(self._mat().keks)

    def _cipher(self, kek_id: str) -> AESGCM:
        with self._lock:
            cipher = self._ciphers.get(kek_id)
            if cipher is not None:
                return cipher
            key = self._mat().keks.get(kek_id)
            if key is None and self._reload():
                key = self._mat().keks.get(kek_id)
            if key is None:
                raise KeyProviderError(
                    f"key-encryption key {kek_id!r} is not available "
                    "(retired, or from another vault)"
                )
            cipher = self._ciphers[kek_id] = AESGCM(key)
            return cipher

    def wrap(self, data_key: bytes | bytearray, *, context: bytes) -> WrappedKey:
        if not isinstance(data_key, bytes | bytearray) or not 1 <= len(data_key) <= _MAX_DATA_KEY:
            raise KeyProviderError("a data key is 1..1024 bytes")
        ctx = _context_bytes(context)
        with self._lock:
            kek_id = self._mat().current_kek_id
            cipher = self._cipher(kek_id)
        nonce = os.urandom(_NONCE)
        sealed = cipher.encrypt(nonce, data_key, _WRAP_AAD + kek_id.encode("ascii") + b"\x00" + ctx)
        return WrappedKey(kek_id, bytes((_WRAP_VERSION,)) + nonce + sealed)

    def unwrap(self, wrapped: WrappedKey, *, context: bytes) -> bytearray:
        if not isinstance(wrapped, WrappedKey):
            raise TypeError("unwrap needs a WrappedKey")
        ctx = _context_bytes(context)
        blob = wrapped.blob
        if len(blob) <= 1 + _NONCE + _TAG or blob[0] != _WRAP_VERSION:
            raise IntegrityError(f"wrapped data key under {wrapped.kek_id!r} is malformed")
        cipher = self._cipher(wrapped.kek_id)
        out = bytearray(len(blob) - 1 - _NONCE - _TAG)
        aad = _WRAP_AAD + wrapped.kek_id.encode("ascii") + b"\x00" + ctx
        try:
            cipher.decrypt_into(blob[1:1 + _NONCE], memoryview(blob)[1 + _NONCE:], aad, out)
        except InvalidTag:
            zeroize(out)
            raise IntegrityError(
                f"wrapped data key does not open under {wrapped.kek_id!r} for this context "
                "(moved from another object, wrong key-encryption key, or tampered)"
            ) from None
        return out

    def rotate(self) -> str:
        kek_id = self._update(lambda material: material.add_kek())
        _log.info("key-encryption key rotated; current is %s", kek_id)
        return kek_id

    def retire(self, kek_id: str) -> None:
        def drop(material: KeyMaterial) -> None:
            if kek_id == material.current_kek_id:
                raise KeyProviderError(f"cannot retire the current key-encryption key {kek_id!r}")
            key = material.keks.pop(kek_id, None)
            if key is None:
                raise KeyProviderError(f"no key-encryption key {kek_id!r} to retire")
            zeroize(key)

        self._update(drop)
        _log.info("key-encryption key %s retired", kek_id)

    # -- VaultSecrets ------------------------------------------------------
    @property
    def identity_key_id(self) -> str:
        with self._lock:
            return self._mat().identity_key_id

    def _identity_cipher(self, key_id: str) -> AESGCM:
        with self._lock:
            material = self._mat()
            if key_id != material.identity_key_id:
                raise KeyProviderError(f"identity key {key_id!r} is not available")
            return AESGCM(material.identity_key)

    def seal_identity(self, plaintext: bytes | bytearray, *, context: bytes) -> bytes:
        if len(plaintext) > _MAX_IDENTITY_RECORD:
            raise KeyProviderError("an identity record is at most 1 MiB")
        ctx = _context_bytes(context)
        key_id = self.identity_key_id
        raw_id = key_id.encode("ascii")
        nonce = os.urandom(_NONCE)
        sealed = self._identity_cipher(key_id).encrypt(
            nonce, plaintext, _IDENTITY_AAD + raw_id + b"\x00" + ctx
        )
        return struct.pack(">BB", _IDENTITY_VERSION, len(raw_id)) + raw_id + nonce + sealed

    def open_identity(self, sealed: bytes, *, context: bytes) -> bytearray:
        ctx = _context_bytes(context)
        blob = bytes(sealed)
        try:
            if blob[0] != _IDENTITY_VERSION:
                raise ValueError("unknown version")
            raw_id = blob[2:2 + blob[1]]
            key_id = raw_id.decode("ascii")
            body = 2 + len(raw_id)
            if len(raw_id) != blob[1] or len(blob) < body + _NONCE + _TAG:
                raise ValueError("short record")
        except (IndexError, UnicodeDecodeError, ValueError):
            raise IntegrityError("sealed identity record is malformed") from None
        cipher = self._identity_cipher(key_id)
        out = bytearray(len(blob) - body - _NONCE - _TAG)
        try:
            cipher.decrypt_into(
                blob[body:body + _NONCE],
                memoryview(blob)[body + _NONCE:],
                _IDENTITY_AAD + raw_id + b"\x00" + ctx,
                out,
            )
        except InvalidTag:
            zeroize(out)
            raise IntegrityError(
                "sealed identity record does not authenticate (other patient, or tampered)"
            ) from None
        return out

    def signer(self) -> Signer:
        with self._lock:
            if self._signer is None:
                self._signer = Signer.from_seed(self._mat().signing_seed)
            return self._signer

    def deid_secret(self) -> bytes:
        with self._lock:
            return bytes(self._mat().deid_secret)


class InMemoryKeyProvider(_LocalKeys):
    """A key provider whose secrets live only in this process (tests, throwaway vaults).

    Everything it sealed is lost when it is closed or garbage-collected.
    """

    def __init__(self) -> None:
        super().__init__(KeyMaterial.generate())

    def __repr__(self) -> str:
        state = "closed" if self._material is None else f"current={self._material.current_kek_id}"
        return f"<InMemoryKeyProvider {state}>"


class LocalKeyFile(_LocalKeys):
    """The embedded default: the vault's secrets in one passphrase-protected file.

    Build it with :meth:`create` or :meth:`open`, never directly. The file is
    encrypted with AES-256-GCM under a key derived from the passphrase by
    Argon2id (parameters and salt recorded in the file; layout in docs/keys.md),
    written atomically with mode 0600. :meth:`rotate`, :meth:`retire` and
    :meth:`change_passphrase` rewrite it under an advisory lock after
    re-reading it, so two processes sharing the file never lose each other's
    KEKs; :meth:`unwrap` re-reads it once when it meets a KEK id it does not
    know (another process rotated).
    """

    def __init__(self, path: Path, material: KeyMaterial, file_key: FileKey) -> None:
        super().__init__(material)
        self._path = path
        self._file_key: FileKey | None = file_key

    @property
    def path(self) -> Path:
        """The key file."""
        return self._path

    @property
    def kdf_params(self) -> KdfParams:
        """The Argon2id parameters the file is protected with.

        Raises
        ------
        VaultLocked
            If the provider is closed.
        """
        return self._key().params

    def _key(self) -> FileKey:
        if self._file_key is None:
            raise VaultLocked("the key provider is closed")
        return self._file_key

    @classmethod
    def create(
        cls, path: str | os.PathLike[str], passphrase: str | bytes, *, kdf: KdfParams | None = None
    ) -> LocalKeyFile:
        """Create a key file with fresh secrets (one KEK ``kek-0001``).

        Parameters
        ----------
        path : str or PathLike
            Where to write it; missing parent folders are created (mode 0700).
        passphrase : str or bytes
            Protects the file (str is NFC-normalised and UTF-8 encoded).
        kdf : KdfParams, optional
            Argon2id parameters; strong defaults when omitted.

        Returns
        -------
        LocalKeyFile
            The open provider.

        Raises
        ------
        ConfigurationError
            If the passphrase is empty.
        VaultError
            If a file already exists at ``path`` or it cannot be written.
        """
        target = Path(path)
        secret = normalise_passphrase(passphrase)
        file_key = FileKey.derive(secret, kdf or KdfParams())
        material = KeyMaterial.generate()
        try:
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with writer_lock(target):
                if target.exists():
                    raise VaultError(f"key file already exists: {target}")
                write_keyfile(target, material, file_key)
        except BaseException as exc:
            material.wipe()
            file_key.wipe()
            if isinstance(exc, OSError) and not isinstance(exc, VaultError):
                raise VaultError(f"cannot write key file {target}: {exc.strerror}") from None
            raise
        _log.info("key file created at %s", target)
        return cls(target, material, file_key)

    @classmethod
    def open(cls, path: str | os.PathLike[str], passphrase: str | bytes) -> LocalKeyFile:
        """Unlock an existing key file. Never modifies it.

        Parameters
        ----------
        path : str or PathLike
            The key file.
        passphrase : str or bytes
            Its passphrase.

        Returns
        -------
        LocalKeyFile
            The open provider.

        Raises
        ------
        VaultLocked
            ``"wrong passphrase ..."``, ``"key file not found: PATH"``, or
            ``"key file is corrupt (...)"`` for a damaged, truncated or edited file.
        """
        target = Path(path)
        sealed = read_keyfile(target)
        try:
            secret = normalise_passphrase(passphrase)
        except ConfigurationError:
            raise VaultLocked(f"wrong passphrase for key file {target}") from None
        file_key = sealed.derive(secret)
        try:
            material = sealed.decrypt(file_key)
        except BaseException:
            file_key.wipe()
            raise
        _warn_if_shared(target)
        return cls(target, material, file_key)

    def _update(self, change: Callable[[KeyMaterial], _T]) -> _T:
        with self._lock:
            file_key = self._key()
            try:
                with writer_lock(self._path):
                    fresh = self._read_current(file_key)
                    try:
                        result = change(fresh)
                        write_keyfile(self._path, fresh, file_key)
                    except BaseException:
                        fresh.wipe()
                        raise
            except VaultError:  # VaultLocked is also an OSError (PermissionError)
                raise
            except OSError as exc:
                raise KeyProviderError(
                    f"cannot rewrite key file {self._path}: {exc.strerror}"
                ) from None
            self._install(fresh)
            return result

    def _read_current(self, file_key: FileKey) -> KeyMaterial:
        sealed = read_keyfile(self._path)
        if not sealed.matches(file_key):
            raise VaultLocked(
                f"key file {self._path} was re-keyed by another process; open it again"
            )
        return sealed.decrypt(file_key)

    def _reload(self) -> bool:
        with self._lock:
            try:
                fresh = self._read_current(self._key())
            except VaultLocked:
                return False
            changed = list(fresh.keks) != list(self._mat().keks)
            self._install(fresh)
            return changed

    def change_passphrase(
        self, new_passphrase: str | bytes, *, kdf: KdfParams | None = None
    ) -> None:
        """Re-encrypt the file under a new passphrase (and a fresh salt).

        Parameters
        ----------
        new_passphrase : str or bytes
            The new passphrase.
        kdf : KdfParams, optional
            New Argon2id parameters; the current ones when omitted.

        Raises
        ------
        ConfigurationError
            If the new passphrase is empty.
        KeyProviderError
            If the file cannot be rewritten (the old file then stays valid).
        """
        secret = normalise_passphrase(new_passphrase)
        with self._lock:
            old_key = self._key()
            new_key = FileKey.derive(secret, kdf or old_key.params)
            try:
                with writer_lock(self._path):
                    fresh = self._read_current(old_key)
                    try:
                        write_keyfile(self._path, fresh, new_key)
                    except BaseException:
                        fresh.wipe()
                        raise
            except BaseException as exc:
                new_key.wipe()
                if isinstance(exc, OSError) and not isinstance(exc, VaultError):
                    raise KeyProviderError(
                        f"cannot rewrite key file {self._path}: {exc.strerror}"
                    ) from None
                raise
            self._install(fresh)
            self._file_key = new_key
            old_key.wipe()
        _log.info("key file %s re-encrypted under a new passphrase", self._path)

    def close(self) -> None:
        with self._lock:
            super().close()
            if self._file_key is not None:
                self._file_key.wipe()
            self._file_key = None

    def __repr__(self) -> str:
        state = "closed" if self._material is None else f"current={self._material.current_kek_id}"
        return f"<LocalKeyFile {self._path} {state}>"


def _warn_if_shared(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        _log.warning("key file %s is accessible to other users; chmod 600 it", path)

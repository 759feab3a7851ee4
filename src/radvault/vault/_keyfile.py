"""The on-disk format of the local key file (private: use ``keys.LocalKeyFile``).

The file is UTF-8 JSON (see docs/keys.md)::

    {
      "format": "radvault-keyfile", "version": 1,
      "kdf": {"name": "argon2id", "time_cost": 3, "memory_cost_kib": 65536,
              "parallelism": 4, "salt": "<base64>"},
      "check": "<base64, 16 bytes>",
      "cipher": "AES-256-GCM", "nonce": "<base64, 12 bytes>",
      "ciphertext": "<base64>",
      "checksum": "<sha-256 hex of the canonical JSON of every other field>"
    }

Argon2id turns the passphrase and salt into 64 bytes: the first 32 are the
AES-256-GCM key of ``ciphertext``; SHA-256 of the last 32 gives ``check``, which
tells a wrong passphrase apart from a damaged file. The header (format, version,
kdf, cipher) is the associated data of the encryption, so editing it breaks the
tag; ``checksum`` catches accidental damage of any field before the slow KDF runs.

The plaintext is a small binary record list, parsed straight into bytearrays
so the secrets never pass through an immutable ``str`` or ``bytes``::

    b"RVKP" | version (u8) = 1 | entry count (u16)
    entry:  kind (u8) | name length (u8) | name (ASCII) | value length (u16) | value

Kinds: 1 KEK (name = kek id, 32-byte key), 2 current KEK (name = kek id, empty),
3 identity key (name = key id, 32 bytes), 4 Ed25519 signing seed (32 bytes),
5 pseudonymisation secret (32 bytes). Integers are big-endian.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import os
import re
import struct
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from radvault.errors import ConfigurationError, VaultLocked
from radvault.vault._atomic import atomic_write
from radvault.vault.secure_memory import random_secret, zeroize
from radvault.vault.signing import canonical_json

try:  # POSIX advisory locks serialise writers; elsewhere writers must not overlap.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "FileKey",
    "KdfParams",
    "KeyMaterial",
    "SealedFile",
    "kek_number",
    "normalise_passphrase",
    "read_keyfile",
    "write_keyfile",
    "writer_lock",
]

FORMAT_NAME = "radvault-keyfile"
FORMAT_VERSION = 1
CIPHER = "AES-256-GCM"
MAX_FILE_BYTES = 1 << 20
KEY_SIZE = 32
_CHECK_SIZE = 16
_PAYLOAD_MAGIC = b"RVKP"
_PAYLOAD_VERSION = 1
_KIND_KEK, _KIND_CURRENT, _KIND_IDENTITY, _KIND_SIGNING, _KIND_DEID = 1, 2, 3, 4, 5
_KEK_ID = re.compile(r"kek-(\d{4,9})")
_IDENTITY_ID = re.compile(r"identity-\d{4,9}")


@dataclass(frozen=True)
class KdfParams:
    """Argon2id parameters that turn the passphrase into the key file's key.

    The defaults follow RFC 9106's second recommended option (t=3, 64 MiB,
    p=4). They are recorded in the key file, so stronger settings can be
    chosen later without breaking existing files. Use :meth:`fast` in tests
    only: it offers no protection against guessing.

    Parameters
    ----------
    time_cost : int
        Passes over memory (1..64).
    memory_cost_kib : int
        Memory in KiB (at least 8 per lane, at most 4 GiB).
    parallelism : int
        Lanes (1..64).
    salt_size : int
        Random salt length in bytes (16..64).

    Raises
    ------
    ConfigurationError
        If a value is out of range.
    """

    time_cost: int = 3
    memory_cost_kib: int = 64 * 1024
    parallelism: int = 4
    salt_size: int = 16
    name: str = field(default="argon2id", init=False)

    def __post_init__(self) -> None:
        ok = (
            1 <= self.time_cost <= 64
            and 1 <= self.parallelism <= 64
            and 8 * self.parallelism <= self.memory_cost_kib <= 4 * 1024 * 1024
            and 16 <= self.salt_size <= 64
        )
        if not ok:
            raise ConfigurationError(
                "argon2id parameters out of range (time 1..64, parallelism 1..64, "
                "memory 8*parallelism KiB..4 GiB, salt 16..64 bytes)"
            )

    @classmethod
    def fast(cls) -> KdfParams:
        """Cheap parameters for tests: fast to derive, and just as fast to guess.

        Returns
        -------
        KdfParams
            One pass over 64 KiB with one lane.
        """
        return cls(time_cost=1, memory_cost_kib=64, parallelism=1)

    def derive(self, passphrase: bytes, salt: bytes) -> bytearray:
        """Run Argon2id and return 64 bytes: a 32-byte file key then 32 check bytes.

        Parameters
        ----------
        passphrase : bytes
            The normalised passphrase.
        salt : bytes
            The file's salt.

        Returns
        -------
        bytearray
            The derived bytes; the caller wipes them.
        """
        raw = hash_secret_raw(
            passphrase,
            salt,
            time_cost=self.time_cost,
            memory_cost=self.memory_cost_kib,
            parallelism=self.parallelism,
            hash_len=2 * KEY_SIZE,
            type=Type.ID,
        )
        return bytearray(raw)


def normalise_passphrase(passphrase: str | bytes | bytearray) -> bytes:
    """Encode a passphrase the same way on every machine (NFC, then UTF-8).

    Raises
    ------
    ConfigurationError
        If the passphrase is empty or of the wrong type.
    """
    if isinstance(passphrase, str):
        encoded = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    elif isinstance(passphrase, bytes | bytearray):
        encoded = bytes(passphrase)
    else:
        raise ConfigurationError("a passphrase is a str or bytes")
    if not encoded:
        raise ConfigurationError("the passphrase must not be empty")
    return encoded


def kek_number(kek_id: str) -> int:
    """The version number in a local KEK id (``kek-0007`` -> 7), or 0 if it has none."""
    match = _KEK_ID.fullmatch(kek_id)
    return int(match.group(1)) if match else 0


@dataclass
class KeyMaterial:
    """The secrets a local key provider holds, each in a wipeable bytearray."""

    keks: dict[str, bytearray]
    current_kek_id: str
    identity_key_id: str
    identity_key: bytearray
    signing_seed: bytearray
    deid_secret: bytearray

    @classmethod
    def generate(cls) -> KeyMaterial:
        """Fresh secrets with one KEK, ``kek-0001``."""
        return cls(
            keks={"kek-0001": random_secret(KEY_SIZE)},
            current_kek_id="kek-0001",
            identity_key_id="identity-0001",
            identity_key=random_secret(KEY_SIZE),
            signing_seed=random_secret(KEY_SIZE),
            deid_secret=random_secret(KEY_SIZE),
        )

    def copy(self) -> KeyMaterial:
        """A deep copy (new bytearrays), so a failed update can be dropped."""
        return KeyMaterial(
            keks={k: bytearray(v) for k, v in self.keks.items()},
            current_kek_id=self.current_kek_id,
            identity_key_id=self.identity_key_id,
            identity_key=bytearray(self.identity_key),
            signing_seed=bytearray(self.signing_seed),
            deid_secret=bytearray(self.deid_secret),
        )

    def add_kek(self) -> str:
        """Add a new KEK with the next version number and make it current."""
        number = max((kek_number(k) for k in self.keks), default=0) + 1
        kek_id = f"kek-{number:04d}"
        self.keks[kek_id] = random_secret(KEY_SIZE)
        self.current_kek_id = kek_id
        return kek_id

    def wipe(self) -> None:
        """Zeroise every secret."""
        for key in self.keks.values():
            zeroize(key)
        for buf in (self.identity_key, self.signing_seed, self.deid_secret):
            zeroize(buf)

    def encode(self) -> bytearray:
        """Serialise to the binary payload (see the module docstring)."""
        entries: list[tuple[int, str, bytearray | bytes]] = [
            (_KIND_KEK, kek_id, key) for kek_id, key in self.keks.items()
        ]
        entries += [
            (_KIND_CURRENT, self.current_kek_id, b""),
            (_KIND_IDENTITY, self.identity_key_id, self.identity_key),
            (_KIND_SIGNING, "", self.signing_seed),
            (_KIND_DEID, "", self.deid_secret),
        ]
        out = bytearray(_PAYLOAD_MAGIC)
        out += struct.pack(">BH", _PAYLOAD_VERSION, len(entries))
        for kind, name, value in entries:
            raw_name = name.encode("ascii")
            out += struct.pack(">BB", kind, len(raw_name)) + raw_name
            out += struct.pack(">H", len(value))
            out += value
        return out

    @classmethod
    def decode(cls, payload: bytearray) -> KeyMaterial:
        """Parse a binary payload.

        Raises
        ------
        ValueError
            If the payload is malformed or incomplete.
        """
        view = memoryview(payload)
        if bytes(view[:4]) != _PAYLOAD_MAGIC or len(view) < 7:
            raise ValueError("bad payload magic")
        version, count = struct.unpack_from(">BH", view, 4)
        if version != _PAYLOAD_VERSION:
            raise ValueError("unknown payload version")
        pos = 7
        keks: dict[str, bytearray] = {}
        singles: dict[int, tuple[str, bytearray]] = {}
        try:
            for _ in range(count):
                kind, name_len = struct.unpack_from(">BB", view, pos)
                pos += 2
                name = bytes(view[pos:pos + name_len]).decode("ascii")
                pos += name_len
                (value_len,) = struct.unpack_from(">H", view, pos)
                pos += 2
                if pos + value_len > len(view):
                    raise ValueError("truncated payload")
                value = bytearray(view[pos:pos + value_len])
                pos += value_len
                if kind == _KIND_KEK:
                    if not _KEK_ID.fullmatch(name) or name in keks or value_len != KEY_SIZE:
                        raise ValueError("bad KEK entry")
                    keks[name] = value
                elif kind in (_KIND_CURRENT, _KIND_IDENTITY, _KIND_SIGNING, _KIND_DEID):
                    want = 0 if kind == _KIND_CURRENT else KEY_SIZE
                    if kind in singles or value_len != want:
                        raise ValueError("bad entry")
                    singles[kind] = (name, value)
                else:
                    raise ValueError("unknown entry kind")
        except (struct.error, UnicodeDecodeError) as exc:
            raise ValueError("malformed payload") from exc
        finally:
            view.release()
        if pos != len(payload) or len(singles) != 4 or not keks:
            raise ValueError("incomplete payload")
        current = singles[_KIND_CURRENT][0]
        identity_id, identity_key = singles[_KIND_IDENTITY]
        if current not in keks or not _IDENTITY_ID.fullmatch(identity_id):
            raise ValueError("inconsistent payload")
        return cls(
            keks=dict(sorted(keks.items(), key=lambda item: kek_number(item[0]))),
            current_kek_id=current,
            identity_key_id=identity_id,
            identity_key=identity_key,
            signing_seed=singles[_KIND_SIGNING][1],
            deid_secret=singles[_KIND_DEID][1],
        )


def _b64(data: bytes | bytearray) -> str:
    return base64.b64encode(bytes(data)).decode("ascii")


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ValueError("not base64 text")
    return base64.b64decode(text.encode("ascii"), validate=True)


def _check_value(derived: bytearray) -> bytes:
    digest = hashlib.sha256(b"radvault-keyfile-check\x00")
    digest.update(memoryview(derived)[KEY_SIZE:])
    return digest.digest()[:_CHECK_SIZE]


def _header(params: KdfParams, salt: bytes) -> dict[str, Any]:
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "kdf": {
            "name": params.name,
            "time_cost": params.time_cost,
            "memory_cost_kib": params.memory_cost_kib,
            "parallelism": params.parallelism,
            "salt": _b64(salt),
        },
        "cipher": CIPHER,
    }


def _aad(header: dict[str, Any]) -> bytes:
    return canonical_json(header)


def _checksum(document: dict[str, Any]) -> str:
    rest = {k: v for k, v in document.items() if k != "checksum"}
    return hashlib.sha256(canonical_json(rest)).hexdigest()


@dataclass
class FileKey:
    """The key derived from the passphrase, kept while the file is open so it can be rewritten."""

    params: KdfParams
    salt: bytes
    key: bytearray
    check: bytes

    @classmethod
    def derive(cls, passphrase: bytes, params: KdfParams, salt: bytes | None = None) -> FileKey:
        """Derive a file key (with a fresh salt unless one is given)."""
        salt = os.urandom(params.salt_size) if salt is None else salt
        derived = params.derive(passphrase, salt)
        try:
            return cls(params, salt, bytearray(derived[:KEY_SIZE]), _check_value(derived))
        finally:
            zeroize(derived)

    def wipe(self) -> None:
        """Zeroise the key."""
        zeroize(self.key)


@dataclass(frozen=True)
class SealedFile:
    """A parsed key file whose secrets are still encrypted."""

    path: Path
    params: KdfParams
    salt: bytes
    check: bytes
    nonce: bytes
    ciphertext: bytes
    aad: bytes

    def _corrupt(self, reason: str) -> VaultLocked:
        return VaultLocked(f"key file is corrupt ({reason}): {self.path}")

    def matches(self, file_key: FileKey) -> bool:
        """Whether ``file_key`` was derived with this file's salt and parameters."""
        return file_key.salt == self.salt and file_key.params == self.params

    def derive(self, passphrase: bytes) -> FileKey:
        """Derive the file key from ``passphrase``, checking it against ``check``.

        Raises
        ------
        VaultLocked
            If the passphrase is wrong.
        """
        file_key = FileKey.derive(passphrase, self.params, self.salt)
        if not hmac.compare_digest(file_key.check, self.check):
            file_key.wipe()
            raise VaultLocked(f"wrong passphrase for key file {self.path}")
        return file_key

    def decrypt(self, file_key: FileKey) -> KeyMaterial:
        """Decrypt and parse the secrets.

        Raises
        ------
        VaultLocked
            If the ciphertext does not authenticate or the payload is malformed.
        """
        payload = bytearray(max(len(self.ciphertext) - 16, 0))
        try:
            try:
                AESGCM(file_key.key).decrypt_into(self.nonce, self.ciphertext, self.aad, payload)
            except (InvalidTag, ValueError):
                raise self._corrupt("authentication failed") from None
            try:
                return KeyMaterial.decode(payload)
            except ValueError:
                raise self._corrupt("unreadable secrets") from None
        finally:
            zeroize(payload)


def read_keyfile(path: Path) -> SealedFile:
    """Read and check the structure of a key file, without decrypting it.

    Raises
    ------
    VaultLocked
        If the file is missing, unreadable, corrupt, or of an unknown version.
    """
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise VaultLocked(f"key file not found: {path}") from None
    except IsADirectoryError:
        raise VaultLocked(f"key file is a folder: {path}") from None
    except OSError as exc:
        raise VaultLocked(f"cannot read key file {path}: {exc.strerror}") from None

    def corrupt(reason: str) -> VaultLocked:
        return VaultLocked(f"key file is corrupt ({reason}): {path}")

    if len(raw) > MAX_FILE_BYTES:
        raise corrupt("too large")
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise corrupt("not JSON") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        raise corrupt("not a RadVault key file")
    version = document.get("version")
    if version != FORMAT_VERSION:
        if isinstance(version, int) and not isinstance(version, bool) and version > 0:
            raise VaultLocked(
                f"key file version {version} is not supported by this RadVault: {path}"
            )
        raise corrupt("bad version")
    return _parse_v1(path, document, corrupt)


def _parse_v1(path: Path, document: dict[str, Any], corrupt: Any) -> SealedFile:
    expected = {"format", "version", "kdf", "check", "cipher", "nonce", "ciphertext", "checksum"}
    if set(document) != expected:
        raise corrupt("unexpected fields")
    if not isinstance(document["checksum"], str) or not hmac.compare_digest(
        document["checksum"], _checksum(document)
    ):
        raise corrupt("checksum mismatch")
    kdf = document["kdf"]
    try:
        if not isinstance(kdf, dict) or kdf.get("name") != "argon2id":
            raise ValueError("unknown KDF")
        if set(kdf) != {"name", "time_cost", "memory_cost_kib", "parallelism", "salt"}:
            raise ValueError("unexpected KDF fields")
        numbers = [kdf["time_cost"], kdf["memory_cost_kib"], kdf["parallelism"]]
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers):
            raise ValueError("KDF parameters must be integers")
        salt = _unb64(kdf["salt"])
        params = KdfParams(
            time_cost=numbers[0],
            memory_cost_kib=numbers[1],
            parallelism=numbers[2],
            salt_size=len(salt),
        )
        check = _unb64(document["check"])
        nonce = _unb64(document["nonce"])
        ciphertext = _unb64(document["ciphertext"])
        if document["cipher"] != CIPHER or len(check) != _CHECK_SIZE or len(nonce) != 12:
            raise ValueError("bad cipher fields")
        if len(ciphertext) < 16:
            raise ValueError("ciphertext too short")
    except (ValueError, binascii.Error, ConfigurationError):
        raise corrupt("bad parameters") from None
    return SealedFile(
        path=path,
        params=params,
        salt=salt,
        check=check,
        nonce=nonce,
        ciphertext=ciphertext,
        aad=_aad(_header(params, salt)),
    )


def write_keyfile(path: Path, material: KeyMaterial, file_key: FileKey) -> None:
    """Encrypt ``material`` under ``file_key`` and replace ``path`` atomically (mode 0600).

    Raises
    ------
    OSError
        If the file cannot be written; the old file is then untouched.
    """
    header = _header(file_key.params, file_key.salt)
    nonce = os.urandom(12)
    payload = material.encode()
    try:
        ciphertext = AESGCM(file_key.key).encrypt(nonce, payload, _aad(header))
    finally:
        zeroize(payload)
    document: dict[str, Any] = {
        **header,
        "check": _b64(file_key.check),
        "nonce": _b64(nonce),
        "ciphertext": _b64(ciphertext),
    }
    document["checksum"] = _checksum(document)
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    atomic_write(path, text.encode("utf-8"), mode=0o600)


@contextlib.contextmanager
def writer_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``<path>.lock`` while the key file is rewritten.

    Several processes may hold the same key file open (a server and an admin
    running ``radvault keys rotate``); each rewrite re-reads the file under this
    lock, so no process overwrites another's new KEK.
    """
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock

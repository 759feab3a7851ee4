"""Ed25519 signatures over catalog records and audit checkpoints.

The vault signs what it records (digests of de-identified pixels and of sealed
objects, audit chain heads) with one Ed25519 key held by the key provider, so
that a row edited directly in the database no longer verifies. Records are
signed in one canonical byte form, :func:`canonical_json`, so that signer and
verifier agree on the bytes whatever dict order or whitespace the caller used.

A :class:`Verifier` needs only the public key: ``radvault verify`` and outside
auditors can check signatures without the passphrase.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from radvault.errors import IntegrityError

__all__ = ["Signer", "Verifier", "canonical_json", "key_id_of"]

_PUBLIC_KEY_SIZE = 32
_SIGNATURE_SIZE = 64


def key_id_of(public_key_bytes: bytes) -> str:
    """The short, stable id of a public key: the first 16 hex digits of its SHA-256.

    Parameters
    ----------
    public_key_bytes : bytes
        The raw 32-byte Ed25519 public key.

    Returns
    -------
    str
        16 lowercase hex characters (64 bits), enough to tell a vault's keys apart.
    """
    return hashlib.sha256(bytes(public_key_bytes)).hexdigest()[:16]


class Verifier:
    """Checks Ed25519 signatures made by one public key.

    Parameters
    ----------
    public_key : bytes or Ed25519PublicKey
        The raw 32-byte public key, or a ``cryptography`` key object.

    Raises
    ------
    ValueError
        If ``public_key`` is not a valid 32-byte Ed25519 public key.
    """

    __slots__ = ("_key", "_raw", "key_id")

    def __init__(self, public_key: bytes | Ed25519PublicKey) -> None:
        if isinstance(public_key, Ed25519PublicKey):
            self._key = public_key
        else:
            raw = bytes(public_key)
            if len(raw) != _PUBLIC_KEY_SIZE:
                raise ValueError("an Ed25519 public key is 32 bytes")
            self._key = Ed25519PublicKey.from_public_bytes(raw)
        self._raw = self._key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id: str = key_id_of(self._raw)

    @property
    def public_key_bytes(self) -> bytes:
        """The raw 32-byte public key."""
        return self._raw

    def verify(self, message: bytes, signature: bytes) -> None:
        """Check that ``signature`` is this key's signature over ``message``.

        Parameters
        ----------
        message : bytes
            The signed bytes (for records: :func:`canonical_json` of the record).
        signature : bytes
            The 64-byte Ed25519 signature.

        Raises
        ------
        IntegrityError
            If the signature is malformed or does not verify; the message names
            the key id, never the message content.
        """
        sig = bytes(signature)
        if len(sig) != _SIGNATURE_SIZE:
            raise IntegrityError(f"signature is malformed (key {self.key_id})")
        try:
            self._key.verify(sig, bytes(message))
        except InvalidSignature:
            raise IntegrityError(f"signature does not verify under key {self.key_id}") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Verifier) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"Verifier(key_id={self.key_id!r})"


class Signer:
    """Signs messages with an Ed25519 private key.

    Build it with :meth:`generate`, :meth:`from_seed` or from a key provider's
    ``signer()``; the private key stays inside the ``cryptography`` key object.

    Parameters
    ----------
    private_key : Ed25519PrivateKey
        The key to sign with.

    Raises
    ------
    TypeError
        If ``private_key`` is not an Ed25519 private key.
    """

    __slots__ = ("_key", "_verifier")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        if not isinstance(private_key, Ed25519PrivateKey):
            raise TypeError("Signer needs an Ed25519PrivateKey")
        self._key = private_key
        self._verifier = Verifier(private_key.public_key())

    @classmethod
    def generate(cls) -> Signer:
        """A signer with a fresh random key.

        Returns
        -------
        Signer
            The new signer.
        """
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes | bytearray) -> Signer:
        """A signer from a 32-byte private seed (the raw private key).

        Parameters
        ----------
        seed : bytes or bytearray
            The raw private key; the caller still owns and wipes it.

        Returns
        -------
        Signer
            The signer for that key.

        Raises
        ------
        ValueError
            If ``seed`` is not 32 bytes.
        """
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def public_key_bytes(self) -> bytes:
        """The raw 32-byte public key."""
        return self._verifier.public_key_bytes

    @property
    def key_id(self) -> str:
        """The short id of the public key (see :func:`key_id_of`)."""
        return self._verifier.key_id

    def sign(self, message: bytes) -> bytes:
        """Sign ``message``.

        Parameters
        ----------
        message : bytes
            The bytes to sign (for records: :func:`canonical_json` of the record).

        Returns
        -------
        bytes
            The 64-byte signature.
        """
        return self._key.sign(bytes(message))

    def verifier(self) -> Verifier:
        """The matching :class:`Verifier` (public key only).

        Returns
        -------
        Verifier
            A verifier for this signer's signatures.
        """
        return self._verifier

    def __repr__(self) -> str:
        return f"Signer(key_id={self.key_id!r})"


_PLAIN = (str, int, bool, type(None))


def _plainly_canonical(obj: Any) -> bool:
    """True if ``obj`` holds only the exact JSON types, str keys and finite floats.

    The fast check that the records the vault builds pass; it builds no paths,
    so anything it does not recognise (a subclass, a bad value, a container met
    twice, as in a cycle) goes to :func:`_check_canonical`, which accepts or
    says where the problem is.
    """
    stack = [obj]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind in _PLAIN:
            continue
        if kind is dict or kind is list or kind is tuple:
            if id(item) in seen:
                return False
            seen.add(id(item))
            if kind is not dict:
                stack.extend(item)
            elif all(type(key) is str for key in item):
                stack.extend(item.values())
            else:
                return False
        elif kind is not float or not math.isfinite(item):
            return False
    return True


def _check_canonical(obj: Any, path: str) -> None:
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise TypeError(f"canonical_json: key at {path} is not a string")
            _check_canonical(value, f"{path}.{key}")
    elif isinstance(obj, list | tuple):
        for index, value in enumerate(obj):
            _check_canonical(value, f"{path}[{index}]")
    elif isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"canonical_json: non-finite number at {path}")
    elif obj is not None and not isinstance(obj, str | int | bool):
        raise TypeError(f"canonical_json: {type(obj).__name__} at {path} is not JSON")


def canonical_json(obj: Any) -> bytes:
    """Encode ``obj`` as canonical JSON: sorted keys, no spaces, UTF-8.

    Only JSON types are accepted (dict with str keys, list, tuple, str, int,
    finite float, bool, None), so that two equal records always give the same
    bytes and nothing is silently converted (an int key would collide with its
    string form; ``bytes`` must be encoded by the caller, e.g. as hex).

    Parameters
    ----------
    obj : Any
        The record to encode.

    Returns
    -------
    bytes
        The canonical encoding, to be signed or hashed.

    Raises
    ------
    TypeError
        If ``obj`` holds a non-JSON value or a dict key that is not a string.
    ValueError
        If ``obj`` holds NaN or an infinity.
    """
    if not _plainly_canonical(obj):
        _check_canonical(obj, "$")
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")

"""Keyed digests of image content for the catalog (private: use ``Vault.source_digest``).

The catalog is plaintext, so what it records about an image must not let
anyone who holds a copy of it, and a patient's original file (the sending
PACS, a researcher), confirm that this image is in the vault. A plain SHA-256
of the file or of its decoded pixels would: anyone can hash the file and look
for the value. The catalog keeps HMAC-SHA256 instead, under keys only the
unlocked vault can derive (HKDF-SHA256 over its de-identification secret, one
label per use): the same content gives the same digest in one vault, so
duplicates are still found and pixels still verified, but the digest of a
known file differs from vault to vault and cannot be computed without the
vault's secrets. The digests stay 64 hex digits, the width of a SHA-256.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from radvault.vault._key_interfaces import VaultSecrets

__all__ = ["PIXEL_DIGEST_INFO", "SOURCE_DIGEST_INFO", "ContentDigest"]

SOURCE_DIGEST_INFO = b"radvault source digest v1"
"""The HKDF label of the key of source-file digests (``instances.source_sha256``)."""

PIXEL_DIGEST_INFO = b"radvault pixel digest v1"
"""The HKDF label of the key of decoded-pixel digests (``instances.pixel_sha256``)."""


class ContentDigest:
    """A callable turning content into its keyed digest: HMAC-SHA256 as 64 hex digits.

    Parameters
    ----------
    key : bytes
        The 32-byte HMAC key; usually derived by :meth:`from_secrets`.

    Raises
    ------
    ValueError
        If the key is not 32 bytes.
    """

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes | bytearray) or len(key) != 32:
            raise ValueError("a content digest key is 32 bytes")
        self._key = bytes(key)

    @classmethod
    def from_secrets(cls, secrets: VaultSecrets, info: bytes) -> ContentDigest:
        """The vault's digest for one use: HKDF-SHA256 over its pseudonymisation secret.

        Parameters
        ----------
        secrets : VaultSecrets
            The unlocked vault's secrets.
        info : bytes
            The HKDF label (:data:`SOURCE_DIGEST_INFO` or
            :data:`PIXEL_DIGEST_INFO`): it keeps the key apart from every other
            use of the secret.

        Returns
        -------
        ContentDigest
            The digest.

        Raises
        ------
        VaultLocked
            If the secrets are closed.
        """
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                   info=info).derive(bytes(secrets.deid_secret()))
        return cls(key)

    def __call__(self, parts: Iterable[bytes | bytearray | memoryview]) -> str:
        """The digest of the concatenation of ``parts``.

        Parameters
        ----------
        parts : iterable of bytes-like
            The content, in pieces (so large buffers need not be joined).

        Returns
        -------
        str
            64 lower-case hex digits.
        """
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in parts:
            mac.update(part)
        return mac.hexdigest()

    def __repr__(self) -> str:
        return "ContentDigest(key=<hidden>)"

"""Keyed digests of text a user typed, for the audit trail (private: use ``radvault.vault.audit``).

Some refusals are worth auditing although what the caller typed must not be
kept: a login name that may be a mistyped password, a study id that may be a
medical record number pasted into a URL, a path probing for traversal. A plain
hash of such short text is no protection (anyone can hash a dictionary of
names, passwords or record numbers and compare), so the trail keeps
HMAC-SHA256 under a key only the unlocked vault can derive: the same text
gives the same digest, so repeated attempts still correlate, but nobody
without the vault's secrets can test a guess against it.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from radvault.vault._key_interfaces import VaultSecrets

__all__ = ["AUDIT_DIGEST_HEX", "AUDIT_DIGEST_INFO", "AuditDigest"]

AUDIT_DIGEST_INFO = b"radvault audit digest v1"
"""The HKDF label of the digest key: it keeps the key apart from every other use of the secret."""

AUDIT_DIGEST_HEX = 16
"""Hex digits kept of each digest (64 bits: ample to correlate attempts, short in the trail)."""


class AuditDigest:
    """A callable turning typed text into a short keyed digest for the audit trail.

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
            raise ValueError("an audit digest key is 32 bytes")
        self._key = bytes(key)

    @classmethod
    def from_secrets(cls, secrets: VaultSecrets) -> AuditDigest:
        """The vault's audit digest: HKDF-SHA256 over its pseudonymisation secret.

        The key is derived under :data:`AUDIT_DIGEST_INFO`, so it is stable for
        the life of the vault and cryptographically independent of the
        de-identification key it comes from (which is never used directly).

        Parameters
        ----------
        secrets : VaultSecrets
            The unlocked vault's secrets.

        Returns
        -------
        AuditDigest
            The digest.

        Raises
        ------
        VaultLocked
            If the secrets are closed.
        """
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                   info=AUDIT_DIGEST_INFO).derive(bytes(secrets.deid_secret()))
        return cls(key)

    def __call__(self, text: str) -> str:
        """The digest of ``text``: HMAC-SHA256, the first :data:`AUDIT_DIGEST_HEX` hex digits.

        Parameters
        ----------
        text : str
            What the user typed (encoded as UTF-8; unpaired surrogates replaced).

        Returns
        -------
        str
            Lower-case hex.
        """
        data = str(text).encode("utf-8", "replace")
        return hmac.new(self._key, data, hashlib.sha256).hexdigest()[:AUDIT_DIGEST_HEX]

    def __repr__(self) -> str:
        return "AuditDigest(key=<hidden>)"

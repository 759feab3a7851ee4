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

from typing import cast

from radvault.vault._content_digest import ContentDigest
from radvault.vault._key_interfaces import VaultSecrets

__all__ = ["AUDIT_DIGEST_HEX", "AUDIT_DIGEST_INFO", "AuditDigest"]

AUDIT_DIGEST_INFO = b"radvault audit digest v1"
"""The HKDF label of the digest key: it keeps the key apart from every other use of the secret."""

AUDIT_DIGEST_HEX = 16
"""Hex digits kept of each digest (64 bits: ample to correlate attempts, short in the trail)."""


class AuditDigest(ContentDigest):
    """A callable turning typed text into a short keyed digest for the audit trail.

    A :class:`~radvault.vault._content_digest.ContentDigest` (same constructor) under
    its own key, of text (UTF-8), kept to :data:`AUDIT_DIGEST_HEX` hex digits.
    """

    @classmethod
    def from_secrets(cls, secrets: VaultSecrets, info: bytes = AUDIT_DIGEST_INFO) -> AuditDigest:
        """The vault's audit digest: HKDF-SHA256 over its pseudonymisation secret.

        Raises
        ------
        VaultLocked
            If the secrets are closed.
        """
        return cast(AuditDigest, super().from_secrets(secrets, info))

    def __call__(self, text: str) -> str:  # type: ignore[override]
        """The digest of ``text`` (UTF-8; unpaired surrogates replaced): lower-case hex,
        the first :data:`AUDIT_DIGEST_HEX` digits of HMAC-SHA256."""
        data = str(text).encode("utf-8", "replace")
        return super().__call__((data,))[:AUDIT_DIGEST_HEX]

    def __repr__(self) -> str:
        return "AuditDigest(key=<hidden>)"

"""Key providers: who holds the key-encryption keys, and the vault's other secrets.

Every stored object is sealed under its own random data key (see
:mod:`radvault.vault.sealing`); the data key is stored only *wrapped*, that is
encrypted by a key-encryption key (KEK) that never leaves its
:class:`KeyProvider`. Callers only ever call :meth:`KeyProvider.wrap` and
:meth:`KeyProvider.unwrap`, so the KEKs can live in a local key file
(:class:`LocalKeyFile`, the embedded default), in memory (tests:
:class:`InMemoryKeyProvider`) or in an external service such as AWS KMS or
HashiCorp Vault Transit (docs/keys.md shows how to add one) without changing
callers.

Wrapping is AES-256-GCM with the caller's ``context`` (for sealed objects the
object id, see :func:`radvault.vault.sealing.key_context`) bound as associated
data: a wrapped key copied onto another object does not unwrap.

Rotation: :meth:`KeyProvider.rotate` makes a new KEK current; older KEKs stay
available for unwrapping until :meth:`KeyProvider.retire`. :func:`rewrap` moves
one wrapped key to the current KEK without touching the sealed blob; running it
over every catalog row is idempotent, so an interrupted rotation is resumed by
running it again.

Besides KEKs, the vault needs three more secrets, described by
:class:`VaultSecrets`: an identity key that seals the patient-identity records,
an Ed25519 signing key, and a pseudonymisation secret for de-identification.
Both local providers implement both interfaces.

Where the code lives: this module is the public entry point (its ``__all__``).
:class:`WrappedKey`, :class:`KeyProvider`, :class:`VaultSecrets` and :func:`rewrap`
are defined in the private ``radvault.vault._key_interfaces``; :class:`LocalKeyFile`,
:class:`InMemoryKeyProvider` and their shared base ``_LocalKeys`` in the private
``radvault.vault._local_keys``; the key file's on-disk format (including
:class:`KdfParams`) in the private ``radvault.vault._keyfile``. Import them from
here.
"""

from __future__ import annotations

from radvault.vault._key_interfaces import (
    KeyProvider,
    VaultSecrets,
    WrappedKey,
    rewrap,
)
from radvault.vault._keyfile import KdfParams
from radvault.vault._local_keys import InMemoryKeyProvider, LocalKeyFile

__all__ = [
    "InMemoryKeyProvider",
    "KdfParams",
    "KeyProvider",
    "LocalKeyFile",
    "VaultSecrets",
    "WrappedKey",
    "rewrap",
]

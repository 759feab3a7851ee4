"""Vault layer: keys, envelope encryption, signatures, blob stores, catalog and audit trail.

Knows nothing of models or HTTP. :class:`Vault` composes the parts found in
``RADVAULT_HOME``; each part sits behind a small interface with an in-memory
implementation for tests.
"""

from radvault.vault._atomic import atomic_write
from radvault.vault.audit import Action, AuditEntry, AuditLog, Outcome
from radvault.vault.blobstore import BlobStore, InMemoryBlobStore, LocalFolderBlobStore
from radvault.vault.catalog import Catalog, InstanceRecord, ObjectRecord, StudyRecord
from radvault.vault.keys import (
    InMemoryKeyProvider,
    KdfParams,
    KeyProvider,
    LocalKeyFile,
    WrappedKey,
    rewrap,
)
from radvault.vault.sealing import Sealed, open_sealed, seal
from radvault.vault.secure_memory import wiping, zeroize
from radvault.vault.signing import Signer, Verifier, canonical_json
from radvault.vault.vault import Vault, VaultPaths

__all__ = [
    "Action",
    "AuditEntry",
    "AuditLog",
    "BlobStore",
    "Catalog",
    "InMemoryBlobStore",
    "InMemoryKeyProvider",
    "InstanceRecord",
    "KdfParams",
    "KeyProvider",
    "LocalFolderBlobStore",
    "LocalKeyFile",
    "ObjectRecord",
    "Outcome",
    "Sealed",
    "Signer",
    "StudyRecord",
    "Vault",
    "VaultPaths",
    "Verifier",
    "WrappedKey",
    "atomic_write",
    "canonical_json",
    "open_sealed",
    "rewrap",
    "seal",
    "wiping",
    "zeroize",
]

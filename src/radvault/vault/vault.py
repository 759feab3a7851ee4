"""The vault as one object: key file, catalog, blob store and audit trail in RADVAULT_HOME.

:class:`Vault` composes the parts (each behind its own small interface) and
offers the two primitives every use case needs: :meth:`Vault.seal_object`
(seal and store a blob, returning its catalog row) and :meth:`Vault.open_object`
(back-verify and open one). Layout of ``home``::

    keys.json       key file (KEKs, identity key, signing key, pseudonym secret),
                    encrypted under the passphrase (argon2id)
    vault.pub       the Ed25519 public key, readable without the passphrase
    catalog.sqlite3 catalog and audit chain (SQLite WAL; or a PostgreSQL URL)
    blobs/          sealed objects (AES-256-GCM), one file each, fan-out folders
    audit.log       the audit chain's append-only JSON-lines copy
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from radvault.config import Settings
from radvault.errors import (
    ConfigurationError,
    IntegrityError,
    KeyProviderError,
    ObjectNotFound,
    ObjectShredded,
    VaultError,
    VaultLocked,
)
from radvault.vault._content_digest import PIXEL_DIGEST_INFO, SOURCE_DIGEST_INFO, ContentDigest
from radvault.vault.audit import (
    AUDIT_DIGEST_INFO,
    Action,
    AuditDigest,
    AuditLog,
    AuditReport,
    Outcome,
)
from radvault.vault.blobstore import BlobStore, LocalFolderBlobStore, put_many
from radvault.vault.catalog import (
    Catalog,
    InstanceRecord,
    NewObject,
    ObjectRecord,
    ResultRecord,
    result_record_message,
    verify_object_record,
    verify_result_record,
)
from radvault.vault.keys import KdfParams, LocalKeyFile, WrappedKey
from radvault.vault.sealing import open_sealed, seal
from radvault.vault.signing import Signer, Verifier

__all__ = ["Vault", "VaultPaths", "new_object_id", "verify_audit_with_public_key"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VaultPaths:
    """Where a vault keeps its files."""

    home: Path

    @property
    def key_file(self) -> Path:
        """The passphrase-protected key file."""
        return self.home / "keys.json"

    @property
    def public_key(self) -> Path:
        """The vault's Ed25519 public key (raw 32 bytes, hex)."""
        return self.home / "vault.pub"

    @property
    def blobs(self) -> Path:
        """The local blob folder."""
        return self.home / "blobs"

    @property
    def audit_file(self) -> Path:
        """The audit chain's JSON-lines copy."""
        return self.home / "audit.log"


#: SQLite's ``synchronous`` pragma for each ``Settings.durability``.
_SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL"}


def new_object_id() -> str:
    """A random, meaningless object id (never derived from content or PHI)."""
    return "o" + secrets.token_hex(16)


class _LockedSigner:
    """Stands in for the signing key while the vault is locked: it only refuses."""

    key_id = "locked"

    def sign(self, message: bytes) -> bytes:
        raise VaultLocked("the vault is locked: cannot sign")


class Vault:
    """An unlocked vault: keys, catalog, blob store and audit log.

    Build it with :meth:`init` or :meth:`open`; close it (or use ``with``) so
    the audit chain gets its closing checkpoint.
    """

    def __init__(
        self,
        settings: Settings,
        keys: LocalKeyFile,
        catalog: Catalog,
        blobs: BlobStore,
        audit: AuditLog,
        signer: Signer,
        *,
        read_only: bool = False,
    ) -> None:
        self.read_only = read_only
        self.settings = settings
        self.paths = VaultPaths(settings.home)
        self.keys = keys
        self.catalog = catalog
        self.blobs = blobs
        self.audit = audit
        self.signer = signer
        self.verifier: Verifier = signer.verifier()
        self._digests: dict[bytes, ContentDigest] = {}  # by HKDF label, derived on first use

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def init(
        cls, settings: Settings, passphrase: str | bytes, *, kdf: KdfParams | None = None
    ) -> Vault:
        """Create a new vault in ``settings.home`` and return it unlocked.

        Raises
        ------
        VaultError
            If a vault already exists there.
        ConfigurationError
            If the passphrase is shorter than 12 characters.
        """
        paths = VaultPaths(settings.home)
        if paths.key_file.exists():
            raise VaultError(f"a vault already exists in {paths.home}")
        _check_passphrase_length(passphrase)
        paths.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(paths.home, 0o700)
        paths.blobs.mkdir(exist_ok=True, mode=0o700)
        keys = LocalKeyFile.create(paths.key_file, passphrase, kdf=kdf)
        signer = keys.signer()
        paths.public_key.write_text(signer.public_key_bytes.hex() + "\n", encoding="ascii")
        catalog = Catalog.create(settings.resolved_catalog_url,
                                 synchronous=_SYNCHRONOUS[settings.durability])
        vault = cls._assemble(settings, keys, catalog, signer)
        vault.audit.append("system", Action.INIT, details={"kek_id": keys.current_kek_id})
        return vault

    @staticmethod
    def ensure_exists(settings: Settings) -> None:
        """Refuse at once when ``settings.home`` holds no vault, before anyone is asked
        for a passphrase (and before a key derivation spends seconds on it).

        Raises
        ------
        VaultLocked
            No vault there: no key file and no public key.
        """
        paths = VaultPaths(settings.home)
        if not paths.home.is_dir() or not (
            paths.key_file.exists() or paths.public_key.exists()
        ):
            raise VaultLocked(f"no vault in {paths.home}: run `radvault init` first")

    @classmethod
    def open(cls, settings: Settings, passphrase: str | bytes, *,
             read_only: bool = False) -> Vault:
        """Unlock the vault in ``settings.home``.

        A failed unlock is audited (without any secret) before the error is raised.

        Parameters
        ----------
        settings : Settings
            Where the vault is, and how it behaves.
        passphrase : str or bytes
            Unlocks the key file.
        read_only : bool
            Open for inspection only (``radvault verify``, ``radvault audit
            verify``): the unlock is not audited, the audit trail refuses
            appends, and closing signs no checkpoint. This is how a vault whose
            audit trail was cut below a checkpoint (which refuses every
            append, the unlock's included) can still be verified and its
            damage reported.

        Raises
        ------
        VaultLocked
            No vault there, wrong passphrase, missing or corrupt key file.
        AuditChainError
            (Not read-only) the audit trail was cut below its last checkpoint,
            so not even the unlock can be audited.
        """
        paths = VaultPaths(settings.home)
        Vault.ensure_exists(settings)
        try:
            keys = LocalKeyFile.open(paths.key_file, passphrase)
        except VaultLocked as exc:
            cls._audit_failed_unlock(settings, str(exc))
            raise
        signer = keys.signer()
        if paths.public_key.exists():
            recorded = paths.public_key.read_text(encoding="ascii").strip()
            if recorded != signer.public_key_bytes.hex():
                keys.close()
                raise IntegrityError("vault.pub does not match the key file's signing key")
        catalog = Catalog.create(settings.resolved_catalog_url,
                                 synchronous=_SYNCHRONOUS[settings.durability])
        vault = cls._assemble(settings, keys, catalog, signer, read_only=read_only)
        if read_only:
            return vault
        try:
            vault.audit.append("system", Action.UNLOCK)
            vault._sign_older_results()
        except BaseException:  # e.g. AuditChainError: a trail cut below its checkpoint
            vault._release(checkpoint=False)
            raise
        return vault

    def _sign_older_results(self) -> None:
        """Sign, once, the results a RadVault before session 10 stored unsigned (audited).

        Only while the catalog says that signing is pending (set when the signature
        columns were added to it); from then on every result row must carry the vault's
        signature, so stripping one (to pass an edited row off as an old unsigned one)
        is refused like an edit, never signed.
        """
        if not self.catalog.result_signing_pending():
            return
        older = self.catalog.unsigned_results()
        self.catalog.sign_results([(r.result_id, self.signer.sign(result_record_message(r)),
                                    self.signer.key_id) for r in older])
        self.audit.append("system", "results.sign_older", Outcome.OK,
                          details={"count": len(older)})

    def results_of_instance(self, instance_id: str, *, actor: str) -> list[ResultRecord]:
        """The instance's results, oldest first, each row's signature checked.

        Raises
        ------
        IntegrityError
            A result row was altered, or its signature removed (audited as an
            integrity failure naming the result id, refused).
        """
        results = self.catalog.results_of_instance(instance_id)
        for result in results:
            try:
                verify_result_record(result, self.verifier)
            except IntegrityError:
                self.audit.append(actor, Action.INTEGRITY_FAILURE, Outcome.REFUSED,
                                  object_ids=[instance_id, result.result_id],
                                  details={"error": "IntegrityError", "what": "result"})
                raise
        return results

    @classmethod
    def _assemble(
        cls, settings: Settings, keys: LocalKeyFile, catalog: Catalog, signer: Signer,
        *, read_only: bool = False,
    ) -> Vault:
        paths = VaultPaths(settings.home)
        audit = AuditLog(
            catalog, signer, signer.verifier(), settings.audit_checkpoint_every,
            file_path=paths.audit_file, read_only=read_only,
        )
        return cls(settings, keys, catalog, LocalFolderBlobStore(paths.blobs), audit, signer,
                   read_only=read_only)

    @staticmethod
    def _audit_failed_unlock(settings: Settings, reason: str) -> None:
        paths = VaultPaths(settings.home)
        if not paths.public_key.exists():
            return
        try:
            verifier = Verifier(bytes.fromhex(paths.public_key.read_text("ascii").strip()))
            with Catalog(settings.resolved_catalog_url) as catalog:
                audit = AuditLog(catalog, _LockedSigner(), verifier, 10**9,
                                 file_path=paths.audit_file)
                short = "wrong passphrase" if "passphrase" in reason else "key file unusable"
                audit.append("system", Action.UNLOCK_FAILED, Outcome.REFUSED,
                             details={"reason": short})
                audit.close(checkpoint=False)
        except Exception:  # auditing must never mask the unlock error itself
            log.warning("could not audit a failed unlock", exc_info=False)

    def change_passphrase(self, new_passphrase: str | bytes, *, actor: str) -> None:
        """Re-encrypt the key file under a new passphrase (audited; keys and blobs unchanged).

        Raises
        ------
        ConfigurationError
            If the new passphrase is shorter than 12 characters.
        KeyProviderError
            If the key file cannot be rewritten (the old passphrase then still works).
        """
        _check_passphrase_length(new_passphrase)
        self.keys.change_passphrase(new_passphrase)
        self.audit.append(actor, "passphrase_change", "ok")

    def close(self) -> None:
        """Checkpoint the audit chain and release keys and connections.

        Raises
        ------
        AuditChainError
            When the closing checkpoint finds the trail truncated (everything is
            released all the same).
        """
        self._release(checkpoint=not self.read_only)

    def _release(self, *, checkpoint: bool) -> None:
        self._digests.clear()
        try:
            self.audit.close(checkpoint=checkpoint)
        finally:
            self.catalog.close()
            self.keys.close()

    def __enter__(self) -> Vault:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ audit digests

    def audit_digest(self, text: str) -> str:
        """The keyed digest under which the audit trail may name text a user typed.

        For text that must not be kept but whose repeats should correlate: an
        unknown login name (perhaps a mistyped password), an id the catalog
        does not hold (perhaps a medical record number), a probing path.
        HMAC-SHA256 under a key derived from the vault's secrets
        (:class:`~radvault.vault.audit.AuditDigest`), 16 hex digits: stable for
        the life of the vault, and no dictionary of guesses can be tested
        against it without the vault's secrets.

        Parameters
        ----------
        text : str
            What the user typed.

        Returns
        -------
        str
            16 lower-case hex digits.

        Raises
        ------
        VaultLocked
            If the vault's keys are closed.
        """
        return self._digest(AUDIT_DIGEST_INFO, AuditDigest)(text)

    def _digest(self, info: bytes, kind: type[ContentDigest] = ContentDigest) -> Any:
        """The vault's keyed digest under HKDF label ``info``, derived once per unlock."""
        digest = self._digests.get(info)
        if digest is None:
            digest = self._digests[info] = kind.from_secrets(self.keys, info)
        return digest

    # ------------------------------------------------------------------ content digests

    def source_digest(self, data: bytes | bytearray | memoryview) -> str:
        """The keyed digest the catalog records of an ingested file (``source_sha256``).

        HMAC-SHA256 under a key derived from the vault's secrets (label
        ``radvault source digest v1``): the same file gives the same digest in
        this vault, so a second copy is recognised, but nobody holding the
        catalog and the file can confirm it is here without the vault's secrets.

        Parameters
        ----------
        data : bytes-like
            The file as received.

        Returns
        -------
        str
            64 lower-case hex digits.

        Raises
        ------
        VaultLocked
            If the vault's keys are closed.
        """
        return self._digest(SOURCE_DIGEST_INFO)((data,))

    def pixel_digest(self, message: Iterable[bytes | bytearray | memoryview]) -> str:
        """The keyed digest the catalog records of an image's decoded pixels (``pixel_sha256``).

        As :meth:`source_digest`, under its own key (label ``radvault pixel
        digest v1``).

        Parameters
        ----------
        message : iterable of bytes-like
            What the digest covers, in pieces: the image record's
            ``pixel_message()`` (dtype and shape, then the pixel values).

        Returns
        -------
        str
            64 lower-case hex digits.

        Raises
        ------
        VaultLocked
            If the vault's keys are closed.
        """
        return self._digest(PIXEL_DIGEST_INFO)(message)

    def pixel_digest_matches(self, recorded: str,
                             message: Sequence[bytes | bytearray | memoryview]) -> bool:
        """Whether decoded pixels match the digest their catalog row recorded.

        Rows written since the catalog keeps keyed digests hold
        :meth:`pixel_digest`; rows of older vaults hold the plain SHA-256 of the
        same message, and are accepted too. That is as strong as the keyed check
        for integrity: the row is signed, so its recorded value cannot be edited
        unnoticed, and nobody can make other pixels hash to a given SHA-256.

        Parameters
        ----------
        recorded : str
            The instance's ``pixel_sha256``.
        message : sequence of bytes-like
            The decoded image's ``pixel_message()``.

        Returns
        -------
        bool
            ``True`` if ``recorded`` is the keyed or the plain digest of ``message``.

        Raises
        ------
        VaultLocked
            If the vault's keys are closed.
        """
        if hmac.compare_digest(self.pixel_digest(message), recorded):
            return True
        plain = hashlib.sha256()
        for part in message:
            plain.update(part)
        return hmac.compare_digest(plain.hexdigest(), recorded)

    def find_instance_by_source(self, data: bytes | bytearray | memoryview, *,
                                sha256: str | None = None) -> InstanceRecord | None:
        """The instance ingested from this very file, if any.

        Looks up the file's :meth:`source_digest` and, failing that, its plain
        SHA-256: what catalogs written before the digests were keyed recorded,
        so a file ingested then is still recognised.

        Parameters
        ----------
        data : bytes-like
            The file as received.
        sha256 : str, optional
            The plain SHA-256 of ``data`` (hex), when the caller computed it already.

        Returns
        -------
        InstanceRecord or None
            The instance, or ``None`` if the file was never ingested.

        Raises
        ------
        VaultLocked
            If the vault's keys are closed.
        """
        found = self.catalog.find_instance_by_source_sha256(self.source_digest(data))
        if found is None:
            plain = sha256 if sha256 is not None else hashlib.sha256(data).hexdigest()
            found = self.catalog.find_instance_by_source_sha256(plain)
        return found

    # ------------------------------------------------------------------ objects

    def seal_object(self, plaintext: bytes | bytearray | memoryview, *, kind: str) -> NewObject:
        """Seal ``plaintext`` under a fresh data key, store the blob, return its catalog row.

        The row is not yet in the catalog: the caller adds it with its instance
        (one transaction), and the catalog signs it.
        """
        object_id = new_object_id()
        sealed = seal(plaintext, object_id=object_id, provider=self.keys,
                      chunk_size=self.settings.chunk_size)
        self.blobs.put(object_id, sealed.blob)
        return NewObject(
            object_id=object_id,
            kind=kind,
            blob_key=object_id,
            plain_size=sealed.plain_size,
            sealed_size=len(sealed.blob),
            sealed_sha256=sealed.sealed_sha256,
            kek_id=sealed.wrapped_key.kek_id,
            wrapped_key=sealed.wrapped_key.to_bytes(),
        )

    def seal_objects(
        self, items: Sequence[tuple[bytes | bytearray | memoryview, str]]
    ) -> list[NewObject]:
        """Seal several plaintexts (``(plaintext, kind)`` pairs) and store them as one batch.

        As :meth:`seal_object` for each, but the blobs go to the store together
        (:func:`~radvault.vault.blobstore.put_many`: on the local folder store,
        one round of concurrent flushes and one flush per folder for the whole
        batch). Every blob is stored when this returns.

        Raises
        ------
        VaultError
            When a blob cannot be stored (some of the batch may be stored:
            orphans that ``verify`` notes as harmless).
        KeyProviderError
            When a data key cannot be wrapped.
        """
        rows: list[NewObject] = []
        blobs: list[tuple[str, bytes]] = []
        for plaintext, kind in items:
            object_id = new_object_id()
            sealed = seal(plaintext, object_id=object_id, provider=self.keys,
                          chunk_size=self.settings.chunk_size)
            blobs.append((object_id, sealed.blob))
            rows.append(NewObject(
                object_id=object_id, kind=kind, blob_key=object_id,
                plain_size=sealed.plain_size, sealed_size=len(sealed.blob),
                sealed_sha256=sealed.sealed_sha256, kek_id=sealed.wrapped_key.kek_id,
                wrapped_key=sealed.wrapped_key.to_bytes(),
            ))
        put_many(self.blobs, blobs)
        return rows

    def open_object(self, obj: ObjectRecord, *, actor: str) -> bytearray:
        """Back-verify one object and return its plaintext (the caller zeroises it).

        Checks, before anything is returned: the catalog row's signature, the
        blob's size and sha-256 against the row, and every chunk's AEAD tag.
        Any mismatch is audited and refused.

        Raises
        ------
        ObjectShredded
            The data key was destroyed.
        IntegrityError
            The row, the blob or a chunk was altered, swapped or replayed.
        """
        try:
            if obj.wrapped_key is None:
                raise ObjectShredded(f"object {obj.object_id} was crypto-shredded")
            verify_object_record(obj, self.verifier)
            try:
                blob = self.blobs.get(obj.blob_key)
            except ObjectNotFound:
                raise IntegrityError(f"object {obj.object_id}: sealed blob is missing") from None
            if len(blob) != obj.sealed_size or (
                hashlib.sha256(blob).hexdigest() != obj.sealed_sha256
            ):
                raise IntegrityError(
                    f"object {obj.object_id}: sealed blob does not match its catalog digest"
                )
            plain = open_sealed(blob, object_id=obj.object_id,
                                wrapped_key=WrappedKey.from_bytes(obj.wrapped_key),
                                provider=self.keys)
            if len(plain) != obj.plain_size:
                raise IntegrityError(f"object {obj.object_id}: plaintext size mismatch")
            return plain
        except (IntegrityError, KeyProviderError, VaultError) as exc:
            outcome = Outcome.REFUSED
            action = Action.INTEGRITY_FAILURE if isinstance(exc, IntegrityError) else Action.READ
            self.audit.append(actor, action, outcome, object_ids=[obj.object_id],
                              details={"error": type(exc).__name__})
            if isinstance(exc, KeyProviderError):
                raise IntegrityError(
                    f"object {obj.object_id}: its data key cannot be unwrapped"
                ) from None
            raise


def _check_passphrase_length(passphrase: str | bytes) -> None:
    """A vault passphrase has at least 12 characters (the Argon2id KDF slows guessing,
    it cannot make a short passphrase strong)."""
    if isinstance(passphrase, str) and len(passphrase) < 12:
        raise ConfigurationError("the passphrase must be at least 12 characters long")


def verify_audit_with_public_key(settings: Settings, public_key_hex: str, *,
                                 anchors: str | None = None) -> AuditReport:
    """Verify a vault's audit trail with its public key alone: no passphrase, no append.

    For an outside auditor given the vault folder (or a copy of its catalog and
    ``audit.log``) and the vault's public key from a trusted source (``vault.pub``
    as the vault's owner handed it over, not the copy in the folder under audit).

    Raises
    ------
    ConfigurationError
        If ``public_key_hex`` is not a 32-byte Ed25519 key in hex.
    """
    try:
        verifier = Verifier(bytes.fromhex(public_key_hex.strip()))
    except (ValueError, IntegrityError):
        raise ConfigurationError("the public key must be 64 hex digits (as in vault.pub)"
                                 ) from None
    paths = VaultPaths(settings.home)
    url = settings.resolved_catalog_url
    missing_sqlite = url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file()
    if missing_sqlite or not (paths.audit_file.exists() or paths.key_file.exists()):
        # opening a missing SQLite file would create an empty one in the folder under audit
        raise VaultLocked(f"no vault (catalog and audit trail) in {paths.home}")
    with Catalog(url) as catalog:
        audit = AuditLog(catalog, _LockedSigner(), verifier, 10**9,
                         file_path=paths.audit_file, read_only=True)
        try:
            return audit.verify(anchors=anchors)
        finally:
            audit.close(checkpoint=False)

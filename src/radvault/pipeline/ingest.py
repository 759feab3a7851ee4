"""Ingest use case: read -> de-identify -> preprocess -> seal -> catalog -> audit.

Each image is handled on its own, all in memory: the de-identified DICOM (or,
for PNG/JPEG, the original file) and the preprocessed model input are sealed
into the blob store; the identifying values the de-identifier removed are
sealed under the separate identity key; the catalog row of each object is
signed; and the outcome, stored or refused, is audited with pseudonymous ids
only. Re-ingesting the same file is recognised by its sha-256 and stores
nothing.

Storing uses group commit. ``Ingestor.ingest_paths`` and ``Ingestor.ingest_many``
prepare images (read, de-identify, preprocess: CPU work) in the calling thread
while a storage thread takes every image prepared so far, up to a batch, and
stores the batch in two steps: (1) seal every object and write all their blobs
at once, each atomically, all flushed before going on (concurrent file
flushes, one flush per folder); (2) one catalog transaction for all of the
batch: signed object rows, identity records (one merge per patient) and audit
entries. A crash before (2) commits leaves only orphan blobs, which ``verify``
notes as harmless; an image is reported stored only after (2) commits. When
preparing is the slower stage, the storage thread waits up to
:data:`BATCH_LINGER_S` for :data:`MIN_BATCH_IMAGES` to be ready (never past the
end of the input), so that a batch's fixed costs are shared; when storage is
the slower stage, batches grow by themselves.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import exc as sa_exc

from radvault.errors import (
    AuditChainError,
    BurnedInAnnotationRefused,
    ConcurrentWriteConflict,
    ImageInputError,
    ImageTooLarge,
    ObjectNotFound,
    RadVaultError,
    StudySiteConflict,
    UidConflict,
    VaultError,
)
from radvault.imaging.deid import Deidentifier, DeidOptions, pseudonym_for
from radvault.imaging.preprocess import Preprocessor, settings_to_dict
from radvault.imaging.raster_metadata import strip_raster_metadata
from radvault.imaging.reading import (
    read_dicom_dataset,
    read_image_bytes,
    record_from_dataset,
    sniff_format,
)
from radvault.imaging.records import ImageRecord, SourceFormat
from radvault.imaging.vocabulary import (
    body_part_hint,
    body_part_term,
    modality_hint,
    modality_term,
)
from radvault.pipeline.model_input import encode_model_input
from radvault.pipeline.sites import DEFAULT_SITE, require_site, study_site
from radvault.vault.audit import Action, EntryDraft, Outcome
from radvault.vault.catalog import AddInstanceResult, CatalogWriter, NewInstance, NewObject
from radvault.vault.secure_memory import zeroize
from radvault.vault.vault import Vault

__all__ = ["MODEL_INPUT_KIND", "IngestItem", "IngestOutcome", "Ingestor", "encode_model_input"]

log = logging.getLogger(__name__)

#: Object kinds stored per instance.
SOURCE_KIND = "source"
DICOM_KIND = "dicom"
MODEL_INPUT_KIND = "model_input"

#: Group commit: at most this many images per catalog transaction...
MAX_BATCH_IMAGES = 32
#: ... and about this many plaintext bytes in flight (prepared, not yet stored).
MAX_BATCH_BYTES = 256 * 1024 * 1024
#: A batch of fewer images waits up to :data:`BATCH_LINGER_S` for more: every batch
#: costs a transaction, a commit flush and look-ups whatever its size, and while
#: imaging is the slower stage the batches would otherwise hold two or three images.
MIN_BATCH_IMAGES = 8
BATCH_LINGER_S = 0.05


def _typed_hints(modality: str | None, body_part: str | None) -> tuple[str | None, str | None]:
    """Modality and body-part hints as defined terms (``None`` for none); refused otherwise.

    Raises
    ------
    InvalidRequest
        If either is not a DICOM defined term (the message names the field only).
    """
    return modality_hint(modality), body_part_hint(body_part)


@dataclass(frozen=True)
class IngestItem:
    """One input of :meth:`Ingestor.ingest_many`: a file, or an image's bytes.

    ``name`` is only for messages to the user (default: the path, or
    ``"upload"``); ``modality`` and ``body_part`` are hints (they fill what a
    DICOM header leaves unsaid, and label PNG/JPEG): DICOM defined terms in any
    case, kept upper case; anything else is refused here with
    :class:`~radvault.errors.InvalidRequest` (naming the field, never the value),
    so that no caller can store a typed hint as ``OT`` or an unknown body part
    (header values, unlike hints, are normalised); ``patient_key`` links PNG/JPEG
    images of one patient (see :meth:`Ingestor.ingest_bytes`).
    """

    source: Path | bytes
    name: str | None = None
    modality: str | None = None
    body_part: str | None = None
    patient_key: str | None = None

    def __post_init__(self) -> None:
        modality, body_part = _typed_hints(self.modality, self.body_part)
        object.__setattr__(self, "modality", modality)
        object.__setattr__(self, "body_part", body_part)

    @property
    def label(self) -> str:
        """The name shown to the user."""
        if self.name is not None:
            return self.name
        return str(self.source) if isinstance(self.source, Path) else "upload"


@dataclass(frozen=True)
class IngestOutcome:
    """What happened to one input: ``stored``, ``duplicate`` or ``refused``.

    ``name`` is the input as the user named it (shown to that user only; never
    audited or logged). Ids are pseudonymous.
    """

    name: str
    status: str
    study_id: str | None = None
    instance_id: str | None = None
    modality: str | None = None
    error: str | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        """True unless the input was refused."""
        return self.status != "refused"


#: UIDs every stored instance needs (catalog keys), and the label its fallback is derived with.
_REQUIRED_UIDS = (("StudyInstanceUID", "study"), ("SeriesInstanceUID", "series"),
                  ("SOPInstanceUID", "instance"))


@dataclass
class _Prepared:
    """An image made ready to store: its catalog row and the two plaintexts to seal.

    The plaintexts (and the removed identifying values) live in memory only and
    are wiped once sealed, or when the image is refused.
    """

    name: str
    instance: NewInstance
    kind: str
    stored_bytes: bytearray
    encoded: bytearray
    removed: dict[str, str]
    burned_in: bool

    def wipe(self) -> None:
        """Overwrite the plaintexts (idempotent)."""
        zeroize(self.stored_bytes)
        zeroize(self.encoded)

    @property
    def size(self) -> int:
        """Plaintext bytes held."""
        return len(self.stored_bytes) + len(self.encoded)


def _uid(secret: bytes, label: str, value: str) -> str:
    digest = hmac.new(secret, f"{label}:{value}".encode(), hashlib.sha256).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


class Ingestor:
    """Ingests images into an unlocked :class:`~radvault.vault.vault.Vault`.

    Parameters
    ----------
    vault : Vault
        The open vault.
    actor : str
        Who is ingesting (a user name or ``system``), for the audit trail.
    site : str
        The site new studies belong to: a registered one, or the default site
        (registered on first use: :func:`~radvault.pipeline.sites.require_site`).
    options : DeidOptions, optional
        De-identification options; default from the vault's settings.

    Raises
    ------
    ConfigurationError
        If ``site`` is not registered (``radvault sites add``).
    """

    def __init__(self, vault: Vault, *, actor: str = "system", site: str = DEFAULT_SITE,
                 options: DeidOptions | None = None) -> None:
        self.vault = vault
        self.actor = actor
        self.site = require_site(vault, site)
        self._secret = vault.keys.deid_secret()
        options = options or DeidOptions.from_settings(vault.settings)
        self._deid = Deidentifier(self._secret, options)
        self._preprocess = Preprocessor(vault.settings.preprocess)
        self._preprocess_dict = settings_to_dict(vault.settings.preprocess)

    # ------------------------------------------------------------------ entry points

    def ingest_paths(
        self,
        paths: Iterable[Path],
        *,
        modality: str | None = None,
        body_part: str | None = None,
        on_file: Callable[[IngestOutcome], None] | None = None,
    ) -> list[IngestOutcome]:
        """Ingest files in order; a bad file is refused and reported, the rest go in.

        Same as :meth:`ingest_many` with one :class:`IngestItem` per path; a hint that
        is not a DICOM defined term raises :class:`~radvault.errors.InvalidRequest`
        before any file is read.
        """
        return self.ingest_many(
            (IngestItem(Path(p), modality=modality, body_part=body_part) for p in paths),
            on_file=on_file,
        )

    def ingest_many(
        self,
        items: Iterable[IngestItem],
        *,
        on_file: Callable[[IngestOutcome], None] | None = None,
    ) -> list[IngestOutcome]:
        """Ingest many images (files or bytes), storing them in batches (group commit).

        This thread reads, de-identifies and preprocesses each image while a
        storage thread stores everything prepared so far as one batch (see the
        module docstring): the crash guarantees are those of one image at a
        time (blobs durable before the catalog commit; an image reported
        stored is committed), at a fraction of the flushes. Outcomes (and
        ``on_file`` calls, made from this thread as images finish) keep the
        input order. A refused image never stops the others.

        Raises
        ------
        AuditChainError
            When the audit trail refuses appends (cut below a checkpoint):
            nothing more is stored.
        Exception
            An unexpected error (a bug, not a bad image) stops the run once
            the images already handed to storage are stored.
        """
        outcomes: list[IngestOutcome] = []
        slots: deque[IngestOutcome | Future[IngestOutcome]] = deque()

        def flush(*, block: bool) -> None:
            while slots and (block or not isinstance(slots[0], Future) or slots[0].done()):
                slot = slots.popleft()
                outcome = slot.result() if isinstance(slot, Future) else slot
                outcomes.append(outcome)
                if on_file:
                    on_file(outcome)

        storer = _BatchStorer(self._store_batch)
        try:
            for item in items:
                if isinstance(item.source, Path):
                    step = self._read_and_prepare(item.source, item.modality, item.body_part,
                                                  item.name)
                else:
                    step = self._check_and_prepare(bytes(item.source), item.label,
                                                   item.modality, item.body_part,
                                                   item.patient_key)
                slots.append(step if isinstance(step, IngestOutcome) else storer.submit(step))
                flush(block=False)
            storer.close()
            flush(block=True)
        finally:
            storer.close()  # on an error: store what was handed over, wipe the rest
        return outcomes

    def ingest_file(self, path: Path, *, modality: str | None = None,
                    body_part: str | None = None) -> IngestOutcome:
        """Read one file (size-capped before reading) and ingest it.

        Raises
        ------
        InvalidRequest
            If a hint is not a DICOM defined term (see :class:`IngestItem`).
        """
        modality, body_part = _typed_hints(modality, body_part)
        step = self._read_and_prepare(path, modality, body_part, None)
        return step if isinstance(step, IngestOutcome) else self._store_batch([step])[0]

    def ingest_bytes(self, data: bytes, name: str, *, modality: str | None = None,
                     body_part: str | None = None, patient_key: str | None = None
                     ) -> IngestOutcome:
        """Ingest one image given as bytes (``name`` is only for messages).

        Raises
        ------
        InvalidRequest
            If a hint is not a DICOM defined term (see :class:`IngestItem`).
        """
        modality, body_part = _typed_hints(modality, body_part)
        step = self._check_and_prepare(data, name, modality, body_part, patient_key)
        return step if isinstance(step, IngestOutcome) else self._store_batch([step])[0]

    # ------------------------------------------------------------------ stage 1: imaging

    def _read_and_prepare(self, path: Path, modality: str | None, body_part: str | None,
                          name: str | None) -> IngestOutcome | _Prepared:
        name = str(path) if name is None else name
        try:
            size = path.stat().st_size
            if size > self.vault.settings.limits.max_file_bytes:
                raise ImageTooLarge(name, f"file is {size} bytes, over the cap of "
                                    f"{self.vault.settings.limits.max_file_bytes}")
            data = path.read_bytes()
        except OSError as exc:
            return self._refused(name, ImageInputError(name, f"cannot be read ({exc.strerror})"))
        except RadVaultError as exc:
            return self._refused(name, exc)
        return self._check_and_prepare(data, name, modality, body_part, None)

    def _check_and_prepare(self, data: bytes, name: str, modality: str | None,
                           body_part: str | None, patient_key: str | None
                           ) -> IngestOutcome | _Prepared:
        """A duplicate or refusal outcome, or the image made ready to store."""
        # The plain sha-256 stays in memory: the ids derived from it are the ones
        # earlier versions gave the same file. The catalog records a keyed digest.
        source_sha256 = hashlib.sha256(data).hexdigest()
        existing = self.vault.find_instance_by_source(data, sha256=source_sha256)
        if existing is not None:
            if study_site(self.vault, existing.study_id) not in (None, self.site):
                return self._refused(name, _site_conflict(), [existing.study_id])
            return self._duplicate(name, existing.study_id, existing.instance_id)
        try:
            return self._prepare(data, name, source_sha256, modality, body_part, patient_key)
        except RadVaultError as exc:
            return self._refused(name, exc)

    def _prepare(self, data: bytes, name: str, source_sha256: str, modality: str | None,
                 body_part: str | None, patient_key: str | None) -> _Prepared:
        """Read, de-identify and preprocess: everything but storage (no side effects).

        ``source_sha256`` is the plain sha-256 of ``data``: ids are derived from
        it (so the same file gets the same ids as ever) but it is never stored;
        the catalog records the vault's keyed digests of the file and pixels.
        """
        limits = self.vault.settings.limits
        fmt = sniff_format(data[:132])
        removed: dict[str, str] = {}
        burned_in = False
        if fmt is SourceFormat.DICOM:
            # Pixels are decoded once, from the de-identified dataset (de-identification
            # never touches them): an undecodable file is refused there all the same.
            result = self._deid(read_dicom_dataset(data, limits=limits, name=name), in_place=True)
            ds = result.dataset
            burned_in = result.burned_in_risk
            removed = dict(result.removed)
            for keyword, label in _REQUIRED_UIDS:  # some real files lack them
                if not str(ds.get(keyword, "") or ""):
                    setattr(ds, keyword, _uid(self._secret, label, source_sha256))
            record = record_from_dataset(ds, name, limits=limits)
            if modality or body_part:  # hints only fill what the header leaves unsaid
                record = _fill_gaps(record, modality, body_part)
            stored = io.BytesIO()
            ds.save_as(stored, enforce_file_format=True)
            stored_bytes = bytearray(stored.getbuffer())
            kind = DICOM_KIND
            pseudonym = result.pseudonym
            study_id, series_id = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
            instance_id = str(ds.SOPInstanceUID)
        else:
            record = read_image_bytes(data, name, limits=limits, modality=modality,
                                      body_part=body_part)
            # the file's own text chunks, EXIF, XMP and comments can name the patient:
            # the stored source keeps the pixels, bit for bit, and none of those
            stored_bytes = bytearray(strip_raster_metadata(data))
            kind = SOURCE_KIND
            key = patient_key or f"unlinked:{source_sha256}"
            pseudonym = pseudonym_for(self._secret, key)
            study_id = _uid(self._secret, "study", source_sha256)
            series_id = _uid(self._secret, "series", source_sha256)
            instance_id = _uid(self._secret, "instance", source_sha256)
        try:
            pixels_digest = self.vault.pixel_digest(record.pixel_message())
            model_input = self._preprocess(record)
            encoded = encode_model_input(model_input, self._preprocess_dict)
            model_input.fill(0)
        except BaseException:
            zeroize(stored_bytes)
            raise
        instance = NewInstance(
            instance_id=instance_id, series_id=series_id, study_id=study_id,
            patient_pseudonym=pseudonym, source_sha256=self.vault.source_digest(data),
            source_format=record.source_format.value, rows=record.rows, cols=record.columns,
            frames=record.frames, pixel_sha256=pixels_digest,
            modality=record.modality or None, body_part=record.body_part or None,
            site=self.site,
        )
        return _Prepared(name, instance, kind, stored_bytes, encoded, removed, burned_in)

    # ------------------------------------------------------------------ stage 2: storage

    def _store_batch(self, batch: Sequence[_Prepared]) -> list[IngestOutcome]:
        """Store prepared images: all blobs first (durable), then one catalog transaction.

        Returns one outcome per image, in order; the plaintexts are wiped.
        """
        try:
            items: list[tuple[bytearray, str]] = []
            for prepared in batch:
                items += [(prepared.stored_bytes, prepared.kind),
                          (prepared.encoded, MODEL_INPUT_KIND)]
            try:
                sealed = self.vault.seal_objects(items)
            except AuditChainError:
                raise
            except RadVaultError as exc:  # no space, an unusable key...: nothing cataloged
                return [self._refused(p.name, exc) for p in batch]
        finally:
            for prepared in batch:
                prepared.wipe()
        objects = [sealed[2 * i:2 * i + 2] for i in range(len(batch))]
        try:
            outcomes, drop = self._catalog_batch(batch, objects)
        except (sa_exc.IntegrityError, ConcurrentWriteConflict, StudySiteConflict):
            # A concurrent writer (PostgreSQL) got in first, or an image would join
            # another site's study: nothing of the batch was written; catalog the
            # images one by one, which resolves such races and refuses only that image.
            log.debug("batch insert refused; cataloging %d images one at a time", len(batch))
            outcomes, drop = [], []
            for prepared, objs in zip(batch, objects, strict=True):
                outcome, dropped = self._catalog_one(prepared, objs)
                outcomes.append(outcome)
                drop += dropped
        except AuditChainError:
            raise
        except RadVaultError as exc:  # the database cannot be reached...: nothing cataloged
            outcomes = [self._refused(p.name, exc) for p in batch]
            drop = [o for objs in objects for o in objs]
        for obj in drop:  # blobs of duplicates and refusals: never cataloged
            self.vault.blobs.delete(obj.blob_key)
        return outcomes

    def _catalog_batch(self, batch: Sequence[_Prepared], objects: Sequence[Sequence[NewObject]]
                       ) -> tuple[list[IngestOutcome], list[NewObject]]:
        """One transaction: catalog rows, identity records and audit entries of the batch."""
        outcomes: list[IngestOutcome] = []
        drop: list[NewObject] = []
        stored: list[IngestOutcome] = []
        vault = self.vault
        with vault.audit.appending() as chain, vault.catalog.writing() as writer:
            identities: dict[str, list[dict[str, str]]] = {}
            entries: list[EntryDraft] = []
            added_all = writer.add_many([(p.instance, objs) for p, objs in zip(
                batch, objects, strict=True)], signer=vault.signer)
            self._check_sites(added_all)
            for prepared, objs, added in zip(batch, objects, added_all, strict=True):
                instance = prepared.instance
                # A conflict (nothing of this image written), or a copy of an image of
                # another site's study: refused.
                if isinstance(added, VaultError) or _bound_site(added) not in (None, self.site):
                    refusal = (UidConflict(str(added)) if isinstance(added, VaultError)
                               else _site_conflict())
                    drop += objs
                    entries.append(EntryDraft(
                        self.actor, Action.INGEST_REFUSED, Outcome.REFUSED,
                        object_ids=[] if isinstance(added, VaultError) else [instance.study_id],
                        details=_refusal_details(refusal)))
                    outcomes.append(_refusal(prepared.name, refusal))
                    continue
                if not added.created:  # a duplicate of a cataloged image, or of one in this batch
                    drop += objs
                    entries.append(EntryDraft(
                        self.actor, Action.INGEST, Outcome.OK,
                        object_ids=[added.instance.study_id, added.instance.instance_id],
                        details={"duplicate": True}))
                    outcomes.append(IngestOutcome(prepared.name, "duplicate",
                                                  added.instance.study_id,
                                                  added.instance.instance_id))
                    continue
                if prepared.removed:
                    identities.setdefault(instance.patient_pseudonym, []).append(prepared.removed)
                entries.append(EntryDraft(
                    self.actor, Action.INGEST, Outcome.OK,
                    object_ids=[instance.study_id, instance.instance_id,
                                *(o.object_id for o in objs)],
                    details=_ingest_details(prepared)))
                outcome = IngestOutcome(prepared.name, "stored", instance.study_id,
                                        instance.instance_id, instance.modality or "OT")
                outcomes.append(outcome)
                stored.append(outcome)
            chain.append_many(writer.connection, entries)
            for pseudonym, removed in identities.items():
                self._merge_identity(writer, pseudonym, removed)
        for outcome in stored:
            log.info("ingested instance %s", outcome.instance_id)
        return outcomes, drop

    def _check_sites(self, added_all: Sequence[AddInstanceResult | VaultError]) -> None:
        """Raise if a new image went into a study of another site (the batch rolls back).

        The catalog binds a new image to its study as that study's row holds it; on
        SQLite the write lock makes that row final. On PostgreSQL a concurrent batch
        may have created the study (for its own site) after this batch looked, so the
        committed rows are read again.

        Raises
        ------
        StudySiteConflict
            When a new image's study belongs to another site.
        """
        created = [a for a in added_all if isinstance(a, AddInstanceResult) and a.created]
        if any(_bound_site(a) not in (None, self.site) for a in created):
            raise _site_conflict()
        if self.vault.catalog.dialect_name == "postgresql":
            for study_id in {a.instance.study_id for a in created}:
                if study_site(self.vault, study_id) not in (None, self.site):
                    raise _site_conflict()

    def _catalog_one(self, prepared: _Prepared, objs: Sequence[NewObject]
                     ) -> tuple[IngestOutcome, list[NewObject]]:
        """Catalog one image on its own (race-safe), as the batch's fallback."""
        try:
            outcomes, drop = self._catalog_batch([prepared], [objs])
            return outcomes[0], drop
        except StudySiteConflict as exc:  # its study belongs to another site
            return self._refused(prepared.name, exc, [prepared.instance.study_id]), list(objs)
        except ConcurrentWriteConflict as exc:  # its study or series went to another
            return self._refused(prepared.name, exc), list(objs)
        except sa_exc.IntegrityError:
            pass
        found = self.vault.catalog.find_instance_by_source_sha256(
            prepared.instance.source_sha256)
        if found is None:
            try:
                found = self.vault.catalog.get_instance(prepared.instance.instance_id)
            except ObjectNotFound:
                exc = VaultError(f"instance {prepared.instance.instance_id}: an object id or "
                                 "blob key is already cataloged")
                return self._refused(prepared.name, exc), list(objs)
        return self._duplicate(prepared.name, found.study_id, found.instance_id), list(objs)

    def _merge_identity(self, writer: CatalogWriter, pseudonym: str,
                        removed: Sequence[dict[str, str]]) -> None:
        """Merge removed identifying values into the patient's sealed identity record.

        Once per patient per batch, inside the batch's transaction: the record
        is opened, extended with the values it lacks, and sealed again only if
        something was new.
        """
        keys = self.vault.keys
        context = pseudonym.encode()
        current = writer.identity_of(pseudonym)
        merged: dict[str, list[str]] = {}
        if current is not None and current[0]:
            plain = keys.open_identity(current[0], context=context)
            try:
                merged = json.loads(bytes(plain))
            finally:
                zeroize(plain)
        changed = False
        seen: dict[str, set[str]] = {}  # membership by set: a record holds thousands of UIDs
        for values in removed:
            for key, value in values.items():
                if not value:
                    continue
                known = merged.setdefault(key, [])
                if key not in seen:
                    seen[key] = set(known)
                if value not in seen[key]:
                    known.append(value)
                    seen[key].add(value)
                    changed = True
        if not changed:
            return
        plain = bytearray(json.dumps(merged, sort_keys=True).encode())
        try:
            sealed = keys.seal_identity(plain, context=context)
        finally:
            zeroize(plain)
        writer.set_identity(pseudonym, sealed, keys.identity_key_id)

    # ------------------------------------------------------------------ outcomes

    def _duplicate(self, name: str, study_id: str, instance_id: str) -> IngestOutcome:
        self.vault.audit.append(self.actor, Action.INGEST, Outcome.OK,
                                object_ids=[study_id, instance_id],
                                details={"duplicate": True})
        return IngestOutcome(name, "duplicate", study_id, instance_id)

    def _refused(self, name: str, exc: RadVaultError,
                 object_ids: Sequence[str] = ()) -> IngestOutcome:
        self.vault.audit.append(self.actor, Action.INGEST_REFUSED, Outcome.REFUSED,
                                object_ids=list(object_ids), details=_refusal_details(exc))
        return _refusal(name, exc)


def _refusal_details(exc: RadVaultError) -> dict[str, str]:
    """What the audit trail records of a refusal: the error's type, never its text."""
    details = {"error": type(exc).__name__}
    if isinstance(exc, BurnedInAnnotationRefused):
        details["policy"] = "burned_in_annotation"
    return details


def _site_conflict() -> StudySiteConflict:
    """The refusal of an image whose study belongs to another site (names no site or id)."""
    return StudySiteConflict("the image's study belongs to another site: it is not merged "
                             "into it")


def _bound_site(added: AddInstanceResult) -> str | None:
    """The site of the study an image is (or would be) cataloged in, as its rows say."""
    return added.objects[0].site if added.objects else None


def _refusal(name: str, exc: RadVaultError) -> IngestOutcome:
    reason = getattr(exc, "reason", None) or str(exc)
    return IngestOutcome(name, "refused", error=type(exc).__name__, reason=reason)


def _ingest_details(prepared: _Prepared) -> dict[str, object]:
    instance = prepared.instance
    return {"format": instance.source_format, "modality": instance.modality or "OT",
            "burned_in_risk": prepared.burned_in}


class _BatchStorer:
    """The storage thread of :meth:`Ingestor.ingest_many`: stores whatever is ready, in batches.

    ``submit`` hands over a prepared image and returns a future of its
    outcome; it blocks while too much is in flight (:data:`MAX_BATCH_IMAGES`
    waiting, or :data:`MAX_BATCH_BYTES` of plaintext). The thread takes every
    waiting image (up to those caps) as one batch, after waiting up to
    :data:`BATCH_LINGER_S` for :data:`MIN_BATCH_IMAGES` (not once the input has
    ended, a submitter is blocked, or storing has failed). After an unexpected error
    it stores nothing more: later images are wiped and their futures fail.
    """

    def __init__(self, store: Callable[[Sequence[_Prepared]], list[IngestOutcome]]) -> None:
        self._store = store
        self._cond = threading.Condition()
        self._waiting: deque[tuple[_Prepared, Future[IngestOutcome]]] = deque()
        self._bytes = 0
        self._closed = False
        self._blocked = 0  # submitters waiting for room
        self._failed: BaseException | None = None
        self._thread: threading.Thread | None = None

    def submit(self, prepared: _Prepared) -> Future[IngestOutcome]:
        future: Future[IngestOutcome] = Future()
        with self._cond:
            while self._waiting and (len(self._waiting) >= MAX_BATCH_IMAGES
                                     or self._bytes + prepared.size > MAX_BATCH_BYTES):
                self._blocked += 1  # the storage thread must not wait for more now
                self._cond.notify_all()
                try:
                    self._cond.wait()
                finally:
                    self._blocked -= 1
            if self._failed is not None:
                prepared.wipe()
                future.set_exception(self._failed)
                return future
            self._waiting.append((prepared, future))
            self._bytes += prepared.size
            self._cond.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="radvault-ingest",
                                                daemon=True)
                self._thread.start()
        return future

    def close(self) -> None:
        """Store everything handed over, then stop the thread (idempotent)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _take(self) -> list[tuple[_Prepared, Future[IngestOutcome]]] | None:
        with self._cond:
            while not self._waiting and not self._closed:
                self._cond.wait()
            if not self._waiting:
                return None
            deadline = time.monotonic() + BATCH_LINGER_S
            while (len(self._waiting) < MIN_BATCH_IMAGES and not self._closed
                   and self._failed is None and not self._blocked
                   and (left := deadline - time.monotonic()) > 0):
                self._cond.wait(left)
            batch = [self._waiting.popleft()]
            size = batch[0][0].size
            while (self._waiting and len(batch) < MAX_BATCH_IMAGES
                   and size + self._waiting[0][0].size <= MAX_BATCH_BYTES):
                batch.append(self._waiting.popleft())
                size += batch[-1][0].size
            self._bytes -= size
            self._cond.notify_all()
            return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            if self._failed is not None:
                for prepared, future in batch:
                    prepared.wipe()
                    future.set_exception(self._failed)
                continue
            try:
                outcomes = self._store([prepared for prepared, _ in batch])
            except BaseException as exc:  # handed to the caller through the futures
                self._failed = exc
                for prepared, future in batch:
                    prepared.wipe()
                    future.set_exception(exc)
                continue
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                future.set_result(outcome)


def _fill_gaps(record: ImageRecord, modality: str | None, body_part: str | None) -> ImageRecord:
    """Apply user hints to a DICOM record only where its header has no value (or ``OT``)."""
    from dataclasses import replace

    known_modality = record.modality if record.modality not in ("", "OT") else None
    hinted_modality = modality_term(modality) if modality else None  # kept in the clear
    return replace(record, modality=known_modality or hinted_modality or record.modality,
                   body_part=record.body_part or body_part_term(body_part) or "")

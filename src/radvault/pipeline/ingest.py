"""Ingest use case: read -> de-identify -> preprocess -> seal -> catalog -> audit.

Each image is handled on its own, all in memory: the de-identified DICOM (or,
for PNG/JPEG, the original file) and the preprocessed model input are sealed
into the blob store; the identifying values the de-identifier removed are
sealed under the separate identity key; the catalog row of each object is
signed; and the outcome, stored or refused, is audited with pseudonymous ids
only. Re-ingesting the same file is recognised by its sha-256 and stores
nothing. ``Ingestor.ingest_paths`` overlaps storing one image (mostly waiting
on fsync) with preparing the next.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from radvault.errors import (
    BurnedInAnnotationRefused,
    ImageInputError,
    ImageTooLarge,
    ObjectNotFound,
    RadVaultError,
)
from radvault.imaging.deid import Deidentifier, DeidOptions, pseudonym_for
from radvault.imaging.preprocess import Preprocessor, settings_to_dict
from radvault.imaging.reading import (
    read_dicom_dataset,
    read_image_bytes,
    record_from_dataset,
    sniff_format,
)
from radvault.imaging.records import ImageRecord, SourceFormat
from radvault.vault.audit import Action, Outcome
from radvault.vault.catalog import NewInstance, NewObject
from radvault.vault.secure_memory import zeroize
from radvault.vault.vault import Vault

__all__ = ["MODEL_INPUT_KIND", "IngestOutcome", "Ingestor", "encode_model_input"]

log = logging.getLogger(__name__)

#: Object kinds stored per instance.
SOURCE_KIND = "source"
DICOM_KIND = "dicom"
MODEL_INPUT_KIND = "model_input"


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


def encode_model_input(array: np.ndarray, settings: dict[str, object]) -> bytearray:
    """Serialise a preprocessed array and its preprocessing settings (npz, in memory)."""
    buffer = io.BytesIO()
    np.savez(buffer, input=array.astype(np.float32, copy=False),
             settings=np.frombuffer(json.dumps(settings, sort_keys=True).encode(), np.uint8))
    out = bytearray(buffer.getbuffer())
    buffer.seek(0)
    buffer.write(b"\0" * len(out))  # overwrite the BytesIO copy before it is freed
    return out


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
        The site new studies belong to.
    options : DeidOptions, optional
        De-identification options; default from the vault's settings.
    """

    def __init__(self, vault: Vault, *, actor: str = "system", site: str = "default",
                 options: DeidOptions | None = None) -> None:
        self.vault = vault
        self.actor = actor
        self.site = site
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

        Two stages overlap: while one background thread stores image *n* (seal,
        crash-safe blob writes, catalog, audit: mostly waiting on fsync), this
        thread reads, de-identifies and preprocesses image *n + 1*. Each image
        is still stored on its own, in the same steps as :meth:`ingest_file`,
        so a crash leaves exactly what it would leave there. Outcomes (and
        ``on_file`` calls, made from this thread) keep the input order.
        """
        outcomes: list[IngestOutcome] = []

        def finish(outcome: IngestOutcome) -> None:
            outcomes.append(outcome)
            if on_file:
                on_file(outcome)

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="radvault-ingest") as store:
            pending: Future[IngestOutcome] | None = None
            try:
                for path in paths:
                    step = self._read_and_prepare(path, modality, body_part)
                    if pending is not None:
                        finish(pending.result())
                        pending = None
                    if isinstance(step, IngestOutcome):
                        finish(step)
                    else:
                        pending = store.submit(self._store_or_refuse, step)
                if pending is not None:
                    finish(pending.result())
                    pending = None
            finally:
                if pending is not None:  # an error above: let the store in flight end
                    wait([pending])
        return outcomes

    def ingest_file(self, path: Path, *, modality: str | None = None,
                    body_part: str | None = None) -> IngestOutcome:
        """Read one file (size-capped before reading) and ingest it."""
        step = self._read_and_prepare(path, modality, body_part)
        return step if isinstance(step, IngestOutcome) else self._store_or_refuse(step)

    def ingest_bytes(self, data: bytes, name: str, *, modality: str | None = None,
                     body_part: str | None = None, patient_key: str | None = None
                     ) -> IngestOutcome:
        """Ingest one image given as bytes (``name`` is only for messages)."""
        step = self._check_and_prepare(data, name, modality, body_part, patient_key)
        return step if isinstance(step, IngestOutcome) else self._store_or_refuse(step)

    # ------------------------------------------------------------------ stage 1: imaging

    def _read_and_prepare(self, path: Path, modality: str | None, body_part: str | None
                          ) -> IngestOutcome | _Prepared:
        name = str(path)
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
        source_sha256 = hashlib.sha256(data).hexdigest()
        existing = self.vault.catalog.find_instance_by_source_sha256(source_sha256)
        if existing is not None:
            return self._duplicate(name, existing.study_id, existing.instance_id)
        try:
            return self._prepare(data, name, source_sha256, modality, body_part, patient_key)
        except RadVaultError as exc:
            return self._refused(name, exc)

    def _prepare(self, data: bytes, name: str, source_sha256: str, modality: str | None,
                 body_part: str | None, patient_key: str | None) -> _Prepared:
        """Read, de-identify and preprocess: everything but storage (no side effects)."""
        limits = self.vault.settings.limits
        fmt = sniff_format(data[:132])
        removed: dict[str, str] = {}
        burned_in = False
        if fmt is SourceFormat.DICOM:
            # Pixels are decoded once, from the de-identified dataset (de-identification
            # never touches them): an undecodable file is refused there all the same.
            result = self._deid(read_dicom_dataset(data, limits=limits, name=name))
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
            stored_bytes = bytearray(data)
            kind = SOURCE_KIND
            key = patient_key or f"unlinked:{source_sha256}"
            pseudonym = pseudonym_for(self._secret, key)
            study_id = _uid(self._secret, "study", source_sha256)
            series_id = _uid(self._secret, "series", source_sha256)
            instance_id = _uid(self._secret, "instance", source_sha256)
        try:
            pixels_digest = record.pixel_sha256()
            model_input = self._preprocess(record)
            encoded = encode_model_input(model_input, self._preprocess_dict)
            model_input.fill(0)
        except BaseException:
            zeroize(stored_bytes)
            raise
        instance = NewInstance(
            instance_id=instance_id, series_id=series_id, study_id=study_id,
            patient_pseudonym=pseudonym, source_sha256=source_sha256,
            source_format=record.source_format.value, rows=record.rows, cols=record.columns,
            frames=record.frames, pixel_sha256=pixels_digest,
            modality=record.modality or None, body_part=record.body_part or None,
            site=self.site,
        )
        return _Prepared(name, instance, kind, stored_bytes, encoded, removed, burned_in)

    # ------------------------------------------------------------------ stage 2: storage

    def _store_or_refuse(self, prepared: _Prepared) -> IngestOutcome:
        try:
            return self._store(prepared)
        except RadVaultError as exc:
            return self._refused(prepared.name, exc)
        finally:
            prepared.wipe()

    def _store(self, prepared: _Prepared) -> IngestOutcome:
        """Seal both objects, then identity, catalog and audit: the order crash safety needs."""
        instance = prepared.instance
        objects: list[NewObject] = [
            self.vault.seal_object(prepared.stored_bytes, kind=prepared.kind),
            self.vault.seal_object(prepared.encoded, kind=MODEL_INPUT_KIND),
        ]
        prepared.wipe()
        if prepared.removed:
            # Before the instance is cataloged: a crash in between must not leave a stored
            # image whose identity record is lost (a re-run sees a duplicate and stops).
            self._store_identity(instance.patient_pseudonym, prepared.removed)
        added = self.vault.catalog.add_instance_with_objects(
            instance, objects, signer=self.vault.signer
        )
        if not added.created:
            for obj in objects:  # lost a race with an identical ingest: drop our blobs
                self.vault.blobs.delete(obj.blob_key)
            return self._duplicate(prepared.name, added.instance.study_id,
                                   added.instance.instance_id)
        self.vault.audit.append(
            self.actor, Action.INGEST, Outcome.OK,
            object_ids=[instance.study_id, instance.instance_id,
                        *(o.object_id for o in objects)],
            details={"format": instance.source_format, "modality": instance.modality or "OT",
                     "burned_in_risk": prepared.burned_in},
        )
        log.info("ingested instance %s", instance.instance_id)
        return IngestOutcome(prepared.name, "stored", instance.study_id, instance.instance_id,
                             instance.modality or "OT")

    def _store_identity(self, pseudonym: str, removed: dict[str, str]) -> None:
        """Merge the removed identifying values into the patient's sealed identity record."""
        keys = self.vault.keys
        context = pseudonym.encode()
        try:
            patient = self.vault.catalog.get_patient(pseudonym)
        except ObjectNotFound:  # a new patient: create the row the record belongs to
            patient = self.vault.catalog.add_patient(pseudonym)
        merged: dict[str, list[str]] = {}
        if patient.identity_blob:
            plain = keys.open_identity(patient.identity_blob, context=context)
            try:
                merged = json.loads(bytes(plain))
            finally:
                zeroize(plain)
        changed = False
        for key, value in removed.items():
            values = merged.setdefault(key, [])
            if value and value not in values:
                values.append(value)
                changed = True
        if not changed:
            return
        plain = bytearray(json.dumps(merged, sort_keys=True).encode())
        try:
            sealed = keys.seal_identity(plain, context=context)
        finally:
            zeroize(plain)
        self.vault.catalog.set_identity(pseudonym, sealed, keys.identity_key_id)

    # ------------------------------------------------------------------ outcomes

    def _duplicate(self, name: str, study_id: str, instance_id: str) -> IngestOutcome:
        self.vault.audit.append(self.actor, Action.INGEST, Outcome.OK,
                                object_ids=[study_id, instance_id],
                                details={"duplicate": True})
        return IngestOutcome(name, "duplicate", study_id, instance_id)

    def _refused(self, name: str, exc: RadVaultError) -> IngestOutcome:
        reason = getattr(exc, "reason", None) or str(exc)
        details = {"error": type(exc).__name__}
        if isinstance(exc, BurnedInAnnotationRefused):
            details["policy"] = "burned_in_annotation"
        self.vault.audit.append(self.actor, Action.INGEST_REFUSED, Outcome.REFUSED,
                                details=details)
        return IngestOutcome(name, "refused", error=type(exc).__name__, reason=reason)


def _fill_gaps(record: ImageRecord, modality: str | None, body_part: str | None) -> ImageRecord:
    """Apply user hints to a DICOM record only where its header has no value (or ``OT``)."""
    from dataclasses import replace

    known_modality = record.modality if record.modality not in ("", "OT") else None
    return replace(record, modality=known_modality or modality or record.modality,
                   body_part=record.body_part or body_part or "")

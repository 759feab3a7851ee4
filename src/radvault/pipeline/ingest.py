"""Ingest use case: read -> de-identify -> preprocess -> seal -> catalog -> audit.

One image at a time, all in memory: the de-identified DICOM (or, for PNG/JPEG,
the original file) and the preprocessed model input are sealed into the blob
store; the catalog row of each object is signed; the identifying values the
de-identifier removed are sealed under the separate identity key; and the
outcome, stored or refused, is audited with pseudonymous ids only.
Re-ingesting the same file is recognised by its sha-256 and stores nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from radvault.errors import (
    BurnedInAnnotationRefused,
    ImageInputError,
    ImageTooLarge,
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
        """Ingest files one by one; a bad file is refused and reported, the rest go in."""
        outcomes = []
        for path in paths:
            outcome = self.ingest_file(path, modality=modality, body_part=body_part)
            outcomes.append(outcome)
            if on_file:
                on_file(outcome)
        return outcomes

    def ingest_file(self, path: Path, *, modality: str | None = None,
                    body_part: str | None = None) -> IngestOutcome:
        """Read one file (size-capped before reading) and ingest it."""
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
        return self.ingest_bytes(data, name, modality=modality, body_part=body_part)

    def ingest_bytes(self, data: bytes, name: str, *, modality: str | None = None,
                     body_part: str | None = None, patient_key: str | None = None
                     ) -> IngestOutcome:
        """Ingest one image given as bytes (``name`` is only for messages)."""
        source_sha256 = hashlib.sha256(data).hexdigest()
        existing = self.vault.catalog.find_instance_by_source_sha256(source_sha256)
        if existing is not None:
            return self._duplicate(name, existing.study_id, existing.instance_id)
        try:
            return self._ingest_new(data, name, source_sha256, modality, body_part, patient_key)
        except RadVaultError as exc:
            return self._refused(name, exc)

    # ------------------------------------------------------------------ the flow

    def _ingest_new(self, data: bytes, name: str, source_sha256: str, modality: str | None,
                    body_part: str | None, patient_key: str | None) -> IngestOutcome:
        limits = self.vault.settings.limits
        fmt = sniff_format(data[:132])
        removed: dict[str, str] = {}
        burned_in = False
        if fmt is SourceFormat.DICOM:
            original = read_dicom_dataset(data, limits=limits, name=name)
            record_from_dataset(original, name, limits=limits)  # refuse undecodable input early
            result = self._deid(original)
            ds = result.dataset
            burned_in = result.burned_in_risk
            removed = dict(result.removed)
            record = record_from_dataset(ds, name, limits=limits)
            if modality or body_part:
                record = _with_hints(record, modality, body_part)
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
        pixels_digest = record.pixel_sha256()
        model_input = self._preprocess(record)
        encoded = encode_model_input(model_input, self._preprocess_dict)
        model_input.fill(0)
        objects: list[NewObject] = []
        try:
            objects.append(self.vault.seal_object(stored_bytes, kind=kind))
            objects.append(self.vault.seal_object(encoded, kind=MODEL_INPUT_KIND))
        finally:
            zeroize(stored_bytes)
            zeroize(encoded)
        instance = NewInstance(
            instance_id=instance_id, series_id=series_id, study_id=study_id,
            patient_pseudonym=pseudonym, source_sha256=source_sha256,
            source_format=record.source_format.value, rows=record.rows, cols=record.columns,
            frames=record.frames, pixel_sha256=pixels_digest,
            modality=record.modality or None, body_part=record.body_part or None,
            site=self.site,
        )
        added = self.vault.catalog.add_instance_with_objects(
            instance, objects, signer=self.vault.signer
        )
        if not added.created:
            for obj in objects:  # lost a race with an identical ingest: drop our blobs
                self.vault.blobs.delete(obj.blob_key)
            return self._duplicate(name, added.instance.study_id, added.instance.instance_id)
        if removed:
            self._store_identity(pseudonym, removed)
        self.vault.audit.append(
            self.actor, Action.INGEST, Outcome.OK,
            object_ids=[study_id, instance_id, *(o.object_id for o in objects)],
            details={"format": record.source_format.value, "modality": record.modality,
                     "burned_in_risk": burned_in},
        )
        log.info("ingested instance %s", instance_id)
        return IngestOutcome(name, "stored", study_id, instance_id, record.modality)

    def _store_identity(self, pseudonym: str, removed: dict[str, str]) -> None:
        """Merge the removed identifying values into the patient's sealed identity record."""
        keys = self.vault.keys
        context = pseudonym.encode()
        patient = self.vault.catalog.get_patient(pseudonym)
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


def _with_hints(record: ImageRecord, modality: str | None, body_part: str | None) -> ImageRecord:
    from dataclasses import replace

    return replace(record, modality=modality or record.modality,
                   body_part=body_part or record.body_part)

"""Retrieve and export use cases: back-verified reads, decrypted only in memory.

Every read checks the object's signed catalog row, the blob digest and the AEAD
tags (:meth:`Vault.open_object`), then decodes the image and recomputes the
de-identified pixels' sha-256 against the digest recorded at ingest.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from radvault.errors import IntegrityError, ObjectNotFound, RadVaultError
from radvault.imaging.reading import read_image_bytes
from radvault.imaging.records import ImageRecord
from radvault.pipeline.ingest import DICOM_KIND, MODEL_INPUT_KIND, SOURCE_KIND
from radvault.pipeline.model_input import decode_model_input
from radvault.vault import atomic_write
from radvault.vault.audit import Action, Outcome
from radvault.vault.catalog import InstanceRecord, ObjectRecord
from radvault.vault.secure_memory import zeroize
from radvault.vault.vault import Vault

__all__ = ["ExportedFile", "ModelInput", "decode_model_input", "export_study", "open_image",
           "open_model_input", "open_model_input_object"]


@dataclass(frozen=True)
class ModelInput:
    """A preprocessed model input with the preprocessing settings it was made with."""

    array: np.ndarray
    settings: dict[str, object]


@dataclass(frozen=True)
class ExportedFile:
    """One exported file."""

    instance_id: str
    path: Path


def _object(vault: Vault, instance_id: str, kinds: tuple[str, ...], *, actor: str
            ) -> ObjectRecord:
    """The instance's object of one of ``kinds``.

    Every cataloged instance gets its stored file and its model input in one
    transaction, so an instance without one of them lost a catalog row: that
    is tampering, and it is audited and refused like any other.

    Raises
    ------
    ObjectNotFound
        No such instance.
    IntegrityError
        The instance exists but its object row is gone.
    """
    for obj in vault.catalog.objects_of_instance(instance_id):
        if obj.kind in kinds:
            return obj
    vault.catalog.get_instance(instance_id)  # ObjectNotFound for an unknown instance
    wanted = "/".join(kinds)
    vault.audit.append(actor, Action.INTEGRITY_FAILURE, Outcome.REFUSED, object_ids=[instance_id],
                       details={"error": "object row missing", "kind": wanted})
    raise IntegrityError(f"instance {instance_id}: its {wanted} object is missing from the catalog")


def _decode_verified(vault: Vault, instance: InstanceRecord, *, actor: str) -> ImageRecord:
    obj = _object(vault, instance.instance_id, (DICOM_KIND, SOURCE_KIND), actor=actor)
    plain = vault.open_object(obj, actor=actor)
    try:
        record = read_image_bytes(bytes(plain), f"object {obj.object_id}",
                                  limits=vault.settings.limits)
    finally:
        zeroize(plain)
    # The keyed digest, or the plain sha-256 of a row written before digests were keyed.
    if not vault.pixel_digest_matches(instance.pixel_sha256, record.pixel_message()):
        vault.audit.append(actor, Action.INTEGRITY_FAILURE, Outcome.REFUSED,
                           object_ids=[instance.instance_id, obj.object_id],
                           details={"error": "pixel digest mismatch"})
        raise IntegrityError(
            f"instance {instance.instance_id}: pixels do not match the digest recorded at ingest"
        )
    return record


def open_image(vault: Vault, instance_id: str, *, actor: str) -> ImageRecord:
    """Back-verify and decode one stored image (in memory), and audit the read."""
    instance = vault.catalog.get_instance(instance_id)
    record = _decode_verified(vault, instance, actor=actor)
    vault.audit.append(actor, Action.READ, Outcome.OK, object_ids=[instance_id])
    return record


def open_model_input(vault: Vault, instance_id: str, *, actor: str) -> ModelInput:
    """Back-verify and load the sealed preprocessed model input of an instance."""
    return open_model_input_object(
        vault, _object(vault, instance_id, (MODEL_INPUT_KIND,), actor=actor), actor=actor)


def open_model_input_object(vault: Vault, obj: ObjectRecord, *, actor: str) -> ModelInput:
    """Back-verify and load a model-input object whose catalog row the caller has."""
    if obj.kind != MODEL_INPUT_KIND:
        raise ValueError(f"object {obj.object_id} is a {obj.kind}, not a model input")
    plain = vault.open_object(obj, actor=actor)
    try:
        array, settings = decode_model_input(plain)
    except (ValueError, KeyError, OSError, zipfile.BadZipFile) as exc:
        raise IntegrityError(f"object {obj.object_id}: model input is unreadable") from exc
    finally:
        zeroize(plain)
    return ModelInput(array, settings)


def export_study(vault: Vault, study_id: str, out_dir: Path, *, actor: str) -> list[ExportedFile]:
    """Decrypt a study's stored files into ``out_dir`` on explicit request (audited).

    Each instance is back-verified first; files are named by their pseudonymous
    instance id. Nothing is written for an instance that fails verification.
    Exported files, and the temporary files they are written through, are
    readable by their owner alone (mode 0600, whatever the umask); a folder
    created for them is 0700.
    """
    study = vault.catalog.get_study(study_id)
    if study.shredded_at is not None:
        raise ObjectNotFound(f"study {study_id} was crypto-shredded")
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    exported: list[ExportedFile] = []
    for instance in vault.catalog.instances_of_study(study_id):
        obj = _object(vault, instance.instance_id, (DICOM_KIND, SOURCE_KIND), actor=actor)
        _decode_verified(vault, instance, actor=actor)
        plain = vault.open_object(obj, actor=actor)
        try:
            suffix = ".dcm" if obj.kind == DICOM_KIND else _raster_suffix(plain)
            target = out_dir / f"{instance.instance_id}{suffix}"
            atomic_write(target, plain, mode=0o600)  # a 0600 temporary file, then renamed
        finally:
            zeroize(plain)
        exported.append(ExportedFile(instance.instance_id, target))
    vault.audit.append(actor, Action.EXPORT, Outcome.OK,
                       object_ids=[study_id, *(e.instance_id for e in exported)],
                       details={"files": len(exported)})
    return exported


def _raster_suffix(data: bytearray) -> str:
    return ".png" if bytes(data[:8]) == b"\x89PNG\r\n\x1a\n" else ".jpg"


def safe_error(exc: RadVaultError) -> str:
    """A one-line description of an error for reports (no PHI: ids and reasons only)."""
    return f"{type(exc).__name__}: {exc}"

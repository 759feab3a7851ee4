"""The catalog's records: what callers hand in and get back, and what gets signed.

Private: import these names from :mod:`radvault.vault.catalog`. Records are
frozen dataclasses that check themselves when built, so a malformed id or
digest never reaches the database; the ``New*`` records go in, the others
come out, and none of them is tied to a database session.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Protocol, runtime_checkable

from radvault.errors import IntegrityError
from radvault.vault.signing import canonical_json  # the one canonical encoding

__all__ = [
    "OBJECT_RECORD_TYPE",
    "OBJECT_RECORD_TYPE_V1",
    "RESULT_RECORD_TYPE",
    "STUDY_ACTIVE",
    "STUDY_SHREDDED",
    "AddInstanceResult",
    "InstanceRecord",
    "NewInstance",
    "NewObject",
    "ObjectRecord",
    "PatientRecord",
    "ResultRecord",
    "Signer",
    "StudyBinding",
    "StudyRecord",
    "Verifier",
    "canonical_json",
    "object_record_message",
    "record_message",
    "record_message_v2",
    "result_record_message",
    "verify_object_record",
    "verify_result_record",
]

OBJECT_RECORD_TYPE: Final = "radvault.object-record/2"
"""Domain-separation tag of the object records signed now (never reused elsewhere).

Version 2 also binds where the object belongs: its instance's study, series
and geometry, and its study's patient, site, modality and body part.
"""
RESULT_RECORD_TYPE: Final = "radvault.result-record/1"
"""Domain-separation tag of signed analysis results (session 10)."""
OBJECT_RECORD_TYPE_V1: Final = "radvault.object-record/1"
"""The tag of the first record format (object fields only); still verified, never signed."""

STUDY_ACTIVE: Final = "active"
STUDY_SHREDDED: Final = "shredded"

ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+=-]{0,127}")  # as radvault.vault.keys
BLOB_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,254}")
KIND = re.compile(r"[a-z][a-z0-9_]{0,31}")
SHA256 = re.compile(r"[0-9a-f]{64}")


# --------------------------------------------------------------------------- signing duck types


@runtime_checkable
class Signer(Protocol):
    """Anything that signs bytes (an Ed25519 vault key, a KMS adapter...)."""

    key_id: str

    def sign(self, message: bytes) -> bytes:
        """Return the signature of ``message``."""
        ...


@runtime_checkable
class Verifier(Protocol):
    """Anything that checks a signature and raises ``IntegrityError`` on mismatch."""

    def verify(self, message: bytes, signature: bytes) -> None:
        """Return quietly if ``signature`` signs ``message``; raise ``IntegrityError`` if not."""
        ...


# --------------------------------------------------------------------------- validation helpers


def check(pattern: re.Pattern[str], name: str, value: object) -> str:
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise ValueError(f"{name} must match {pattern.pattern!r}")
    return value


def check_size(name: str, value: object, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}")
    return value


def check_optional_text(name: str, value: str | None, max_len: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_len or not value.isprintable():
        raise ValueError(f"{name} must be printable text of at most {max_len} characters")
    return value


# --------------------------------------------------------------------------- records (DTOs)


@dataclass(frozen=True)
class PatientRecord:
    """A pseudonymous patient and, if set, the sealed identity record."""

    pseudonym: str
    created_at: datetime
    identity_blob: bytes | None
    identity_kek_id: str | None


@dataclass(frozen=True)
class StudyRecord:
    """A study, with the number of instances it holds."""

    study_id: str
    patient_pseudonym: str
    site: str
    modality: str | None
    body_part: str | None
    created_at: datetime
    status: str
    shredded_at: datetime | None
    n_instances: int


@dataclass(frozen=True)
class InstanceRecord:
    """One stored image.

    ``source_sha256`` and ``pixel_sha256`` are the vault's keyed digests
    (HMAC-SHA256, 64 hex digits) of the file as received and of the decoded
    pixels (``Vault.source_digest``, ``Vault.pixel_digest``); rows written
    before digests were keyed hold the plain sha-256 of the same content.
    """

    instance_id: str
    series_id: str
    study_id: str
    source_sha256: str
    source_format: str
    rows: int
    cols: int
    frames: int
    pixel_sha256: str
    created_at: datetime


@dataclass(frozen=True)
class ObjectRecord:
    """One sealed blob, with what its signed record binds it to.

    ``pixel_sha256``, ``study_id``, ``series_id``, ``rows``, ``cols`` and
    ``frames`` are read from its instance's row, and ``patient_pseudonym``,
    ``site``, ``modality`` and ``body_part`` from its study's row, as they are
    *now*: a signature made at ingest verifies only while they still hold the
    values it was made over (``None`` where the row is missing).
    ``wrapped_key`` is ``None`` once the object was crypto-shredded.
    """

    object_id: str
    instance_id: str
    kind: str
    blob_key: str
    plain_size: int
    sealed_size: int
    sealed_sha256: str
    kek_id: str
    wrapped_key: bytes | None
    record_signature: bytes
    signer_key_id: str
    created_at: datetime
    pixel_sha256: str
    study_id: str | None = None
    series_id: str | None = None
    patient_pseudonym: str | None = None
    site: str | None = None
    modality: str | None = None
    body_part: str | None = None
    rows: int | None = None
    cols: int | None = None
    frames: int | None = None

    @property
    def shredded(self) -> bool:
        """Whether the data key was destroyed."""
        return self.wrapped_key is None


@dataclass(frozen=True)
class ResultRecord:
    """An analysis result; ``signature`` is the vault's over :func:`result_record_message`."""

    result_id: str
    instance_id: str
    model_id: str
    payload: Any
    created_at: datetime
    signature: bytes = b""
    signer_key_id: str = ""


@dataclass(frozen=True)
class NewInstance:
    """What the ingest flow knows about one image before it is cataloged.

    The study, series and patient are created on first sight and reused after.
    ``source_sha256`` and ``pixel_sha256`` are keyed digests of the file and of
    its decoded pixels (``Vault.source_digest``, ``Vault.pixel_digest``), never
    the plain sha-256 that anyone holding the file could compute.

    Raises
    ------
    ValueError
        When an id, digest or size is malformed (checked when built).
    """

    instance_id: str
    series_id: str
    study_id: str
    patient_pseudonym: str
    source_sha256: str
    source_format: str
    rows: int
    cols: int
    pixel_sha256: str
    frames: int = 1
    modality: str | None = None
    body_part: str | None = None
    site: str = "default"

    def __post_init__(self) -> None:
        for name in ("instance_id", "series_id", "study_id", "patient_pseudonym", "site"):
            check(ID, name, getattr(self, name))
        check(SHA256, "source_sha256", self.source_sha256)
        check(SHA256, "pixel_sha256", self.pixel_sha256)
        check(KIND, "source_format", self.source_format)
        check_size("rows", self.rows, minimum=1)
        check_size("cols", self.cols, minimum=1)
        check_size("frames", self.frames, minimum=1)
        check_optional_text("modality", self.modality, 16)
        check_optional_text("body_part", self.body_part, 64)


@dataclass(frozen=True)
class NewObject:
    """One sealed blob to catalog with its instance.

    ``record_signature`` and ``signer_key_id`` may be left empty when a signer
    is given to :meth:`Catalog.add_instance_with_objects`, which then signs
    :func:`record_message` itself.

    Raises
    ------
    ValueError
        When an id, digest or size is malformed (checked when built).
    """

    object_id: str
    kind: str
    blob_key: str
    plain_size: int
    sealed_size: int
    sealed_sha256: str
    kek_id: str
    wrapped_key: bytes
    record_signature: bytes = b""
    signer_key_id: str = ""

    def __post_init__(self) -> None:
        check(ID, "object_id", self.object_id)
        if len(self.object_id) > 64:
            raise ValueError("object_id must be at most 64 characters")
        check(KIND, "kind", self.kind)
        check(BLOB_KEY, "blob_key", self.blob_key)
        check_size("plain_size", self.plain_size)
        check_size("sealed_size", self.sealed_size)
        check(SHA256, "sealed_sha256", self.sealed_sha256)
        check(KEY_ID, "kek_id", self.kek_id)
        if not isinstance(self.wrapped_key, bytes) or not self.wrapped_key:
            raise ValueError("wrapped_key must be non-empty bytes")
        if not isinstance(self.record_signature, bytes):
            raise ValueError("record_signature must be bytes")
        if self.signer_key_id:
            check(KEY_ID, "signer_key_id", self.signer_key_id)

    def message(self, instance: NewInstance, study: StudyBinding | None = None) -> bytes:
        """Return the canonical record this object's signature covers (current format).

        ``study`` is what the study's row holds (its first instance decided
        it); without it the instance's own values stand in, as for a new study.
        """
        study = study or StudyBinding(instance.patient_pseudonym, instance.site,
                                      instance.modality, instance.body_part)
        return record_message_v2(
            object_id=self.object_id,
            instance_id=instance.instance_id,
            kind=self.kind,
            blob_key=self.blob_key,
            plain_size=self.plain_size,
            sealed_size=self.sealed_size,
            sealed_sha256=self.sealed_sha256,
            pixel_sha256=instance.pixel_sha256,
            study_id=instance.study_id,
            series_id=instance.series_id,
            patient_pseudonym=study.patient_pseudonym,
            site=study.site,
            modality=study.modality,
            body_part=study.body_part,
            rows=instance.rows,
            cols=instance.cols,
            frames=instance.frames,
        )


@dataclass(frozen=True)
class StudyBinding:
    """The study-level values an object record binds: as the study's row holds them."""

    patient_pseudonym: str
    site: str
    modality: str | None
    body_part: str | None


@dataclass(frozen=True)
class AddInstanceResult:
    """The outcome of :meth:`Catalog.add_instance_with_objects`.

    ``created`` is ``False`` when the image was already there; ``duplicate_of``
    then says how it was recognised (``"source_sha256"``: the same input file;
    ``"instance_id"``: the same de-identified SOP instance from another file),
    and ``instance``/``objects`` describe what the catalog already holds, so
    the caller can drop the blobs it wrote for nothing.
    """

    instance: InstanceRecord
    objects: tuple[ObjectRecord, ...]
    created: bool
    duplicate_of: str | None = None


# --------------------------------------------------------------------------- signed records


def record_message(
    *,
    object_id: str,
    instance_id: str,
    kind: str,
    blob_key: str,
    plain_size: int,
    sealed_size: int,
    sealed_sha256: str,
    pixel_sha256: str,
) -> bytes:
    """Return the canonical JSON of a version-1 object record (verified, no longer signed).

    Key ids and the wrapped key are left out on purpose: rotation rewraps and
    shredding erases them without invalidating the signature. A ``type`` tag
    separates these messages from every other thing the vault key signs.
    Records signed now use :func:`record_message_v2`, which also binds the
    study, series, patient, site and geometry.
    """
    return canonical_json(
        {
            "type": OBJECT_RECORD_TYPE_V1,
            "object_id": object_id,
            "instance_id": instance_id,
            "kind": kind,
            "blob_key": blob_key,
            "plain_size": plain_size,
            "sealed_size": sealed_size,
            "sealed_sha256": sealed_sha256,
            "pixel_sha256": pixel_sha256,
        }
    )


def record_message_v2(
    *,
    object_id: str,
    instance_id: str,
    kind: str,
    blob_key: str,
    plain_size: int,
    sealed_size: int,
    sealed_sha256: str,
    pixel_sha256: str,
    study_id: str | None,
    series_id: str | None,
    patient_pseudonym: str | None,
    site: str | None,
    modality: str | None,
    body_part: str | None,
    rows: int | None,
    cols: int | None,
    frames: int | None,
) -> bytes:
    """Return the canonical JSON of a version-2 object record (what is signed now).

    Everything :func:`record_message` covers, plus where the object belongs:
    its instance's study, series and geometry (rows, columns, frames) and its
    study's patient pseudonym, site, modality and body part. A study moved to
    another site or patient, an instance moved to another study or series, or
    edited dimensions all break the signature. Key ids and the wrapped key are
    still left out (rotation and shredding change them).
    """
    return canonical_json(
        {
            "type": OBJECT_RECORD_TYPE,
            "object_id": object_id,
            "instance_id": instance_id,
            "kind": kind,
            "blob_key": blob_key,
            "plain_size": plain_size,
            "sealed_size": sealed_size,
            "sealed_sha256": sealed_sha256,
            "pixel_sha256": pixel_sha256,
            "study_id": study_id,
            "series_id": series_id,
            "patient_pseudonym": patient_pseudonym,
            "site": site,
            "modality": modality,
            "body_part": body_part,
            "rows": rows,
            "cols": cols,
            "frames": frames,
        }
    )


def object_record_message(obj: ObjectRecord) -> bytes:
    """Return the canonical record (current format) that ``obj.record_signature`` must sign."""
    return record_message_v2(
        object_id=obj.object_id,
        instance_id=obj.instance_id,
        kind=obj.kind,
        blob_key=obj.blob_key,
        plain_size=obj.plain_size,
        sealed_size=obj.sealed_size,
        sealed_sha256=obj.sealed_sha256,
        pixel_sha256=obj.pixel_sha256,
        study_id=obj.study_id,
        series_id=obj.series_id,
        patient_pseudonym=obj.patient_pseudonym,
        site=obj.site,
        modality=obj.modality,
        body_part=obj.body_part,
        rows=obj.rows,
        cols=obj.cols,
        frames=obj.frames,
    )


def result_record_message(result: ResultRecord) -> bytes:
    """The canonical bytes a result row's signature covers.

    The result, instance and model ids and the whole payload (class, probabilities,
    flag and reasons): an edited diagnosis, or a result moved to another image, no
    longer verifies. The creation time is left out (databases round it differently);
    it only orders an instance's genuine results.
    """
    return canonical_json({"type": RESULT_RECORD_TYPE, "result_id": result.result_id,
                           "instance_id": result.instance_id, "model_id": result.model_id,
                           "payload": result.payload})


def verify_result_record(result: ResultRecord, verifier: Verifier) -> None:
    """Check a result row's signature.

    Raises
    ------
    IntegrityError
        When the row was altered or carries no signature of the vault's; the
        message names the result id only.
    """
    if not result.signature:
        raise IntegrityError(f"result {result.result_id}: the row carries no signature")
    try:
        verifier.verify(result_record_message(result), result.signature)
    except IntegrityError:
        raise IntegrityError(f"result {result.result_id}: catalog row signature does not "
                             "verify (the result was altered)") from None


def _object_record_message_v1(obj: ObjectRecord) -> bytes:
    return record_message(
        object_id=obj.object_id,
        instance_id=obj.instance_id,
        kind=obj.kind,
        blob_key=obj.blob_key,
        plain_size=obj.plain_size,
        sealed_size=obj.sealed_size,
        sealed_sha256=obj.sealed_sha256,
        pixel_sha256=obj.pixel_sha256,
    )


def verify_object_record(obj: ObjectRecord, verifier: Verifier) -> int:
    """Check the signature of an object's catalog record; return its format version.

    A record signed today (version 2) verifies only against the current rows
    of its instance and study; one signed by an earlier RadVault (version 1)
    binds the object fields and pixel digest only, and still verifies. The
    versions cannot be confused: each message carries its own ``type`` tag, so
    a version-2 signature never verifies as version 1.

    Returns
    -------
    int
        2 or 1: the record format the signature covers.

    Raises
    ------
    IntegrityError
        When the record, its instance's or its study's row was altered, or the
        signature is not the vault's; the message names the object id.
    """
    for version, message in ((2, object_record_message), (1, _object_record_message_v1)):
        try:
            verifier.verify(message(obj), obj.record_signature)
        except IntegrityError:
            continue
        return version
    raise IntegrityError(
        f"object {obj.object_id}: catalog record signature does not verify "
        "(the object, instance or study row was altered)"
    )

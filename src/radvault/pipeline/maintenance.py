"""Vault maintenance use cases: verify everything, rotate keys, crypto-shred a study.

``verify_vault`` only reads: it checks every catalog object row (signature),
its blob (present, size, sha-256, header naming the same object), that its
data key still unwraps, that every object the audit trail records as ingested
still has its catalog row (rows are never deleted, only their keys shredded)
and every instance is still in the study it was ingested into, that every
shredded object and study was shredded by an audited ``shred`` (or ``delete``),
and the audit chain; it reports each problem precisely.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from radvault.errors import (
    IntegrityError,
    InvalidRequest,
    KeyProviderError,
    ObjectNotFound,
    RadVaultError,
)
from radvault.imaging.vocabulary import body_part_hint, modality_hint
from radvault.vault.audit import Action, Outcome
from radvault.vault.catalog import (
    STUDY_SHREDDED,
    ObjectRecord,
    verify_object_record,
    verify_result_record,
)
from radvault.vault.keys import WrappedKey, rewrap
from radvault.vault.sealing import key_context, read_header
from radvault.vault.secure_memory import zeroize
from radvault.vault.vault import Vault

__all__ = ["RotationReport", "VerifyReport", "relabel_study", "rotate_keys", "shred_study",
           "verify_vault"]


@dataclass
class VerifyReport:
    """What ``verify`` found: problems are evidence of tampering or loss; notes are not."""

    objects_checked: int = 0
    objects_shredded: int = 0
    blobs_seen: int = 0
    legacy_records: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    audit: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (for ``--json``)."""
        return {"ok": self.ok, "objects_checked": self.objects_checked,
                "objects_shredded": self.objects_shredded, "blobs_seen": self.blobs_seen,
                "problems": self.problems, "notes": self.notes, "audit": self.audit}


def _check_object(vault: Vault, obj: ObjectRecord, report: VerifyReport) -> list[str]:
    problems: list[str] = []
    where = f"object {obj.object_id} (instance {obj.instance_id}, {obj.kind})"
    try:
        if verify_object_record(obj, vault.verifier) == 1:
            report.legacy_records += 1
    except IntegrityError:
        problems.append(f"{where}: catalog row signature invalid (the object, instance or "
                        "study row was altered: study, series, patient, site, size, digest)")
    if obj.wrapped_key is None:
        return problems
    try:
        blob = vault.blobs.get(obj.blob_key)
    except ObjectNotFound:
        return [*problems, f"{where}: blob missing"]
    if len(blob) != obj.sealed_size:
        problems.append(f"{where}: blob size {len(blob)} != recorded {obj.sealed_size}")
    if hashlib.sha256(blob).hexdigest() != obj.sealed_sha256:
        problems.append(f"{where}: blob sha-256 mismatch (altered, swapped or replayed)")
    try:
        header = read_header(blob)
        if header.object_id != obj.object_id:
            problems.append(f"{where}: blob belongs to object {header.object_id} (swapped)")
        elif header.plain_size != obj.plain_size:
            problems.append(f"{where}: blob header size differs from the catalog")
    except IntegrityError as exc:
        problems.append(f"{where}: blob header invalid ({exc})")
    try:
        key = vault.keys.unwrap(WrappedKey.from_bytes(obj.wrapped_key),
                                context=key_context(obj.object_id))
        zeroize(key)
    except (IntegrityError, KeyProviderError, ValueError):
        problems.append(f"{where}: data key does not unwrap (wrapped key altered)")
    return problems


@dataclass
class _Audited:
    """What the audit trail's ingest and shred entries say (ids only)."""

    objects: dict[str, tuple[int, str]] = field(default_factory=dict)  # -> (seq, instance)
    studies: dict[str, tuple[int, str]] = field(default_factory=dict)  # instance -> (seq, study)
    shredded: dict[str, int] = field(default_factory=dict)  # id named -> seq of its last shred


_ERASING = (Action.SHRED, Action.DELETE)


def _audited_ingests(vault: Vault) -> _Audited:
    """Every object and instance the audit trail says was stored, and the study it went to.

    The catalog never deletes object rows (shredding only erases the wrapped
    key), and an instance never changes study, so each must still be there as
    recorded: anything else was changed behind the vault's back. Ingest entries
    list ``[study, instance, *objects]``. Successful ``shred`` and ``delete``
    entries are collected too (they name the study: :func:`shred_study`).
    """
    out = _Audited()
    for entry in vault.audit:
        if (entry.action == Action.INGEST and entry.outcome == Outcome.OK
                and not entry.details.get("duplicate") and len(entry.object_ids) > 2):
            study_id, instance_id = entry.object_ids[0], entry.object_ids[1]
            out.studies[instance_id] = (entry.seq, study_id)
            for object_id in entry.object_ids[2:]:
                out.objects[object_id] = (entry.seq, instance_id)
        elif entry.action in _ERASING and entry.outcome == Outcome.OK:
            for named in entry.object_ids:
                out.shredded[named] = entry.seq
    return out


def _check_audited(vault: Vault, audited: _Audited, cataloged: set[str]) -> list[str]:
    problems: list[str] = []
    for object_id, (seq, instance_id) in audited.objects.items():
        if object_id not in cataloged:
            problems.append(
                f"object {object_id} (instance {instance_id}): recorded as ingested by audit "
                f"entry {seq} but missing from the catalog (row deleted)"
            )
    for instance_id, (seq, study_id) in audited.studies.items():
        try:
            actual = vault.catalog.get_instance(instance_id).study_id
        except ObjectNotFound:
            continue  # its objects are reported missing above
        if actual != study_id:
            problems.append(
                f"instance {instance_id}: in study {actual} but ingested into study "
                f"{study_id} (audit entry {seq}; row edited)"
            )
    return problems


def _check_shredded(vault: Vault, audited: _Audited,
                    shredded: list[tuple[str, str]]) -> list[str]:
    """Every erased data key and every study marked shredded must have an audited shred.

    A shredded object counts as audited when an ok ``shred`` or ``delete`` entry
    names it, its instance or its study, later than the entry that ingested it;
    otherwise the catalog was edited to hide it (``wrapped_key`` nulled by hand),
    or a shred was interrupted before it was audited.
    """
    problems: list[str] = []
    study_of: dict[str, set[str]] = {}
    for object_id, instance_id in shredded:
        if instance_id not in study_of:
            studies: set[str] = set()
            with contextlib.suppress(ObjectNotFound):  # no instance row: the audited study counts
                studies.add(vault.catalog.get_instance(instance_id).study_id)
            if instance_id in audited.studies:
                studies.add(audited.studies[instance_id][1])
            study_of[instance_id] = studies
        ingested = audited.objects.get(object_id, (0, instance_id))[0]
        if not any(audited.shredded.get(named, -1) > ingested
                   for named in (object_id, instance_id, *study_of[instance_id])):
            problems.append(
                f"object {object_id} (instance {instance_id}): data key erased but no audit "
                "entry records its shredding (catalog edited, or a shred not audited)"
            )
    offset = 0
    while page := vault.catalog.list_studies(limit=500, offset=offset):
        offset += len(page)
        for study in page:
            if ((study.shredded_at is not None or study.status == STUDY_SHREDDED)
                    and study.study_id not in audited.shredded):
                problems.append(
                    f"study {study.study_id}: marked shredded but no audit entry records its "
                    "shredding (catalog edited, or a shred not audited)"
                )
    return problems


def verify_vault(vault: Vault, *, actor: str = "system",
                 on_object: Callable[[], None] | None = None) -> VerifyReport:
    """Check every object, blob and the audit chain; never modifies data (but audits the run).

    Each object's signed row is checked against its instance's and study's
    rows as they are now (record format 2 binds study, series, patient, site,
    modality, body part and geometry); rows signed in the older format 1 bind
    less and are counted in a note. On a vault opened read-only the run is not
    audited (a note says so).

    Raises
    ------
    VaultError
        When the catalog or blob store cannot be read.
    """
    report = VerifyReport()
    referenced: set[str] = set()
    cataloged: set[str] = set()  # objects whose instance row exists too (reads reach them)
    shredded: list[tuple[str, str]] = []  # (object, instance) whose data key is erased
    for obj in vault.catalog.iter_objects():
        report.objects_checked += 1
        referenced.add(obj.blob_key)
        cataloged.add(obj.object_id)
        if obj.wrapped_key is None:
            report.objects_shredded += 1
            shredded.append((obj.object_id, obj.instance_id))
        report.problems.extend(_check_object(vault, obj, report))
        if on_object:
            on_object()
    pending, awaiting = vault.catalog.result_signing_pending(), 0
    for result in vault.catalog.iter_results():
        if pending and not result.signature:
            awaiting += 1  # stored before results were signed; the next writable open signs
            continue
        try:
            verify_result_record(result, vault.verifier)
        except IntegrityError as exc:  # an edited diagnosis, or its signature removed
            report.problems.append(str(exc))
    if awaiting:
        report.notes.append(f"{awaiting} result(s) stored before results were signed: the "
                            "next writable open of the vault signs them")
    if len(vault.audit.query(action="results.sign_older", limit=2)) > 1:
        report.problems.append("results were signed as older ones more than once: a result's "
                               "signature may have been removed and the row re-signed")
    audited = _audited_ingests(vault)
    report.problems.extend(_check_audited(vault, audited, cataloged))
    report.problems.extend(_check_shredded(vault, audited, shredded))
    if report.legacy_records:
        report.notes.append(
            f"{report.legacy_records} object record(s) signed in format 1 (before study, "
            "site and patient were bound): their placement is held only by the audit trail"
        )
    for key in vault.blobs.keys():  # noqa: SIM118 (a BlobStore is not a mapping)
        report.blobs_seen += 1
        if key not in referenced and key not in audited.objects:  # (blob keys are object ids)
            report.notes.append(
                f"blob {key} is not in the catalog (left by an interrupted ingest; harmless)"
            )
    audit = vault.audit.verify()
    report.audit = audit.to_dict()
    report.problems.extend(f"audit: {p}" for p in audit.problems)
    report.notes.extend(f"audit: {n}" for n in audit.notes)
    if vault.read_only:
        report.notes.append("vault opened read-only: this verification was not audited")
    else:
        vault.audit.append(actor, Action.VERIFY, Outcome.OK if report.ok else Outcome.ERROR,
                           details={"objects": report.objects_checked,
                                    "problems": len(report.problems)})
    return report


@dataclass(frozen=True)
class RotationReport:
    """Result of a key rotation."""

    new_kek_id: str
    rewrapped: int
    retired: tuple[str, ...]


def rotate_keys(vault: Vault, *, actor: str = "system", retire_old: bool = False,
                on_object: Callable[[], None] | None = None) -> RotationReport:
    """Make a new key-encryption key and rewrap every data key under it (blobs untouched).

    Safe to interrupt: rows still under an older KEK are rewrapped by the next run.
    With ``retire_old``, older KEKs are destroyed once nothing uses them.
    """
    new_kek = vault.keys.rotate()
    vault.audit.append(actor, Action.KEY_ROTATE, Outcome.OK, details={"kek_id": new_kek,
                                                                      "phase": "start"})
    count = 0
    while batch := vault.catalog.objects_with_kek_other_than(new_kek, limit=500):
        for obj in batch:
            if obj.wrapped_key is None:
                continue
            wrapped = rewrap(WrappedKey.from_bytes(obj.wrapped_key), vault.keys,
                             context=key_context(obj.object_id))
            vault.catalog.update_wrapped_key(obj.object_id, wrapped.to_bytes(), wrapped.kek_id,
                                             expected_kek_id=obj.kek_id)
            count += 1
            if on_object:
                on_object()
    retired: list[str] = []
    if retire_old:
        for kek_id in vault.keys.kek_ids():
            if kek_id != new_kek:
                vault.keys.retire(kek_id)
                retired.append(kek_id)
    vault.audit.append(actor, Action.KEY_ROTATE, Outcome.OK,
                       details={"kek_id": new_kek, "phase": "done", "rewrapped": count,
                                "retired": len(retired)})
    return RotationReport(new_kek, count, tuple(retired))


def shred_study(vault: Vault, study_id: str, *, actor: str = "system") -> int:
    """Crypto-shred a study: destroy its data keys, then delete its blobs. Audited.

    Returns the number of objects whose keys were destroyed.
    """
    vault.catalog.get_study(study_id)  # ObjectNotFound for an unknown id
    blob_keys = [o.blob_key for i in vault.catalog.instances_of_study(study_id)
                 for o in vault.catalog.objects_of_instance(i.instance_id)]
    try:
        count = vault.catalog.shred_study(study_id)
    except RadVaultError:
        vault.audit.append(actor, Action.SHRED, Outcome.ERROR, object_ids=[study_id])
        raise
    for key in blob_keys:
        vault.blobs.delete(key)
    vault.audit.append(actor, Action.SHRED, Outcome.OK, object_ids=[study_id],
                       details={"objects": count})
    return count


def relabel_study(vault: Vault, study_id: str, *, modality: str, body_part: str | None,
                  actor: str = "system") -> tuple[str | None, str | None]:
    """Correct what a study was declared as (a brain MR uploaded as DX CHEST, say). Audited.

    The catalog's modality and body part change, and every object row is signed again
    over them; stored results are kept (each names the model that made it), so analyse
    the study again for an answer of the right model. Both values must be DICOM defined
    terms; the audit entry records them before and after (defined terms, no PHI).

    Returns
    -------
    tuple
        The modality and body part before.

    Raises
    ------
    InvalidRequest
        If a value is not a defined term (audited).
    ObjectNotFound
        If there is no such study.
    ObjectShredded
        If the study is shredded (audited).
    """
    try:
        vault.catalog.get_study(study_id)  # ObjectNotFound for an unknown id
        new_modality = modality_hint(modality)
        new_body_part = body_part_hint(body_part)
        if new_modality is None:
            raise InvalidRequest("a modality is required (a DICOM defined term)")
        current = vault.catalog.get_study(study_id)
        if (current.modality, current.body_part) == (new_modality, new_body_part):
            raise InvalidRequest("the study is already recorded as "
                                 f"{' '.join(v for v in (new_modality, new_body_part) if v)}")
        # the change and its audit entry commit together, or neither does
        with vault.audit.appending() as chain, vault.catalog.writing() as writer:
            before = writer.relabel_study(study_id, modality=new_modality,
                                          body_part=new_body_part, signer=vault.signer)
            chain.append(writer.connection, actor, "study.relabel", Outcome.OK,
                         object_ids=[study_id],
                         details={"from": list(before), "to": [new_modality, new_body_part]})
    except RadVaultError as exc:
        known = not isinstance(exc, ObjectNotFound)  # an unknown id is named by digest only
        vault.audit.append(actor, "study.relabel", Outcome.REFUSED,
                           object_ids=[study_id] if known else [],
                           details={"error": type(exc).__name__,
                                    **({} if known else
                                       {"study_hmac": vault.audit_digest(study_id)})})
        raise
    return before

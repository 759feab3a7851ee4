"""Writes of many rows in one transaction: the ingest and analysis batches' path.

A :class:`CatalogWriter` works on a connection that :meth:`Catalog.writing
<radvault.vault.catalog.Catalog.writing>` opens; a batch is looked up once
(:class:`_Known`), inserted with one multi-row statement per table, and checked
for a racing writer's new parents before the commit.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

from sqlalchemy import select, update

from radvault.errors import (
    ConcurrentWriteConflict,
    ObjectNotFound,
    ObjectShredded,
    VaultError,
)
from radvault.vault._catalog_models import (
    ObjectRow,
    utcnow,
)
from radvault.vault._catalog_records import (
    ID,
    KEY_ID,
    STUDY_ACTIVE,
    STUDY_SHREDDED,
    AddInstanceResult,
    NewInstance,
    NewObject,
    ObjectRecord,
    ResultRecord,
    Signer,
    StudyBinding,
    canonical_json,
    check,
    object_record_message,
    result_record_message,
)
from radvault.vault._catalog_sql import (
    INSERT_IGNORE,
    INSERT_INSTANCE,
    INSERT_OBJECT,
    INSERT_RESULT,
    INSTANCES,
    OBJECT_WITH_BINDING,
    OBJECTS,
    PATIENT_IDENTITY,
    SERIES,
    SET_IDENTITY,
    STUDIES,
    STUDY_ROWS,
    check_objects,
    instance_record,
    rows_where_in,
    to_object,
)


class _Known:
    """What a batch of new images meets in the catalog: fetched once, then kept up to date.

    Duplicates (by source file or instance id) and the studies and series the
    images go into, whether cataloged before the batch or created by an
    earlier image of it.
    """

    def __init__(self) -> None:
        self.by_source: dict[str, AddInstanceResult] = {}
        self.by_id: dict[str, AddInstanceResult] = {}
        self.studies: dict[str, Any] = {}  # study_id -> row (pseudonym, site, ..., status)
        self.series: dict[str, str] = {}  # series_id -> study_id

    @classmethod
    def look_up(cls, conn: Any, instances: Sequence[NewInstance]) -> _Known:
        known = cls()
        hits = {row.instance_id: (row, "source_sha256") for row in rows_where_in(
            conn, select(INSTANCES), INSTANCES.c.source_sha256,
            {i.source_sha256 for i in instances})}
        for row in rows_where_in(conn, select(INSTANCES), INSTANCES.c.instance_id,
                                  {i.instance_id for i in instances}):
            hits.setdefault(row.instance_id, (row, "instance_id"))
        objects: dict[str, list[ObjectRecord]] = {}
        for hit in rows_where_in(conn, OBJECT_WITH_BINDING.order_by(ObjectRow.object_id),
                                  OBJECTS.c.instance_id, set(hits)):
            objects.setdefault(hit.instance_id, []).append(to_object(hit, hit, hit))
        for instance_id, (row, _) in hits.items():
            record = instance_record(row)
            objs = tuple(objects.get(instance_id, ()))
            known.by_source[row.source_sha256] = AddInstanceResult(
                record, objs, created=False, duplicate_of="source_sha256")
            known.by_id[instance_id] = AddInstanceResult(
                record, objs, created=False, duplicate_of="instance_id")
        studies = STUDY_ROWS
        if conn.dialect.name == "postgresql":
            # the new objects' signatures bind the study's modality and body part: hold
            # its row until this batch commits, so a relabel (Catalog.relabel_study)
            # waits, then signs these objects again too (SQLite: one writer at a time)
            studies = STUDY_ROWS.with_for_update(read=True)
        known.studies = {row.study_id: row for row in rows_where_in(
            conn, studies, STUDIES.c.study_id, {i.study_id for i in instances})}
        known.series = {row.series_id: row.study_id for row in rows_where_in(
            conn, select(SERIES.c.series_id, SERIES.c.study_id), SERIES.c.series_id,
            {i.series_id for i in instances})}
        return known

    def duplicate(self, instance: NewInstance) -> AddInstanceResult | None:
        """The cataloged image ``instance`` is a copy of (same file first, then same id).

        The file is matched by its keyed source digest only. A copy cataloged
        before digests were keyed (plain sha-256) is still found by instance id,
        which ingest derives from the file as it always did; ingest also looks
        for both digests before it prepares an image at all.
        """
        return self.by_source.get(instance.source_sha256) or self.by_id.get(instance.instance_id)

    def study_for(self, instance: NewInstance) -> StudyBinding:
        """The study binding of a new image; :class:`VaultError` if its study or series conflict."""
        study = self.studies.get(instance.study_id)
        if study is not None:
            if study.patient_pseudonym != instance.patient_pseudonym:
                raise VaultError(f"study {instance.study_id} belongs to another patient")
            if study.status == STUDY_SHREDDED:
                raise VaultError(f"study {instance.study_id} was shredded; it takes no new images")
        series_study = self.series.get(instance.series_id)
        if series_study is not None and series_study != instance.study_id:
            raise VaultError(f"series {instance.series_id} belongs to another study")
        if study is None:
            return StudyBinding(instance.patient_pseudonym, instance.site, instance.modality,
                                instance.body_part)
        return StudyBinding(study.patient_pseudonym, study.site, study.modality, study.body_part)

    def add(self, instance: NewInstance, study: StudyBinding) -> None:
        """Record that ``instance`` creates its study and series if they are new."""
        if instance.study_id not in self.studies:
            self.studies[instance.study_id] = SimpleNamespace(
                patient_pseudonym=study.patient_pseudonym, site=study.site,
                modality=study.modality, body_part=study.body_part, status=STUDY_ACTIVE)
        self.series.setdefault(instance.series_id, instance.study_id)

    def created(self, instance: NewInstance, result: AddInstanceResult) -> None:
        """Record a new image, so that a later copy in the batch is its duplicate."""
        self.by_source[instance.source_sha256] = replace(
            result, created=False, duplicate_of="source_sha256")
        self.by_id[instance.instance_id] = replace(
            result, created=False, duplicate_of="instance_id")


def _check_no_concurrent_parents(conn: Any, studies: Mapping[str, Mapping[str, Any]],
                                 series: Mapping[str, Mapping[str, Any]]) -> None:
    """Raise if a concurrent writer created one of these studies or series differently.

    The inserts skip rows that exist (``ON CONFLICT DO NOTHING``); on SQLite the
    write lock rules that out, on PostgreSQL another transaction may have won.
    """
    for row in rows_where_in(conn, STUDY_ROWS, STUDIES.c.study_id, set(studies)):
        if row.patient_pseudonym != studies[row.study_id]["patient_pseudonym"]:
            raise ConcurrentWriteConflict(f"study {row.study_id} belongs to another patient")
    for row in rows_where_in(conn, select(SERIES.c.series_id, SERIES.c.study_id),
                              SERIES.c.series_id, set(series)):
        if row.study_id != series[row.series_id]["study_id"]:
            raise ConcurrentWriteConflict(f"series {row.series_id} belongs to another study")


class CatalogWriter:
    """Catalog changes inside one write transaction; made by :meth:`Catalog.writing`.

    Plain SQL (SQLAlchemy Core) on one connection with statements compiled
    once: ingesting a batch of images (:meth:`add_many`) costs one look-up and
    one multi-row insert per table, and one commit for all.
    """

    def __init__(self, dialect_name: str, conn: Any) -> None:
        self._dialect = dialect_name
        self._conn = conn

    @property
    def connection(self) -> Any:
        """The transaction's connection (for the audit trail's appends)."""
        return self._conn

    def relabel_study(self, study_id: str, *, modality: str | None, body_part: str | None,
                      signer: Signer) -> tuple[str | None, str | None]:
        """Record another modality and body part for a study, and sign its objects again.

        Every object row's signature binds its study's modality and body part, so each
        is signed again (current record format) in this transaction. On PostgreSQL the
        study's row is locked first: an ingest into the study holds it (``FOR SHARE``)
        until it commits, and its new objects are then signed again here too.

        Returns
        -------
        tuple
            The study's modality and body part before.

        Raises
        ------
        ObjectNotFound
            When no study has this id.
        ObjectShredded
            When the study is shredded (nothing of it can be read again).
        """
        conn = self._conn
        query = select(STUDIES.c.modality, STUDIES.c.body_part, STUDIES.c.status).where(
            STUDIES.c.study_id == study_id)
        if self._dialect == "postgresql":
            query = query.with_for_update()
        row = conn.execute(query).first()
        if row is None:
            raise ObjectNotFound(f"no study {study_id!r}")
        if row.status == STUDY_SHREDDED:
            raise ObjectShredded("a shredded study cannot be relabelled")
        conn.execute(update(STUDIES).where(STUDIES.c.study_id == study_id)
                     .values(modality=modality, body_part=body_part))
        conn.execute(update(SERIES).where(SERIES.c.study_id == study_id)
                     .values(modality=modality, body_part=body_part))
        ids = select(INSTANCES.c.instance_id).where(INSTANCES.c.study_id == study_id)
        hits = conn.execute(OBJECT_WITH_BINDING.where(OBJECTS.c.instance_id.in_(ids))
                            .order_by(OBJECTS.c.object_id)).all()
        for hit in hits:
            obj = to_object(hit, hit, hit)
            conn.execute(update(OBJECTS).where(OBJECTS.c.object_id == obj.object_id)
                         .values(record_signature=signer.sign(object_record_message(obj)),
                                 signer_key_id=signer.key_id))
        return row.modality, row.body_part

    def add_result(self, instance_id: str, model_id: str, payload: Mapping[str, Any], *,
                   result_id: str | None = None, signer: Signer | None = None) -> ResultRecord:
        """Store an analysis result in this transaction (see :meth:`Catalog.add_result`).

        Raises
        ------
        ObjectNotFound
            When no instance has this id.
        ValueError
            When the payload is not JSON data or an id is malformed.
        """
        return self.add_results([(instance_id, model_id, payload, result_id)],
                                signer=signer)[0]

    def add_results(
        self, results: Sequence[tuple[str, str, Mapping[str, Any], str | None]],
        *, signer: Signer | None = None,
    ) -> list[ResultRecord]:
        """Store several ``(instance_id, model_id, payload, result_id)`` results at once.

        As :meth:`add_result` for each, in one look-up and one multi-row insert;
        any error and none of them is stored (the caller's transaction rolls back).
        With ``signer`` (the vault's: every result the vault stores) each row is signed
        over :func:`result_record_message`, and reads check it.
        """
        records: list[ResultRecord] = []
        created = utcnow()
        for instance_id, model_id, payload, result_id in results:
            result_id = result_id or uuid.uuid4().hex
            check(ID, "result_id", result_id)
            check(ID, "model_id", model_id)
            body = json.loads(canonical_json(dict(payload)))
            record = ResultRecord(result_id, instance_id, model_id, body, created)
            if signer is not None:
                record = replace(record, signature=signer.sign(result_record_message(record)),
                                 signer_key_id=signer.key_id)
            records.append(record)
        wanted = {r.instance_id for r in records}
        known = {row.instance_id for row in rows_where_in(
            self._conn, select(INSTANCES.c.instance_id), INSTANCES.c.instance_id, wanted)}
        if missing := sorted(wanted - known):
            raise ObjectNotFound(f"no instance {missing[0]!r}")
        if records:
            self._conn.execute(INSERT_RESULT, [
                {"result_id": r.result_id, "instance_id": r.instance_id, "model_id": r.model_id,
                 "payload": r.payload, "created_at": r.created_at,
                 "signature": r.signature or None, "signer_key_id": r.signer_key_id or None}
                for r in records])
        return records

    def add_instance_with_objects(
        self,
        instance: NewInstance,
        objects: Sequence[NewObject],
        *,
        signer: Signer | None = None,
    ) -> AddInstanceResult:
        """Catalog one image and its objects in this transaction.

        As :meth:`Catalog.add_instance_with_objects`, without the commit.

        A conflict (the study or series belongs elsewhere, the study was
        shredded) is found before anything of this image is written, so the
        caller may refuse the image and go on with the transaction.

        Raises
        ------
        ValueError
            When an object carries no signature and no signer is given, or two
            objects share a kind or id.
        VaultError
            When the study or series already belongs to another patient or
            study, or the study was shredded (nothing of this image written).
        sqlalchemy.exc.IntegrityError
            When an object id or blob key is already used, or a concurrent
            writer got in first (PostgreSQL).
        """
        result = self.add_many([(instance, objects)], signer=signer)[0]
        if isinstance(result, VaultError):
            raise result
        return result

    def add_many(
        self,
        images: Sequence[tuple[NewInstance, Sequence[NewObject]]],
        *,
        signer: Signer | None = None,
    ) -> list[AddInstanceResult | VaultError]:
        """Catalog several images and their objects in this transaction, in order.

        Each image as with :meth:`add_instance_with_objects`, but the look-ups
        and inserts of the whole batch take a few statements per table, not a
        few per image (what a batch costs in round trips and in Python). An
        image that conflicts gets its :class:`VaultError` in its place in the
        returned list and nothing of it is written; a second copy of an image
        (same file, or same instance id) returns as a duplicate of the first,
        whether the first was cataloged before or earlier in this batch.

        Raises
        ------
        ValueError
            As :meth:`add_instance_with_objects` (nothing written).
        sqlalchemy.exc.IntegrityError
            When an object id or blob key is already used, or a concurrent
            writer inserted one of these instances first (PostgreSQL).
        ConcurrentWriteConflict
            When a concurrent writer (PostgreSQL) created one of the new
            studies or series for another patient or study meanwhile. In both
            cases the caller rolls back and catalogs the images one at a time.
        """
        for _, objects in images:
            check_objects(objects, signer)
        conn = self._conn
        found = _Known.look_up(conn, [instance for instance, _ in images])
        now = utcnow()
        results: list[AddInstanceResult | VaultError] = []
        patients: dict[str, dict[str, Any]] = {}
        studies: dict[str, dict[str, Any]] = {}
        series: dict[str, dict[str, Any]] = {}
        instance_rows: list[dict[str, Any]] = []
        object_rows: list[dict[str, Any]] = []
        for instance, objects in images:
            duplicate = found.duplicate(instance)
            if duplicate is not None:
                results.append(duplicate)
                continue
            try:
                study = found.study_for(instance)
            except VaultError as exc:
                results.append(exc)
                continue
            if instance.study_id not in found.studies:
                patients.setdefault(instance.patient_pseudonym, {
                    "pseudonym": instance.patient_pseudonym, "created_at": now})
                studies[instance.study_id] = {
                    "study_id": instance.study_id, "patient_pseudonym": instance.patient_pseudonym,
                    "site": instance.site, "modality": instance.modality,
                    "body_part": instance.body_part, "created_at": now, "status": STUDY_ACTIVE,
                }
            if instance.series_id not in found.series:
                series[instance.series_id] = {
                    "series_id": instance.series_id, "study_id": instance.study_id,
                    "modality": instance.modality, "body_part": instance.body_part,
                    "created_at": now,
                }
            found.add(instance, study)
            objs = [
                replace(o, record_signature=signer.sign(o.message(instance, study)),
                        signer_key_id=signer.key_id) if signer is not None else o
                for o in objects
            ]
            inst_values = {
                "instance_id": instance.instance_id, "series_id": instance.series_id,
                "study_id": instance.study_id, "source_sha256": instance.source_sha256,
                "source_format": instance.source_format, "rows": instance.rows,
                "cols": instance.cols, "frames": instance.frames,
                "pixel_sha256": instance.pixel_sha256, "created_at": now,
            }
            obj_values = [
                {"object_id": o.object_id, "instance_id": instance.instance_id, "kind": o.kind,
                 "blob_key": o.blob_key, "plain_size": o.plain_size,
                 "sealed_size": o.sealed_size, "sealed_sha256": o.sealed_sha256,
                 "kek_id": o.kek_id, "wrapped_key": o.wrapped_key,
                 "record_signature": o.record_signature, "signer_key_id": o.signer_key_id,
                 "created_at": now}
                for o in objs
            ]
            instance_rows.append(inst_values)
            object_rows += obj_values
            inst_ns = SimpleNamespace(**inst_values)
            result = AddInstanceResult(
                instance=instance_record(inst_ns),
                objects=tuple(to_object(SimpleNamespace(**v), inst_ns, study)
                              for v in obj_values),
                created=True,
            )
            found.created(instance, result)
            results.append(result)
        # Rows go in sorted by key: two writers whose batches share rows (PostgreSQL)
        # then wait for each other in one order, never in a cycle (a deadlock)
        for name, rows in (("patients", patients), ("studies", studies), ("series", series)):
            if rows:
                conn.execute(INSERT_IGNORE[self._dialect, name], [rows[k] for k in sorted(rows)])
        if instance_rows:
            conn.execute(INSERT_INSTANCE, sorted(instance_rows, key=lambda r: r["instance_id"]))
        if object_rows:
            conn.execute(INSERT_OBJECT, sorted(object_rows, key=lambda r: r["object_id"]))
        if studies or series:
            _check_no_concurrent_parents(conn, studies, series)
        return results

    def identity_of(self, pseudonym: str) -> tuple[bytes | None, str | None] | None:
        """The patient's sealed identity record and its key id; ``None`` if no such patient."""
        row = self._conn.execute(PATIENT_IDENTITY, {"pseudonym": pseudonym}).first()
        if row is None:
            return None
        return (None if row.identity_blob is None else bytes(row.identity_blob),
                row.identity_kek_id)

    def set_identity(self, pseudonym: str, identity_blob: bytes, identity_kek_id: str) -> None:
        """Store (or replace) a patient's sealed identity record, creating the patient if new.

        Raises
        ------
        ValueError
            When the blob is empty, or the pseudonym or key id malformed.
        """
        check(ID, "pseudonym", pseudonym)
        if not isinstance(identity_blob, bytes) or not identity_blob:
            raise ValueError("identity_blob must be non-empty bytes")
        check(KEY_ID, "identity_kek_id", identity_kek_id)
        self._conn.execute(INSERT_IGNORE[self._dialect, "patients"],
                           {"pseudonym": pseudonym, "created_at": utcnow()})
        self._conn.execute(SET_IDENTITY, {"p": pseudonym, "blob": identity_blob,
                                           "kek": identity_kek_id})


"""The catalog's SQL: table handles, prebuilt statements and row-to-record conversions.

Shared by :mod:`radvault.vault.catalog` (the repository) and
:mod:`radvault.vault._catalog_writer` (batched writes in one transaction).
Statements on the write path are built once here so that SQLAlchemy compiles
each of them once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from radvault.vault._catalog_models import (
    InstanceRow,
    ObjectRow,
    PatientRow,
    ResultRow,
    SeriesRow,
    StudyRow,
)
from radvault.vault._catalog_records import (
    AddInstanceResult,
    InstanceRecord,
    NewInstance,
    NewObject,
    ObjectRecord,
    PatientRecord,
    ResultRecord,
    Signer,
)


def to_patient(row: PatientRow) -> PatientRecord:
    return PatientRecord(row.pseudonym, row.created_at, row.identity_blob, row.identity_kek_id)


def to_instance(row: InstanceRow) -> InstanceRecord:
    return InstanceRecord(
        instance_id=row.instance_id,
        series_id=row.series_id,
        study_id=row.study_id,
        source_sha256=row.source_sha256,
        source_format=row.source_format,
        rows=row.rows,
        cols=row.cols,
        frames=row.frames,
        pixel_sha256=row.pixel_sha256,
        created_at=row.created_at,
    )


def to_object(row: Any, inst: Any, study: Any) -> ObjectRecord:
    """An object record with what its signature binds: its instance's and study's rows now."""
    return ObjectRecord(
        object_id=row.object_id,
        instance_id=row.instance_id,
        kind=row.kind,
        blob_key=row.blob_key,
        plain_size=row.plain_size,
        sealed_size=row.sealed_size,
        sealed_sha256=row.sealed_sha256,
        kek_id=row.kek_id,
        wrapped_key=row.wrapped_key,
        record_signature=row.record_signature,
        signer_key_id=row.signer_key_id,
        created_at=row.created_at,
        pixel_sha256=inst.pixel_sha256,
        study_id=inst.study_id,
        series_id=inst.series_id,
        patient_pseudonym=study.patient_pseudonym,
        site=study.site,
        modality=study.modality,
        body_part=study.body_part,
        rows=inst.rows,
        cols=inst.cols,
        frames=inst.frames,
    )


def to_result(row: ResultRow) -> ResultRecord:
    return ResultRecord(row.result_id, row.instance_id, row.model_id, row.payload, row.created_at,
                        row.signature or b"", row.signer_key_id or "")


PATIENTS: Table = PatientRow.__table__  # type: ignore[assignment]
STUDIES: Table = StudyRow.__table__  # type: ignore[assignment]
SERIES: Table = SeriesRow.__table__  # type: ignore[assignment]
INSTANCES: Table = InstanceRow.__table__  # type: ignore[assignment]
OBJECTS: Table = ObjectRow.__table__  # type: ignore[assignment]
RESULTS: Table = ResultRow.__table__  # type: ignore[assignment]

#: Objects with what their signed records bind (the study joined outer: a deleted
#: study row leaves the object listed, with a signature that no longer verifies).
OBJECT_WITH_BINDING = select(
    OBJECTS,
    INSTANCES.c.pixel_sha256, INSTANCES.c.study_id, INSTANCES.c.series_id,
    INSTANCES.c.rows, INSTANCES.c.cols, INSTANCES.c.frames,
    STUDIES.c.patient_pseudonym, STUDIES.c.site, STUDIES.c.modality, STUDIES.c.body_part,
).select_from(
    OBJECTS.join(INSTANCES, OBJECTS.c.instance_id == INSTANCES.c.instance_id)
    .outerjoin(STUDIES, INSTANCES.c.study_id == STUDIES.c.study_id)
)

# Hot-path statements of the write path, built once so SQLAlchemy compiles each once.
STUDY_ROWS = select(STUDIES.c.study_id, STUDIES.c.patient_pseudonym, STUDIES.c.site,
                     STUDIES.c.modality, STUDIES.c.body_part, STUDIES.c.status)
INSTANCE_BY_SOURCE = select(INSTANCES).where(
    INSTANCES.c.source_sha256 == bindparam("source_sha256"))
INSTANCE_BY_ID = select(INSTANCES).where(INSTANCES.c.instance_id == bindparam("instance_id"))
INSERT_INSTANCE = insert(INSTANCES)
INSERT_OBJECT = insert(OBJECTS)
INSERT_RESULT = insert(RESULTS)
PATIENT_IDENTITY = select(PATIENTS.c.identity_blob, PATIENTS.c.identity_kek_id).where(
    PATIENTS.c.pseudonym == bindparam("pseudonym"))
SET_IDENTITY = (
    update(PATIENTS).where(PATIENTS.c.pseudonym == bindparam("p"))
    .values(identity_blob=bindparam("blob"), identity_kek_id=bindparam("kek"))
)


def insert_ignore_statement(dialect_name: str, table: Table, key: str) -> Any:
    dialect = pg_dialect if dialect_name == "postgresql" else sqlite_dialect
    return dialect.insert(table).on_conflict_do_nothing(index_elements=[key])


INSERT_IGNORE = {
    (name, table.name): insert_ignore_statement(name, table, key)
    for name in ("sqlite", "postgresql")
    for table, key in ((PATIENTS, "pseudonym"), (STUDIES, "study_id"),
                       (SERIES, "series_id"))
}



def instance_record(row: Any) -> InstanceRecord:
    return InstanceRecord(
        instance_id=row.instance_id, series_id=row.series_id, study_id=row.study_id,
        source_sha256=row.source_sha256, source_format=row.source_format, rows=row.rows,
        cols=row.cols, frames=row.frames, pixel_sha256=row.pixel_sha256,
        created_at=row.created_at,
    )


def existing(conn: Any, instance: NewInstance) -> AddInstanceResult | None:
    """The cataloged instance ``instance`` duplicates (same file or same instance id), if any."""
    row = conn.execute(INSTANCE_BY_SOURCE, {"source_sha256": instance.source_sha256}).first()
    how = "source_sha256"
    if row is None:
        row = conn.execute(INSTANCE_BY_ID, {"instance_id": instance.instance_id}).first()
        how = "instance_id"
    if row is None:
        return None
    query = OBJECT_WITH_BINDING.where(ObjectRow.instance_id == row.instance_id).order_by(
        ObjectRow.object_id)
    objs = [to_object(hit, hit, hit) for hit in conn.execute(query)]
    return AddInstanceResult(instance_record(row), tuple(objs), created=False,
                             duplicate_of=how)


def check_objects(objects: Sequence[NewObject], signer: Signer | None) -> None:
    if len({o.kind for o in objects}) != len(objects) or len(
        {o.object_id for o in objects}
    ) != len(objects):
        raise ValueError("objects of one instance need distinct kinds and ids")
    if signer is None:
        for obj in objects:
            if not obj.record_signature or not obj.signer_key_id:
                raise ValueError(f"object {obj.object_id} carries no record signature")


def rows_where_in(conn: Any, query: Any, column: Any, values: set[str]) -> list[Any]:
    return conn.execute(query.where(column.in_(sorted(values)))).all() if values else []

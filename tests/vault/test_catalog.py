"""The catalog: CRUD, idempotent ingest, rotation helpers and crypto-shredding.

Every behaviour test runs on SQLite and, when the test server answers, on
PostgreSQL (each run in its own throwaway schema, so parallel runs never meet).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import event, text

from radvault.config import load_settings
from radvault.errors import (
    ConcurrentWriteConflict,
    ConfigurationError,
    IntegrityError,
    ObjectNotFound,
    VaultError,
)
from radvault.vault import _catalog_writer
from radvault.vault._catalog_models import Base
from radvault.vault.catalog import (
    STUDY_SHREDDED,
    Catalog,
    NewInstance,
    NewObject,
    object_record_message,
    record_message,
    verify_object_record,
)

# --------------------------------------------------------------------------- helpers


class Ed25519Signer:
    """A tiny signer/verifier pair with the vault's duck types."""

    def __init__(self, key_id: str = "vault-sign-1") -> None:
        self._key = Ed25519PrivateKey.generate()
        self.key_id = key_id

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def verify(self, message: bytes, signature: bytes) -> None:
        try:
            self._key.public_key().verify(signature, message)
        except InvalidSignature:
            raise IntegrityError("signature mismatch") from None


def sha(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


def new_instance(n: int, *, study: str = "2.25.100", patient: str = "PSN-0001",
                 site: str = "default") -> NewInstance:
    return NewInstance(
        instance_id=f"{study}.1.{n}",
        series_id=f"{study}.1",
        study_id=study,
        patient_pseudonym=patient,
        source_sha256=sha(f"source {study} {n}"),
        source_format="dicom",
        rows=64,
        cols=48,
        pixel_sha256=sha(f"pixels {study} {n}"),
        modality="CT",
        body_part="CHEST",
        site=site,
    )


def new_object(instance: NewInstance, kind: str, *, kek: str = "kek-1",
               wrapped: bytes | None = None) -> NewObject:
    oid = uuid.uuid4().hex
    return NewObject(
        object_id=oid,
        kind=kind,
        blob_key=f"{oid[:2]}/{oid}",
        plain_size=1000,
        sealed_size=1100,
        sealed_sha256=sha(f"sealed {oid}"),
        kek_id=kek,
        wrapped_key=wrapped if wrapped is not None else os.urandom(60),
    )


def ingest(catalog: Catalog, signer: Ed25519Signer, n: int, **kw: str):
    inst = new_instance(n, **kw)
    return catalog.add_instance_with_objects(
        inst, [new_object(inst, "dicom"), new_object(inst, "model_input")], signer=signer
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.sqlite3'}"
        return
    yield request.getfixturevalue("pg_schema_url")


@pytest.fixture
def catalog(catalog_url: str) -> Iterator[Catalog]:
    with Catalog.create(catalog_url) as cat:
        yield cat


@pytest.fixture
def signer() -> Ed25519Signer:
    return Ed25519Signer()


# --------------------------------------------------------------------------- opening


def test_sqlite_catalog_runs_wal_with_foreign_keys_and_busy_timeout(tmp_path) -> None:
    cat = Catalog.create(f"sqlite:///{tmp_path / 'c.sqlite3'}", busy_timeout_s=7)
    with cat, cat.engine.connect() as conn:
        pragma = {name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                  for name in ("journal_mode", "foreign_keys", "busy_timeout", "secure_delete")}
    assert pragma == {"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 7000,
                      "secure_delete": 1}


def test_create_twice_keeps_the_data(catalog_url: str, signer: Ed25519Signer) -> None:
    with Catalog.create(catalog_url) as first:
        ingest(first, signer, 1)
    with Catalog.create(catalog_url) as again:
        assert again.get_study("2.25.100").n_instances == 1


@pytest.mark.parametrize("url", ["not a url", "mysql://user@host/db", "sqlite+nosuch:///x"])
def test_bad_or_unsupported_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        Catalog(url)


def test_bare_postgresql_url_uses_psycopg3() -> None:
    pytest.importorskip("psycopg")
    cat = Catalog("postgresql://someone@db.invalid/vault")  # no connection is made
    assert cat.engine.dialect.driver == "psycopg"
    assert "db.invalid" not in repr(cat)


def test_no_column_can_hold_identifying_values() -> None:
    banned = ("name", "birth", "address", "phone", "mrn", "accession", "dob", "sex")
    columns = [f"{t.name}.{c.name}" for t in Base.metadata.sorted_tables for c in t.columns]
    assert not [c for c in columns if any(word in c.lower() for word in banned)]


# --------------------------------------------------------------------------- patients


def test_add_patient_is_idempotent_and_identity_is_stored_sealed(catalog: Catalog) -> None:
    first = catalog.add_patient("PSN-0001")
    assert catalog.add_patient("PSN-0001") == first
    assert first.identity_blob is None
    catalog.set_identity("PSN-0001", b"\x01sealed-identity", "idk-1")
    got = catalog.get_patient("PSN-0001")
    assert (got.identity_blob, got.identity_kek_id) == (b"\x01sealed-identity", "idk-1")
    assert [p.pseudonym for p in catalog.patients_with_identity_kek_other_than("idk-2")] == [
        "PSN-0001"
    ]
    assert catalog.patients_with_identity_kek_other_than("idk-1") == []


def test_identity_of_unknown_patient_is_refused(catalog: Catalog) -> None:
    with pytest.raises(ObjectNotFound):
        catalog.set_identity("PSN-9999", b"sealed", "idk-1")
    with pytest.raises(ObjectNotFound):
        catalog.get_patient("PSN-9999")


# --------------------------------------------------------------------------- ingest


def test_instance_and_objects_round_trip(catalog: Catalog, signer: Ed25519Signer) -> None:
    added = ingest(catalog, signer, 1)
    assert added.created and added.duplicate_of is None
    inst = added.instance
    assert catalog.get_instance(inst.instance_id) == inst
    assert catalog.instances_of_study("2.25.100") == [inst]
    assert catalog.find_instance_by_source_sha256(inst.source_sha256) == inst
    objs = catalog.objects_of_instance(inst.instance_id)
    assert sorted(objs, key=lambda o: o.object_id) == sorted(added.objects,
                                                           key=lambda o: o.object_id)
    assert {o.kind for o in objs} == {"dicom", "model_input"}
    for obj in objs:
        assert catalog.get_object(obj.object_id) == obj
        assert obj.pixel_sha256 == inst.pixel_sha256
        assert obj.signer_key_id == signer.key_id
        verify_object_record(obj, signer)
    study = catalog.get_study("2.25.100")
    assert (study.patient_pseudonym, study.modality, study.body_part, study.n_instances,
            study.status, study.site) == ("PSN-0001", "CT", "CHEST", 1, "active", "default")
    assert study.created_at.tzinfo is not None


def test_objects_of_many_instances_come_in_one_read_filtered_by_kind(
        catalog: Catalog, signer: Ed25519Signer) -> None:
    added = [ingest(catalog, signer, n) for n in range(3)]
    ids = [a.instance.instance_id for a in added]
    everything = catalog.objects_of_instances([*ids, "2.25.404"])
    assert set(everything) == set(ids)  # an unknown instance is simply absent
    assert all({o.kind for o in everything[i]} == {"dicom", "model_input"} for i in ids)
    inputs = catalog.objects_of_instances(ids, kinds=["model_input"])
    assert {i: [o.kind for o in objs] for i, objs in inputs.items()} == {
        i: ["model_input"] for i in ids}
    assert inputs[ids[0]][0] == catalog.get_object(inputs[ids[0]][0].object_id)
    assert catalog.objects_of_instances([]) == {}


def test_more_instances_reuse_study_series_and_patient(catalog: Catalog,
                                                       signer: Ed25519Signer) -> None:
    for n in range(3):
        ingest(catalog, signer, n)
    assert catalog.get_study("2.25.100").n_instances == 3
    assert len({i.series_id for i in catalog.instances_of_study("2.25.100")}) == 1


def test_the_same_file_twice_is_recognised_not_stored_twice(catalog: Catalog,
                                                          signer: Ed25519Signer) -> None:
    first = ingest(catalog, signer, 1)
    again = ingest(catalog, signer, 1)  # same source_sha256, fresh object ids
    assert not again.created and again.duplicate_of == "source_sha256"
    assert again.instance == first.instance
    assert {o.object_id for o in again.objects} == {o.object_id for o in first.objects}
    assert sum(1 for _ in catalog.iter_objects()) == 2


def test_another_file_with_the_same_instance_is_recognised(catalog: Catalog,
                                                          signer: Ed25519Signer) -> None:
    first = ingest(catalog, signer, 1)
    inst = new_instance(1)
    other_file = NewInstance(**{**inst.__dict__, "source_sha256": sha("re-saved copy")})
    again = catalog.add_instance_with_objects(other_file, [new_object(other_file, "dicom")],
                                              signer=signer)
    assert (again.created, again.duplicate_of, again.instance) == (
        False, "instance_id", first.instance)


def _blind_look_ups(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writers see nothing cataloged: as a racing process whose look-up ran before the
    winner's commit."""
    monkeypatch.setattr(_catalog_writer._Known, "look_up",
                        classmethod(lambda cls, conn, instances: cls()))


def test_a_lost_insert_race_returns_the_winner_cleanly(catalog_url: str, signer: Ed25519Signer,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    with Catalog.create(catalog_url) as winner, Catalog(catalog_url) as loser:
        won = ingest(winner, signer, 1)
        _blind_look_ups(monkeypatch)
        lost = ingest(loser, signer, 1)
    assert not lost.created and lost.duplicate_of == "source_sha256"
    assert lost.instance == won.instance


def test_a_batch_whose_new_study_a_racing_writer_gave_another_patient_raises_a_conflict(
        catalog_url: str, signer: Ed25519Signer, monkeypatch: pytest.MonkeyPatch) -> None:
    with Catalog.create(catalog_url) as other, Catalog(catalog_url) as cat:
        ingest(other, signer, 1, patient="PSN-OTHER")
        _blind_look_ups(monkeypatch)
        inst = new_instance(2)
        with pytest.raises(ConcurrentWriteConflict, match="belongs to another patient"), \
                cat.writing() as writer:
            writer.add_many([(inst, [new_object(inst, "dicom")])], signer=signer)
        assert cat.find_instance_by_source_sha256(inst.source_sha256) is None  # rolled back


def test_a_batch_catalogs_images_in_order_with_duplicates_and_conflicts_in_place(
        catalog: Catalog, signer: Ed25519Signer) -> None:
    before = ingest(catalog, signer, 1)
    ingest(catalog, signer, 1, study="2.25.200", patient="PSN-0002")
    images = [new_instance(1), new_instance(2), new_instance(2),
              new_instance(3, study="2.25.200"), new_instance(4)]
    renamed = NewInstance(**{**images[2].__dict__, "source_sha256": sha("another file")})
    images[2] = renamed  # same instance id as images[1], another file

    with catalog.writing() as writer:
        results = writer.add_many([(i, [new_object(i, "dicom")]) for i in images],
                                  signer=signer)

    dup_old, new2, dup_new, conflict, new4 = results
    assert (dup_old.created, dup_old.duplicate_of, dup_old.instance) == (
        False, "source_sha256", before.instance)
    assert new2.created and new4.created
    assert (dup_new.created, dup_new.duplicate_of, dup_new.instance) == (
        False, "instance_id", new2.instance)
    assert dup_new.objects == new2.objects
    assert isinstance(conflict, VaultError) and "another patient" in str(conflict)
    assert catalog.find_instance_by_source_sha256(images[3].source_sha256) is None
    for result in (new2, new4):
        for obj in catalog.objects_of_instance(result.instance.instance_id):
            verify_object_record(obj, signer)


def test_results_of_a_batch_are_stored_together_or_not_at_all(catalog: Catalog,
                                                             signer: Ed25519Signer) -> None:
    first, second = ingest(catalog, signer, 1), ingest(catalog, signer, 2)
    ids = [first.instance.instance_id, second.instance.instance_id]
    with catalog.writing() as writer:
        records = writer.add_results([(ids[0], "model-a", {"p": 0.9}, None),
                                      (ids[1], "model-a", {"p": 0.2}, "job-7")])
    assert [r.result_id for r in catalog.results_of_instance(ids[1])] == ["job-7"]
    assert [r.payload for r in catalog.results_of_instance(ids[0])] == [{"p": 0.9}]
    assert records[0].result_id != records[1].result_id

    with pytest.raises(ObjectNotFound, match=r"2\.25\.100\.1\.99"), catalog.writing() as writer:
        writer.add_results([(ids[0], "model-b", {"p": 0.5}, None),
                            ("2.25.100.1.99", "model-b", {"p": 0.5}, None)])
    assert len(catalog.results_of_instance(ids[0])) == 1  # nothing of the batch stored


def test_concurrent_ingests_of_one_file_store_it_once(catalog_url: str,
                                                      signer: Ed25519Signer,
                                                      run_at_once) -> None:
    Catalog.create(catalog_url).close()
    catalogs = [Catalog(catalog_url) for _ in range(4)]
    outcomes: list[bool] = []
    errors = run_at_once(4, lambda k: outcomes.append(ingest(catalogs[k], signer, 7).created))
    for cat in catalogs:
        cat.close()
    assert errors == []
    assert sorted(outcomes) == [False, False, False, True]


def test_objects_need_a_signature_or_a_signer(catalog: Catalog) -> None:
    inst = new_instance(1)
    with pytest.raises(ValueError, match="signature"):
        catalog.add_instance_with_objects(inst, [new_object(inst, "dicom")])


def test_two_objects_of_one_kind_are_refused(catalog: Catalog, signer: Ed25519Signer) -> None:
    inst = new_instance(1)
    with pytest.raises(ValueError, match="distinct"):
        catalog.add_instance_with_objects(
            inst, [new_object(inst, "dicom"), new_object(inst, "dicom")], signer=signer)


def test_a_study_cannot_change_patient(catalog: Catalog, signer: Ed25519Signer) -> None:
    ingest(catalog, signer, 1, patient="PSN-0001")
    with pytest.raises(VaultError, match="another patient"):
        ingest(catalog, signer, 2, patient="PSN-0002")
    assert catalog.get_study("2.25.100").n_instances == 1


def test_a_reused_blob_key_is_a_clean_vault_error(catalog: Catalog,
                                                  signer: Ed25519Signer) -> None:
    first = ingest(catalog, signer, 1)
    inst = new_instance(2)
    clash = NewObject(**{**new_object(inst, "dicom").__dict__,
                         "blob_key": first.objects[0].blob_key})
    with pytest.raises(VaultError, match="already cataloged"):
        catalog.add_instance_with_objects(inst, [clash], signer=signer)
    assert catalog.find_instance_by_source_sha256(inst.source_sha256) is None


@pytest.mark.parametrize(
    ("change", "message"),
    [({"source_sha256": "ABC"}, "source_sha256 must match"),
     ({"instance_id": "has space"}, "instance_id must match"),
     ({"rows": 0}, "rows must be an integer >= 1"),
     ({"pixel_sha256": "0" * 63}, "pixel_sha256 must match"),
     ({"site": ""}, "site must match")],
)
def test_malformed_new_instances_are_rejected_when_built(change: dict, message: str) -> None:
    fields = {**new_instance(1).__dict__, **change}
    with pytest.raises(ValueError, match=message):
        NewInstance(**fields)


# --------------------------------------------------------------------------- reading


def test_missing_things_raise_object_not_found(catalog: Catalog) -> None:
    for call in (catalog.get_study, catalog.get_instance, catalog.get_object):
        with pytest.raises(ObjectNotFound):
            call("2.25.404")
    assert catalog.find_instance_by_source_sha256(sha("never seen")) is None
    assert catalog.instances_of_study("2.25.404") == []
    assert catalog.objects_of_instance("2.25.404") == []


def test_list_studies_pages_newest_first_and_filters_by_site(catalog: Catalog,
                                                             signer: Ed25519Signer) -> None:
    for k in range(5):
        ingest(catalog, signer, 1, study=f"2.25.{k}", site="north" if k % 2 else "south")
    ids = [s.study_id for s in catalog.list_studies(limit=10)]
    assert ids == [f"2.25.{k}" for k in (4, 3, 2, 1, 0)]
    assert [s.study_id for s in catalog.list_studies(limit=2, offset=2)] == ["2.25.2", "2.25.1"]
    assert [s.study_id for s in catalog.list_studies(site="north")] == ["2.25.3", "2.25.1"]


def test_iter_objects_walks_every_object_in_batches(catalog: Catalog,
                                                    signer: Ed25519Signer) -> None:
    expected = set()
    for n in range(3):
        expected |= {o.object_id for o in ingest(catalog, signer, n).objects}
    seen = [o.object_id for o in catalog.iter_objects(batch_size=2)]
    assert seen == sorted(expected)


def test_results_round_trip(catalog: Catalog, signer: Ed25519Signer) -> None:
    inst = ingest(catalog, signer, 1).instance
    payload = {"probabilities": {"normal": 0.25, "pneumonia": 0.75}, "calibrated": True}
    first = catalog.add_result(inst.instance_id, "resnet-6c-v1", payload, signer=signer)
    second = catalog.add_result(inst.instance_id, "resnet-6c-v2", {"probabilities": {}},
                                signer=signer)
    assert catalog.results_of_instance(inst.instance_id) == [first, second]
    assert first.payload == payload and first.signature and first.signer_key_id
    with pytest.raises(ObjectNotFound):
        catalog.add_result("2.25.404", "m", {}, signer=signer)
    with pytest.raises(TypeError, match=r"canonical_json: set at \$\.bad is not JSON"):
        catalog.add_result(inst.instance_id, "m", {"bad": {1, 2}}, signer=signer)
    with pytest.raises(VaultError):
        catalog.add_result(inst.instance_id, "m", {}, result_id=first.result_id, signer=signer)


# --------------------------------------------------------------------------- integrity records


def test_record_message_is_canonical_and_pinned() -> None:
    message = record_message(object_id="o1", instance_id="1.2", kind="dicom", blob_key="o/o1",
                             plain_size=1, sealed_size=2, sealed_sha256="a" * 64,
                             pixel_sha256="b" * 64)
    assert message == (
        b'{"blob_key":"o/o1","instance_id":"1.2","kind":"dicom","object_id":"o1",'
        b'"pixel_sha256":"' + b"b" * 64 + b'","plain_size":1,"sealed_sha256":"' + b"a" * 64
        + b'","sealed_size":2,"type":"radvault.object-record/1"}'
    )


def test_an_edited_object_row_fails_its_signature(catalog: Catalog,
                                                  signer: Ed25519Signer) -> None:
    obj = ingest(catalog, signer, 1).objects[0]
    with catalog.engine.begin() as conn:
        conn.execute(text("UPDATE objects SET sealed_size = sealed_size + 1 "
                          "WHERE object_id = :o"), {"o": obj.object_id})
    edited = catalog.get_object(obj.object_id)
    with pytest.raises(IntegrityError, match=obj.object_id):
        verify_object_record(edited, signer)


def test_an_edited_pixel_digest_fails_every_object_signature(catalog: Catalog,
                                                             signer: Ed25519Signer) -> None:
    added = ingest(catalog, signer, 1)
    with catalog.engine.begin() as conn:
        conn.execute(text("UPDATE instances SET pixel_sha256 = :p"), {"p": sha("other")})
    for obj in catalog.objects_of_instance(added.instance.instance_id):
        with pytest.raises(IntegrityError):
            signer.verify(object_record_message(obj), obj.record_signature)


# --------------------------------------------------------------------------- rotation


def test_rotation_helpers_resume_and_never_revive_shredded_keys(catalog: Catalog,
                                                                signer: Ed25519Signer) -> None:
    for n in range(3):
        ingest(catalog, signer, n, study="2.25.7")
    shredded = ingest(catalog, signer, 1, study="2.25.8")
    catalog.shred_study("2.25.8")

    first = catalog.objects_with_kek_other_than("kms:key/kek-2", limit=4)
    assert len(first) == 4 and all(o.kek_id == "kek-1" for o in first)
    for obj in first:  # then the "process" dies: 2 objects are left on kek-1
        assert catalog.update_wrapped_key(obj.object_id, b"rewrapped", "kms:key/kek-2",
                                          expected_kek_id="kek-1")
    rest = catalog.objects_with_kek_other_than("kms:key/kek-2")
    assert len(rest) == 2 and not {o.object_id for o in rest} & {o.object_id for o in first}
    for obj in rest:
        assert catalog.update_wrapped_key(obj.object_id, b"rewrapped", "kms:key/kek-2")
    assert catalog.objects_with_kek_other_than("kms:key/kek-2") == []

    moved = catalog.get_object(first[0].object_id)
    assert (moved.kek_id, moved.wrapped_key) == ("kms:key/kek-2", b"rewrapped")
    verify_object_record(moved, signer)  # rotation leaves the signed record valid
    assert not catalog.update_wrapped_key(moved.object_id, b"x", "kek-3",
                                          expected_kek_id="kek-1")
    dead = shredded.objects[0].object_id
    assert not catalog.update_wrapped_key(dead, b"resurrected", "kms:key/kek-2")
    assert catalog.get_object(dead).wrapped_key is None
    with pytest.raises(ObjectNotFound):
        catalog.update_wrapped_key("nosuchobject", b"k", "kms:key/kek-2")


# --------------------------------------------------------------------------- shredding


def test_shred_study_destroys_every_key_once(catalog: Catalog, signer: Ed25519Signer) -> None:
    for n in range(2):
        ingest(catalog, signer, n, study="2.25.1")
    kept = ingest(catalog, signer, 1, study="2.25.2")
    assert catalog.shred_study("2.25.1") == 4
    study = catalog.get_study("2.25.1")
    assert study.status == STUDY_SHREDDED and study.shredded_at is not None
    for inst in catalog.instances_of_study("2.25.1"):
        assert all(o.shredded for o in catalog.objects_of_instance(inst.instance_id))
    assert all(not o.shredded for o in catalog.objects_of_instance(kept.instance.instance_id))
    assert catalog.shred_study("2.25.1") == 0
    assert catalog.get_study("2.25.1").shredded_at == study.shredded_at
    with pytest.raises(VaultError, match="shredded"):
        ingest(catalog, signer, 9, study="2.25.1")
    with pytest.raises(ObjectNotFound):
        catalog.shred_study("2.25.404")


def test_shredded_keys_leave_no_bytes_in_the_sqlite_files(tmp_path,
                                                          signer: Ed25519Signer) -> None:
    path = tmp_path / "catalog.sqlite3"
    marker = b"WRAPPED-KEY-" + os.urandom(24).hex().encode()
    with Catalog.create(f"sqlite:///{path}") as cat:
        inst = new_instance(1)
        cat.add_instance_with_objects(inst, [new_object(inst, "dicom", wrapped=marker)],
                                      signer=signer)
        assert marker in b"".join(p.read_bytes() for p in tmp_path.iterdir())
        cat.shred_study(inst.study_id)
        leftovers = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert marker not in leftovers


# ----------------------------------------------------------------- group commit, durability


def test_a_writer_catalogs_many_images_in_one_commit(catalog: Catalog,
                                                     signer: Ed25519Signer) -> None:
    commits: list[int] = []
    event.listen(catalog.engine, "commit", lambda _conn: commits.append(1))
    first = new_instance(1)
    with catalog.writing() as writer:
        results = [writer.add_instance_with_objects(
            inst, [new_object(inst, "dicom"), new_object(inst, "model_input")], signer=signer)
            for inst in (first, new_instance(2), new_instance(3))]
        again = writer.add_instance_with_objects(first, [new_object(first, "dicom")],
                                                 signer=signer)
        with pytest.raises(VaultError, match="another patient"):  # refused, nothing written
            writer.add_instance_with_objects(new_instance(4, patient="PSN-0002"), [],
                                             signer=signer)
    assert len(commits) == 1
    assert [r.created for r in results] == [True, True, True]
    assert (again.created, again.duplicate_of) == (False, "source_sha256")
    assert catalog.get_study("2.25.100").n_instances == 3
    for result in results:
        for obj in result.objects:
            assert catalog.get_object(obj.object_id) == obj
            assert verify_object_record(obj, signer) == 2


def test_a_writer_stores_identity_records_and_creates_the_patient(catalog: Catalog) -> None:
    with catalog.writing() as writer:
        assert writer.identity_of("PSN-0042") is None
        writer.set_identity("PSN-0042", b"sealed", "identity-0001")
        assert writer.identity_of("PSN-0042") == (b"sealed", "identity-0001")
    assert catalog.get_patient("PSN-0042").identity_blob == b"sealed"


def test_a_failed_writer_block_commits_nothing(catalog: Catalog, signer: Ed25519Signer) -> None:
    inst = new_instance(1)
    with pytest.raises(RuntimeError), catalog.writing() as writer:
        writer.add_instance_with_objects(inst, [new_object(inst, "dicom")], signer=signer)
        raise RuntimeError("crash before commit")
    assert catalog.find_instance_by_source_sha256(inst.source_sha256) is None


@pytest.mark.parametrize("synchronous, pragma", [("FULL", 2), ("NORMAL", 1)])
def test_sqlite_durability_is_a_choice(tmp_path, synchronous: str, pragma: int) -> None:
    with Catalog.create(f"sqlite:///{tmp_path / 'c.sqlite3'}",
                        synchronous=synchronous) as catalog, catalog.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == pragma
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_an_unknown_durability_is_refused(tmp_path) -> None:
    with pytest.raises(ConfigurationError, match="synchronous"):
        Catalog(f"sqlite:///{tmp_path / 'c.sqlite3'}", synchronous="OFF")
    with pytest.raises(ConfigurationError, match="durability"):
        load_settings(env={}, home=tmp_path, durability="off")
    assert load_settings(env={"RADVAULT_DURABILITY": "normal"}, home=tmp_path).durability \
        == "normal"
    assert load_settings(env={}, home=tmp_path).durability == "full"


def test_an_older_catalog_gets_the_result_signature_columns_once_whoever_opens_first(
        catalog_url: str, run_at_once) -> None:
    # several processes (API, workers, DICOM) may open an upgraded vault at the same time
    from sqlalchemy import create_engine, text

    with Catalog.create(catalog_url):
        pass
    engine = create_engine(catalog_url)
    with engine.begin() as conn:  # as a catalog made before session 10
        conn.execute(text("ALTER TABLE results DROP COLUMN signature"))
        conn.execute(text("ALTER TABLE results DROP COLUMN signer_key_id"))
        conn.execute(text("DROP TABLE catalog_meta"))
    engine.dispose()

    opened: list[Catalog] = []
    errors = run_at_once(3, lambda _: opened.append(Catalog.create(catalog_url)))
    try:
        assert errors == []
        assert all(c.result_signing_pending() for c in opened)
    finally:
        for c in opened:
            c.close()

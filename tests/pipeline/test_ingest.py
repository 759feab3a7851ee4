"""Ingest end to end: real DICOM and PNG/JPEG go in de-identified, sealed, cataloged and audited."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom
import pytest
from sqlalchemy import event
from sqlalchemy import exc as sa_exc

from radvault.config import Settings
from radvault.errors import (
    BurnedInAnnotationRefused,
    ConcurrentWriteConflict,
    IntegrityError,
    InvalidRequest,
)
from radvault.imaging.reading import read_image
from radvault.pipeline.ingest import (
    DICOM_KIND,
    MODEL_INPUT_KIND,
    SOURCE_KIND,
    IngestItem,
    Ingestor,
)
from radvault.pipeline.retrieve import open_image, open_model_input
from radvault.vault.audit import Action, Outcome
from radvault.vault.catalog import CatalogWriter
from radvault.vault.vault import Vault

if TYPE_CHECKING:
    from conftest import Kit

ACTOR = "tester"


def _audit(vault: Vault, action: str) -> list:
    return [e for e in vault.audit if e.action == action]


def test_real_dicom_across_modalities_is_stored_sealed_and_readable(
    kit: Kit, vault: Vault, ingestor: Ingestor
) -> None:
    corpus = kit.require_dicom_dir()
    files = [kit.ct_small(), *(corpus / name for name in kit.DICOM_SAMPLES)]
    expected_modality = ["CT", "CT", "MR", "CT", "MR", "SEG", "MR"]

    outcomes = ingestor.ingest_paths(files)

    assert [o.status for o in outcomes] == ["stored"] * len(files), [o.reason for o in outcomes]
    assert [o.modality for o in outcomes] == expected_modality
    for path, outcome in zip(files, outcomes, strict=True):
        iid = kit.stored(outcome)
        kinds = sorted(o.kind for o in vault.catalog.objects_of_instance(iid))
        assert kinds == sorted([DICOM_KIND, MODEL_INPUT_KIND])
        original = read_image(path)
        image = open_image(vault, iid, actor=ACTOR)
        # de-identification never touches pixels: the decoded pixels are the original ones
        assert image.pixel_sha256() == original.pixel_sha256()
        assert vault.pixel_digest(image.pixel_message()) == vault.catalog.get_instance(
            iid).pixel_sha256
        assert image.modality == outcome.modality
        # the kit.stored DICOM is the de-identified one: new UIDs, no patient name
        assert image.sop_instance_uid == iid != original.sop_instance_uid
        assert image.dataset is not None and original.dataset is not None
        if original.dataset.get("PatientName"):
            assert image.dataset.get("PatientName") != original.dataset.PatientName
        model_input = open_model_input(vault, iid, actor=ACTOR)
        assert model_input.array.shape == (3, 224, 224)
        assert model_input.array.dtype == np.float32
        assert np.isfinite(model_input.array).all()
        assert model_input.settings["size"] == 224
    ingest_entries = _audit(vault, Action.INGEST)
    assert len(ingest_entries) == len(files)
    assert all(e.outcome == Outcome.OK for e in ingest_entries)
    # the audit names instances and objects by pseudonymous id, never by file
    for entry, outcome in zip(ingest_entries, outcomes, strict=True):
        assert outcome.instance_id in entry.object_ids
        assert outcome.name not in json.dumps(entry.to_dict())


@pytest.mark.parametrize(("suffix", "modality", "body_part"),
                         [(".png", "MR", "BRAIN"), (".jpg", "DX", "CHEST")])
def test_png_and_jpeg_take_the_modality_hint(
    kit: Kit, vault: Vault, ingestor: Ingestor, tmp_path: Path,
    suffix: str, modality: str, body_part: str,
) -> None:
    path = kit.make_raster(tmp_path / f"image{suffix}", seed=7)

    outcome = ingestor.ingest_file(path, modality=modality, body_part=body_part)

    iid = kit.stored(outcome)
    assert outcome.modality == modality
    study = vault.catalog.get_study(outcome.study_id)
    assert (study.modality, study.body_part) == (modality, body_part)
    assert sorted(o.kind for o in vault.catalog.objects_of_instance(iid)) == sorted(
        [SOURCE_KIND, MODEL_INPUT_KIND])
    image = open_image(vault, iid, actor=ACTOR)
    assert np.array_equal(image.pixels, read_image(path).pixels)
    assert open_model_input(vault, iid, actor=ACTOR).array.shape == (3, 224, 224)


def test_a_modality_hint_never_overrides_the_dicom_header(
    kit: Kit, vault: Vault, ingestor: Ingestor
) -> None:
    outcome = ingestor.ingest_file(kit.ct_small(), modality="MR", body_part="KNEE")

    iid = kit.stored(outcome)
    assert outcome.modality == "CT"
    assert vault.catalog.get_study(outcome.study_id).modality == "CT"
    assert open_image(vault, iid, actor=ACTOR).modality == "CT"


@pytest.mark.parametrize(("hints", "named"), [
    ({"modality": "XX"}, "modality"), ({"body_part": "Doe_Jane"}, "body part"),
    ({"modality": "mr", "body_part": "SMITH"}, "body part")])
def test_the_use_case_refuses_a_hint_that_is_no_defined_term_before_reading_anything(
    kit: Kit, vault: Vault, ingestor: Ingestor, tmp_path: Path,
    hints: dict[str, str], named: str,
) -> None:
    # every way in refuses it, not only the faces: a typed hint is never stored as OT
    # or an unknown body part; the message names the field, never the value
    png = kit.make_raster(tmp_path / "a.png", seed=11)
    calls = (lambda: ingestor.ingest_file(png, **hints),
             lambda: ingestor.ingest_bytes(png.read_bytes(), "a.png", **hints),
             lambda: ingestor.ingest_paths([png], **hints),
             lambda: IngestItem(png, **hints))
    for call in calls:
        with pytest.raises(InvalidRequest, match=f"^{named} is not a DICOM ") as caught:
            call()
        assert not any(v in str(caught.value) for v in ("XX", "Doe", "SMITH"))
    assert vault.catalog.list_studies() == []


def test_hints_are_kept_as_defined_terms_whatever_their_case(
    kit: Kit, vault: Vault, ingestor: Ingestor, tmp_path: Path,
) -> None:
    png = kit.make_raster(tmp_path / "a.png", seed=12)

    outcome = ingestor.ingest_many([IngestItem(png, modality=" mr", body_part="brain ")])[0]

    kit.stored(outcome)
    study = vault.catalog.get_study(outcome.study_id)
    assert (study.modality, study.body_part) == ("MR", "BRAIN")


def test_the_same_image_twice_is_a_duplicate_and_nothing_is_stored_twice(
    kit: Kit, vault: Vault, ingestor: Ingestor, settings: Settings, tmp_path: Path
) -> None:
    png = kit.make_raster(tmp_path / "a.png", seed=3)
    first = [ingestor.ingest_file(kit.ct_small()), ingestor.ingest_file(png, modality="US")]
    home = settings.home

    def counts() -> tuple[int, ...]:
        return (len(kit.blob_files(home)),
                *(kit.count_rows(home, t) for t in ("instances", "objects", "studies",
                                                    "patients")))

    before = counts()
    assert before == (4, 2, 4, 2, 2)
    renamed = shutil.copy(png, tmp_path / "renamed.png")

    again = [ingestor.ingest_file(kit.ct_small()), ingestor.ingest_file(png, modality="US"),
             ingestor.ingest_file(Path(renamed), modality="US")]

    assert [o.status for o in again] == ["duplicate"] * 3
    assert [o.instance_id for o in again] == [first[0].instance_id, first[1].instance_id,
                                              first[1].instance_id]
    assert counts() == before
    duplicates = [e for e in _audit(vault, Action.INGEST) if e.details.get("duplicate")]
    assert len(duplicates) == 3


def test_another_encoding_of_the_same_instance_is_a_duplicate(
    kit: Kit, vault: Vault, ingestor: Ingestor
) -> None:
    corpus = kit.require_dicom_dir()
    # The same MR instance (same SOP Instance UID), kit.stored with two transfer syntaxes.
    first = ingestor.ingest_file(corpus / "pydicom_data" / "emri_small.dcm")
    blobs = len(kit.blob_files(vault.settings.home))

    second = ingestor.ingest_file(corpus / "pydicom_data" / "emri_small_RLE.dcm")

    assert second.status == "duplicate"
    assert second.instance_id == kit.stored(first)
    assert len(kit.blob_files(vault.settings.home)) == blobs  # the second seal's blobs were dropped
    assert kit.count_rows(vault.settings.home, "objects") == 2


def _burned_in_copy(kit: Kit, tmp_path: Path) -> Path:
    ds = pydicom.dcmread(kit.ct_small())
    ds.BurnedInAnnotation = "YES"
    path = tmp_path / "burned.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_burned_in_secondary_capture_is_refused_and_audited(
    kit: Kit, vault: Vault, ingestor: Ingestor, tmp_path: Path
) -> None:
    corpus = kit.require_dicom_dir()
    inputs = [corpus / "pydicom_data" / "SC_rgb.dcm", _burned_in_copy(kit, tmp_path)]

    outcomes = ingestor.ingest_paths(inputs)

    assert [o.status for o in outcomes] == ["refused", "refused"]
    assert {o.error for o in outcomes} == {BurnedInAnnotationRefused.__name__}
    assert "Secondary Capture" in (outcomes[0].reason or "")
    assert "BurnedInAnnotation" in (outcomes[1].reason or "")
    home = vault.settings.home
    assert kit.blob_files(home) == []
    assert kit.count_rows(home, "instances") == 0
    refusals = _audit(vault, Action.INGEST_REFUSED)
    assert len(refusals) == 2
    for entry in refusals:
        assert entry.outcome == Outcome.REFUSED
        assert entry.details == {"error": "BurnedInAnnotationRefused",
                                 "policy": "burned_in_annotation"}


def test_burned_in_images_go_in_when_the_policy_accepts_them(kit: Kit, tmp_path: Path) -> None:
    settings = kit.new_settings(tmp_path / "home", accept_burned_in=True)
    with kit.init_vault(settings) as vault:
        outcome = Ingestor(vault, actor=ACTOR).ingest_file(_burned_in_copy(kit, tmp_path))
        kit.stored(outcome)
        entry = _audit(vault, Action.INGEST)[-1]
        assert entry.details["burned_in_risk"] is True


def test_broken_files_are_refused_with_reasons_and_the_rest_go_in(
    kit: Kit, vault: Vault, ingestor: Ingestor, tmp_path: Path
) -> None:
    corpus = kit.require_dicom_dir()
    broken = sorted((corpus / "broken").glob("*.dcm"))
    assert len(broken) == 4
    text = tmp_path / "notes.dcm"
    text.write_text("not an image at all\n")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    good_png = kit.make_raster(tmp_path / "good.png", seed=11)
    cut_png = tmp_path / "cut.png"
    cut_png.write_bytes(good_png.read_bytes()[:200])
    inputs = [broken[0], kit.ct_small(), *broken[1:], text, empty, cut_png, good_png,
              tmp_path / "missing.dcm"]

    outcomes = ingestor.ingest_paths(inputs, modality="MR")

    status = {Path(o.name).name: o for o in outcomes}
    assert status["CT_small.dcm"].status == "stored"
    assert status["good.png"].status == "stored"
    refused = [o for o in outcomes if o.status == "refused"]
    assert len(refused) == len(inputs) - 2
    for outcome in refused:
        assert outcome.error and outcome.reason, outcome
    assert status["liver_deflate.dcm"].error == "UnsupportedTransferSyntax"
    assert status["notes.dcm"].error == "NotAnImage"
    assert status["cut.png"].error == "CorruptImage"
    assert status["missing.dcm"].error == "ImageInputError"
    assert kit.count_rows(vault.settings.home, "instances") == 2
    assert len(kit.blob_files(vault.settings.home)) == 4
    refusals = _audit(vault, Action.INGEST_REFUSED)
    assert len(refusals) == len(refused)
    assert [e.details["error"] for e in refusals] == [o.error for o in refused]
    for entry in refusals:  # file names stay out of the audit trail
        assert str(tmp_path) not in json.dumps(entry.to_dict())


def test_identity_record_is_sealed_and_holds_the_removed_values(
    kit: Kit, vault: Vault, ingestor: Ingestor, tmp_path: Path
) -> None:
    marker = "QZXWIDENTITY^PLANTED"
    ds = pydicom.dcmread(kit.ct_small())
    ds.PatientName = marker
    ds.PatientID = "QZXW-ID-55821"
    path = tmp_path / "patient.dcm"
    ds.save_as(path, enforce_file_format=True)

    outcome = ingestor.ingest_file(path)

    kit.stored(outcome)
    pseudonym = vault.catalog.get_study(outcome.study_id).patient_pseudonym
    assert marker not in pseudonym
    patient = vault.catalog.get_patient(pseudonym)
    assert patient.identity_blob is not None
    assert marker.encode() not in patient.identity_blob
    plain = vault.keys.open_identity(patient.identity_blob, context=pseudonym.encode())
    identity = json.loads(bytes(plain))
    assert identity["PatientName"] == [marker]
    assert identity["PatientID"] == ["QZXW-ID-55821"]
    # the identity record is bound to its patient: it does not open as another one's
    with pytest.raises(IntegrityError, match="does not authenticate"):
        vault.keys.open_identity(patient.identity_blob, context=b"RV-OTHERPATIENT")
    home = vault.settings.home
    for db_file in home.glob("catalog.sqlite3*"):
        data = db_file.read_bytes()
        assert marker.encode() not in data
        assert b"QZXW-ID-55821" not in data


def test_a_second_image_of_the_same_patient_merges_into_one_identity_record(
    kit: Kit, vault: Vault, ingestor: Ingestor, tmp_path: Path
) -> None:
    paths = []
    for n, name in enumerate(["QZXW^FIRST", "QZXW^SECOND"]):
        ds = pydicom.dcmread(kit.ct_small())
        ds.PatientName = name
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{n + 1}"
        paths.append(tmp_path / f"p{n}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)

    outcomes = ingestor.ingest_paths(paths)

    assert [o.status for o in outcomes] == ["stored", "stored"]
    pseudonyms = {vault.catalog.get_study(o.study_id).patient_pseudonym for o in outcomes}
    assert len(pseudonyms) == 1  # same PatientID, same pseudonym
    pseudonym = pseudonyms.pop()
    blob = vault.catalog.get_patient(pseudonym).identity_blob
    assert blob is not None
    identity = json.loads(bytes(vault.keys.open_identity(blob, context=pseudonym.encode())))
    assert identity["PatientName"] == ["QZXW^FIRST", "QZXW^SECOND"]


def test_ingest_paths_keeps_the_input_order_and_reports_each_file_as_it_ends(
    kit: Kit, vault: Vault, ingestor: Ingestor, tmp_path: Path
) -> None:
    # ingest_paths stores one image while it prepares the next: order and counts still hold.
    pngs = [kit.make_raster(tmp_path / f"{i}.png", seed=100 + i) for i in range(4)]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    inputs = [pngs[0], pngs[1], bad, pngs[1], pngs[2], shutil.copy(pngs[2], tmp_path / "c.png"),
              pngs[3]]
    seen: list[str] = []

    outcomes = ingestor.ingest_paths([Path(p) for p in inputs], modality="MR",
                                     on_file=lambda o: seen.append(o.name))

    assert seen == [o.name for o in outcomes] == [str(p) for p in inputs]
    assert [o.status for o in outcomes] == ["stored", "stored", "refused", "duplicate",
                                            "stored", "duplicate", "stored"]
    assert outcomes[3].instance_id == outcomes[1].instance_id
    assert outcomes[5].instance_id == outcomes[4].instance_id
    home = vault.settings.home
    assert kit.count_rows(home, "instances") == 4
    assert len(kit.blob_files(home)) == 8  # the back-to-back duplicate left no blobs behind
    for outcome in outcomes:
        if outcome.status == "stored":
            assert outcome.instance_id is not None
            open_image(vault, outcome.instance_id, actor=ACTOR)


def test_an_unexpected_error_stops_the_batch_after_the_image_in_flight_is_stored(
    kit: Kit, vault: Vault, ingestor: Ingestor, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pngs = [kit.make_raster(tmp_path / f"{i}.png", seed=200 + i) for i in range(3)]
    real = ingestor._prepare
    calls = 0

    def failing(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("a bug, not a bad file")
        return real(*args, **kwargs)

    monkeypatch.setattr(ingestor, "_prepare", failing)
    with pytest.raises(RuntimeError, match="a bug"):
        ingestor.ingest_paths(pngs, modality="MR")

    home = vault.settings.home
    assert kit.count_rows(home, "instances") == 1  # the first image was stored whole
    assert len(kit.blob_files(home)) == 2


# --------------------------------------------------------------------------- group commit


def _commits(vault: Vault) -> list[int]:
    commits: list[int] = []
    event.listen(vault.catalog.engine, "commit", lambda _conn: commits.append(1))
    return commits


def test_a_batch_is_stored_with_one_catalog_commit_and_audited_in_order(
    kit: Kit, vault: Vault, ingestor: Ingestor, tmp_path: Path
) -> None:
    pngs = [kit.make_raster(tmp_path / f"{i}.png", seed=300 + i) for i in range(4)]
    prepared = [ingestor._check_and_prepare(p.read_bytes(), p.name, "MR", None, None)
                for p in [*pngs, pngs[1]]]  # the last one repeats an image of the batch
    before = vault.audit.tail(1)[0].seq
    commits = _commits(vault)

    outcomes = ingestor._store_batch(prepared)

    assert len(commits) == 1
    assert [o.status for o in outcomes] == ["stored"] * 4 + ["duplicate"]
    assert outcomes[4].instance_id == outcomes[1].instance_id
    entries = [e for e in vault.audit if e.seq > before]
    assert [e.action for e in entries] == ["ingest"] * 5
    assert [e.object_ids[1] for e in entries] == [o.instance_id for o in outcomes]
    assert entries[-1].details == {"duplicate": True}
    home = vault.settings.home
    assert len(kit.blob_files(home)) == 8  # the duplicate's blobs were removed
    assert all(not p.stored_bytes.strip(b"\0") for p in prepared)  # plaintexts wiped
    for outcome in outcomes[:4]:
        assert outcome.instance_id is not None
        open_image(vault, outcome.instance_id, actor=ACTOR)


def test_a_conflicting_image_is_refused_without_failing_its_batch(
    kit: Kit, vault: Vault, ingestor: Ingestor, tmp_path: Path
) -> None:
    first = ingestor.ingest_file(kit.ct_small())
    kit.stored(first)
    ds = pydicom.dcmread(kit.ct_small())
    ds.PatientID = "QZXW-OTHER-PATIENT"  # same study UID, another patient
    ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.9"
    clash = tmp_path / "clash.dcm"
    ds.save_as(clash, enforce_file_format=True)
    png = kit.make_raster(tmp_path / "ok.png", seed=400)

    outcomes = ingestor.ingest_many([IngestItem(clash), IngestItem(png.read_bytes(), "ok.png",
                                                                   modality="DX")])

    assert [o.status for o in outcomes] == ["refused", "stored"]
    assert outcomes[0].error == "UidConflict" and "another patient" in (outcomes[0].reason or "")
    assert outcomes[1].name == "ok.png"
    assert kit.count_rows(vault.settings.home, "instances") == 2
    assert len(kit.blob_files(vault.settings.home)) == 4


@pytest.mark.parametrize("race", [
    sa_exc.IntegrityError("INSERT", {}, Exception("unique violation")),
    ConcurrentWriteConflict("study 2.25.1 belongs to another patient"),
], ids=["lost-insert", "parent-taken"])
def test_a_batch_that_races_another_writer_falls_back_to_one_image_at_a_time(
    kit: Kit, vault: Vault, ingestor: Ingestor, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, race: Exception,
) -> None:
    # PostgreSQL aborts a transaction whose insert lost a race (and a batch whose new
    # study or series another writer created first is rolled back): nothing of the
    # batch was written, and each image is then cataloged in its own transaction.
    real = CatalogWriter.add_many
    calls: list[int] = []

    def racing(self: CatalogWriter, images: list, **kwargs: object) -> object:
        calls.append(len(images))
        if len(calls) == 1:
            raise race
        return real(self, images, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(CatalogWriter, "add_many", racing)
    pngs = [kit.make_raster(tmp_path / f"{i}.png", seed=500 + i) for i in range(3)]
    prepared = [ingestor._check_and_prepare(p.read_bytes(), p.name, "MR", None, None)
                for p in pngs]

    outcomes = ingestor._store_batch(prepared)

    assert calls == [3, 1, 1, 1]
    assert [o.status for o in outcomes] == ["stored"] * 3
    assert kit.count_rows(vault.settings.home, "instances") == 3
    assert len(kit.blob_files(vault.settings.home)) == 6
    assert vault.audit.verify().ok


def test_ingest_many_takes_files_and_bytes_and_groups_commits(
    kit: Kit, vault: Vault, ingestor: Ingestor, tmp_path: Path
) -> None:
    pngs = [kit.make_raster(tmp_path / f"{i}.png", seed=600 + i) for i in range(12)]
    items = [IngestItem(p, modality="MR") if i % 2 else
             IngestItem(p.read_bytes(), f"upload {i}", modality="MR", patient_key="pk-1")
             for i, p in enumerate(pngs)]
    commits = _commits(vault)

    outcomes = ingestor.ingest_many(items)

    assert [o.status for o in outcomes] == ["stored"] * 12
    assert [o.name for o in outcomes] == [f"upload {i}" if i % 2 == 0 else str(p)
                                          for i, p in enumerate(pngs)]
    assert len(commits) <= 12  # one per batch (a batch holds whatever was ready)
    studies = {vault.catalog.get_study(o.study_id).patient_pseudonym  # type: ignore[arg-type]
               for o in outcomes[::2]}
    assert len(studies) == 1  # the patient key links the uploads


def test_small_batches_wait_briefly_for_more_images_but_never_past_the_end(
    kit: Kit, vault: Vault, ingestor: Ingestor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from radvault.pipeline import ingest as ingest_module

    # A linger far longer than the run: only a full batch or the end of input may cut it.
    monkeypatch.setattr(ingest_module, "BATCH_LINGER_S", 30.0)
    monkeypatch.setattr(ingest_module, "MIN_BATCH_IMAGES", 8)
    monkeypatch.setattr(ingest_module, "MAX_BATCH_IMAGES", 8)  # exactly 8, then 4
    pngs = [kit.make_raster(tmp_path / f"{i}.png", seed=700 + i) for i in range(12)]
    commits = _commits(vault)
    started = time.monotonic()

    outcomes = ingestor.ingest_many(IngestItem(p, modality="MR") for p in pngs)

    assert [o.status for o in outcomes] == ["stored"] * 12
    assert len(commits) == 2  # 8 images, then the last 4 at the end of the input
    assert time.monotonic() - started < 20


def _second_site_ingestor(vault: Vault) -> Ingestor:
    from radvault.pipeline.clinical import ClinicalService, ServiceSettings, operator_principal

    service = ClinicalService.build(vault, ServiceSettings(argon2=(1, 8, 1), start_workers=False))
    service.add_site(operator_principal("cli:t"), "st-mary")
    return Ingestor(vault, actor="dicom:CT01", site="st-mary")


def _instance_of_the_same_study(kit: Kit, tmp_path: Path, n: int) -> Path:
    ds = pydicom.dcmread(kit.ct_small())
    ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{n}"
    path = tmp_path / f"i{n}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_an_image_of_a_study_of_another_site_is_refused_never_merged(
    kit: Kit, vault: Vault, ingestor: Ingestor, tmp_path: Path
) -> None:
    files = [_instance_of_the_same_study(kit, tmp_path, n) for n in range(4)]
    first = ingestor.ingest_paths(files[:2])  # site default creates the study
    other = _second_site_ingestor(vault)

    later = other.ingest_paths(files[2:])  # one batch, both of the study of "default"
    copy = other.ingest_file(files[0])  # a copy of an image of that study

    assert [o.status for o in first] == ["stored"] * 2
    study_id = first[0].study_id
    assert [(o.status, o.error) for o in [*later, copy]] == [("refused", "StudySiteConflict")] * 3
    assert vault.catalog.get_study(study_id).site == "default"  # type: ignore[arg-type]
    assert kit.count_rows(vault.settings.home, "instances") == 2
    assert len(kit.blob_files(vault.settings.home)) == 4  # the refused images' blobs are gone
    refusals = _audit(vault, Action.INGEST_REFUSED)
    assert [(e.actor, e.outcome, e.details, list(e.object_ids)) for e in refusals] == [
        ("dicom:CT01", Outcome.REFUSED, {"error": "StudySiteConflict"}, [study_id])] * 3
    assert vault.audit.verify().ok


def test_a_batch_that_meets_another_sites_study_stores_its_other_images(
    kit: Kit, vault: Vault, ingestor: Ingestor, tmp_path: Path
) -> None:
    kit.stored(ingestor.ingest_file(_instance_of_the_same_study(kit, tmp_path, 0)))
    other = _second_site_ingestor(vault)
    png = kit.make_raster(tmp_path / "ok.png", seed=800)

    outcomes = other.ingest_many([IngestItem(_instance_of_the_same_study(kit, tmp_path, 1)),
                                  IngestItem(png, modality="DX")])

    assert [(o.status, o.error) for o in outcomes] == [("refused", "StudySiteConflict"),
                                                       ("stored", None)]
    assert vault.catalog.get_study(outcomes[1].study_id).site == "st-mary"  # type: ignore[arg-type]
    assert kit.count_rows(vault.settings.home, "instances") == 2

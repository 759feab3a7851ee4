"""DICOMweb (STOW-RS, QIDO-RS, WADO-RS) through the ``dicomweb-client`` package.

A vault and a live server of their own (the shared one's studies stay as other
modules expect them). North's technologist stores real files by STOW-RS; its
radiologist searches and retrieves them; every other role, an ungranted
radiologist and bad tokens are refused, and the refusals are audited.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
import requests
from apikit import UPLOAD_CAP, World, build_world, pydicom_file
from dicomweb_client.api import DICOMwebClient
from PIL import Image

from radvault.pipeline.ingest import DICOM_KIND

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "dicom"
ELE = "1.2.840.10008.1.2.1"


def shared_file(relative: str) -> Path:
    path = SHARED / relative
    if not path.is_file():
        pytest.skip(f"shared DICOM corpus not found at {SHARED} (see tests' README)")
    return path


@pytest.fixture(scope="module")
def dw(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[World]:
    """A running RadVault with one more user: a radiologist of north without any grant."""
    w = build_world(tmp_path_factory.mktemp("dicomweb") / "home", models_dir)
    w.add_user("rad-nogrant", "radiologist", "north")
    try:
        yield w
    finally:
        w.server.stop()
        w.vault.close()


def client(world: World, user: str | None, token: str | None = None) -> DICOMwebClient:
    headers = {}
    if user is not None or token is not None:
        headers["Authorization"] = f"Bearer {token or world.token(str(user))}"
    return DICOMwebClient(url=f"{world.base_url}/dicomweb", headers=headers)


def related(parts: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """A multipart/related body of ``application/dicom`` parts, and its Content-Type."""
    boundary = uuid.uuid4().hex
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p
                    + b"\r\n" for p in parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type":
                  f'multipart/related; type="application/dicom"; boundary={boundary}'}


@pytest.fixture(scope="module")
def originals() -> dict[str, pydicom.Dataset]:
    """The files north's technologist stores, as read from disk (identifying values intact)."""
    return {
        "ct": pydicom.dcmread(pydicom_file("CT_small.dcm")),
        "mr": pydicom.dcmread(pydicom_file("MR_small.dcm")),
        "t1a": pydicom.dcmread(shared_file("studyforrest_mr_t1/N2D_0145.dcm")),
        "t1b": pydicom.dcmread(shared_file("studyforrest_mr_t1/N2D_0146.dcm")),
        "j2k": pydicom.dcmread(shared_file("pydicom_data/emri_small_jpeg_2k_lossless.dcm")),
    }


@pytest.fixture(scope="module")
def stored(dw: World, originals: dict[str, pydicom.Dataset]) -> dict[str, Any]:
    """STOW-RS of the originals in one request: the answer and the audit trail it left."""
    mark = dw.mark()
    answer = client(dw, "tech-n").store_instances(list(originals.values()))
    ids = {}
    for key, item in zip(originals, answer.ReferencedSOPSequence, strict=True):
        study, series, instance = item.RetrieveURL.split("/studies/")[1].split("/")[::2]
        ids[key] = {"study": study, "series": series, "instance": instance}
    return {"answer": answer, "ids": ids, "audit": dw.audit_since(mark)}


def _sealed_dataset(world: World, instance_id: str) -> pydicom.Dataset:
    """What the vault holds for an instance, opened directly (the reference to compare with)."""
    obj = next(o for o in world.vault.catalog.objects_of_instance(instance_id)
               if o.kind == DICOM_KIND)
    return pydicom.dcmread(io.BytesIO(bytes(world.vault.open_object(obj, actor="tests"))))


def _status(excinfo: pytest.ExceptionInfo[requests.HTTPError]) -> int:
    return int(excinfo.value.response.status_code)


# --------------------------------------------------------------------------- STOW-RS


def test_store_acknowledges_each_instance_with_its_pseudonymous_location(
        stored: dict[str, Any], originals: dict[str, pydicom.Dataset]) -> None:
    answer = stored["answer"]
    assert "FailedSOPSequence" not in answer
    items = answer.ReferencedSOPSequence
    assert len(items) == len(originals)
    for item, original in zip(items, originals.values(), strict=True):
        assert item.ReferencedSOPInstanceUID == original.SOPInstanceUID  # what the sender sent
        assert item.ReferencedSOPClassUID == original.SOPClassUID
        assert item.WarningReason == 0xB000  # coerced: de-identified
        assert original.SOPInstanceUID not in item.RetrieveURL
        assert original.StudyInstanceUID not in item.RetrieveURL
    ids = stored["ids"]
    assert ids["t1a"]["series"] == ids["t1b"]["series"]  # one series stays one series
    ingests = [e for e in stored["audit"] if e.action == "ingest"]
    assert len(ingests) == len(originals) and {e.actor for e in ingests} == {"tech-n"}
    summary = [e for e in stored["audit"] if e.action == "dicomweb.store"]
    assert summary[-1].details["stored"] == len(originals)


def test_refused_instances_are_listed_as_failed_with_their_reason_and_audited(
        dw: World, stored: dict[str, Any]) -> None:
    ct = pydicom_file("CT_small.dcm").read_bytes()
    burned_in = shared_file("pydicom_data/OBXXXX1A_rle.dcm").read_bytes()  # US: burned-in risk
    corrupt = ct[: len(ct) // 2]  # pixel data cut short
    body, headers = related([ct, burned_in, corrupt, b"not DICOM at all"])
    mark = dw.mark()
    r = dw.post("tech-n", "/dicomweb/studies", content=body, headers=headers)
    assert r.status_code == 202, r.text
    assert r.headers["content-type"] == "application/dicom+json"
    answer = pydicom.Dataset.from_json(r.json())
    assert len(answer.ReferencedSOPSequence) == 1  # the CT: already stored, a duplicate
    url = answer.ReferencedSOPSequence[0].RetrieveURL
    assert url.startswith(f"{dw.base_url}/dicomweb/studies/")  # the Host the client used
    assert dw.get("rad-n", url.removeprefix(dw.base_url)).status_code == 200
    reasons = [item.FailureReason for item in answer.FailedSOPSequence]
    assert reasons == [0x0124, 0xC001, 0xC001]
    refused = [e.details["error"] for e in dw.audit_since(mark, "ingest_refused")]
    assert sorted(refused) == ["BurnedInAnnotationRefused", "CorruptImage", "NotAnImage"]


def test_an_instance_of_another_sites_study_is_refused_before_it_is_stored(
        dw: World, stored: dict[str, Any], originals: dict[str, pydicom.Dataset]) -> None:
    mark = dw.mark()
    with pytest.raises(requests.HTTPError) as excinfo:  # 409: nothing stored
        client(dw, "tech-s").store_instances([originals["ct"]])
    assert _status(excinfo) == 409
    failed = pydicom.Dataset.from_json(excinfo.value.response.json()).FailedSOPSequence
    assert [i.FailureReason for i in failed] == [0x0124]
    assert [e.actor for e in dw.audit_since(mark, "access_denied")] == ["tech-s"]
    assert not dw.audit_since(mark, "ingest")


def test_a_request_storing_nothing_is_a_conflict(dw: World) -> None:
    body, headers = related([b"garbage"])
    r = dw.post("tech-n", "/dicomweb/studies", content=body, headers=headers)
    assert r.status_code == 409
    assert pydicom.Dataset.from_json(r.json()).FailedSOPSequence[0].FailureReason == 0xC001


def test_an_oversized_body_is_refused_while_it_streams_and_audited(dw: World) -> None:
    boundary = uuid.uuid4().hex

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap must hold while reading
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        for _ in range(UPLOAD_CAP // 65536 + 4):
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    mark = dw.mark()
    r = dw.post("tech-n", "/dicomweb/studies", content=chunks(), headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert r.status_code == 413
    assert [e.details["error"] for e in dw.audit_since(mark, "ingest_refused")] == [
        "ImageTooLarge"]


def test_store_takes_only_application_dicom(dw: World) -> None:
    r = dw.post("tech-n", "/dicomweb/studies", content=b"{}",
                headers={"Content-Type": "application/json"})
    assert r.status_code == 415
    body, headers = related([b"x"])
    headers["Content-Type"] = headers["Content-Type"].replace("application/dicom",
                                                              "application/dicom+json")
    assert dw.post("tech-n", "/dicomweb/studies", content=body, headers=headers
                   ).status_code == 415
    assert dw.post("tech-n", "/dicomweb/studies/2.25.1", content=body,  # not offered
                   headers=headers).status_code == 405


@pytest.mark.parametrize("user", ["rad-n", "phys-n", "audit1", "admin1"])
def test_only_technologists_store(dw: World, user: str) -> None:
    mark = dw.mark()
    with pytest.raises(requests.HTTPError) as excinfo:
        client(dw, user).store_instances([pydicom.dcmread(pydicom_file("CT_small.dcm"))])
    assert _status(excinfo) == 403
    assert dw.audit_since(mark, "access_denied")


# --------------------------------------------------------------------------- QIDO-RS


def test_search_returns_only_the_callers_studies_and_only_de_identified_values(
        dw: World, stored: dict[str, Any], originals: dict[str, pydicom.Dataset]) -> None:
    found = client(dw, "rad-n").search_for_studies()
    assert {s["0020000D"]["Value"][0] for s in found} == {i["study"] for i in
                                                          stored["ids"].values()}
    text = json.dumps(found)
    for original in originals.values():
        for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate",
                        "AccessionNumber"):
            value = str(original.get(keyword, "") or "")
            if len(value) > 3:
                assert value not in text, keyword
    assert client(dw, "rad-s").search_for_studies() == []
    assert client(dw, "rad-nogrant").search_for_studies() == []
    assert len(client(dw, "phys-n").search_for_studies()) == len(found)


def test_search_matches_filters_pages_and_returns_asked_fields(
        dw: World, stored: dict[str, Any]) -> None:
    rad = client(dw, "rad-n")
    ids = stored["ids"]
    t1 = rad.search_for_studies(search_filters={"StudyInstanceUID": ids["t1a"]["study"]},
                                fields=["StudyDate", "NumberOfStudyRelatedSeries"])
    assert len(t1) == 1
    assert t1[0]["00080020"] == {"vr": "DA"}  # asked for, not disclosed: empty
    assert t1[0]["00201206"]["Value"] == [1]
    assert t1[0]["00201208"]["Value"] == [2]
    ct_only = rad.search_for_studies(search_filters={"ModalitiesInStudy": "CT"})
    assert ids["ct"]["study"] in {s["0020000D"]["Value"][0] for s in ct_only}
    assert {s["00080061"]["Value"][0] for s in ct_only} == {"CT"}
    # A constraint on what RadVault does not disclose matches nothing: no probing. A lone
    # "*" is universal matching (PS3.4): it constrains nothing and reveals nothing.
    assert rad.search_for_studies(search_filters={"PatientBirthDate": "19*"}) == []
    assert len(rad.search_for_studies(search_filters={"PatientBirthDate": "*"})) == len(
        rad.search_for_studies())
    first, second = (rad.search_for_studies(limit=2, offset=o) for o in (0, 2))
    assert len(first) == 2 and not {json.dumps(s) for s in first} & {json.dumps(s)
                                                                  for s in second}
    series = rad.search_for_series(ids["t1a"]["study"])
    assert [s["0020000E"]["Value"][0] for s in series] == [ids["t1a"]["series"]]
    assert series[0]["00201209"]["Value"] == [2]
    instances = rad.search_for_instances(ids["t1a"]["study"], ids["t1a"]["series"])
    assert {i["00080018"]["Value"][0] for i in instances} == {ids["t1a"]["instance"],
                                                              ids["t1b"]["instance"]}
    assert instances[0]["00280010"]["Value"] == [384]
    assert instances[0]["00081190"]["Value"][0].endswith(
        f"/instances/{instances[0]['00080018']['Value'][0]}")
    mr = {i["00080018"]["Value"][0] for i in rad.search_for_instances(
        search_filters={"Modality": "MR"})}
    assert {ids[k]["instance"] for k in ("mr", "t1a", "t1b", "j2k")} <= mr
    assert ids["ct"]["instance"] not in mr


def test_search_refuses_roles_that_may_not_view_studies(dw: World) -> None:
    for user in ("tech-n", "audit1", "admin1"):
        mark = dw.mark()
        with pytest.raises(requests.HTTPError) as excinfo:
            client(dw, user).search_for_studies()
        assert _status(excinfo) == 403
        assert dw.audit_since(mark, "access_denied"), user
    r = dw.get("rad-n", "/dicomweb/studies", params={"NoSuchKeyword": "1"})
    assert r.status_code == 400


# --------------------------------------------------------------------------- WADO-RS


def test_retrieved_instance_is_the_stored_de_identified_one_with_pixels_intact(
        dw: World, stored: dict[str, Any], originals: dict[str, pydicom.Dataset]) -> None:
    ids = stored["ids"]["ct"]
    mark = dw.mark()
    got = client(dw, "rad-n").retrieve_instance(ids["study"], ids["series"], ids["instance"])
    assert got == _sealed_dataset(dw, ids["instance"])
    assert got.PatientIdentityRemoved == "YES"
    assert got.SOPInstanceUID == ids["instance"]
    assert got.PatientName != originals["ct"].PatientName
    assert np.array_equal(got.pixel_array, originals["ct"].pixel_array)
    reads = dw.audit_since(mark, "read")
    assert [list(e.object_ids) for e in reads] == [[ids["instance"]]]
    assert reads[0].actor == "rad-n"


def test_a_compressed_instance_is_sent_as_stored_or_decompressed(
        dw: World, stored: dict[str, Any], originals: dict[str, pydicom.Dataset]) -> None:
    ids = stored["ids"]["j2k"]
    rad = client(dw, "rad-n")
    as_stored = rad.retrieve_instance(ids["study"], ids["series"], ids["instance"])
    assert as_stored.file_meta.TransferSyntaxUID == originals["j2k"].file_meta.TransferSyntaxUID
    plain = rad.retrieve_instance(ids["study"], ids["series"], ids["instance"],
                                  media_types=(("application/dicom", ELE),))
    assert plain.file_meta.TransferSyntaxUID == ELE
    assert np.array_equal(plain.pixel_array, originals["j2k"].pixel_array)


def test_series_and_study_retrieval_return_every_instance(
        dw: World, stored: dict[str, Any]) -> None:
    ids = stored["ids"]
    rad = client(dw, "rad-n")
    series = rad.retrieve_series(ids["t1a"]["study"], ids["t1a"]["series"])
    assert {ds.SOPInstanceUID for ds in series} == {ids["t1a"]["instance"],
                                                    ids["t1b"]["instance"]}
    assert all(ds.file_meta.TransferSyntaxUID == ELE for ds in series)  # the default
    assert len(rad.retrieve_study(ids["mr"]["study"])) == 1


def test_metadata_is_the_de_identified_dataset_without_pixel_data(
        dw: World, stored: dict[str, Any], originals: dict[str, pydicom.Dataset]) -> None:
    ids = stored["ids"]["mr"]
    meta = client(dw, "rad-n").retrieve_instance_metadata(ids["study"], ids["series"],
                                                          ids["instance"])
    assert "7FE00010" not in meta
    ds = pydicom.Dataset.from_json(meta)
    assert ds.SOPInstanceUID == ids["instance"]
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.Rows == originals["mr"].Rows
    assert str(originals["mr"].PatientName) not in json.dumps(meta)
    series_meta = client(dw, "rad-n").retrieve_series_metadata(
        stored["ids"]["t1a"]["study"], stored["ids"]["t1a"]["series"])
    assert len(series_meta) == 2


def test_rendered_instance_is_a_png_or_a_jpeg(dw: World, stored: dict[str, Any]) -> None:
    ids = stored["ids"]["ct"]
    rad = client(dw, "rad-n")
    png = rad.retrieve_instance_rendered(ids["study"], ids["series"], ids["instance"],
                                         media_types=("image/png",),
                                         params={"window": "40,400", "viewport": "128,128"})
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(png)) as image:
        assert max(image.size) == 128
    jpeg = rad.retrieve_instance_rendered(ids["study"], ids["series"], ids["instance"],
                                          media_types=("image/jpeg",))
    assert jpeg[:3] == b"\xff\xd8\xff"
    r = dw.get("rad-n", f"/dicomweb/studies/{ids['study']}/series/{ids['series']}/instances/"
               f"{ids['instance']}/rendered", headers={"Accept": "application/pdf"})
    assert r.status_code == 406


def test_a_tampered_instance_is_refused_on_retrieval_and_audited(dw: World) -> None:
    sent = pydicom.dcmread(shared_file("nema_wg04/MR1_UNC.dcm"))
    url = client(dw, "tech-n").store_instances([sent]).ReferencedSOPSequence[0].RetrieveURL
    instance_id = url.rsplit("/", 1)[1]
    obj = next(o for o in dw.vault.catalog.objects_of_instance(instance_id)
               if o.kind == DICOM_KIND)
    blob = dw.vault.blobs.path_of(obj.blob_key)
    damaged = bytearray(blob.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    blob.chmod(0o600)
    blob.write_bytes(bytes(damaged))
    mark = dw.mark()
    r = dw.get("rad-n", "/dicomweb/studies/" + url.split("/studies/", 1)[1])
    assert r.status_code == 500
    assert r.json()["code"] == "integrity_failure"
    assert dw.audit_since(mark, "integrity_failure")
    assert not dw.audit_since(mark, "read")


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("user", ["rad-nogrant", "rad-s", "phys-n", "audit1", "admin1",
                                  "tech-n"])
def test_retrieval_is_refused_without_a_grant_or_the_role_and_audited(
        dw: World, stored: dict[str, Any], user: str) -> None:
    ids = stored["ids"]["ct"]
    who = client(dw, user)
    for call in (lambda: who.retrieve_instance(ids["study"], ids["series"], ids["instance"]),
                 lambda: who.retrieve_instance_metadata(ids["study"], ids["series"],
                                                        ids["instance"]),
                 lambda: who.retrieve_instance_rendered(ids["study"], ids["series"],
                                                        ids["instance"],
                                                        media_types=("image/png",)),
                 lambda: who.search_for_series(ids["study"]) if user not in (
                     "phys-n",) else who.search_for_series("2.25.1")):
        mark = dw.mark()
        with pytest.raises(requests.HTTPError) as excinfo:
            call()
        assert _status(excinfo) == 403
        denied = dw.audit_since(mark, "access_denied")
        assert denied and denied[0].actor == user


def test_an_unknown_study_is_refused_like_an_ungranted_one_and_an_unknown_instance_is_404(
        dw: World, stored: dict[str, Any]) -> None:
    ids = stored["ids"]["ct"]
    rad = client(dw, "rad-n")
    with pytest.raises(requests.HTTPError) as excinfo:
        rad.retrieve_study("2.25.12345")
    assert _status(excinfo) == 403
    with pytest.raises(requests.HTTPError) as excinfo:
        rad.retrieve_instance(ids["study"], ids["series"], "2.25.999")
    assert _status(excinfo) == 404
    with pytest.raises(requests.HTTPError) as excinfo:
        rad.retrieve_instance(ids["study"], "2.25.999", ids["instance"])
    assert _status(excinfo) == 404


@pytest.mark.parametrize("token", [None, "not-a-token"])
def test_missing_or_bad_tokens_are_refused_and_audited(dw: World, token: str | None) -> None:
    mark = dw.mark()
    anonymous = client(dw, None, token)
    with pytest.raises(requests.HTTPError) as excinfo:
        anonymous.search_for_studies()
    assert _status(excinfo) == 401
    body, headers = related([pydicom_file("CT_small.dcm").read_bytes()])
    if token:
        headers["Authorization"] = f"Bearer {token}"
    with httpx.Client(base_url=dw.base_url) as c:
        assert c.post("/dicomweb/studies", content=body, headers=headers).status_code == 401
    assert len(dw.audit_since(mark, "token_refused")) == 2


def test_a_store_while_other_uploads_hold_their_memory_is_refused_for_now(dw: World) -> None:
    budget = dw.server.server.config.app.state.upload_budget
    others = budget.total_bytes - budget.in_use - 1000  # uploads in flight, all but 1000 bytes
    body, headers = related([pydicom_file("CT_small.dcm").read_bytes()])
    mark = dw.mark()
    budget.reserve(others)
    try:
        r = dw.post("tech-n", "/dicomweb/studies", content=body, headers=headers)
    finally:
        budget.release(others)
    assert r.status_code == 503 and r.json()["code"] == "uploads_busy"
    assert r.headers["Retry-After"] == "5"
    assert [e.details for e in dw.audit_since(mark, "ingest_refused")] == [
        {"error": "UploadBudgetExhausted"}]
    assert not dw.audit_since(mark, "ingest")
    assert budget.in_use == 0

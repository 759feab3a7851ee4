"""What a person types is checked up front over HTTP: an upload's modality and body part must
be DICOM defined terms (400, audited by type, the value never repeated), and an analysis must
name a model the registry holds (422 before any job is queued, audited as a refusal)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

PROBLEM = "application/problem+json"


def png_bytes(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 56), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(("fields", "named"), [
    ({"modality": "XX"}, "modality"),
    ({"modality": "<script>"}, "modality"),
    ({"body_part": "Doe_Jane"}, "body_part"),
    ({"modality": "DX", "body_part": "MRN55512345"}, "body_part"),
])
def test_an_upload_hint_that_is_no_defined_term_is_refused(world, fields, named):
    world.token("tech-n")  # signed in before the mark
    mark = world.mark()
    studies = {s.study_id for s in world.vault.catalog.list_studies(limit=500)}

    r = world.upload("tech-n", png_bytes(40), "hint.png", **fields)

    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["code"] == "invalid_request"
    assert body["detail"].startswith(f"{named} is not a DICOM ")
    assert fields[named] not in r.text  # the refused value is never echoed
    refused = world.audit_since(mark)
    assert [(e.action, e.details) for e in refused] == [
        ("ingest_refused", {"error": "InvalidRequest"})]
    assert {s.study_id for s in world.vault.catalog.list_studies(limit=500)} == studies


def test_upload_hints_are_taken_in_any_case(world):
    r = world.upload("tech-n", png_bytes(41), "hint.png", modality="dx", body_part=" chest")
    assert r.status_code == 201, r.text
    study = world.vault.catalog.get_study(r.json()["study_id"])
    assert (r.json()["modality"], study.modality, study.body_part) == ("DX", "DX", "CHEST")


def test_an_unknown_model_is_refused_before_a_job_is_queued(world, north_study):
    path = f"/api/v1/studies/{north_study['study_id']}/analyses"
    world.token("rad-n")  # signed in before the mark
    mark = world.mark()
    jobs = sum(world.service.jobs.counts().values())

    r = world.post("rad-n", path, json={"model": "nope"})

    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["code"] == "unknown_model" and "radbench6" in body["detail"]
    assert body["errors"] == [{"loc": ["body", "model"], "msg": body["detail"],
                               "type": "unknown_model"}]
    assert "location" not in r.headers
    entries = world.audit_since(mark, "analysis.request")
    assert [(e.action, e.actor, str(e.outcome), e.details["reason"]) for e in entries] == [
        ("analysis.request", "rad-n", "refused", "unknown model")]
    assert entries[0].details["model_hmac"] == world.vault.audit_digest("nope")
    assert "nope" not in repr(entries[0].to_dict())
    assert sum(world.service.jobs.counts().values()) == jobs  # nothing queued


def test_a_known_model_is_queued_as_before(world, north_study):
    r = world.post("rad-n", f"/api/v1/studies/{north_study['study_id']}/analyses",
                   json={"model": "radbench6"})
    assert r.status_code == 202, r.text
    assert world.wait_job("rad-n", r.json()["job_id"])["status"] == "succeeded"


def test_a_malformed_model_name_is_refused_and_audited_too(world, north_study):
    path = f"/api/v1/studies/{north_study['study_id']}/analyses"
    world.token("rad-n")
    mark = world.mark()
    jobs = sum(world.service.jobs.counts().values())
    r = world.post("rad-n", path, json={"model": "../Doe Jane"})
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_request" and "Doe" not in r.text
    entries = world.audit_since(mark, "analysis.request")
    assert [(str(e.outcome), e.details["reason"]) for e in entries] == [
        ("refused", "malformed model name")]
    assert "Doe" not in repr(entries[0].to_dict())
    assert sum(world.service.jobs.counts().values()) == jobs
    too_long = world.post("rad-n", path, json={"model": "m" * 200})
    assert too_long.status_code == 400  # judged and audited by the service too
    assert len(world.audit_since(mark, "analysis.request")) == 2

"""The allowed paths, end to end over HTTP: upload, analyse, job, result, heatmap,
reports in four formats, sign-off, and re-identification by a physician with a reason."""

from __future__ import annotations

import io
import json

import pydicom

PNG = b"\x89PNG\r\n\x1a\n"
REASON = "calling the patient back about a follow-up scan"
PATIENT = "CompressedSamples^CT1"  # CT_small.dcm's (synthetic) patient name


def test_an_upload_is_analysed_in_the_background(world, north_study, analysed):
    study, instance = north_study["study_id"], north_study["instance_id"]
    assert north_study["status"] == "stored" and north_study["modality"] == "CT"
    assert analysed["status"] == "succeeded" and analysed["study_id"] == study
    assert [r["instance_id"] for r in analysed["results"]] == [instance]
    detail = world.get("rad-n", f"/api/v1/studies/{study}").json()
    assert detail["study"]["site"] == "north"
    assert detail["instances"][0]["instance_id"] == instance
    assert detail["instances"][0]["latest_result_id"] == analysed["results"][0]["result_id"]
    listed = world.get("phys-n", "/api/v1/studies", params={"modality": "ct"}).json()
    assert study in [s["study_id"] for s in listed]


def test_asking_again_returns_the_same_job(world, north_study, analysed):
    r = world.post("rad-n", f"/api/v1/studies/{north_study['study_id']}/analyses",
                   json={"instance_id": north_study["instance_id"]})
    assert r.status_code == 202
    again = world.post("rad-n", f"/api/v1/studies/{north_study['study_id']}/analyses",
                       json={"instance_id": north_study["instance_id"]})
    assert again.json()["job_id"] == r.json()["job_id"]
    assert again.headers["location"] == f"/api/v1/jobs/{r.json()['job_id']}"
    world.wait_job("rad-n", r.json()["job_id"])


def test_the_result_has_calibrated_probabilities_and_a_flag(world, north_study, analysed):
    base = f"/api/v1/studies/{north_study['study_id']}/instances/{north_study['instance_id']}"
    result = world.get("phys-n", f"{base}/result").json()
    assert set(result["probabilities"]) == {"normal", "pneumonia", "tumour"}
    assert abs(sum(result["probabilities"].values()) - 1) < 1e-6
    assert result["probability"] == max(result["probabilities"].values())
    assert result["refer"] == bool(result["reasons"])
    assert result["decision_support"]
    history = world.get("phys-n", f"{base}/results").json()
    assert history[-1]["result_id"] == result["result_id"]


def test_images_and_heatmaps_are_rendered_as_png(world, north_study, analysed):
    base = f"/api/v1/studies/{north_study['study_id']}/instances/{north_study['instance_id']}"
    plain = world.get("rad-n", f"{base}/image")
    windowed = world.get("rad-n", f"{base}/image",
                         params={"window_center": 40, "window_width": 80, "max_size": 64})
    assert plain.status_code == windowed.status_code == 200
    assert plain.content.startswith(PNG) and windowed.content.startswith(PNG)
    assert plain.headers["content-type"] == "image/png"
    assert plain.content != windowed.content
    bad = world.get("rad-n", f"{base}/image", params={"window_center": 40})
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_request"
    mark = world.mark()
    heat = world.get("rad-n", f"{base}/heatmap")
    assert heat.status_code == 200 and heat.content.startswith(PNG)
    # a physician may see the heatmap but not the image: theirs is the heatmap alone; the
    # radiologist's is over the image as the image page shows it (a view that is audited)
    theirs = world.get("phys-n", f"{base}/heatmap")
    assert theirs.status_code == 200 and theirs.content.startswith(PNG)
    assert theirs.content != heat.content
    drawn = {e.actor: e.details["under"] for e in world.audit_since(mark, "read")
             if e.details.get("what") == "heatmap"}
    assert drawn == {"rad-n": "image", "phys-n": "nothing"}


def test_reports_come_in_four_formats_pseudonymous(world, north_study, analysed):
    study = north_study["study_id"]
    got = {}
    for fmt in ("html", "pdf", "fhir", "sr"):
        r = world.get("phys-n", f"/api/v1/studies/{study}/report", params={"format": fmt})
        assert r.status_code == 200, (fmt, r.text)
        got[fmt] = r
    assert got["html"].headers["content-type"].startswith("text/html")
    assert "not for clinical use" in got["html"].text.lower()
    assert got["pdf"].content.startswith(b"%PDF")
    fhir = got["fhir"].json()
    assert fhir["resourceType"] in ("Bundle", "DiagnosticReport")
    sr = pydicom.dcmread(io.BytesIO(got["sr"].content))
    assert sr.Modality == "SR"
    for r in got.values():
        assert PATIENT.split("^")[0].encode() not in r.content  # pseudonymous by default
    # the physician's report holds the heatmap alone; a radiologist's, over the model input
    assert "the image is not part of this report" in got["html"].text
    theirs = world.get("rad-n", f"/api/v1/studies/{study}/report", params={"format": "html"})
    assert "overlaid on the model input" in theirs.text


def test_a_radiologist_signs_off_and_the_report_shows_it(world, north_study, analysed):
    study, instance = north_study["study_id"], north_study["instance_id"]
    base = f"/api/v1/studies/{study}/instances/{instance}"
    result = world.get("rad-n", f"{base}/result").json()
    other = next(c for c in result["probabilities"] if c != result["predicted_class"])
    mark = world.mark()
    reviewed = result["result_id"]
    unnamed = world.post("rad-n", f"{base}/signoff", json={"decision": "accepted"})
    assert unnamed.status_code == 422  # which analysis was reviewed must be said
    r = world.post("rad-n", f"{base}/signoff", json={
        "decision": "overridden", "label": other, "comment": "clear lungs",
        "result_id": reviewed})
    assert r.status_code == 201, r.text
    signed = r.json()
    assert signed["final_label"] == other and signed["signed_by"] == "rad-n"
    audited = world.audit_since(mark, "report.sign")
    assert audited[0].details["decision"] == "overridden"
    assert "clear lungs" not in json.dumps([e.to_dict() for e in audited])
    assert world.get("rad-n", f"{base}/result").json()["signoff"]["comment"] == "clear lungs"
    html = world.get("phys-n", f"/api/v1/studies/{study}/report").text
    assert "rad-n" in html and other in html
    bad = world.post("rad-n", f"{base}/signoff", json={
        "decision": "overridden", "label": result["predicted_class"], "result_id": reviewed})
    assert bad.status_code == 400
    # signing it again must name the sign-off it replaces
    again = world.post("rad-n", f"{base}/signoff",
                       json={"decision": "accepted", "result_id": reviewed})
    assert again.status_code == 409 and again.json()["code"] == "signoff_conflict"
    amended = world.post("rad-n", f"{base}/signoff", json={
        "decision": "accepted", "amends": signed["signoff_id"], "result_id": reviewed})
    assert amended.status_code == 201, amended.text
    assert "amends the sign-off by rad-n" in world.get(
        "phys-n", f"/api/v1/studies/{study}/report", params={"format": "fhir"}).text


def test_a_physician_reidentifies_with_a_reason_and_it_is_audited(world, north_study):
    study = north_study["study_id"]
    mark = world.mark()
    r = world.post("phys-n", f"/api/v1/studies/{study}/reidentify", json={"reason": REASON})
    assert r.status_code == 200, r.text
    assert r.json()["patient_name"] == PATIENT
    r = world.post("phys-n", f"/api/v1/studies/{study}/reidentify/report",
                   params={"format": "html"}, json={"reason": REASON})
    assert r.status_code == 200, r.text
    assert "CompressedSamples" in r.text and "re-identified" in r.text.lower()
    assert "reidentified" in r.headers["content-disposition"]
    events = world.audit_since(mark, "reidentify")
    assert [e.details["reason_length"] for e in events] == [len(REASON)] * 2
    trail = json.dumps([e.to_dict() for e in world.audit_since(mark)])
    assert REASON not in trail and "CompressedSamples" not in trail


def test_a_png_study_has_no_identity_and_no_structured_report(world, south_study):
    r = world.post("rad-s", f"/api/v1/studies/{south_study['study_id']}/analyses")
    assert r.status_code == 202
    assert world.wait_job("rad-s", r.json()["job_id"])["status"] == "succeeded"
    study = south_study["study_id"]
    assert world.get("rad-s", f"/api/v1/studies/{study}/report",
                     params={"format": "pdf"}).status_code == 200
    sr = world.get("rad-s", f"/api/v1/studies/{study}/report", params={"format": "sr"})
    assert sr.status_code == 400

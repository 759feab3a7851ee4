"""The FHIR R4 DiagnosticReport: validates, complete, pseudonymous by default (reports._fhir)."""

from __future__ import annotations

import json

import pytest
from report_samples import CLASSES, EVIL, IDENTITY_STRINGS, PROBS, PSEUDONYM, with_

from radvault.reports import render_fhir, render_fhir_json

DiagnosticReport = pytest.importorskip("fhir.resources.R4B.diagnosticreport").DiagnosticReport


def _contained(resource: dict, kind: str) -> list[dict]:
    return [c for c in resource["contained"] if c["resourceType"] == kind]


def _references(node) -> list[str]:
    if isinstance(node, dict):
        found = [node["reference"]] if isinstance(node.get("reference"), str) else []
        return found + [r for v in node.values() for r in _references(v)]
    if isinstance(node, list):
        return [r for v in node for r in _references(v)]
    return []


def test_validates_as_fhir_and_round_trips_through_json(report):
    text = render_fhir_json(report)
    parsed = DiagnosticReport.model_validate_json(text)
    assert parsed.status == "preliminary"
    assert json.loads(parsed.model_dump_json(exclude_none=True)) == json.loads(text)


def test_codes_subject_and_conclusion(report):
    fhir = render_fhir(report)
    assert fhir["resourceType"] == "DiagnosticReport"
    assert fhir["code"]["coding"][0] == {"system": "http://loinc.org", "code": "18748-4",
                                         "display": "Diagnostic imaging study"}
    assert fhir["category"][0]["coding"][0]["code"] == "RAD"
    assert fhir["subject"] == {"reference": "#patient"}
    assert fhir["effectiveDateTime"] == "2019-03-14"
    assert fhir["identifier"] == [{"system": "urn:radvault:result", "value": "res-000042"}]
    assert fhir["imagingStudy"][0]["identifier"]["value"] == "ST-000007"
    assert "Refer to a radiologist: confidence 62.0 % under 80.0 %" in fhir["conclusion"]
    assert fhir["conclusionCode"][0]["text"] == "pneumonia"
    assert "not for clinical use" in fhir["text"]["div"]


def test_one_observation_per_class_and_one_for_the_flag(report):
    fhir = render_fhir(report)
    observations = {o["id"]: o for o in _contained(fhir, "Observation")}
    assert len(observations) == len(CLASSES) + 1
    for i, (cls, p) in enumerate(zip(CLASSES, PROBS, strict=True)):
        obs = observations[f"prob-{i}"]
        assert obs["code"]["text"] == f"Probability of {cls}"
        assert obs["valueQuantity"]["value"] == pytest.approx(p)
        assert obs["valueQuantity"]["code"] == "1"
        assert obs["device"]["reference"] == "#model"
        assert obs["status"] == "preliminary"
    flag = observations["refer"]
    assert flag["valueCodeableConcept"]["coding"][0]["code"] == "373066001"  # SNOMED CT Yes
    assert flag["component"][0]["valueString"] == "confidence 62.0 % under 80.0 %"
    assert [r["reference"] for r in fhir["result"]] == [f"#{k}" for k in observations]


def test_flag_not_set_is_snomed_no(report, analysis):
    calm = type(analysis)(model_id=analysis.model_id, task=analysis.task,
                          predicted_class="normal", probability=0.91,
                          probabilities=dict(zip(CLASSES, (0.91, 0.05, 0.02, 0.02), strict=True)),
                          refer=False)
    flag = next(o for o in _contained(render_fhir(with_(report, analysis=calm)), "Observation")
                if o["id"] == "refer")
    assert flag["valueCodeableConcept"]["coding"][0]["code"] == "373067005"
    assert "component" not in flag


def test_every_reference_resolves_and_every_contained_resource_is_used(report, overridden):
    fhir = render_fhir(with_(report, sign_off=overridden))
    ids = {f"#{c['id']}" for c in fhir["contained"]}
    refs = set(_references(fhir))
    assert refs == ids
    kinds = {c["resourceType"] for c in fhir["contained"]}
    assert kinds == {"Patient", "Device", "Organization", "Observation", "Media", "Practitioner"}


def test_heatmap_travels_as_media(report, heatmap_png):
    import base64

    media = _contained(render_fhir(report), "Media")[0]
    assert media["content"]["contentType"] == "image/png"
    assert base64.b64decode(media["content"]["data"]) == heatmap_png
    assert not _contained(render_fhir(with_(report, heatmap_png=None)), "Media")


def test_sign_off_makes_it_final(report, accepted, overridden):
    fhir = render_fhir(with_(report, sign_off=accepted))
    assert fhir["status"] == "final"
    assert all(o["status"] == "final" for o in _contained(fhir, "Observation"))
    assert fhir["resultsInterpreter"][0]["display"] == "dr_grey"
    assert "prediction accepted" in fhir["conclusion"]
    assert fhir["conclusionCode"][0]["text"] == "pneumonia"
    fhir = render_fhir(with_(report, sign_off=overridden))
    assert fhir["status"] == "final"
    assert fhir["conclusionCode"][0]["text"] == "covid"
    assert "Radiologist comment: Consolidation <b>absent</b>" in fhir["conclusion"]
    assert "resultsInterpreter" not in render_fhir(report)


def test_pseudonymous_by_default(report):
    fhir = render_fhir(report)
    text = json.dumps(fhir)
    assert not any(s in text for s in IDENTITY_STRINGS)
    patient = _contained(fhir, "Patient")[0]
    assert patient["identifier"] == [{"use": "secondary", "system": "urn:radvault:pseudonym",
                                      "value": PSEUDONYM, "assigner": {"display": "North Site"}}]
    assert "name" not in patient and "birthDate" not in patient
    assert fhir["meta"]["security"][0]["code"] == "PSEUDED"


def test_reidentified_copy_carries_identity_and_is_marked(report, identity):
    fhir = render_fhir(with_(report, identity=identity))
    DiagnosticReport.model_validate(fhir)
    patient = _contained(fhir, "Patient")[0]
    assert patient["name"][0] == {"text": "Zebedee Quixote", "family": "Zebedee",
                                  "given": ["Quixote"]}
    assert patient["birthDate"] == "1931-07-04"
    assert {"MRN-99887766", PSEUDONYM} == {i["value"] for i in patient["identifier"]}
    assert fhir["meta"]["tag"][0]["code"] == "re-identified-copy"
    assert "security" not in fhir["meta"]
    assert "RE-IDENTIFIED COPY" in fhir["text"]["div"]


def test_narrative_escapes_hostile_class_names(report):
    div = render_fhir(report)["text"]["div"]
    assert EVIL not in div and "&lt;script&gt;" in div


def test_a_resource_that_does_not_validate_is_refused(report, monkeypatch):
    from radvault.reports import ReportInputError, _fhir

    def broken(report, status):
        return {"resourceType": "Observation", "id": "refer", "status": status}  # no code

    monkeypatch.setattr(_fhir, "_refer_observation", broken)
    with pytest.raises(ReportInputError, match=r"contained\.\d+\.code"):
        render_fhir(report)


def test_the_conclusion_says_how_much_of_the_study_it_covers(report):
    fhir = render_fhir(with_(report, study_images=4))
    assert fhir["conclusion"].startswith("This report covers 1 of the study's 4 images (")
    assert "covers" not in render_fhir(report)["conclusion"]

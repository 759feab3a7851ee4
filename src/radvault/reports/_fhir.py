"""The FHIR R4 DiagnosticReport, with its Observations, validated by ``fhir.resources``.

One self-contained ``DiagnosticReport`` whose ``contained`` resources are
everything it points at, so it travels as a single JSON document:

- ``Patient`` ``#patient``: only the pseudonym (an identifier) unless the copy
  is re-identified, when the name, site id and birth date are added. A
  pseudonymous report carries the security label ``PSEUDED`` (HL7
  v3-ObservationValue) in ``meta.security``; a re-identified copy carries the
  tag ``re-identified-copy`` instead, and its narrative opens with the banner.
- ``Device`` ``#model``: the model (id, task, version), the ``device`` of
  every Observation. R4 allows no Device as a DiagnosticReport or
  Observation ``performer``, so the site's ``Organization`` ``#site`` is the
  report's performer and the model is each Observation's ``device``.
- ``Observation`` ``#prob-N``: one per class, ``valueQuantity`` the
  calibrated probability (UCUM unit ``1``).
- ``Observation`` ``#refer``: the decision-support flag, SNOMED CT Yes/No,
  with one ``component`` per reason (code and words).
- ``Media`` ``#heatmap`` (when given): the class-activation overlay, PNG.
- ``Practitioner`` ``#radiologist`` (after sign-off): ``resultsInterpreter``.

Status is ``preliminary`` until a radiologist signs off, ``final`` after
(an override is final too; ``conclusionCode`` is then the radiologist's class, or
their own finding in ``urn:radvault:finding``), ``amended`` when the sign-off
replaced an earlier one of the same analysis (the Observations, the model's
outputs, stay ``final``).

Codes: ``category`` RAD (HL7 v2-0074 Radiology); ``code`` LOINC 18748-4
"Diagnostic imaging study"; Observation category ``imaging``; the flag's value
SNOMED CT 373066001 Yes / 373067005 No (the same concepts the DICOM SR uses).
Model classes and probabilities have no standard codes (they are the task's
own), so they use RadVault code systems named by ``urn:radvault:`` URIs
(below), with the words in ``display``/``text``.

``fhir.resources`` (version 7 and later) ships R5 as its default and R4B, not
R4 (4.0.1), beside it; R4B changed none of the resources used here
(DiagnosticReport, Observation, Patient, Device, Organization, Practitioner,
Media), so validating with ``fhir.resources.R4B`` validates the R4 shape, and
the JSON uses no element that R4 lacks.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from html import escape
from typing import Any

from radvault.reports import _text
from radvault.reports._model import (
    NOT_FOR_CLINICAL_USE,
    RADIOLOGIST_FINDINGS,
    REIDENTIFIED_BANNER,
    ReportInput,
    ReportInputError,
)

__all__ = ["render_fhir", "render_fhir_json"]

log = logging.getLogger(__name__)

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
V3_OBSERVATION_VALUE = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"

#: RadVault's own code and identifier systems.
SYSTEM_CLASS = "urn:radvault:class"
SYSTEM_CLASS_PROBABILITY = "urn:radvault:class-probability"
#: A radiologist's own finding, none of the model's classes (``no_finding``, ...).
SYSTEM_FINDING = "urn:radvault:finding"
SYSTEM_DECISION_SUPPORT = "urn:radvault:decision-support"
SYSTEM_MODEL = "urn:radvault:model"
SYSTEM_PSEUDONYM = "urn:radvault:pseudonym"
SYSTEM_RESULT = "urn:radvault:result"
SYSTEM_SITE_PATIENT_ID = "urn:radvault:site-patient-id"
SYSTEM_STUDY = "urn:radvault:study"
SYSTEM_USER = "urn:radvault:user"
SYSTEM_TAG = "urn:radvault:tag"

_WS = re.compile(r"\s+")


def _code(value: str) -> str:
    """A FHIR ``code``: no leading/trailing whitespace, single inner spaces."""
    return _WS.sub(" ", value).strip()


def _ref(local_id: str, display: str | None = None) -> dict[str, Any]:
    ref: dict[str, Any] = {"reference": f"#{local_id}"}
    if display:
        ref["display"] = display
    return ref


def _patient(report: ReportInput) -> dict[str, Any]:
    patient: dict[str, Any] = {
        "resourceType": "Patient", "id": "patient",
        "identifier": [{"use": "secondary", "system": SYSTEM_PSEUDONYM,
                        "value": report.patient_pseudonym,
                        "assigner": {"display": report.site}}],
    }
    ident = report.identity
    if ident is not None:
        patient["identifier"].insert(0, {"use": "usual", "system": SYSTEM_SITE_PATIENT_ID,
                                         "value": ident.patient_id,
                                         "assigner": {"display": report.site}})
        name: dict[str, Any] = {"text": ident.display_name}
        parts = ident.name.split("^")
        if len(parts) > 1 and parts[0].strip():
            name["family"] = parts[0].strip()
            given = [p.strip() for p in parts[1:3] if p.strip()]
            if given:
                name["given"] = given
        patient["name"] = [name]
        if ident.birth_date is not None:
            patient["birthDate"] = ident.birth_date.isoformat()
    return patient


def _device(report: ReportInput) -> dict[str, Any]:
    m = report.model
    device: dict[str, Any] = {
        "resourceType": "Device", "id": "model",
        "identifier": [{"system": SYSTEM_MODEL, "value": m.model_id}],
        "manufacturer": "RadVault",
        "deviceName": [{"name": m.model_id, "type": "model-name"},
                       {"name": f"RadVault {m.task} classifier", "type": "user-friendly-name"}],
        "type": {"text": "Software: deep-learning image classifier (decision support)"},
        "version": [{"value": m.model_id}],
        "note": [{"text": f"{NOT_FOR_CLINICAL_USE}. Task {m.task}; classes "
                          f"{', '.join(m.classes)}; trained on {_text.trained_on_text(report)}."}],
    }
    if m.created:
        device["version"].append({"type": {"text": "created"}, "value": m.created})
    return device


def _observation_base(report: ReportInput, local_id: str, status: str) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation", "id": local_id, "status": status,
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "imaging",
                                  "display": "Imaging"}]}],
        "subject": _ref("patient"),
        "issued": report.generated_at.isoformat(),
        "device": _ref("model", report.model.model_id),
    }
    if report.study_date is not None:
        obs["effectiveDateTime"] = report.study_date.isoformat()
    return obs


def _probability_observations(report: ReportInput, status: str) -> list[dict[str, Any]]:
    out = []
    for i, (cls, p) in enumerate(report.analysis.probabilities.items()):
        obs = _observation_base(report, f"prob-{i}", status)
        words = f"Probability of {cls}"
        obs["code"] = {"coding": [{"system": SYSTEM_CLASS_PROBABILITY, "code": _code(cls),
                                   "display": words}], "text": words}
        obs["valueQuantity"] = {"value": round(p, 6), "unit": "probability", "system": UCUM,
                                "code": "1"}
        if cls == report.analysis.predicted_class:
            obs["interpretation"] = [{"text": "predicted class (highest probability)"}]
        out.append(obs)
    return out


def _refer_observation(report: ReportInput, status: str) -> dict[str, Any]:
    a = report.analysis
    obs = _observation_base(report, "refer", status)
    obs["code"] = {"coding": [{"system": SYSTEM_DECISION_SUPPORT,
                               "code": "refer-to-radiologist",
                               "display": "Refer to a radiologist"}],
                   "text": "Decision support: refer to a radiologist"}
    obs["valueCodeableConcept"] = {
        "coding": [{"system": SNOMED, "code": "373066001", "display": "Yes"} if a.refer
                   else {"system": SNOMED, "code": "373067005", "display": "No"}],
        "text": _text.flag_sentence(report),
    }
    if a.reasons:
        obs["component"] = [
            {"code": {"coding": [{"system": SYSTEM_DECISION_SUPPORT, "code": _code(reason),
                                  "display": reason.replace("_", " ")}]},
             "valueString": _text.reason_text(report, reason)}
            for reason in a.reasons
        ]
    if a.refer_threshold is not None:
        obs["referenceRange"] = [{"low": {"value": a.refer_threshold, "unit": "probability",
                                          "system": UCUM, "code": "1"},
                                  "text": "confidence at or above this needs no referral"}]
    return obs


def _media(report: ReportInput, png: bytes) -> dict[str, Any]:
    return {
        "resourceType": "Media", "id": "heatmap", "status": "completed",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/media-type",
                             "code": "image", "display": "Image"}]},
        "subject": _ref("patient"),
        "device": _ref("model", report.model.model_id),
        "content": {"contentType": "image/png",
                    "data": base64.b64encode(png).decode("ascii"),
                    "title": _text.heatmap_title(report)},
    }


def _narrative(report: ReportInput) -> dict[str, Any]:
    lines = []
    if report.identity is not None:
        lines.append(f"<p><b>{REIDENTIFIED_BANNER}</b>: contains the patient's identity.</p>")
    lines.append(f"<p><b>{escape(NOT_FOR_CLINICAL_USE)}</b></p>")
    lines.append(f"<p>{escape(_text.conclusion(report))}</p>")
    items = "".join(f"<li>{escape(cls)}: {escape(_text.percent(p))}</li>"
                    for cls, p in report.analysis.probabilities.items())
    lines.append(f"<ul>{items}</ul>")
    return {"status": "generated",
            "div": '<div xmlns="http://www.w3.org/1999/xhtml">' + "".join(lines) + "</div>"}


def render_fhir(report: ReportInput) -> dict[str, Any]:
    """Render the report as a FHIR R4 DiagnosticReport with contained resources.

    The resource is validated with ``fhir.resources`` (its R4B models) before
    it is returned.

    Parameters
    ----------
    report : ReportInput

    Returns
    -------
    dict
        The resource as JSON-ready data (``json.dumps`` it as is).

    Raises
    ------
    ReportInputError
        If the resource does not validate (a value FHIR cannot carry).
    """
    import pydantic
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    status = ("preliminary" if not report.signed
              else "amended" if report.sign_off is not None and report.sign_off.amends
              else "final")
    a = report.analysis
    contained: list[dict[str, Any]] = [_patient(report), _device(report),
                                       {"resourceType": "Organization", "id": "site",
                                        "name": report.site}]
    # the model's outputs never change: only the report is amended, never its observations
    measured = "final" if report.signed else "preliminary"
    observations = [*_probability_observations(report, measured),
                    _refer_observation(report, measured)]
    contained += observations
    resource: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "meta": {"security": [{"system": V3_OBSERVATION_VALUE, "code": "PSEUDED",
                               "display": "pseudonymized"}]},
        "text": _narrative(report),
        "contained": contained,
        "status": status,
        "category": [{"coding": [{"system": V2_0074, "code": "RAD",
                                  "display": "Radiology"}]}],
        "code": {"coding": [{"system": LOINC, "code": "18748-4",
                             "display": "Diagnostic imaging study"}],
                 "text": f"AI decision support: {a.task}"},
        "subject": _ref("patient"),
        "issued": report.generated_at.isoformat(),
        "performer": [_ref("site", report.site)],
        "imagingStudy": [{"identifier": {"system": SYSTEM_STUDY, "value": report.study_id}}],
        "result": [_ref(o["id"]) for o in observations],
        "conclusion": _text.conclusion(report),
        "conclusionCode": [{"coding": [{"system": (
                                            SYSTEM_FINDING
                                            if report.final_class in RADIOLOGIST_FINDINGS
                                            and report.final_class not in report.model.classes
                                            else SYSTEM_CLASS),
                                        "code": _code(report.final_class),
                                        "display": _text.finding_text(report.final_class)}],
                            "text": _text.finding_text(report.final_class)}],
    }
    if a.result_id:
        resource["identifier"] = [{"system": SYSTEM_RESULT, "value": a.result_id}]
    if report.study_date is not None:
        resource["effectiveDateTime"] = report.study_date.isoformat()
    if report.identity is not None:
        resource["meta"] = {"tag": [{"system": SYSTEM_TAG, "code": "re-identified-copy",
                                     "display": REIDENTIFIED_BANNER}]}
    if report.heatmap_png is not None:
        contained.append(_media(report, report.heatmap_png))
        resource["media"] = [{"comment": "Class-activation heatmap for the predicted class",
                              "link": _ref("heatmap")}]
    if report.sign_off is not None:
        contained.append({"resourceType": "Practitioner", "id": "radiologist",
                          "identifier": [{"system": SYSTEM_USER,
                                          "value": report.sign_off.radiologist}]})
        resource["resultsInterpreter"] = [_ref("radiologist", report.sign_off.radiologist)]
    try:
        validated = DiagnosticReport.model_validate(resource)
    except pydantic.ValidationError as exc:
        fields = sorted({".".join(str(p) for p in err["loc"]) for err in exc.errors()})
        raise ReportInputError("FHIR DiagnosticReport does not validate at "
                               + ", ".join(fields[:5])) from None
    out: dict[str, Any] = json.loads(validated.model_dump_json(exclude_none=True))
    log.info("rendered FHIR DiagnosticReport for study %s (%s)%s", report.study_id, status,
             " (re-identified copy)" if report.reidentified else "")
    return out


def render_fhir_json(report: ReportInput, *, indent: int | None = None) -> str:
    """Render the report as FHIR R4 JSON text (:func:`render_fhir`, serialised).

    Raises
    ------
    ReportInputError
        If the resource does not validate.
    """
    return json.dumps(render_fhir(report), indent=indent, ensure_ascii=False)

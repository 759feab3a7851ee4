"""Reports show the model's class order whatever order storage returns, and print
probabilities as percentages that never read as certainty (reports._model, reports._text).

The catalog stores an analysis as canonical JSON (sorted keys), so a stored result's
probabilities come back sorted by class name; radbench6, the default model, lists its
classes in another order. A report must accept that and read in the model's order.
"""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest
from report_samples import CT_SMALL, PSEUDONYM, with_

from radvault.reports import (
    AnalysisSummary,
    ModelSummary,
    ReportInput,
    ReportInputError,
    render_fhir,
    render_html,
    render_pdf,
    render_sr,
)
from radvault.reports._text import percent

MODELS = Path(__file__).resolve().parents[2] / "models"
RADBENCH6_CARD = MODELS / "radbench6" / "model_card.json"
# Distinct values, so each class's row can be told apart by its percentage.
PROBS = {"pneumonia": 0.05, "glioma": 0.72, "meningioma": 0.11, "malignant_lung": 0.04,
         "kidney_stone": 0.06, "malignant_breast": 0.02}
SHOWN = {"pneumonia": "5.0 %", "glioma": "72.0 %", "meningioma": "11.0 %",
         "malignant_lung": "4.0 %", "kidney_stone": "6.0 %", "malignant_breast": "2.0 %"}


@pytest.fixture(scope="module")
def radbench6() -> ModelSummary:
    """The shipped default model's card, summarised."""
    from radvault.analysis.inference import ModelCard

    card = ModelCard.from_dict(json.loads(RADBENCH6_CARD.read_text(encoding="utf-8")))
    return ModelSummary.from_card(card)


@pytest.fixture
def stored_report(radbench6: ModelSummary, heatmap_png: bytes) -> ReportInput:
    """A radbench6 report from a payload as the catalog returns it: classes sorted."""
    payload = json.loads(json.dumps({
        "task": radbench6.task, "predicted_class": "glioma", "probability": 0.72,
        "probabilities": PROBS, "refer": True, "reasons": ["low_confidence"],
        "refer_threshold": 0.8}, sort_keys=True))
    analysis = AnalysisSummary.from_payload(payload, model_id=radbench6.model_id,
                                            result_id="res-000099")
    assert list(analysis.probabilities) == sorted(PROBS)  # the order storage returns
    return ReportInput(study_id="ST-000021", instance_ids=("IN-000031",),
                       patient_pseudonym=PSEUDONYM, site="North Site", modality="CT",
                       body_part="", analysis=analysis, model=radbench6,
                       heatmap_png=heatmap_png,
                       generated_at=datetime(2026, 2, 1, 9, 30, tzinfo=UTC))


def _in_order(text: str, needles: list[str]) -> bool:
    """Whether every needle occurs in ``text``, each after the one before."""
    at = 0
    for needle in needles:
        at = text.find(needle, at)
        if at < 0:
            return False
        at += len(needle)
    return True


def test_the_card_is_not_alphabetical(radbench6):
    """The premise: radbench6's classes are not in the order the catalog returns."""
    assert radbench6.classes == tuple(PROBS)
    assert list(radbench6.classes) != sorted(radbench6.classes)


def test_a_report_accepts_the_classes_in_another_order_and_keeps_the_models(stored_report):
    assert tuple(stored_report.analysis.probabilities) == stored_report.model.classes
    assert dict(stored_report.analysis.probabilities) == PROBS
    assert stored_report.analysis.predicted_class == "glioma"
    again = with_(stored_report, site="South Site")  # rebuilt and checked again
    assert tuple(again.analysis.probabilities) == again.model.classes


@pytest.mark.parametrize(("change", "message"), [
    ({"malignant_breast": None, "meningioma": 0.13}, "1 missing, 0 not the model's"),
    ({"normal": 0.0}, "0 missing, 1 not the model's"),
    ({"malignant_breast": None, "normal": 0.02}, "1 missing, 1 not the model's"),
])
def test_a_different_set_of_classes_is_still_refused(radbench6, change, message):
    """Order is free; the set of classes is not."""
    table = {c: p for c, p in {**PROBS, **change}.items() if p is not None}
    analysis = AnalysisSummary(model_id=radbench6.model_id, task=radbench6.task,
                               predicted_class="glioma", probability=0.72,
                               probabilities=dict(sorted(table.items())), refer=False)
    with pytest.raises(ReportInputError, match=f"classes differ from the model's \\({message}"):
        ReportInput(study_id="ST-1", instance_ids=("IN-1",), patient_pseudonym=PSEUDONYM,
                    site="North Site", modality="CT", body_part="", analysis=analysis,
                    model=radbench6)


def test_html_lists_the_classes_in_the_models_order(stored_report):
    html = render_html(stored_report)
    table = html[html.index('<table class="probs">'):]
    table = table[:table.index("</table>")]
    cells = re.findall(r"<td>([^<]+)</td><td>([^<]+)</td>", table)
    assert cells == [(c, SHOWN[c]) for c in stored_report.model.classes]


def test_pdf_lists_the_classes_in_the_models_order(stored_report):
    pypdf = pytest.importorskip("pypdf", reason="pypdf is needed to read the PDF back")
    reader = pypdf.PdfReader(io.BytesIO(render_pdf(stored_report)))
    text = re.sub(r"\s+", " ", " ".join(page.extract_text() or "" for page in reader.pages))
    rows = [f"{c} {SHOWN[c]}" for c in stored_report.model.classes]
    assert _in_order(text, rows), text


def test_fhir_lists_the_classes_in_the_models_order(stored_report):
    fhir = render_fhir(stored_report)
    observations = [o for o in fhir["contained"] if o["id"].startswith("prob-")]
    assert [o["code"]["text"] for o in observations] == [
        f"Probability of {c}" for c in stored_report.model.classes]
    assert [o["valueQuantity"]["value"] for o in observations] == [
        pytest.approx(PROBS[c]) for c in stored_report.model.classes]
    items = re.findall(r"<li>([^<]+)</li>", fhir["text"]["div"])
    assert items == [f"{c}: {SHOWN[c]}" for c in stored_report.model.classes]


def test_sr_lists_the_classes_in_the_models_order(stored_report):
    import highdicom as hd

    source = pydicom.dcmread(CT_SMALL)
    source.PatientID = source.PatientName = PSEUDONYM
    source.PatientIdentityRemoved = "YES"
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, render_sr(stored_report, [source]), enforce_file_format=True)
    sr = hd.sr.ComprehensiveSR.from_dataset(pydicom.dcmread(io.BytesIO(buf.getvalue())))
    group, = sr.content.get_image_measurement_groups()
    measured = [(m.name.meaning, m.value) for m in group.get_measurements()]
    assert measured == [(f"Probability of {c}", pytest.approx(PROBS[c]))
                        for c in stored_report.model.classes]


@pytest.mark.parametrize(("p", "shown"), [
    (0.997, "99.7 %"), (0.62, "62.0 %"), (0.9994, "99.9 %"), (0.99996, "> 99.9 %"),
    (1.0, "> 99.9 %"), (0.0012, "0.1 %"), (0.00004, "< 0.1 %"), (0.0, "< 0.1 %"),
])
def test_a_probability_is_a_percentage_that_never_reads_as_certain(p, shown):
    assert percent(p) == shown


def test_a_set_threshold_is_printed_as_it_is():
    assert percent(0.8, estimate=False) == "80.0 %"
    assert percent(1.0, estimate=False) == "100.0 %"
    assert percent(0.0, estimate=False) == "0.0 %"


def test_every_format_prints_a_near_certain_probability_the_same_way(radbench6, heatmap_png):
    table = {c: 0.00001 for c in radbench6.classes}
    table["glioma"] = 1.0 - 0.00001 * (len(table) - 1)
    analysis = AnalysisSummary(model_id=radbench6.model_id, task=radbench6.task,
                               predicted_class="glioma", probability=table["glioma"],
                               probabilities=table, refer=False, refer_threshold=0.8)
    report = ReportInput(study_id="ST-1", instance_ids=("IN-1",), patient_pseudonym=PSEUDONYM,
                         site="North Site", modality="CT", body_part="", analysis=analysis,
                         model=radbench6, heatmap_png=heatmap_png)
    sentence = "Model prediction: glioma (probability > 99.9 %)"
    flag = "No referral flag: confidence > 99.9 % at or above 80.0 %"
    html = render_html(report)
    assert sentence.replace(">", "&gt;") in html and flag.replace(">", "&gt;") in html
    assert "<td>&lt; 0.1 %</td>" in html and "100.0 %" not in html
    fhir = render_fhir(report)
    assert sentence in fhir["conclusion"] and flag in fhir["conclusion"]
    assert "<li>glioma: &gt; 99.9 %</li>" in fhir["text"]["div"]
    assert "<li>pneumonia: &lt; 0.1 %</li>" in fhir["text"]["div"]
    pypdf = pytest.importorskip("pypdf", reason="pypdf is needed to read the PDF back")
    reader = pypdf.PdfReader(io.BytesIO(render_pdf(report)))
    text = re.sub(r"\s+", " ", " ".join(page.extract_text() or "" for page in reader.pages))
    assert sentence in text and flag in text and "glioma > 99.9 %" in text
    assert "100.0 %" not in text

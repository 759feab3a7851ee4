"""Every referral reason the models give is put in words by every report format."""

import json
from pathlib import Path

import pytest

from radvault.analysis.inference import REFER_REASONS, ModelCard
from radvault.reports import AnalysisSummary, ModelSummary, ReportInput, _sr, _text

CARD = Path(__file__).resolve().parents[2] / "models" / "radbench6" / "model_card.json"


def test_every_reason_code_has_words_in_the_sr() -> None:
    assert set(REFER_REASONS) <= set(_sr._REASON_WORDS)


@pytest.mark.parametrize("code", REFER_REASONS)
def test_every_reason_code_is_put_in_words_in_the_text(code: str) -> None:
    card = json.loads(CARD.read_text())
    probabilities = dict.fromkeys(card["classes"], 0.0) | {"kidney_stone": 1.0}
    report = ReportInput(
        study_id="1.2.3", instance_ids=("1.2.3.4",), patient_pseudonym="PSEUDO",
        site="default", modality="CT", body_part="CHEST",
        analysis=AnalysisSummary(predicted_class="kidney_stone", probability=1.0,
                                 probabilities=probabilities, refer=True, reasons=(code,),
                                 refer_threshold=0.8, model_id=card["model_id"],
                                 task=card["task"]),
        model=ModelSummary.from_card(ModelCard.from_dict(card)))
    words = _text.reason_text(report, code)
    assert words != code.replace("_", " ")  # not the fallback for unknown codes


def test_a_confidence_just_under_the_threshold_does_not_read_equal_to_it() -> None:
    card = json.loads(CARD.read_text())
    probabilities = dict.fromkeys(card["classes"], 0.0) | {"kidney_stone": 0.7996,
                                                           "malignant_lung": 0.2004}
    report = ReportInput(
        study_id="1.2.3", instance_ids=("1.2.3.4",), patient_pseudonym="PSEUDO",
        site="default", modality="CT", body_part="KIDNEY",
        analysis=AnalysisSummary(predicted_class="kidney_stone", probability=0.7996,
                                 probabilities=probabilities, refer=True,
                                 reasons=("low_confidence",), refer_threshold=0.8,
                                 model_id=card["model_id"], task=card["task"]),
        model=ModelSummary.from_card(ModelCard.from_dict(card)))
    assert _text.reason_text(report, "low_confidence") == "confidence just under 80.0 %"


def test_a_report_names_what_the_image_check_took_the_image_for() -> None:
    card = json.loads(CARD.read_text())
    payload = {"task": card["task"], "predicted_class": "pneumonia", "probability": 1.0,
               "probabilities": dict.fromkeys(card["classes"], 0.0) | {"pneumonia": 1.0},
               "refer": True, "reasons": ["image_unlike_declared"], "refer_threshold": 0.8,
               "image_check": {"looks_like": "brain_mri", "probability": 0.93,
                               "threshold": 0.86, "unlike_declared": True}}
    analysis = AnalysisSummary.from_payload(payload, model_id=card["model_id"])
    assert analysis.looks_like == "brain_mri"
    report = ReportInput(
        study_id="1.2.3", instance_ids=("1.2.3.4",), patient_pseudonym="PSEUDO",
        site="default", modality="DX", body_part="CHEST", analysis=analysis,
        model=ModelSummary.from_card(ModelCard.from_dict(card)))
    assert _text.reason_text(report, "image_unlike_declared") == (
        "the image does not look like the DX CHEST it is recorded as: the image check "
        "takes it for a brain MR")


@pytest.mark.parametrize(("check", "words"), [
    ({"probability": 0.935, "unlike_declared": True, "matches_declared": False},
     "the image looks like a brain MR (93.5 %), not the DX CHEST it is recorded as"),
    ({"probability": 0.815, "unlike_declared": False, "matches_declared": False},
     "the image may be a brain MR (81.5 %), not the DX CHEST it is recorded as; under the "
     "check's threshold of 86.0 %, so not referred for it: look before you sign"),
    ({"probability": 0.9, "unlike_declared": False, "matches_declared": True},
     "the image looks like a brain MR (90.0 %), as recorded"),
    ({"probability": 0.5, "unlike_declared": False, "matches_declared": True},
     "its best guess, a brain MR (50.0 %), agrees with the record (under 86.0 %)"),
    ({"probability": 0.7, "unlike_declared": False, "matches_declared": None},
     "not sure what kind of image this is (best guess a brain MR (70.0 %), under 86.0 %)"),
    ({"probability": 0.9, "unlike_declared": False, "matches_declared": None},
     "the image looks like a brain MR (90.0 %)"),
])
def test_what_the_image_check_saw_is_told_as_sure_as_it_is(check, words) -> None:
    from radvault.reports import image_check_in_words

    full = {"looks_like": "brain_mri", "threshold": 0.86, **check}
    assert image_check_in_words(full, modality="DX", body_part="CHEST") == words


def test_an_older_result_without_the_check_s_threshold_is_only_a_best_guess() -> None:
    from radvault.reports import image_check_in_words

    older = {"looks_like": "brain_mri", "probability": 0.3, "unlike_declared": False}
    assert image_check_in_words(older, modality="DX", body_part="CHEST") == (
        "its best guess: a brain MR (30.0 %)")


def test_a_report_of_an_analysis_made_before_a_relabel_says_so() -> None:
    from radvault.reports import render_fhir

    card = json.loads(CARD.read_text())
    payload = {"task": card["task"], "predicted_class": "pneumonia", "probability": 1.0,
               "probabilities": dict.fromkeys(card["classes"], 0.0) | {"pneumonia": 1.0},
               "refer": True, "reasons": ["no_normal_class"], "refer_threshold": 0.8,
               "recorded_as": ["DX", "CHEST"]}
    report = ReportInput(
        study_id="1.2.3", instance_ids=("1.2.3.4",), patient_pseudonym="PSEUDO",
        site="default", modality="MR", body_part="BRAIN",
        analysis=AnalysisSummary.from_payload(payload, model_id=card["model_id"]),
        model=ModelSummary.from_card(ModelCard.from_dict(card)))
    words = ("This analysis was made when the study was recorded as DX CHEST; it is "
             "recorded as MR BRAIN now: analyse it again")
    assert words in _text.conclusion(report)
    assert words in json.dumps(render_fhir(report))
    same = ReportInput(**{**report.__dict__, "modality": "DX", "body_part": "CHEST"})
    assert "recorded as" not in _text.conclusion(same)

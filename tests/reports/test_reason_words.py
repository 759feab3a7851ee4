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

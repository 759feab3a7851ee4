"""ReportInput and its parts check themselves when built (radvault.reports._model)."""

from __future__ import annotations

from datetime import date, datetime

import pytest
from report_samples import CLASSES, IDENTITY_STRINGS, PROBS, REAL_BIRTH, REAL_ID, REAL_NAME, with_

from radvault.errors import RadVaultError
from radvault.reports import (
    AnalysisSummary,
    Identity,
    ModelSummary,
    ReportInputError,
    SignOff,
    SignOffDecision,
)


def test_error_is_in_the_package_tree():
    assert issubclass(ReportInputError, RadVaultError)
    assert issubclass(ReportInputError, ValueError)


def test_analysis_from_stored_result_and_card():
    """The adapters read what the analyse use case and the model card really hold."""
    from radvault.analysis.export import CARD_FORMAT
    from radvault.analysis.inference import ModelCard
    from radvault.pipeline.analyse import AnalysisResult

    result = AnalysisResult(
        result_id="res-1", instance_id="IN-1", study_id="ST-1", model_id="t-abc", task="t",
        predicted_class="pneumonia", probability=0.62,
        probabilities=dict(zip(CLASSES, PROBS, strict=True)), refer=True,
        reasons=("low_confidence",), extra={"input": "sealed_model_input", "refer_threshold": 0.8})
    from_result = AnalysisSummary.from_result(result)
    from_payload = AnalysisSummary.from_payload(result.as_payload(), model_id="t-abc",
                                                result_id="res-1")
    assert from_result == from_payload
    assert from_result.refer_threshold == 0.8
    assert dict(from_result.probabilities) == dict(zip(CLASSES, PROBS, strict=True))

    card = ModelCard.from_dict({
        "format": CARD_FORMAT, "model_id": "t-abc", "task": "t", "classes": list(CLASSES),
        "input": {"size": 224}, "preprocessing": {}, "onnx_sha256": "0" * 64,
        "trained_on": [{"modality": "dx", "body_part": "chest"}], "created": "2026-01-01",
        "metrics": {"val": {"accuracy": 0.5}, "test": {"accuracy": 0.9, "auc_macro": None,
                                                      "mcc": 0.7, "confusion_matrix": [[1]]}},
    })
    summary = ModelSummary.from_card(card)
    assert summary.metrics_split == "test"
    assert dict(summary.metrics) == {"accuracy": 0.9, "mcc": 0.7}
    assert summary.trained_on == (("DX", "CHEST"),)
    assert summary.input_size == 224 and summary.classes == CLASSES


def test_payload_missing_a_field_is_refused():
    with pytest.raises(ReportInputError, match="malformed"):
        AnalysisSummary.from_payload({"task": "t"}, model_id="m")


@pytest.mark.parametrize(("changes", "message"), [
    ({"probabilities": {"a": 0.5, "b": 0.2}}, "sum to one"),
    ({"probabilities": {"a": 1.5, "b": -0.5}}, "probability"),
    ({"predicted_class": "b"}, "predicted_class is not one of"),
    ({"probability": 0.3}, "differs"),
    ({"refer": False}, "reasons"),
    ({"refer_threshold": 2.0}, "refer_threshold"),
])
def test_inconsistent_analysis_is_refused(changes, message):
    fields = {"model_id": "m", "task": "t", "predicted_class": "a", "probability": 0.6,
              "probabilities": {"a": 0.6, "c": 0.4}, "refer": True,
              "reasons": ("low_confidence",), "refer_threshold": 0.8}
    fields.update(changes)
    with pytest.raises(ReportInputError, match=message):
        AnalysisSummary(**fields)


def test_prediction_must_be_the_most_probable_class():
    with pytest.raises(ReportInputError, match="most probable"):
        AnalysisSummary(model_id="m", task="t", predicted_class="a", probability=0.4,
                        probabilities={"a": 0.4, "b": 0.6}, refer=False)


def test_report_refuses_an_analysis_from_another_model(report, model):
    other = ModelSummary(model_id="other-model", task=model.task, classes=model.classes,
                         input_size=224)
    with pytest.raises(ReportInputError, match="not made by"):
        with_(report, model=other)


def test_report_refuses_other_classes(report, analysis):
    model = ModelSummary(model_id=analysis.model_id, task="t", classes=("x", "y"),
                         input_size=224)
    with pytest.raises(ReportInputError, match="classes"):
        with_(report, model=model)


def test_heatmap_must_be_png(report):
    with pytest.raises(ReportInputError, match="PNG"):
        with_(report, heatmap_png=b"GIF89a...")


def test_times_must_carry_a_zone(report):
    with pytest.raises(ReportInputError, match="time zone"):
        with_(report, generated_at=datetime(2026, 1, 1, 12, 0))
    with pytest.raises(ReportInputError, match="time zone"):
        SignOff(radiologist="r", decision="accepted", signed_at=datetime(2026, 1, 1))


def test_sign_off_decisions(report, accepted, overridden):
    assert overridden.decision is SignOffDecision.OVERRIDDEN
    assert not report.signed and report.final_class == "pneumonia"
    assert with_(report, sign_off=accepted).final_class == "pneumonia"
    assert with_(report, sign_off=overridden).final_class == "covid"
    with pytest.raises(ReportInputError, match="radiologist_class"):
        SignOff(radiologist="r", decision="overridden", signed_at=accepted.signed_at)
    with pytest.raises(ReportInputError, match="decision"):
        SignOff(radiologist="r", decision="maybe", signed_at=accepted.signed_at)
    same = SignOff(radiologist="r", decision="overridden", signed_at=accepted.signed_at,
                   radiologist_class="pneumonia")
    with pytest.raises(ReportInputError, match="other than the prediction"):
        with_(report, sign_off=same)


def test_identity_never_shows_in_repr(report):
    ident = Identity(name=REAL_NAME, patient_id=REAL_ID, birth_date=REAL_BIRTH)
    shown = repr(with_(report, identity=ident)) + repr(ident) + str(ident)
    assert not any(s in shown for s in IDENTITY_STRINGS)
    assert ident.display_name == "Zebedee Quixote"
    with pytest.raises(ReportInputError):
        Identity(name=" ", patient_id="x")


def test_report_needs_instances_and_a_date_not_a_datetime(report):
    with pytest.raises(ReportInputError, match="instance"):
        with_(report, instance_ids=())
    with pytest.raises(ReportInputError, match="study_date"):
        with_(report, study_date=datetime(2020, 1, 1))
    assert with_(report, instance_ids="IN-9").instance_ids == ("IN-9",)
    assert with_(report, study_date=None).study_date is None
    assert isinstance(report.study_date, date)


def test_summaries_are_read_only(analysis):
    with pytest.raises(TypeError, match="does not support item assignment"):
        analysis.probabilities["normal"] = 1.0  # type: ignore[index]


def test_control_characters_are_refused(report, accepted):
    with pytest.raises(ReportInputError, match="control characters"):
        SignOff(radiologist="r", decision="accepted", signed_at=accepted.signed_at,
                comment="fine\x00")
    with pytest.raises(ReportInputError, match="control characters"):
        with_(report, site="North\x1bSite")
    multi_line = SignOff(radiologist="r", decision="accepted", signed_at=accepted.signed_at,
                         comment="line one\nline two\ttabbed")
    assert multi_line.comment.count("\n") == 1

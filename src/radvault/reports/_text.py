"""The words every report format shares, so HTML, PDF, FHIR and SR say the same thing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

from radvault.reports._model import (
    HEADLINE_METRICS,
    RADIOLOGIST_FINDINGS,
    ReportInput,
    SignOffDecision,
)

REASON_LOW_CONFIDENCE = "low_confidence"
REASON_MODALITY = "modality_not_trained"
REASON_BODY_PART = "body_part_not_trained"
REASON_NOT_VALIDATED = "model_not_validated"
REASON_BODY_PART_UNKNOWN = "body_part_unknown"
REASON_CLASS_MODALITY = "class_not_trained_for_modality"
REASON_CLASS_BODY_PART = "class_not_trained_for_body_part"
REASON_NO_NORMAL_CLASS = "no_normal_class"
REASON_IMAGE_UNLIKE_DECLARED = "image_unlike_declared"

AWAITING_SIGN_OFF = "Awaiting radiologist sign-off"

#: The image check's sources (the radbench datasets) in words.
SOURCE_WORDS = {"chest_xray": "a chest X-ray", "brain_mri": "a brain MR",
                "lung_ct": "a lung CT", "kidney_ct": "a kidney CT",
                "breast_us": "a breast ultrasound"}


def source_in_words(source: str) -> str:
    """An image check source in words ("a brain MR"); an unknown one with spaces."""
    return SOURCE_WORDS.get(source, source.replace("_", " "))


def image_check_in_words(check: Mapping[str, Any], *, modality: str | None = None,
                         body_part: str | None = None) -> str:
    """What the image check saw, in words, for the study page and the command line.

    Only a guess at or over the check's threshold is told as what the image looks like;
    one under it is a best guess, and one that contradicts the record a warning that
    says it refers nothing. A result stored before the threshold was (session 11) gets
    the neutral "best guess" unless it was referred.

    Examples
    --------
    >>> image_check_in_words({"looks_like": "brain_mri", "probability": 0.935,
    ...     "threshold": 0.86, "unlike_declared": True}, modality="DX", body_part="CHEST")
    'the image looks like a brain MR (93.5 %), not the DX CHEST it is recorded as'
    """
    seen = f"{source_in_words(str(check['looks_like']))} ({percent(float(check['probability']))})"
    declared = " ".join(v for v in (modality, body_part) if v) or "kind of image"
    if check.get("unlike_declared"):
        return f"the image looks like {seen}, not the {declared} it is recorded as"
    threshold = check.get("threshold")
    if threshold is None:
        return f"its best guess: {seen}"
    limit = percent(float(threshold), estimate=False)
    matches = check.get("matches_declared")
    if float(check["probability"]) >= float(threshold):
        return f"the image looks like {seen}" + (", as recorded" if matches else "")
    if matches is False:
        return (f"the image may be {seen}, not the {declared} it is recorded as; under the "
                f"check's threshold of {limit}, so not referred for it: look before you sign")
    if matches:
        return f"its best guess, {seen}, agrees with the record (under {limit})"
    return f"not sure what kind of image this is (best guess {seen}, under {limit})"


def percent(p: float, *, estimate: bool = True) -> str:
    """A probability as every report format prints it: a percentage with one decimal.

    A model's estimate is never shown as certain: one that would print as 100.0 % or
    0.0 % (a float output of exactly 1 or 0 included) prints as "> 99.9 %" or
    "< 0.1 %". A set value, such as the referral threshold, is printed as it is.

    Parameters
    ----------
    p : float
        In [0, 1].
    estimate : bool
        Whether ``p`` is a model's estimate (default) rather than a set value.

    Returns
    -------
    str
        For example "99.7 %", "> 99.9 %", "< 0.1 %".

    Examples
    --------
    >>> percent(0.997), percent(0.99996), percent(0.00004), percent(0.8, estimate=False)
    ('99.7 %', '> 99.9 %', '< 0.1 %', '80.0 %')
    """
    text = f"{100.0 * p:.1f}"
    if estimate and text == "100.0":
        return "> 99.9 %"
    if estimate and text in ("0.0", "-0.0"):
        return "< 0.1 %"
    return f"{text} %"


def _threshold(p: float) -> str:
    return percent(p, estimate=False)


def reason_text(report: ReportInput, reason: str) -> str:
    """One referral reason in words."""
    a = report.analysis
    modality, body_part = a.recorded_as or (report.modality, report.body_part)
    return reason_in_words(reason, predicted_class=a.predicted_class,
                           probability=a.probability, refer_threshold=a.refer_threshold,
                           modality=modality, body_part=body_part, looks_like=a.looks_like)


def reason_in_words(reason: str, *, predicted_class: str, probability: float,
                    refer_threshold: float | None, modality: str | None,
                    body_part: str | None, looks_like: str | None = None) -> str:
    """A referral reason code in words, for a result of that class, probability and image.

    Reports and the web pages share it, so a clinician reads the same sentence in both.
    ``looks_like`` is the image check's source, when the caller has it. An unknown code
    is given back with spaces for underscores.
    """
    if reason == REASON_LOW_CONFIDENCE:
        if refer_threshold is not None:
            shown, limit = percent(probability), _threshold(refer_threshold)
            if shown == limit:  # 0.7996 reads 80.0 %: do not say "80.0 % under 80.0 %"
                return f"confidence just under {limit}"
            return f"confidence {shown} under {limit}"
        return f"confidence {percent(probability)} under the referral threshold"
    if reason == REASON_NO_NORMAL_CLASS:
        return ("the model has no class for a normal image: it names one of its diseases "
                "for every image, a normal one too")
    if reason == REASON_IMAGE_UNLIKE_DECLARED:
        declared = " ".join(v for v in (modality, body_part) if v) or "kind of image"
        seen = source_in_words(looks_like) if looks_like else "another kind of image"
        return (f"the image does not look like the {declared} it is recorded as: the image "
                f"check takes it for {seen}")
    if reason == REASON_MODALITY:
        return f"the model was not trained on {modality or 'unknown'} images"
    if reason == REASON_BODY_PART:
        return (f"the model was not trained on body part {body_part or 'unknown'} for "
                f"{modality or 'this modality'}")
    if reason == REASON_NOT_VALIDATED:
        return "the model failed validation on held-out data and is not fit for decisions"
    if reason == REASON_BODY_PART_UNKNOWN:
        return (f"the image's body part is not recorded, and the model knows "
                f"{modality or 'this modality'} images only of named body parts")
    if reason == REASON_CLASS_MODALITY:
        return f"the model never saw the class {predicted_class} on {modality or 'these'} images"
    if reason == REASON_CLASS_BODY_PART:
        return (f"the model never saw the class {predicted_class} on images of the "
                f"{body_part or 'this body part'}")
    return reason.replace("_", " ")


def reason_texts(report: ReportInput) -> list[str]:
    """Every referral reason in words (empty when the flag is not set)."""
    return [reason_text(report, r) for r in report.analysis.reasons]


def flag_sentence(report: ReportInput) -> str:
    """The decision-support flag and its reasons, as one sentence."""
    a = report.analysis
    if a.refer:
        return "Refer to a radiologist: " + "; ".join(reason_texts(report))
    if a.refer_threshold is not None:
        return (f"No referral flag: confidence {percent(a.probability)} at or above "
                f"{_threshold(a.refer_threshold)}")
    return f"No referral flag: confidence {percent(a.probability)}"


def prediction_sentence(report: ReportInput) -> str:
    """The model's prediction as one sentence."""
    a = report.analysis
    return f"Model prediction: {a.predicted_class} (probability {percent(a.probability)})"


def heatmap_title(report: ReportInput) -> str:
    """What the heatmap figure shows: over the model input, or alone (no image under it)."""
    where = ("overlaid on the model input" if report.heatmap_over_image
             else "shown alone: the image is not part of this report")
    return f"Class-activation heatmap for the predicted class, {where}"


def heatmap_caption(report: ReportInput) -> str:
    """The heatmap's title and how to read it."""
    return (f"{heatmap_title(report)}. Warm areas weighed most in the prediction; they are "
            "not a segmentation.")


def timestamp(value: datetime) -> str:
    """A time as reports print it: ISO 8601 to the second, with its offset."""
    return value.isoformat(timespec="seconds")


def date_text(value: date | None) -> str:
    """A date as reports print it ("not recorded" when absent)."""
    return value.isoformat() if value is not None else "not recorded"


def sign_off_sentence(report: ReportInput) -> str:
    """The sign-off in words, or that it is awaited."""
    s = report.sign_off
    if s is None:
        return AWAITING_SIGN_OFF
    when = timestamp(s.signed_at)
    amended = f" (amends the sign-off by {s.amends})" if s.amends else ""
    if s.decision is SignOffDecision.ACCEPTED:
        return f"Signed off by {s.radiologist} at {when}{amended}: prediction accepted"
    return (f"Signed off by {s.radiologist} at {when}{amended}: prediction overridden, "
            f"radiologist's finding {finding_text(str(s.radiologist_class))}")


def status_text(report: ReportInput) -> str:
    """The report's status in words: preliminary, final, or final and amended."""
    if report.sign_off is None:
        return "Status: preliminary (awaiting radiologist sign-off)."
    if report.sign_off.amends:
        return (f"Status: final, amended (the sign-off by {report.sign_off.amends} was "
                "replaced).")
    return "Status: final (signed off by a radiologist)."


def finding_text(name: str) -> str:
    """A class or a radiologist's own finding (``no_finding``...) as reports print it."""
    return RADIOLOGIST_FINDINGS.get(name, name)


def relabel_note(recorded_as: Sequence[str | None] | None, modality: str | None,
                 body_part: str | None) -> str:
    """That an analysis made when the study was ``recorded_as`` predates a relabel to
    ``modality`` and ``body_part`` ("" when it does not, or the result does not say):
    one sentence for the reports, the study page and the command line."""
    now = (modality or "", body_part or "")
    if not recorded_as:
        return ""
    then = (recorded_as[0] or "", recorded_as[1] or "")
    if then == now:
        return ""
    was = " ".join(v for v in then if v) or "nothing"
    is_now = " ".join(v for v in now if v) or "nothing"
    return (f"this analysis was made when the study was recorded as {was}; it is recorded "
            f"as {is_now} now: analyse it again")


def record_sentence(report: ReportInput) -> str:
    """That the analysis predates a relabel of the study, when it does ("" otherwise)."""
    note = relabel_note(report.analysis.recorded_as, report.modality, report.body_part)
    return f"{note[:1].upper()}{note[1:]} for the answer of the right model" if note else ""


def conclusion(report: ReportInput) -> str:
    """The report's conclusion: prediction, flag, sign-off and comment."""
    parts = [prediction_sentence(report), flag_sentence(report), sign_off_sentence(report)]
    if coverage := coverage_sentence(report):
        parts.insert(0, coverage)
    if record := record_sentence(report):
        parts.insert(0, record)
    if report.sign_off is not None and report.sign_off.comment.strip():
        parts.append(f"Radiologist comment: {report.sign_off.comment.strip()}")
    return ". ".join(p.rstrip(".") for p in parts) + "."


def coverage_sentence(report: ReportInput) -> str:
    """Which part of the study the report covers, when not all of it ("" otherwise)."""
    total, covered = report.study_images, len(report.instance_ids)
    if total is None or total <= covered:
        return ""
    return (f"This report covers {covered} of the study's {total} images "
            f"({', '.join(report.instance_ids)}); the study's other images are not in it")


def metric_rows(report: ReportInput) -> list[tuple[str, str]]:
    """The model card's headline metrics as (label, value) rows, in a fixed order."""
    rows = []
    for key, label in HEADLINE_METRICS:
        if key in report.model.metrics:
            value = report.model.metrics[key]
            rows.append((label, str(int(value)) if key == "n" else f"{value:.3f}"))
    return rows


def trained_on_text(report: ReportInput) -> str:
    """The modality/body-part pairs the model was trained on, in words."""
    pairs = [f"{m} {b}".strip() for m, b in report.model.trained_on]
    return ", ".join(pairs) if pairs else "not recorded"


def model_rows(report: ReportInput) -> list[tuple[str, str]]:
    """The model card summary as (label, value) rows."""
    m = report.model
    rows = [("Model id", m.model_id), ("Task", m.task), ("Classes", ", ".join(m.classes)),
            ("Input size", f"{m.input_size} x {m.input_size} pixels"),
            ("Trained on", trained_on_text(report))]
    if m.created:
        rows.append(("Created", m.created))
    if m.metrics_split:
        split = "test split" if m.metrics_split == "test" else f"{m.metrics_split} split"
        rows.append(("Metrics measured on", split))
    return rows


def study_rows(report: ReportInput) -> list[tuple[str, str]]:
    """The study details as (label, value) rows: pseudonymous unless re-identified."""
    rows: list[tuple[str, str]] = []
    if report.identity is not None:
        ident = report.identity
        rows += [("Patient name", ident.display_name), ("Patient id", ident.patient_id),
                 ("Birth date", date_text(ident.birth_date))]
    rows += [("Patient pseudonym", report.patient_pseudonym), ("Study", report.study_id),
             ("Instances", ", ".join(report.instance_ids))]
    if coverage := coverage_sentence(report):
        rows.append(("Coverage", coverage))
    rows += [("Site", report.site),
             ("Modality", report.modality or "unknown"),
             ("Body part", report.body_part or "unknown"),
             ("Study date (shifted)", date_text(report.study_date))]
    if report.analysis.result_id:
        rows.append(("Analysis result", report.analysis.result_id))
    if record := record_sentence(report):
        rows.append(("Analysed as", record))
    rows.append(("Report generated", timestamp(report.generated_at)))
    return rows

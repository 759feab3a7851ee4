"""The plain data a report is rendered from, checked when built.

Every renderer (HTML, PDF, FHIR, DICOM SR) takes one :class:`ReportInput` and
nothing else of RadVault: no vault, no catalog, no HTTP. The clinical-service
use case gathers the pieces (the stored analysis, the model card, the heatmap,
the sign-off) and hands them over; the renderers only turn them into bytes.

Pseudonymous by default: the patient appears only as ``patient_pseudonym``.
:class:`Identity` (real name, id, birth date) is set only for a copy rendered
for an authorised, audited re-identification; the caller audits, the
renderers then print a "RE-IDENTIFIED COPY" banner. :class:`Identity` never
shows its values in ``repr`` (so they cannot reach a log line or a traceback).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Protocol

from radvault.errors import ReportInputError

__all__ = [
    "AnalysisSummary",
    "Identity",
    "ModelSummary",
    "ReportInput",
    "ReportInputError",
    "SignOff",
    "SignOffDecision",
]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NOT_FOR_CLINICAL_USE = "Research prototype - not for clinical use"
REIDENTIFIED_BANNER = "RE-IDENTIFIED COPY"

#: Model-card metrics shown in reports, in this order, with their labels.
HEADLINE_METRICS: tuple[tuple[str, str], ...] = (
    ("accuracy", "Accuracy"),
    ("balanced_accuracy", "Balanced accuracy"),
    ("auc_macro", "AUC (macro)"),
    ("mcc", "MCC"),
    ("cohen_kappa", "Cohen's kappa"),
    ("jaccard_macro", "Jaccard (macro)"),
    ("f1_macro", "F1 (macro)"),
    ("ece", "Expected calibration error"),
    ("n", "Images evaluated"),
)

# Slack when checking that probabilities are a distribution: stored payloads may
# be rounded (``as_payload`` rounds the summary to 4 digits).
_SUM_TOLERANCE = 1e-2
_MATCH_TOLERANCE = 1e-6


class SignOffDecision(StrEnum):
    """What the radiologist did with the model's prediction."""

    ACCEPTED = "accepted"
    OVERRIDDEN = "overridden"


#: Findings a radiologist may sign instead of one of the model's classes, with their
#: words: a model without a normal class (radbench6) could otherwise only be overridden
#: with another disease, and a signed report would state one for a normal image.
RADIOLOGIST_FINDINGS: Mapping[str, str] = MappingProxyType({
    "no_finding": "no finding of the model's classes",
    "not_assessable": "not assessable by this model",
})


class _CardLike(Protocol):
    """What :meth:`ModelSummary.from_card` reads (``radvault.analysis.inference.ModelCard``)."""

    @property
    def model_id(self) -> str: ...

    @property
    def task(self) -> str: ...

    @property
    def classes(self) -> tuple[str, ...]: ...

    @property
    def size(self) -> int: ...

    @property
    def trained_on(self) -> tuple[tuple[str, str], ...]: ...

    @property
    def raw(self) -> Mapping[str, Any]: ...


class _ResultLike(Protocol):
    """What :meth:`AnalysisSummary.from_result` reads (``pipeline.analyse.AnalysisResult``)."""

    @property
    def result_id(self) -> str: ...

    @property
    def model_id(self) -> str: ...

    @property
    def task(self) -> str: ...

    @property
    def predicted_class(self) -> str: ...

    @property
    def probability(self) -> float: ...

    @property
    def probabilities(self) -> Mapping[str, float]: ...

    @property
    def refer(self) -> bool: ...

    @property
    def reasons(self) -> tuple[str, ...]: ...

    @property
    def extra(self) -> Mapping[str, Any]: ...


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _require_text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ReportInputError(f"{name} must be a non-empty string")
    _no_control(name, value)
    return value


def _no_control(name: str, value: str) -> None:
    """Refuse control characters (FHIR strings and DICOM text cannot carry them)."""
    if _CONTROL.search(value):
        raise ReportInputError(f"{name} contains control characters")


def _require_aware(name: str, value: object) -> datetime:
    if not isinstance(value, datetime):
        raise ReportInputError(f"{name} must be a datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ReportInputError(f"{name} must carry a time zone")
    return value


def _probability(name: str, value: object) -> float:
    try:
        p = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ReportInputError(f"{name} is not a number") from None
    if not math.isfinite(p) or not 0.0 <= p <= 1.0:
        raise ReportInputError(f"{name} is not a probability in [0, 1]")
    return p


@dataclass(frozen=True)
class AnalysisSummary:
    """One stored analysis: the model's output and its decision-support flag.

    Parameters
    ----------
    model_id, task : str
        Which model produced it, for which task.
    predicted_class : str
        The arg-max class.
    probability : float
        Calibrated probability of ``predicted_class``.
    probabilities : mapping of str to float
        Calibrated probability of every class, in any order (a report shows them in
        the model's class order).
    refer : bool
        The decision-support flag: "refer to a radiologist".
    reasons : iterable of str
        Why ``refer`` is set (``model_not_validated``, ``no_normal_class``,
        ``image_unlike_declared``, ``low_confidence``, ``modality_not_trained``,
        ``body_part_unknown``, ``body_part_not_trained``,
        ``class_not_trained_for_modality``, ``class_not_trained_for_body_part``; other
        codes are shown as written).
    refer_threshold : float, optional
        The confidence threshold the flag was computed with, when known.
    result_id : str
        The catalog's id of the result ("" when not stored).
    looks_like : str, optional
        What the image check took the image for (``brain_mri``), when one looked at it;
        the ``image_unlike_declared`` reason then names it.

    Raises
    ------
    ReportInputError
        If a probability is outside [0, 1], they do not sum to one, the
        predicted class or its probability disagree with the table, or the
        flag and its reasons disagree.
    """

    model_id: str
    task: str
    predicted_class: str
    probability: float
    probabilities: Mapping[str, float]
    refer: bool
    reasons: tuple[str, ...] = ()
    refer_threshold: float | None = None
    result_id: str = ""
    #: The image check's source for the image (``brain_mri``), when one looked at it.
    looks_like: str | None = None
    #: The modality and body part the image was recorded as when analysed, when the
    #: result says (a relabel since changes the study's, not the analysis's).
    recorded_as: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        _require_text("model_id", self.model_id)
        _require_text("task", self.task)
        _require_text("predicted_class", self.predicted_class)
        if not isinstance(self.probabilities, Mapping) or len(self.probabilities) < 2:
            raise ReportInputError("probabilities must map at least two classes")
        table = {_require_text("class name", str(k)): _probability(f"probability of class #{i}", v)
                 for i, (k, v) in enumerate(self.probabilities.items())}
        if abs(sum(table.values()) - 1.0) > _SUM_TOLERANCE:
            raise ReportInputError("probabilities do not sum to one")
        if self.predicted_class not in table:
            raise ReportInputError("predicted_class is not one of the probabilities' classes")
        probability = _probability("probability", self.probability)
        if abs(probability - table[self.predicted_class]) > _MATCH_TOLERANCE:
            raise ReportInputError("probability differs from the predicted class's probability")
        if table[self.predicted_class] < max(table.values()) - _MATCH_TOLERANCE:
            raise ReportInputError("predicted_class is not the most probable class")
        reasons = tuple(_require_text("reason", str(r)) for r in self.reasons)
        if not isinstance(self.refer, bool):
            raise ReportInputError("refer must be a bool")
        if self.refer != bool(reasons):
            raise ReportInputError("refer must be set exactly when reasons are given")
        threshold = self.refer_threshold
        if threshold is not None:
            threshold = _probability("refer_threshold", threshold)
        object.__setattr__(self, "probabilities", MappingProxyType(table))
        object.__setattr__(self, "probability", probability)
        object.__setattr__(self, "reasons", reasons)
        object.__setattr__(self, "refer_threshold", threshold)
        object.__setattr__(self, "result_id", str(self.result_id or ""))

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], *, model_id: str,
                     result_id: str = "") -> AnalysisSummary:
        """Build from the JSON the analyse use case stores (``AnalysisResult.as_payload()``).

        The catalog keeps ``model_id`` and the result id beside the payload, so
        they are passed separately.

        Raises
        ------
        ReportInputError
            If a field is missing or inconsistent.
        """
        try:
            return cls(model_id=model_id, task=str(payload["task"]),
                       predicted_class=str(payload["predicted_class"]),
                       probability=payload["probability"],
                       probabilities=dict(payload["probabilities"]),
                       refer=payload["refer"], reasons=tuple(payload.get("reasons", ())),
                       refer_threshold=payload.get("refer_threshold"), result_id=result_id,
                       looks_like=_looks_like(payload.get("image_check")),
                       recorded_as=_recorded_as(payload.get("recorded_as")))
        except (KeyError, TypeError) as exc:
            raise ReportInputError(f"analysis payload is malformed ({type(exc).__name__}: "
                                   f"{exc})") from None

    @classmethod
    def from_result(cls, result: _ResultLike) -> AnalysisSummary:
        """Build from an ``AnalysisResult`` (or anything with its attributes).

        Raises
        ------
        ReportInputError
            If a field is inconsistent.
        """
        return cls(model_id=result.model_id, task=result.task,
                   predicted_class=result.predicted_class, probability=result.probability,
                   probabilities=dict(result.probabilities), refer=result.refer,
                   reasons=tuple(result.reasons),
                   refer_threshold=(result.extra or {}).get("refer_threshold"),
                   result_id=result.result_id)


@dataclass(frozen=True)
class ModelSummary:
    """What a report says about the model (a model card, summarised).

    Parameters
    ----------
    model_id, task : str
    classes : iterable of str
        The model's classes, in output order.
    input_size : int
        Side length of the square model input, in pixels.
    trained_on : iterable of (modality, body part)
        The modality/body-part pairs seen in training.
    metrics : mapping of str to float
        Headline metrics (keys of :data:`HEADLINE_METRICS`; others are kept
        but not shown).
    metrics_split : str
        Which split the metrics were measured on ("test", "val" or "").
    created : str
        When the model was written, as on the card ("" if unknown).

    Raises
    ------
    ReportInputError
        If the id, task or classes are missing, or a metric is not a number.
    """

    model_id: str
    task: str
    classes: tuple[str, ...]
    input_size: int
    trained_on: tuple[tuple[str, str], ...] = ()
    metrics: Mapping[str, float] = field(default_factory=dict)
    metrics_split: str = ""
    created: str = ""

    def __post_init__(self) -> None:
        _require_text("model_id", self.model_id)
        _require_text("task", self.task)
        classes = tuple(_require_text("class name", str(c)) for c in self.classes)
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise ReportInputError("a model needs at least two distinct classes")
        if not isinstance(self.input_size, int) or self.input_size <= 0:
            raise ReportInputError("input_size must be a positive int")
        trained_on = tuple((str(m), str(b)) for m, b in self.trained_on)
        metrics: dict[str, float] = {}
        for key, value in dict(self.metrics).items():
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ReportInputError(f"metric {key!r} is not a number")
            metrics[str(key)] = float(value)
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "trained_on", trained_on)
        object.__setattr__(self, "metrics", MappingProxyType(metrics))
        object.__setattr__(self, "metrics_split", str(self.metrics_split or ""))
        object.__setattr__(self, "created", str(self.created or ""))

    @classmethod
    def from_card(cls, card: _CardLike) -> ModelSummary:
        """Summarise a ``ModelCard``: test metrics when the card has them, else validation.

        Raises
        ------
        ReportInputError
            If the card's fields are unusable.
        """
        raw = card.raw or {}
        all_metrics = raw.get("metrics") or {}
        split, chosen = "", {}
        for name in ("test", "val"):
            if isinstance(all_metrics.get(name), Mapping):
                split, chosen = name, all_metrics[name]
                break
        metrics = {k: chosen[k] for k, _ in HEADLINE_METRICS
                   if isinstance(chosen.get(k), int | float) and not isinstance(chosen[k], bool)
                   and math.isfinite(chosen[k])}
        return cls(model_id=card.model_id, task=card.task, classes=tuple(card.classes),
                   input_size=int(card.size), trained_on=tuple(card.trained_on),
                   metrics=metrics, metrics_split=split, created=str(raw.get("created", "")))


@dataclass(frozen=True)
class SignOff:
    """A radiologist's sign-off of the prediction (the caller has audited it).

    Parameters
    ----------
    radiologist : str
        The radiologist's RadVault username.
    decision : SignOffDecision or str
        ``accepted`` or ``overridden``.
    signed_at : datetime
        When, with a time zone.
    comment : str
        Free text from the radiologist ("" for none).
    radiologist_class : str, optional
        The class the radiologist chose; required when overriding.
    amends : str, optional
        Who signed the same analysis before, when this sign-off replaces theirs.

    Raises
    ------
    ReportInputError
        If the decision is unknown, the time is naive, or an override has no class.
    """

    radiologist: str
    decision: SignOffDecision
    signed_at: datetime
    comment: str = ""
    radiologist_class: str | None = None
    #: The radiologist whose earlier sign-off of the same analysis this one replaces.
    amends: str | None = None

    def __post_init__(self) -> None:
        _require_text("radiologist", self.radiologist)
        if self.amends is not None:
            _require_text("amends", self.amends)
        try:
            decision = SignOffDecision(self.decision)
        except ValueError:
            raise ReportInputError("decision must be 'accepted' or 'overridden'") from None
        _require_aware("signed_at", self.signed_at)
        if decision is SignOffDecision.OVERRIDDEN:
            _require_text("radiologist_class", self.radiologist_class)
        if not isinstance(self.comment, str):
            raise ReportInputError("comment must be a string")
        _no_control("comment", self.comment)
        object.__setattr__(self, "decision", decision)


@dataclass(frozen=True)
class Identity:
    """The real patient, for an authorised, audited re-identified copy only.

    ``repr`` never shows the values, so an identity cannot leak into a log
    line or a traceback.

    Parameters
    ----------
    name : str
        The patient's name as the source recorded it (DICOM ``^`` separators
        are shown as spaces in HTML/PDF).
    patient_id : str
        The patient's id at the site.
    birth_date : date, optional

    Raises
    ------
    ReportInputError
        If the name or id is empty.
    """

    name: str = field(repr=False)
    patient_id: str = field(repr=False)
    birth_date: date | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _require_text("identity name", self.name)
        _require_text("identity patient_id", self.patient_id)
        if self.birth_date is not None and not isinstance(self.birth_date, date):
            raise ReportInputError("identity birth_date must be a date")

    def __repr__(self) -> str:
        return "Identity(<redacted>)"

    @property
    def display_name(self) -> str:
        """The name with DICOM component separators turned into spaces."""
        return " ".join(part for part in self.name.replace("^", " ").split() if part)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ReportInput:
    """Everything one report shows, for one analysed study.

    Parameters
    ----------
    study_id : str
        RadVault's (pseudonymous) study id.
    instance_ids : iterable of str
        The analysed instance(s), RadVault ids.
    patient_pseudonym : str
        The patient's pseudonym (the de-identified ``PatientID``).
    site : str
        The site that sent the study.
    modality, body_part : str
        As stored (may be "" when unknown).
    analysis : AnalysisSummary
        Its probabilities may come in any order (the catalog returns them sorted by
        name); the report keeps a copy with them in the model's class order, which
        every format shows.
    model : ModelSummary
        Must describe ``analysis.model_id`` and have the same set of classes.
    study_date : date, optional
        The (shifted) study date.
    heatmap_png : bytes, optional
        The class-activation heatmap, PNG.
    heatmap_over_image : bool
        Whether the heatmap is drawn over the model input (default) or alone, for a
        reader who may not view the image.
    sign_off : SignOff, optional
        Absent: the report is preliminary, "awaiting radiologist sign-off".
    identity : Identity, optional
        Only for an authorised, audited re-identified copy.
    generated_at : datetime
        When the report was rendered (now, UTC, by default).

    Raises
    ------
    ReportInputError
        If a field is missing, the model and analysis disagree (another model, or
        a class missing or extra), the heatmap is not PNG, an override names the
        predicted class, or a time is naive.
    """

    study_id: str
    instance_ids: tuple[str, ...]
    patient_pseudonym: str
    site: str
    modality: str
    body_part: str
    analysis: AnalysisSummary
    model: ModelSummary
    study_date: date | None = None
    heatmap_png: bytes | None = field(default=None, repr=False)
    heatmap_over_image: bool = True
    sign_off: SignOff | None = None
    identity: Identity | None = field(default=None, repr=False)
    generated_at: datetime = field(default_factory=_now)
    #: How many images the study holds, when the report covers fewer (it then says so).
    study_images: int | None = None

    def __post_init__(self) -> None:
        _require_text("study_id", self.study_id)
        _require_text("patient_pseudonym", self.patient_pseudonym)
        _require_text("site", self.site)
        instance_ids = tuple(_require_text("instance id", i) for i in _as_tuple(self.instance_ids))
        if not instance_ids:
            raise ReportInputError("a report needs at least one instance id")
        if not isinstance(self.analysis, AnalysisSummary):
            raise ReportInputError("analysis must be an AnalysisSummary")
        if not isinstance(self.model, ModelSummary):
            raise ReportInputError("model must be a ModelSummary")
        if self.analysis.model_id != self.model.model_id:
            raise ReportInputError("the analysis was not made by the summarised model")
        stored, classes = set(self.analysis.probabilities), set(self.model.classes)
        if stored != classes:
            raise ReportInputError(f"the analysis's classes differ from the model's "
                                   f"({len(classes - stored)} missing, "
                                   f"{len(stored - classes)} not the model's)")
        if tuple(self.analysis.probabilities) != self.model.classes:
            # Storage may return another order (the catalog's JSON sorts keys): every
            # format shows the classes in the model's order.
            table = self.analysis.probabilities
            object.__setattr__(self, "analysis", replace(
                self.analysis, probabilities={c: table[c] for c in self.model.classes}))
        if self.study_date is not None and (not isinstance(self.study_date, date)
                                            or isinstance(self.study_date, datetime)):
            raise ReportInputError("study_date must be a date")
        if self.heatmap_png is not None and (not isinstance(self.heatmap_png, bytes)
                                             or not self.heatmap_png.startswith(PNG_MAGIC)):
            raise ReportInputError("heatmap_png is not a PNG image")
        if self.sign_off is not None:
            if not isinstance(self.sign_off, SignOff):
                raise ReportInputError("sign_off must be a SignOff")
            if (self.sign_off.decision is SignOffDecision.OVERRIDDEN
                    and self.sign_off.radiologist_class == self.analysis.predicted_class):
                raise ReportInputError("an override must choose a class other than the "
                                       "prediction")
        if self.identity is not None and not isinstance(self.identity, Identity):
            raise ReportInputError("identity must be an Identity")
        _require_aware("generated_at", self.generated_at)
        if self.study_images is not None and (
                not isinstance(self.study_images, int) or isinstance(self.study_images, bool)
                or self.study_images < len(instance_ids)):
            raise ReportInputError("study_images must be a count of at least the instances "
                                   "reported")
        for name in ("modality", "body_part"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ReportInputError(f"{name} must be a string")
            _no_control(name, value or "")
            object.__setattr__(self, name, value or "")
        object.__setattr__(self, "instance_ids", instance_ids)

    @property
    def signed(self) -> bool:
        """Whether a radiologist has signed the report off."""
        return self.sign_off is not None

    @property
    def reidentified(self) -> bool:
        """Whether this is a re-identified copy (an identity is shown)."""
        return self.identity is not None

    @property
    def final_class(self) -> str:
        """The reported class: the radiologist's when overridden, else the model's."""
        if self.sign_off is not None and self.sign_off.decision is SignOffDecision.OVERRIDDEN:
            return str(self.sign_off.radiologist_class)
        return self.analysis.predicted_class


def _as_tuple(values: Iterable[str] | str) -> tuple[str, ...]:
    if isinstance(values, str):
        return (values,)
    try:
        return tuple(values)
    except TypeError:
        raise ReportInputError("instance_ids must be a sequence of strings") from None


def _recorded_as(value: Any) -> tuple[str, str] | None:
    """A stored result's ``recorded_as`` ([modality, body part]), if it has one."""
    if isinstance(value, list | tuple) and len(value) >= 2:
        return str(value[0] or ""), str(value[1] or "")
    return None


def _looks_like(check: Any) -> str | None:
    """The image check's source from a stored result's ``image_check``, if any."""
    if isinstance(check, Mapping) and isinstance(check.get("looks_like"), str):
        return check["looks_like"] or None
    return None

"""The DICOM Structured Report: a TID 1500 measurement report built with highdicom.

The document is a Comprehensive SR in the source study (same Study Instance
UID), whose content tree is a TID 1500 "Imaging Measurement Report":

- observation context: the model as device observer (its UID derived from the
  model id, so the same model is always the same observer) and, once signed
  off, the radiologist as person observer;
- procedure reported: the modality's "... unspecified body region" LOINC code
  (CID 100), or SNOMED CT "Imaging procedure";
- image library: the source images (when highdicom can describe them);
- one TID 1501 measurement group, referencing every source image, with
  the tracking identifier (the result id), the algorithm identification (model
  id, version, referral threshold), ``Finding`` = the predicted class, one
  numeric measurement "Probability of <class>" per class (UCUM ``1``), and
  qualitative evaluations: "Refer to a radiologist" (SNOMED CT Yes/No), each
  referral reason, and after sign-off the radiologist's assessment (accepted
  or overridden) and, when overridden, the radiologist's finding.

Classes, probabilities and decision-support items have no standard codes, so
they use the private coding scheme ``99RADVAULT``, described in the
document's Coding Scheme Identification Sequence. The radiologist's free-text
comment is not written (TID 1501 has no text evaluations); the HTML, PDF and
FHIR renderings carry it.

The document is always UTF-8 (``ISO_IR 192``), whatever the sources use, so
class names, usernames and (re-identified) patient names in any script survive.

Privacy: the SR never inherits from the sources anything but UIDs and
technical image attributes. Its Patient module is written here: the
pseudonym as Patient ID and Patient's Name, no birth date, and Patient
Identity Removed ``YES``; only a re-identified copy carries the identity. The
sources must be de-identified (Patient Identity Removed ``YES``), belong to
the report's patient pseudonym, and share one Study Instance UID.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from radvault.errors import DeidentificationError
from radvault.reports import _text
from radvault.reports._model import (
    REIDENTIFIED_BANNER,
    ReportInput,
    ReportInputError,
    SignOffDecision,
)

if TYPE_CHECKING:
    from highdicom.sr import ComprehensiveSR

__all__ = ["render_sr"]

log = logging.getLogger(__name__)

SCHEME = "99RADVAULT"
_SCHEME_NAME = "RadVault decision-support codes"

# Attributes an SR may take from a source: UIDs and technical image description only.
_COPIED = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
    "FrameOfReferenceUID", "Modality", "Rows", "Columns", "NumberOfFrames",
    "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "SliceThickness",
    "SpacingBetweenSlices", "ImagerPixelSpacing", "PatientOrientation",
    "Manufacturer", "ManufacturerModelName", "SoftwareVersions",
    "StudyDate", "StudyTime",
)

_PROCEDURE_BY_MODALITY = {
    "CT": "CTUnspecifiedBodyRegion", "MR": "MRIUnspecifiedBodyRegion",
    "CR": "XRUnspecifiedBodyRegion", "DX": "XRUnspecifiedBodyRegion",
    "DR": "XRUnspecifiedBodyRegion", "XR": "XRUnspecifiedBodyRegion",
    "MG": "XRUnspecifiedBodyRegion", "PT": "PETUnspecifiedBodyRegion",
    "NM": "NMUnspecifiedBodyRegion",
}

_REASON_WORDS = {
    _text.REASON_LOW_CONFIDENCE: "Confidence under the referral threshold",
    _text.REASON_MODALITY: "Modality not in the model's training data",
    _text.REASON_BODY_PART: "Body part not in the model's training data",
    _text.REASON_NOT_VALIDATED: "Model not validated for decisions",
    _text.REASON_BODY_PART_UNKNOWN: "Body part not recorded",
    _text.REASON_CLASS_MODALITY: "Predicted class not trained for this modality",
    _text.REASON_CLASS_BODY_PART: "Predicted class not trained for this body part",
    _text.REASON_NO_NORMAL_CLASS: "Model has no class for a normal image",
    _text.REASON_IMAGE_UNLIKE_DECLARED: "Image unlike its recorded modality and body part",
}

_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")


def _lo(text: str, limit: int = 64) -> str:
    """Text fit for an LO/SH value: no backslash or control characters, bounded length."""
    cleaned = _CONTROL.sub(" ", text).strip() or "?"
    return cleaned[:limit]


def _pn(text: str) -> str:
    """A username or pseudonym as a one-component PN value (trailing ``^``, as highdicom asks)."""
    return _lo(re.sub(r"[=^]", " ", text), 63) + "^"


def _identity_pn(name: str) -> str:
    """A real name as a PN value: its own components when it has them."""
    cleaned = _lo(name.split("=")[0], 63)
    return cleaned if "^" in cleaned else cleaned + "^"


def _concept(value: str, meaning: str) -> Any:
    from highdicom.sr import CodedConcept

    return CodedConcept(value=_lo(value, 64), scheme_designator=SCHEME, meaning=_lo(meaning))


def _class_concept(name: str) -> Any:
    return _concept(name, _text.finding_text(name))


def _check_sources(report: ReportInput, sources: Sequence[Dataset]) -> None:
    if not sources:
        raise ReportInputError("a DICOM SR needs at least one source instance")
    study_uids = set()
    for i, ds in enumerate(sources):
        if not isinstance(ds, Dataset):
            raise ReportInputError(f"source #{i} is not a pydicom Dataset")
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID",
                        "SeriesInstanceUID"):
            if not ds.get(keyword):
                raise ReportInputError(f"source #{i} has no {keyword}")
        if str(ds.get("PatientIdentityRemoved", "")).upper() != "YES":
            raise DeidentificationError(f"source #{i} is not marked de-identified "
                                        "(Patient Identity Removed is not YES)")
        if str(ds.get("PatientID", "")) != report.patient_pseudonym:
            raise ReportInputError(f"source #{i} belongs to another patient than the report")
        study_uids.add(str(ds.StudyInstanceUID))
    if len(study_uids) != 1:
        raise ReportInputError("the sources come from more than one study")


def _evidence(report: ReportInput, source: Dataset) -> Dataset:
    """A copy of a source holding only what the SR may inherit, plus our patient module."""
    stub = Dataset()
    for keyword in _COPIED:
        if keyword in source:
            setattr(stub, keyword, source[keyword].value)
    ident = report.identity
    stub.PatientName = _pn(report.patient_pseudonym) if ident is None else _identity_pn(ident.name)
    stub.PatientID = report.patient_pseudonym if ident is None else ident.patient_id
    stub.PatientBirthDate = (ident.birth_date.strftime("%Y%m%d")
                             if ident is not None and ident.birth_date is not None else "")
    sex = str(source.get("PatientSex", "") or "")
    stub.PatientSex = sex if sex in {"M", "F", "O"} else ""
    stub.AccessionNumber = ""
    stub.StudyID = ""
    stub.ReferringPhysicianName = ""
    for keyword in ("StudyDate", "StudyTime"):
        if keyword not in stub:
            setattr(stub, keyword, "")
    return stub


def _observation_context(report: ReportInput) -> Any:
    from highdicom.sr import (
        DeviceObserverIdentifyingAttributes,
        ObservationContext,
        ObserverContext,
        PersonObserverIdentifyingAttributes,
    )
    from pydicom.sr.codedict import codes

    model = report.model
    device = ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["radvault-model", model.model_id]),
            name=_lo(model.model_id), manufacturer_name="RadVault",
            model_name=_lo(f"RadVault {model.task} classifier")),
    )
    person = None
    if report.sign_off is not None:
        person = ObserverContext(
            observer_type=codes.cid270.Person,
            observer_identifying_attributes=PersonObserverIdentifyingAttributes(
                name=_pn(report.sign_off.radiologist),
                login_name=_lo(report.sign_off.radiologist),
                organization_name=_lo(report.site)),
        )
    return ObservationContext(observer_person_context=person, observer_device_context=device)


def _evaluations(report: ReportInput) -> list[Any]:
    from highdicom.sr import QualitativeEvaluation
    from pydicom.sr.codedict import codes

    a = report.analysis
    evaluations = [QualitativeEvaluation(
        name=_concept("REFER", "Refer to a radiologist"),
        value=codes.SCT.Yes if a.refer else codes.SCT.No)]
    for reason in a.reasons:
        evaluations.append(QualitativeEvaluation(
            name=_concept("REFER-REASON", "Referral reason"),
            value=_concept(reason.upper(), _REASON_WORDS.get(reason, reason.replace("_", " ")))))
    s = report.sign_off
    if s is not None:
        evaluations.append(QualitativeEvaluation(
            name=_concept("SIGN-OFF", "Radiologist assessment of the prediction"),
            value=_concept(s.decision.value.upper(), f"Prediction {s.decision.value}")))
        if s.decision is SignOffDecision.OVERRIDDEN:
            evaluations.append(QualitativeEvaluation(
                name=_concept("RAD-FINDING", "Radiologist's finding"),
                value=_class_concept(report.final_class)))
        if s.amends:  # as the other formats say: whose sign-off this one replaced
            evaluations.append(QualitativeEvaluation(
                name=_concept("AMENDS", "Amends the sign-off by"),
                value=_concept("RADIOLOGIST", s.amends)))
    return evaluations


def _measurement_group(report: ReportInput, sources: Sequence[Dataset]) -> Any:
    from highdicom.sr import (
        AlgorithmIdentification,
        Measurement,
        MeasurementsAndQualitativeEvaluations,
        SourceImageForMeasurementGroup,
        TrackingIdentifier,
    )
    from pydicom.sr.codedict import codes

    a = report.analysis
    tracking_key = a.result_id or report.study_id
    parameters = [f"task={report.model.task}"]
    if a.refer_threshold is not None:
        parameters.append(f"refer_threshold={a.refer_threshold:.2f}")
    algorithm = AlgorithmIdentification(name=_lo(report.model.model_id),
                                        version=_lo(report.model.model_id),
                                        parameters=[_lo(p) for p in parameters],
                                        manufacturer="RadVault")
    measurements = [
        Measurement(name=_concept(f"PROB:{cls}", f"Probability of {cls}"), value=round(p, 6),
                    unit=codes.UCUM.NoUnits)
        for cls, p in a.probabilities.items()
    ]
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=generate_uid(entropy_srcs=["radvault-analysis", tracking_key]),
            identifier=_lo(f"RadVault analysis {tracking_key}")),
        finding_type=_class_concept(a.predicted_class),
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=_evaluations(report),
        source_images=[SourceImageForMeasurementGroup.from_source_image(ds) for ds in sources],
    )


def _procedure(modality: str) -> Any:
    from pydicom.sr.codedict import codes

    name = _PROCEDURE_BY_MODALITY.get(modality.upper(), "ImagingProcedure")
    return getattr(codes.cid100, name)


def _measurement_report(report: ReportInput, evidence: Sequence[Dataset]) -> Any:
    from highdicom.sr import MeasurementReport
    from pydicom.sr.codedict import codes

    kwargs = {"observation_context": _observation_context(report),
              "procedure_reported": _procedure(report.modality),
              "imaging_measurements": [_measurement_group(report, evidence)],
              "title": codes.cid7021.ImagingMeasurementReport}
    try:
        return MeasurementReport(referenced_images=list(evidence), **kwargs)
    except (AttributeError, KeyError, ValueError, TypeError):
        # An image library entry needs attributes some sources lack (e.g. a
        # projection image without Imager Pixel Spacing): the library is optional.
        log.debug("image library omitted from the SR of study %s", report.study_id)
        return MeasurementReport(**kwargs)


def render_sr(report: ReportInput, sources: Sequence[Dataset], *,
              series_instance_uid: str | None = None, sop_instance_uid: str | None = None,
              series_number: int = 990, instance_number: int = 1,
              previous_versions: Sequence[Dataset] = ()) -> ComprehensiveSR:
    """Render the report as a DICOM Comprehensive SR (TID 1500) in the source study.

    Parameters
    ----------
    report : ReportInput
    sources : sequence of pydicom.Dataset
        The de-identified source instance(s) the analysis used (header only is
        enough; pixels are not read).
    series_instance_uid, sop_instance_uid : str, optional
        UIDs for the SR (fresh ones by default).
    series_number, instance_number : int
    previous_versions : sequence of pydicom.Dataset
        Earlier SRs this one replaces (e.g. the preliminary one, when
        rendering the signed-off version); listed as predecessors.

    Returns
    -------
    highdicom.sr.ComprehensiveSR
        A pydicom Dataset; ``dcmwrite`` it to store or send it.

    Raises
    ------
    DeidentificationError
        If a source is not marked de-identified.
    ReportInputError
        If there is no source, a source lacks its UIDs, belongs to another
        patient, or the sources span studies; or highdicom refuses the content.
    """
    from highdicom.sr import ComprehensiveSR

    _check_sources(report, sources)
    evidence = [_evidence(report, ds) for ds in sources]
    content = _measurement_report(report, evidence)
    s = report.sign_off
    description = "RadVault AI decision support"
    if report.reidentified:
        description += f" ({REIDENTIFIED_BANNER})"
    try:
        sr = ComprehensiveSR(
            evidence=evidence, content=content,
            series_instance_uid=series_instance_uid or generate_uid(),
            series_number=series_number,
            sop_instance_uid=sop_instance_uid or generate_uid(),
            instance_number=instance_number, manufacturer="RadVault",
            is_complete=True, is_final=s is not None, is_verified=s is not None,
            verifying_observer_name=_pn(s.radiologist) if s is not None else None,
            verifying_organization=_lo(report.site) if s is not None else None,
            previous_versions=list(previous_versions) or None,
            series_description=_lo(description),
            specific_character_set="ISO_IR 192",  # UTF-8: names and classes in any script
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise ReportInputError(f"highdicom refused the SR content ({type(exc).__name__})"
                               ) from None
    _finish(sr, report)
    log.info("rendered DICOM SR for study %s%s", report.study_id,
             " (re-identified copy)" if report.reidentified else "")
    return sr


def _finish(sr: Dataset, report: ReportInput) -> None:
    """Dates, de-identification flags and the private coding scheme's description."""
    generated = report.generated_at
    sr.ContentDate = generated.strftime("%Y%m%d")
    sr.ContentTime = generated.strftime("%H%M%S")
    sr.TimezoneOffsetFromUTC = generated.strftime("%z")
    if report.sign_off is not None and "VerifyingObserverSequence" in sr:
        sr.VerifyingObserverSequence[0].VerificationDateTime = (
            report.sign_off.signed_at.strftime("%Y%m%d%H%M%S%z"))
    if report.identity is None:
        sr.PatientIdentityRemoved = "YES"
        sr.DeidentificationMethod = "RadVault pseudonymisation (PS3.15 Annex E)"
    else:
        sr.PatientIdentityRemoved = "NO"
        if "DeidentificationMethod" in sr:
            del sr.DeidentificationMethod
    scheme = Dataset()
    scheme.CodingSchemeDesignator = SCHEME
    scheme.CodingSchemeName = _SCHEME_NAME
    scheme.CodingSchemeResponsibleOrganization = "RadVault"
    sr.CodingSchemeIdentificationSequence = [scheme]

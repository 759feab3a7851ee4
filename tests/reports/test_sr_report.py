"""The DICOM SR: valid TID 1500, references its source, pseudonymous by default (reports._sr)."""

from __future__ import annotations

import copy
import io

import highdicom as hd
import pydicom
import pytest
from pydicom.sr.codedict import codes
from report_samples import CLASSES, EVIL, IDENTITY_STRINGS, PROBS, PSEUDONYM, with_

from radvault.errors import DeidentificationError
from radvault.reports import ReportInputError, render_sr


def _round_trip(sr: pydicom.Dataset) -> pydicom.Dataset:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, sr, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


def _values(ds: pydicom.Dataset) -> str:
    """Every value in the dataset, nested ones included, as one string."""
    return "\n".join(str(elem.value) for elem in ds.iterall() if elem.VR != "SQ")


def _group(ds: pydicom.Dataset):
    sr = hd.sr.ComprehensiveSR.from_dataset(ds)
    groups = sr.content.get_image_measurement_groups()
    assert len(groups) == 1
    return sr, groups[0]


def test_round_trips_and_references_the_source(report, source_ds):
    ds = _round_trip(render_sr(report, [source_ds]))
    assert ds.SOPClassUID == pydicom.uid.ComprehensiveSRStorage
    assert ds.StudyInstanceUID == source_ds.StudyInstanceUID
    assert ds.SeriesInstanceUID != source_ds.SeriesInstanceUID
    sr, group = _group(ds)
    assert sr.get_evidence() == [(source_ds.StudyInstanceUID, source_ds.SeriesInstanceUID,
                                  source_ds.SOPInstanceUID, source_ds.SOPClassUID)]
    referenced = [item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                  for item in group.source_images]
    assert referenced == [source_ds.SOPInstanceUID]
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"


def test_holds_finding_probabilities_flag_and_algorithm(report, source_ds):
    sr, group = _group(_round_trip(render_sr(report, [source_ds])))
    assert group.finding_type.meaning == "pneumonia"
    measured = {m.name.meaning: m.value for m in group.get_measurements()}
    assert measured == pytest.approx({f"Probability of {c}"[:64]: p
                                      for c, p in zip(CLASSES, PROBS, strict=True)})
    evaluations = {q.name.meaning: q.value for q in group.get_qualitative_evaluations()}
    assert evaluations["Refer to a radiologist"] == codes.SCT.Yes
    assert evaluations["Referral reason"].meaning == "Confidence under the referral threshold"
    text = _values(sr)
    assert "chest_xray-0123456789ab" in text and "refer_threshold=0.80" in text
    assert EVIL in text  # a class name is data here, as written
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99RADVAULT"


def test_preliminary_until_signed_then_verified(report, source_ds, accepted, overridden):
    ds = render_sr(report, [source_ds])
    assert (ds.PreliminaryFlag, ds.VerificationFlag) == ("PRELIMINARY", "UNVERIFIED")
    ds = _round_trip(render_sr(with_(report, sign_off=overridden), [source_ds],
                               previous_versions=[ds]))
    assert (ds.PreliminaryFlag, ds.VerificationFlag, ds.CompletionFlag) == (
        "FINAL", "VERIFIED", "COMPLETE")
    assert ds.VerifyingObserverSequence[0].VerifyingObserverName == "dr_grey^"
    assert ds.VerifyingObserverSequence[0].VerificationDateTime == "20260202080000+0000"
    assert ds.PredecessorDocumentsSequence
    _, group = _group(ds)
    evaluations = {q.name.meaning: q.value.meaning for q in group.get_qualitative_evaluations()}
    assert evaluations["Radiologist's finding"] == "covid"
    assert evaluations["Radiologist assessment of the prediction"] == "Prediction overridden"
    _, group = _group(_round_trip(render_sr(with_(report, sign_off=accepted), [source_ds])))
    evaluations = {q.name.meaning: q.value.meaning for q in group.get_qualitative_evaluations()}
    assert "Radiologist's finding" not in evaluations


def test_no_identity_even_when_the_source_leaks_some(report, source_ds):
    leaky = copy.deepcopy(source_ds)
    leaky.PatientName = "Zebedee^Quixote"
    leaky.PatientBirthDate = "19310704"
    leaky.OtherPatientIDs = "MRN-99887766"
    leaky.AccessionNumber = "MRN-99887766"
    ds = _round_trip(render_sr(report, [leaky]))
    dumped = _values(ds) + repr(ds.to_json_dict())
    assert not any(s in dumped for s in IDENTITY_STRINGS)
    assert ds.PatientID == PSEUDONYM and str(ds.PatientName) == f"{PSEUDONYM}^"
    assert ds.PatientBirthDate == "" and ds.PatientIdentityRemoved == "YES"


def test_reidentified_copy_carries_identity(report, source_ds, identity):
    ds = _round_trip(render_sr(with_(report, identity=identity), [source_ds]))
    assert str(ds.PatientName) == "Zebedee^Quixote"
    assert ds.PatientID == "MRN-99887766" and ds.PatientBirthDate == "19310704"
    assert ds.PatientIdentityRemoved == "NO" and "DeidentificationMethod" not in ds
    assert "RE-IDENTIFIED COPY" in ds.SeriesDescription


def test_refuses_sources_that_are_not_de_identified(report, source_ds):
    del source_ds.PatientIdentityRemoved
    with pytest.raises(DeidentificationError):
        render_sr(report, [source_ds])


def test_refuses_another_patients_or_mixed_studies(report, source_ds):
    other = copy.deepcopy(source_ds)
    other.PatientID = "RV-ffffffffffffffff"
    with pytest.raises(ReportInputError, match="another patient"):
        render_sr(report, [other])
    second = copy.deepcopy(source_ds)
    second.StudyInstanceUID = pydicom.uid.generate_uid()
    second.SOPInstanceUID = pydicom.uid.generate_uid()
    with pytest.raises(ReportInputError, match="more than one study"):
        render_sr(report, [source_ds, second])
    with pytest.raises(ReportInputError, match="at least one"):
        render_sr(report, [])


def test_several_source_instances(report, source_ds):
    second = copy.deepcopy(source_ds)
    second.SOPInstanceUID = pydicom.uid.generate_uid()
    sr, group = _group(_round_trip(render_sr(report, [source_ds, second])))
    assert {e[2] for e in sr.get_evidence()} == {source_ds.SOPInstanceUID,
                                                  second.SOPInstanceUID}
    assert len(group.source_images) == 2


def test_any_script_survives_in_utf8(report, analysis, model, source_ds, identity):
    """Sources in Latin-1 do not stop a class or a name outside Latin-1 from being written."""
    classes = ("Łódź 李", "naïve")
    analysis = type(analysis)(model_id=analysis.model_id, task="t", predicted_class=classes[0],
                              probability=0.7, probabilities=dict(zip(classes, (0.7, 0.3),
                                                                      strict=True)),
                              refer=False)
    model = type(model)(model_id=model.model_id, task="t", classes=classes, input_size=8)
    assert source_ds.SpecificCharacterSet == "ISO_IR 100"
    reid = type(identity)(name="Łukasz^Żółw", patient_id="X-1")
    ds = _round_trip(render_sr(with_(report, analysis=analysis, model=model, identity=reid),
                               [source_ds]))
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    _, group = _group(ds)
    assert group.finding_type.meaning == "Łódź 李"
    assert str(ds.PatientName) == "Łukasz^Żółw"


def test_an_amended_sign_off_names_whose_it_replaced(report, source_ds, accepted):
    from dataclasses import replace

    ds = _round_trip(render_sr(with_(report, sign_off=replace(accepted, amends="dr_lee")),
                               [source_ds]))
    _, group = _group(ds)
    evaluations = {q.name.meaning: q.value for q in group.get_qualitative_evaluations()}
    assert evaluations["Amends the sign-off by"].meaning == "dr_lee"
    _, plain = _group(_round_trip(render_sr(with_(report, sign_off=accepted), [source_ds])))
    assert "Amends the sign-off by" not in {
        q.name.meaning for q in plain.get_qualitative_evaluations()}

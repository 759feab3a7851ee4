"""C-FIND matching over the catalog: site-bound, de-identified, never probing hidden values."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from dicomkit import write_series
from pydicom.dataset import Dataset

from radvault.dicom._query import QueryError, find_matches
from radvault.pipeline.ingest import Ingestor
from radvault.pipeline.maintenance import shred_study
from radvault.vault.vault import Vault


@pytest.fixture
def studies(vault: Vault, tmp_path: Path) -> dict[str, str]:
    """Two north studies (CT with two series, MR) and one south study."""
    ids: dict[str, str] = {}
    for site, modality, seed, series in (("north", "CT", 1, 2), ("north", "MR", 2, 1),
                                         ("south", "CT", 3, 1)):
        ingestor = Ingestor(vault, actor="tester", site=site)
        study_uid = None
        for s in range(series):
            for path in write_series(tmp_path / f"{seed}-{s}", modality, 2, seed=seed + 10 * s,
                                     study_uid=study_uid,
                                     patient_id=f"PID-{seed}", patient_name=f"Pat^{seed}"):
                study_uid = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
                outcome = ingestor.ingest_file(path)
                assert outcome.status == "stored"
                ids[f"{site}-{modality}"] = outcome.study_id
    return ids


def _query(level: str, **keys: object) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for key, value in keys.items():
        setattr(ds, key, value)
    return ds


def test_study_level_sees_only_the_site(vault: Vault, studies: dict[str, str]) -> None:
    answers = list(find_matches(vault.catalog, "north",
                                _query("STUDY", StudyInstanceUID="", ModalitiesInStudy="")))
    assert {a.StudyInstanceUID for a in answers} == {studies["north-CT"], studies["north-MR"]}
    assert all(set(a.dir()) == {"QueryRetrieveLevel", "StudyInstanceUID", "ModalitiesInStudy"}
               for a in answers)  # only what was asked for


def test_matching_by_modality_wildcard_and_uid_list(vault: Vault,
                                                   studies: dict[str, str]) -> None:
    ct = list(find_matches(vault.catalog, "north", _query("STUDY", ModalitiesInStudy="CT",
                                                          StudyInstanceUID="")))
    assert [a.StudyInstanceUID for a in ct] == [studies["north-CT"]]
    wild = list(find_matches(vault.catalog, "north", _query("STUDY", PatientID="RV-*")))
    assert len(wild) == 2
    named = _query("STUDY", StudyInstanceUID=[studies["north-MR"], studies["south-CT"]])
    assert [a.StudyInstanceUID for a in find_matches(vault.catalog, "north", named)] == [
        studies["north-MR"]]


def test_series_level_counts_the_instances_of_each_series(vault: Vault,
                                                         studies: dict[str, str]) -> None:
    query = _query("SERIES", StudyInstanceUID=studies["north-CT"], SeriesInstanceUID="",
                   Modality="", NumberOfSeriesRelatedInstances="")
    answers = list(find_matches(vault.catalog, "north", query))
    assert len(answers) == 2
    assert all(a.Modality == "CT" and a.NumberOfSeriesRelatedInstances == 2 for a in answers)


def test_hidden_attributes_come_back_empty_and_cannot_be_matched(
        vault: Vault, studies: dict[str, str]) -> None:
    (answer, _) = find_matches(vault.catalog, "north",
                               _query("STUDY", PatientName="", PatientBirthDate="",
                                      ReferencedStudySequence=[]))
    assert str(answer.PatientName).startswith("RV-")
    assert not answer.PatientBirthDate and answer.ReferencedStudySequence == []
    for constraint in ({"PatientName": "Pat^1"}, {"PatientBirthDate": "19700101"},
                       {"InstitutionName": "Saint*"}, {"PatientID": "PID-1"}):
        assert list(find_matches(vault.catalog, "north", _query("STUDY", **constraint))) == []


def test_a_lone_asterisk_is_universal_matching_even_on_hidden_attributes(
        vault: Vault, studies: dict[str, str]) -> None:
    everything = list(find_matches(vault.catalog, "north", _query("STUDY")))
    for key in ("AccessionNumber", "StudyDescription", "StudyID"):
        answers = list(find_matches(vault.catalog, "north", _query("STUDY", **{key: "*"})))
        assert len(answers) == len(everything) == 2, key


def test_shredded_studies_are_gone(vault: Vault, studies: dict[str, str]) -> None:
    shred_study(vault, studies["north-MR"], actor="tester")
    answers = find_matches(vault.catalog, "north", _query("STUDY", StudyInstanceUID=""))
    assert [a.StudyInstanceUID for a in answers] == [studies["north-CT"]]


@pytest.mark.parametrize("level", ["PATIENT", "IMAGE", ""])
def test_other_levels_are_refused(vault: Vault, level: str) -> None:
    with pytest.raises(QueryError):
        list(find_matches(vault.catalog, "north", _query(level)))

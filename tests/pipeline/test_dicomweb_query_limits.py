"""QIDO-RS search stays cheap whatever the query: wild cards in linear time, long values refused."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from radvault.access.policy import scopes_for
from radvault.access.principal import Principal, Role
from radvault.pipeline._dicomweb_query import MAX_QUERY_VALUE_LENGTH
from radvault.pipeline.clinical import (
    ClinicalService,
    InvalidRequest,
    ServiceSettings,
    operator_principal,
)

if TYPE_CHECKING:
    from conftest import Kit

PASSWORD = "Vivid-Lantern-42!"


def _principal(name: str, role: str, site: str) -> Principal:
    return Principal(name, Role(role), site, scopes_for(role))


@pytest.fixture
def searchable(kit: Kit, tmp_path: Path) -> Iterator[tuple[ClinicalService, Principal, str]]:
    """A service holding one PNG study of site north, and north's radiologist."""
    vault = kit.init_vault(kit.new_settings(tmp_path / "home"))
    (tmp_path / "models").mkdir()
    service = ClinicalService.build(vault, ServiceSettings(
        argon2=(1, 8, 1), start_workers=False, models_dir=tmp_path / "models",
        issuer="https://radvault.test"))
    operator = operator_principal("cli:tests")
    service.add_site(operator, "north")
    service.add_user(operator, "tech-n", "technologist", site="north", password=PASSWORD)
    service.add_user(operator, "rad-n", "radiologist", site="north", password=PASSWORD)
    service.grant(operator, "rad-n", site="north")
    data = kit.make_raster(tmp_path / "in.png", 3).read_bytes()
    study = service.upload(_principal("tech-n", "technologist", "north"), data, "in.png",
                           modality="DX").study_id
    try:
        yield service, _principal("rad-n", "radiologist", "north"), study
    finally:
        vault.close()


def test_a_backtracking_pattern_is_answered_at_once(
        searchable: tuple[ClinicalService, Principal, str]) -> None:
    service, rad, _ = searchable
    started = time.perf_counter()

    found = service.dicomweb_search(rad, "study", {"PatientName": ["*" * 16 + "Z"]})

    assert found.matches == ()
    assert time.perf_counter() - started < 2.0  # backtracking took half a minute


def test_wild_cards_still_find_the_study(
        searchable: tuple[ClinicalService, Principal, str]) -> None:
    service, rad, study = searchable
    pseudonym = service.vault.catalog.get_study(study).patient_pseudonym

    for pattern in ("*", pseudonym, pseudonym[:3] + "*", "?" * len(pseudonym),
                    "*" + pseudonym[-2:], "nomatch*," + pseudonym[:-1] + "?"):
        found = service.dicomweb_search(rad, "study", {"PatientName": [pattern]})
        assert [m.StudyInstanceUID for m in found.matches] == [study], pattern
    assert service.dicomweb_search(rad, "study", {"PatientName": [pseudonym.lower()]}
                                   ).matches == ()


def test_a_query_value_longer_than_the_cap_is_a_bad_request(
        searchable: tuple[ClinicalService, Principal, str]) -> None:
    service, rad, _ = searchable
    at_cap = "*" * MAX_QUERY_VALUE_LENGTH

    assert len(service.dicomweb_search(rad, "study", {"PatientName": [at_cap]}).matches) == 1
    for filters in ({"PatientName": [at_cap + "Z"]},
                    {"BodyPartExamined": ["CHEST," + "?" * (MAX_QUERY_VALUE_LENGTH + 1)]},
                    {"StudyInstanceUID": ["1." * 40]}):
        with pytest.raises(InvalidRequest, match="longer than 64"):
            service.dicomweb_search(rad, "study", filters)


def test_a_refused_query_is_audited_by_its_error_class_only(
        searchable: tuple[ClinicalService, Principal, str]) -> None:
    service, rad, _ = searchable
    for filters in ({"PatientName": ["Doe" + "*" * MAX_QUERY_VALUE_LENGTH]},
                    {"NoSuchKeywordDoe": ["x"]}):
        with pytest.raises(InvalidRequest):
            service.dicomweb_search(rad, "study", filters)
    refused = [e for e in service.vault.audit.query(action="dicomweb.search", limit=10)
               if e.outcome == "refused"]
    assert [(e.actor, e.details) for e in refused] == [
        ("rad-n", {"error": "InvalidRequest"})] * 2
    trail = (service.vault.settings.home / "audit.log").read_text(encoding="utf-8")
    assert "Doe" not in trail

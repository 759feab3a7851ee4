"""Every study goes into a site that exists: the default site is there whenever it is used,
an unknown site is refused wherever studies come in, and typed hints must be defined terms."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from radvault.access.policy import scopes_for
from radvault.access.principal import Principal, Role
from radvault.errors import AccessDenied, AccountError, ConfigurationError, InvalidRequest
from radvault.pipeline.clinical import ClinicalService, ServiceSettings, operator_principal
from radvault.pipeline.ingest import Ingestor
from radvault.pipeline.sites import DEFAULT_SITE, ensure_default_site, require_site, site_exists
from radvault.vault.vault import Vault

if TYPE_CHECKING:
    from conftest import Kit

PASSWORD = "Vivid-Lantern-42!"


def _service(vault: Vault) -> ClinicalService:
    return ClinicalService.build(vault, ServiceSettings(argon2=(1, 8, 1), start_workers=False))


def _site_adds(vault: Vault) -> list[tuple[str, str, list[str]]]:
    return [(e.actor, str(e.outcome), list(e.object_ids))
            for e in vault.audit.query(action="site.add", limit=50)]


def _technologist(site: str, name: str = "tech") -> Principal:
    return Principal(name, Role.TECHNOLOGIST, site, scopes_for("technologist"))


# --------------------------------------------------------------------------- the default site


def test_the_default_site_is_registered_on_first_use_once_and_audited(
        kit: Kit, vault: Vault, tmp_path: Path) -> None:
    assert not site_exists(vault, DEFAULT_SITE)  # a vault made by Vault.init alone

    ingestor = Ingestor(vault, actor="tester")  # ingest without naming a site
    outcome = ingestor.ingest_file(kit.make_raster(tmp_path / "a.png", 1), modality="DX")
    Ingestor(vault, actor="tester")  # used again: nothing more to register

    assert ingestor.site == DEFAULT_SITE and site_exists(vault, DEFAULT_SITE)
    kit.stored(outcome)
    assert vault.catalog.get_study(str(outcome.study_id)).site == "default"
    assert _site_adds(vault) == [("system", "ok", ["site:default"])]
    assert [s.name for s in _service(vault).sites(operator_principal("cli:t"))] == ["default"]
    assert not ensure_default_site(vault)  # idempotent


def test_the_default_site_can_be_granted_like_any_other(kit: Kit, vault: Vault,
                                                       tmp_path: Path) -> None:
    study = Ingestor(vault, actor="tester").ingest_file(
        kit.make_raster(tmp_path / "a.png", 2), modality="DX").study_id
    service, operator = _service(vault), operator_principal("cli:t")
    service.add_user(operator, "dr.lee", "radiologist", site=DEFAULT_SITE, password=PASSWORD)

    service.grant(operator, "dr.lee", site=DEFAULT_SITE)

    lee = Principal("dr.lee", Role.RADIOLOGIST, DEFAULT_SITE, scopes_for("radiologist"))
    assert [s.study_id for s in service.list_studies(lee)] == [study]


def test_a_vault_holding_default_studies_from_before_gets_the_site_when_served(
        kit: Kit, vault: Vault, tmp_path: Path) -> None:
    Ingestor(vault, actor="tester").ingest_file(kit.make_raster(tmp_path / "a.png", 3),
                                                modality="DX")
    kit.sql(vault.settings.home, "DELETE FROM access_sites")  # as a vault made before
    assert not site_exists(vault, DEFAULT_SITE)

    service = _service(vault)

    assert [s.name for s in service.sites(operator_principal("cli:t"))] == ["default"]
    assert _site_adds(vault)[0] == ("system", "ok", ["site:default"])


def test_a_vault_without_default_studies_does_not_get_the_site_from_the_service(
        vault: Vault) -> None:
    service = _service(vault)
    assert service.sites(operator_principal("cli:t")) == []
    assert _site_adds(vault) == []


@pytest.mark.parametrize("step", ["grant", "add_user"])
def test_an_older_vault_gets_the_default_site_when_an_admin_names_it(
        vault: Vault, step: str) -> None:
    service, operator = _service(vault), operator_principal("cli:t")
    assert not site_exists(vault, DEFAULT_SITE)  # a vault without it, as before session 9

    if step == "grant":
        service.add_site(operator, "north")
        service.add_user(operator, "dr.lee", "radiologist", site="north", password=PASSWORD)
        service.grant(operator, "dr.lee", site=DEFAULT_SITE)
        assert [g.site for g in service.grants(operator, "dr.lee")] == [DEFAULT_SITE]
    else:
        service.add_user(operator, "dr.lee", "radiologist", site=DEFAULT_SITE,
                         password=PASSWORD)

    assert ("system", "ok", ["site:default"]) in _site_adds(vault)
    with pytest.raises(AccountError, match="unknown site"):  # only that one name
        service.grant(operator, "dr.lee", site="nowhere")


# --------------------------------------------------------------------------- unknown sites


@pytest.mark.parametrize("site", ["nowhere", "north"])
def test_an_unknown_site_is_refused_before_anything_is_stored(
        kit: Kit, vault: Vault, tmp_path: Path, site: str) -> None:
    before = len(list(vault.audit))

    with pytest.raises(ConfigurationError) as caught:
        Ingestor(vault, actor="tester", site=site)

    assert str(caught.value) == (f"unknown site '{site}': add it first with "
                                 f"`radvault sites add {site}`")
    assert len(list(vault.audit)) == before and vault.catalog.list_studies() == []
    assert not site_exists(vault, site)


def test_a_site_that_cannot_be_a_name_is_refused_without_a_command_to_run(vault: Vault) -> None:
    with pytest.raises(ConfigurationError, match="a site's name is 1-64") as caught:
        require_site(vault, "../north; rm -rf")
    assert "radvault sites add" not in str(caught.value)


def test_a_registered_site_takes_its_studies(kit: Kit, vault: Vault, tmp_path: Path) -> None:
    _service(vault).add_site(operator_principal("cli:t"), "north")

    outcome = Ingestor(vault, actor="tester", site="north").ingest_file(
        kit.make_raster(tmp_path / "a.png", 4), modality="DX")

    assert vault.catalog.get_study(str(outcome.study_id)).site == "north"
    assert not site_exists(vault, DEFAULT_SITE)  # nothing used it, nothing made it


def test_an_upload_into_a_site_nobody_registered_is_refused_and_audited(
        kit: Kit, vault: Vault, tmp_path: Path) -> None:
    # A single sign-on token names its user's site; nobody registered that site here.
    service = _service(vault)
    sso = _technologist("east-wing", "sso-tech")
    data = kit.make_raster(tmp_path / "a.png", 5).read_bytes()

    with pytest.raises(AccessDenied, match="site is not registered"):
        service.authorize_upload(sso)
    with pytest.raises(AccessDenied):
        service.upload(sso, data, "a.png", modality="DX")
    with pytest.raises(AccessDenied):
        service.dicomweb_store(sso, [kit.ct_small().read_bytes()])

    denied = vault.audit.query(action="access_denied", limit=10)
    assert len(denied) == 3
    assert {(e.actor, e.details["reason"]) for e in denied} == {
        ("sso-tech", "the caller's site is not registered")}
    assert vault.catalog.list_studies() == []


# --------------------------------------------------------------------------- typed hints


@pytest.fixture
def north(vault: Vault) -> ClinicalService:
    service = _service(vault)
    operator = operator_principal("cli:t")
    service.add_site(operator, "north")
    service.add_user(operator, "tech", "technologist", site="north", password=PASSWORD)
    return service


@pytest.mark.parametrize(("fields", "named"), [
    ({"modality": "XX"}, "modality"),
    ({"modality": "<script>"}, "modality"),
    ({"body_part": "Doe_Jane"}, "body_part"),
    ({"modality": "DX", "body_part": "Doe Jane"}, "body_part"),
])
def test_an_upload_hint_that_is_no_defined_term_is_refused_and_never_recorded(
        kit: Kit, vault: Vault, north: ClinicalService, tmp_path: Path,
        fields: dict[str, str], named: str) -> None:
    data = kit.make_raster(tmp_path / "a.png", 6).read_bytes()
    mark = vault.audit.tail(1)[-1].seq

    with pytest.raises(InvalidRequest) as caught:
        north.upload(_technologist("north"), data, "a.png", **fields)

    message = str(caught.value)
    assert message.startswith(f"{named} is not a DICOM ") and "defined term" in message
    for value in fields.values():
        assert value not in message
    refused = [e for e in vault.audit.query(limit=20) if e.seq > mark]
    assert [(e.action, e.details) for e in refused] == [
        ("ingest_refused", {"error": "InvalidRequest"})]
    trail = (vault.settings.home / "audit.log").read_text(encoding="utf-8")
    assert "Doe" not in trail and "XX" not in trail
    assert vault.catalog.list_studies() == []


def test_upload_hints_are_normalised_for_case_and_spaces(
        kit: Kit, vault: Vault, north: ClinicalService, tmp_path: Path) -> None:
    data = kit.make_raster(tmp_path / "a.png", 7).read_bytes()

    result = north.upload(_technologist("north"), data, "a.png", modality=" dx ",
                          body_part="chest ")

    study = vault.catalog.get_study(result.study_id)
    assert (result.modality, study.modality, study.body_part) == ("DX", "DX", "CHEST")

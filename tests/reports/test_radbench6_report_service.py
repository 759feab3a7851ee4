"""End to end: a study the shipped default model (radbench6) analyses gets every report
format from the clinical service, in the model's class order, after its result has
round-tripped through the catalog (whose canonical JSON sorts the classes by name)."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from report_samples import CT_SMALL

from radvault.access.policy import scopes_for
from radvault.access.principal import Principal, Role
from radvault.config import load_settings
from radvault.pipeline.clinical import ClinicalService, ServiceSettings, operator_principal
from radvault.vault.keys import KdfParams
from radvault.vault.vault import Vault

MODELS = Path(__file__).resolve().parents[2] / "models"
PASSWORD = "Vivid-Lantern-42!"


def _principal(name: str, role: str) -> Principal:
    return Principal(name, Role(role), "north", scopes_for(role))


@pytest.fixture(scope="module")
def analysed(tmp_path_factory) -> Iterator[tuple[ClinicalService, Principal, str, tuple]]:
    """A CT study with no body part (no specialist model), analysed by the service."""
    home = tmp_path_factory.mktemp("radbench6-report") / "home"
    vault = Vault.init(load_settings(env={}, home=home), "correct horse battery staple",
                       kdf=KdfParams.fast())
    service = ClinicalService.build(vault, ServiceSettings(
        argon2=(1, 8, 1), start_workers=False, models_dir=MODELS,
        issuer="https://radvault.test"))
    operator = operator_principal("cli:tests")
    service.add_site(operator, "north")
    for name, role in (("tech-n", "technologist"), ("rad-n", "radiologist")):
        service.add_user(operator, name, role, site="north", password=PASSWORD)
    service.grant(operator, "rad-n", site="north")
    tech, rad = _principal("tech-n", "technologist"), _principal("rad-n", "radiologist")
    study = service.upload(tech, CT_SMALL.read_bytes(), "CT_small.dcm").study_id
    service.start_analysis(rad, study)
    assert service.run_pending_jobs() == 1
    card = json.loads((MODELS / "radbench6" / "model_card.json").read_text(encoding="utf-8"))
    try:
        yield service, rad, study, tuple(card["classes"])
    finally:
        vault.close()


def test_the_study_went_through_radbench6_and_came_back_sorted(analysed):
    service, _, study, classes = analysed
    instance, = service.vault.catalog.instances_of_study(study)
    result, = service.vault.catalog.results_of_instance(instance.instance_id)
    assert result.model_id.startswith("radbench6-")
    assert list(result.payload["probabilities"]) == sorted(classes) != list(classes)


def test_html_report_reads_in_the_models_order(analysed):
    service, rad, study, classes = analysed
    html = service.report(rad, study, "html").content.decode("utf-8")
    table = html[html.index('<table class="probs">'):]
    shown = re.findall(r"<tr[^>]*>\s*<td>([^<]+)</td>", table[:table.index("</table>")])
    assert tuple(shown) == classes


def test_pdf_report_reads_in_the_models_order(analysed):
    service, rad, study, classes = analysed
    pdf = service.report(rad, study, "pdf").content
    assert pdf.startswith(b"%PDF-")
    pypdf = pytest.importorskip("pypdf", reason="pypdf is needed to read the PDF back")
    reader = pypdf.PdfReader(io.BytesIO(pdf))
    text = re.sub(r"\s+", " ", " ".join(page.extract_text() or "" for page in reader.pages))
    rows = [m.group(1) for m in re.finditer(r"(\w+) (?:[<>] )?\d+\.\d %", text)]
    assert tuple(c for c in rows if c in classes) == classes, text


def test_fhir_report_reads_in_the_models_order(analysed):
    service, rad, study, classes = analysed
    fhir = json.loads(service.report(rad, study, "fhir").content)
    texts = [o["code"]["text"] for o in fhir["contained"] if o["id"].startswith("prob-")]
    assert texts == [f"Probability of {c}" for c in classes]


def test_sr_report_reads_in_the_models_order(analysed):
    import highdicom as hd

    service, rad, study, classes = analysed
    ds = pydicom.dcmread(io.BytesIO(service.report(rad, study, "sr").content))
    group, = hd.sr.ComprehensiveSR.from_dataset(ds).content.get_image_measurement_groups()
    names = [m.name.meaning for m in group.get_measurements()]
    assert names == [f"Probability of {c}" for c in classes]

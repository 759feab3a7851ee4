"""One result that fails its signature check is shown, never the end of the worklist."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from types import SimpleNamespace

from radvault.access.policy import scopes_for
from radvault.access.principal import Principal, Role
from radvault.config import load_settings
from radvault.pipeline.clinical import ClinicalService, ServiceSettings, operator_principal
from radvault.vault.keys import KdfParams
from radvault.vault.vault import Vault
from radvault.web.studies import _summarise

SAMPLES = Path(__file__).resolve().parents[2] / "src" / "radvault" / "samples" / "images"
PASSWORD = "Vivid-Lantern-42!"


def test_a_tampered_result_marks_its_study_and_the_others_still_list(tmp_path: Path) -> None:
    vault = Vault.init(load_settings(env={}, home=tmp_path / "vault"), "worklist integrity",
                       kdf=KdfParams.fast())
    try:
        service = ClinicalService.build(vault, ServiceSettings(argon2=(1, 8, 1),
                                                               start_workers=False))
        operator = operator_principal("cli:t")
        service.add_site(operator, "north")
        service.add_user(operator, "rad-n", "radiologist", site="north", password=PASSWORD)
        service.grant(operator, "rad-n", site="north")
        tech = Principal("tech", Role.TECHNOLOGIST, "north", scopes_for("technologist"))
        rad = Principal("rad-n", Role.RADIOLOGIST, "north", scopes_for("radiologist"))
        studies = []
        for name in ("chest_xray__normal__IM-0009-0001.jpeg",
                     "chest_xray__pneumonia__person117_bacteria_553.jpeg"):
            study = service.upload(tech, (SAMPLES / name).read_bytes(), name, modality="DX",
                                   body_part="CHEST").study_id
            service.start_analysis(rad, study)
            studies.append(study)
        unnamed = service.upload(tech, (SAMPLES / "brain_mri__glioma__Te-glTr_0008.jpg")
                                 .read_bytes(), "mr.jpg", modality="MR").study_id
        service.start_analysis(rad, unnamed)  # no body part: radbench6 answers, and refers
        service.run_pending_jobs()
        db = sqlite3.connect(vault.settings.home / "catalog.sqlite3")
        (rid, payload), = db.execute(
            "SELECT r.result_id, r.payload FROM results r JOIN instances i "
            "ON r.instance_id = i.instance_id WHERE i.study_id = ?", (studies[0],)).fetchall()
        body = json.loads(payload)
        body["summary"]["refer"] = not body["summary"]["refer"]
        db.execute("UPDATE results SET payload = ? WHERE result_id = ?",
                   (json.dumps(body), rid))
        db.commit()
        db.close()

        user = SimpleNamespace(principal=rad)
        rows = {s: _summarise(service, user, vault.catalog.get_study(s)) for s in studies}

        assert rows[studies[0]].state == "Integrity failure" and rows[studies[0]].rank == 0
        assert rows[studies[1]].state == "Awaiting sign-off"
        referred = _summarise(service, user, vault.catalog.get_study(unnamed))
        assert referred.rank == 0 and referred.reason == (  # why, in the reports' words
            "the model has no class for a normal image: it names one of its diseases for "
            "every image, a normal one too")
        assert vault.audit.query(action="integrity_failure")
    finally:
        vault.close()

"""An image analysed again after its sign-off says so: the sign-off is not lost from view."""

from __future__ import annotations

from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[2] / "src" / "radvault" / "samples" / "images"


def test_a_newer_analysis_shows_the_earlier_sign_off(web, world) -> None:
    data = (SAMPLES / "chest_xray__pneumonia__person117_bacteria_553.jpeg").read_bytes()
    r = world.upload("tech-n", data, "again.jpeg", modality="DX", body_part="CHEST")
    assert r.status_code in (200, 201), r.text
    study, instance = r.json()["study_id"], r.json()["instance_id"]
    r = world.post("rad-n", f"/api/v1/studies/{study}/analyses", json={})
    assert world.wait_job("rad-n", r.json()["job_id"])["status"] == "succeeded"
    base = f"/api/v1/studies/{study}/instances/{instance}"
    reviewed = world.get("rad-n", f"{base}/result").json()["result_id"]
    assert world.post("rad-n", f"{base}/signoff", json={
        "decision": "overridden", "label": "not_assessable",
        "result_id": reviewed}).status_code == 201
    world.service._analyser("rad-n").analyse_instance(instance)  # analysed again

    page = web.page("rad-n")
    page.goto(f"/web/studies/{study}?instance={instance}")

    assert "Not signed off yet" in page.locator("#signoff").inner_text()
    earlier = page.locator("#earlier-signoff").inner_text()
    assert "signed off by rad-n" in earlier and "not assessable by this model" in earlier

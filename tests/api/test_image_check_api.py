"""The image check over HTTP: a result says what the check took the image for, and an
image that looks like another source than declared is referred."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from apikit import SAMPLES, World, fixed_image_check, served_world, tiny_model


@pytest.fixture(scope="module")
def checked_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A service whose registry holds the tiny model and a check that sees only brain MR."""
    models = fixed_image_check(tiny_model(tmp_path_factory.mktemp("models")), "brain_mri")
    with served_world(tmp_path_factory.mktemp("api-check") / "home", models) as w:
        yield w


def _analysed(world: World, sample: str, modality: str, body_part: str | None) -> dict:
    data = (SAMPLES / sample).read_bytes()
    extra = {"body_part": body_part} if body_part else {}
    up = world.upload("tech-n", data, "film.jpeg", modality=modality, **extra)
    assert up.status_code in (200, 201), up.text
    r = world.post("rad-n", f"/api/v1/studies/{up.json()['study_id']}/analyses", json={})
    assert r.status_code == 202, r.text
    job = world.wait_job("rad-n", r.json()["job_id"])
    assert job["status"] == "succeeded", job
    return world.get("rad-n", f"/api/v1/studies/{up.json()['study_id']}/instances/"
                              f"{up.json()['instance_id']}/result").json()


def test_a_film_the_check_takes_for_a_brain_mr_is_referred_and_says_so(
        checked_world: World) -> None:
    result = _analysed(checked_world, "chest_xray__normal__IM-0009-0001.jpeg", "DX", None)
    assert result["refer"] and "image_unlike_declared" in result["reasons"]
    check = result["image_check"]
    assert check["looks_like"] == "brain_mri" and check["unlike_declared"] is True
    assert check["probability"] > 0.99 and check["model_id"].startswith("image_source-")


def test_a_declaration_the_check_does_not_know_is_not_second_guessed(
        checked_world: World) -> None:
    # another image (the same one would be the same study): the check knows no CT source
    result = _analysed(checked_world, "chest_xray__pneumonia__person117_bacteria_553.jpeg",
                       "CT", None)
    assert "image_unlike_declared" not in result["reasons"]
    assert result["image_check"]["unlike_declared"] is False


def test_a_service_without_an_image_check_returns_none(world: World,
                                                       analysed: dict) -> None:
    result = world.get("rad-n", f"/api/v1/studies/{analysed['study_id']}/instances/"
                                f"{analysed['results'][0]['instance_id']}/result").json()
    assert result["image_check"] is None
    assert "image_unlike_declared" not in result["reasons"]



def test_a_study_the_check_doubts_is_relabelled_and_analysed_again(
        checked_world: World) -> None:
    data = (SAMPLES / "brain_mri__glioma__Te-glTr_0008.jpg").read_bytes()
    up = checked_world.upload("tech-n", data, "scan.jpeg", modality="DX").json()
    study = up["study_id"]
    path = f"/api/v1/studies/{study}/relabel"
    mark = checked_world.mark()
    assert checked_world.post("tech-n", path, json={"modality": "MR"}).status_code == 403
    bad = checked_world.post("rad-n", path, json={"modality": "MR", "body_part": "Doe^J"})
    assert bad.status_code == 400 and "Doe" not in bad.text
    r = checked_world.post("rad-n", path, json={"modality": "mr", "body_part": "brain"})
    assert r.status_code == 200, r.text
    assert (r.json()["modality"], r.json()["body_part"]) == ("MR", "BRAIN")
    entries = checked_world.audit_since(mark, "study.relabel")
    assert sorted(str(e.outcome) for e in entries) == ["ok", "refused"]
    ok = next(e for e in entries if str(e.outcome) == "ok")
    assert ok.details == {"from": ["DX", None], "to": ["MR", "BRAIN"]}
    job = checked_world.post("rad-n", f"/api/v1/studies/{study}/analyses", json={})
    assert checked_world.wait_job("rad-n", job.json()["job_id"])["status"] == "succeeded"
    result = checked_world.get("rad-n", f"/api/v1/studies/{study}/instances/"
                                        f"{up['instance_id']}/result").json()
    assert result["image_check"]["matches_declared"] is True  # the record agrees now
    assert result["recorded_as"] == ["MR", "BRAIN"]
    assert "image_unlike_declared" not in result["reasons"]

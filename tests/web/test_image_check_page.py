"""The study page says what the image check took an image for, and why it is referred."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from webkit import SAMPLES, Browsing, World, fixed_image_check, served_world, tiny_model


@pytest.fixture(scope="module")
def checked_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A service whose registry holds the tiny model and a check that sees only brain MR."""
    models = fixed_image_check(tiny_model(tmp_path_factory.mktemp("models")), "brain_mri")
    with served_world(tmp_path_factory.mktemp("web-check") / "home", models) as w:
        yield w


def test_a_film_taken_for_a_brain_mr_is_referred_in_words_on_the_study_page(
        browser: Any, checked_world: World, shots: Path) -> None:
    data = (SAMPLES / "chest_xray__normal__IM-0009-0001.jpeg").read_bytes()
    up = checked_world.upload("tech-n", data, "film.jpeg", modality="DX").json()
    r = checked_world.post("rad-n", f"/api/v1/studies/{up['study_id']}/analyses", json={})
    assert checked_world.wait_job("rad-n", r.json()["job_id"])["status"] == "succeeded"
    web = Browsing(browser, checked_world, shots)
    try:
        page = web.page("rad-n")
        page.goto(f"/web/studies/{up['study_id']}")
        flag = page.locator("#decision-support").inner_text()
        assert flag.startswith("Refer to a radiologist")
        assert ("the image does not look like the DX it is recorded as: the image check "
                "takes it for a brain MR") in flag
        seen = page.locator("#image-check").inner_text()
        assert seen == ("Image check: the image looks like a brain MR (> 99.9 %), "
                        "not the DX it is recorded as.")
        # the page offers the check's kind of image as the record; one click corrects it
        # and analyses again
        form = page.locator("#relabel")
        assert form.get_by_label("Modality").input_value() == "MR"
        assert form.get_by_label("Body part").input_value() == "BRAIN"
        form.get_by_role("button", name="Correct the record and analyse again").click()
        page.wait_for_url(lambda url: "done=analysed" in url, timeout=60_000)
        assert page.locator("#image-check").inner_text() == (
            "Image check: the image looks like a brain MR (> 99.9 %), as recorded.")
    finally:
        web.close()
    assert web.offsite == []


@pytest.fixture(scope="module")
def doubting_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A service whose check takes every image for a brain MR, but only at 75 %; the tiny
    model's answers are not referred for confidence (threshold 0.1)."""
    models = fixed_image_check(tiny_model(tmp_path_factory.mktemp("models")), "brain_mri",
                               probability=0.75)
    with served_world(tmp_path_factory.mktemp("web-doubt") / "home", models,
                      refer_threshold=0.1) as w:
        yield w


def test_a_doubt_under_the_threshold_is_a_warning_on_the_page_and_the_worklist(
        browser: Any, doubting_world: World, shots: Path) -> None:
    data = (SAMPLES / "chest_xray__normal__IM-0009-0001.jpeg").read_bytes()
    up = doubting_world.upload("tech-n", data, "film.jpeg", modality="DX").json()
    r = doubting_world.post("rad-n", f"/api/v1/studies/{up['study_id']}/analyses", json={})
    assert doubting_world.wait_job("rad-n", r.json()["job_id"])["status"] == "succeeded"
    web = Browsing(browser, doubting_world, shots)
    try:
        page = web.page("rad-n")
        row = page.locator("tr", has=page.get_by_role("link", name=up["study_id"]))
        assert ("image check: the image may be a brain MR (75.0 %), not the DX it is "
                "recorded as") in " ".join(row.inner_text().split())
        page.goto(f"/web/studies/{up['study_id']}")
        seen = page.locator("#image-check").inner_text()
        assert seen == ("Image check: the image may be a brain MR (75.0 %), not the DX it "
                        "is recorded as; under the check's threshold of 86.0 %, so not "
                        "referred for it: look before you sign.")
        assert page.locator("#relabel").count() == 0  # a warning offers no one-click fix
        assert "image_unlike_declared" not in doubting_world.get(
            "rad-n", f"/api/v1/studies/{up['study_id']}/instances/{up['instance_id']}/result"
        ).json()["reasons"]
    finally:
        web.close()
    assert web.offsite == []


def test_an_analysis_made_before_a_relabel_says_so_and_offers_no_second_relabel(
        browser: Any, checked_world: World, shots: Path) -> None:
    data = (SAMPLES / "chest_xray__pneumonia__person117_bacteria_553.jpeg").read_bytes()
    up = checked_world.upload("tech-n", data, "film2.jpeg", modality="DX").json()
    study = up["study_id"]
    r = checked_world.post("rad-n", f"/api/v1/studies/{study}/analyses", json={})
    assert checked_world.wait_job("rad-n", r.json()["job_id"])["status"] == "succeeded"
    assert checked_world.post("rad-n", f"/api/v1/studies/{study}/relabel", json={
        "modality": "MR", "body_part": "BRAIN"}).status_code == 200
    web = Browsing(browser, checked_world, shots)
    try:
        page = web.page("rad-n")
        page.goto(f"/web/studies/{study}")
        seen = page.locator("#image-check").inner_text()
        assert "not the DX it is recorded as" in seen  # the words of its own time
        assert ("this analysis was made when the study was recorded as DX; it is recorded "
                "as MR BRAIN now: analyse it again") in seen
        assert page.locator("#relabel").count() == 0
        page.goto("/web/")
        row = page.locator("tr", has=page.get_by_role("link", name=study))
        assert "analysed as DX before a relabel: analyse it again" in row.inner_text()
    finally:
        web.close()

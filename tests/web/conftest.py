"""Fixtures of the web tests: a live server, headless Chromium, studies uploaded and analysed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from webkit import (
    SAMPLES,
    Browsing,
    World,
    launch_browser,
    pydicom_file,
    screenshot_dir,
    served_world,
    tiny_model,
)


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A running RadVault (API and pages) with every role's user."""
    models = tiny_model(tmp_path_factory.mktemp("models"))
    with served_world(tmp_path_factory.mktemp("web") / "home", models) as w:
        yield w


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Debian's Chromium through Playwright (skips cleanly when missing)."""
    yield from launch_browser()


@pytest.fixture(scope="session")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go (``$RADVAULT_WEB_SCREENSHOTS`` keeps them, e.g. docs/screenshots)."""
    return screenshot_dir(tmp_path_factory.mktemp("screenshots"))


@pytest.fixture
def web(browser: Any, world: World, shots: Path) -> Iterator[Browsing]:
    """Opens pages; at the end, no page may have reached beyond the test server."""
    browsing = Browsing(browser, world, shots)
    try:
        yield browsing
    finally:
        browsing.close()
    assert browsing.offsite == [], f"pages reached off the server: {browsing.offsite}"


@pytest.fixture(scope="session")
def uploaded(browser: Any, world: World, shots: Path) -> dict[str, str]:
    """North's technologist uploads a CT image through the upload page: its ids."""
    browsing = Browsing(browser, world, shots)
    try:
        page = browsing.page("tech-n")
        assert page.url.endswith("/web/upload")
        page.get_by_label("Image file").set_input_files(str(pydicom_file("CT_small.dcm")))
        with page.expect_navigation():
            page.get_by_role("button", name="Upload").click()
        result = page.locator("#upload-result")
        assert "Stored." in result.inner_text()
        browsing.shoot(page, "upload")
        study_id = page.locator("#upload-study").inner_text().strip()
        instance_id = page.locator("#upload-result dd.mono").nth(1).inner_text().strip()
    finally:
        browsing.close()
    return {"study_id": study_id, "instance_id": instance_id}


@pytest.fixture(scope="session")
def analysed_xray(world: World) -> dict[str, str]:
    """A north chest X-ray uploaded and analysed through the API (for the physician)."""
    data = (SAMPLES / "chest_xray__normal__IM-0009-0001.jpeg").read_bytes()
    r = world.upload("tech-n", data, "chest.jpeg", modality="DX", body_part="CHEST")
    assert r.status_code in (200, 201), r.text
    ids = r.json()
    r = world.post("rad-n", f"/api/v1/studies/{ids['study_id']}/analyses", json={})
    assert r.status_code == 202, r.text
    job = world.wait_job("rad-n", r.json()["job_id"])
    assert job["status"] == "succeeded", job
    return {"study_id": ids["study_id"], "instance_id": ids["instance_id"]}

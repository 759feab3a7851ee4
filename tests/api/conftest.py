"""Fixtures of the API tests: one vault and a live server on 127.0.0.1 for the session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apikit import SAMPLES, World, pydicom_file, served_world, tiny_model


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model registry holding one tiny signed model as ``radbench6``."""
    return tiny_model(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[World]:
    """The shared running service (tests that change users make their own)."""
    with served_world(tmp_path_factory.mktemp("api") / "home", models_dir) as w:
        yield w


@pytest.fixture(scope="session")
def north_study(world: World) -> dict[str, str]:
    """A DICOM study uploaded by north's technologist: ids of study and instance."""
    r = world.upload("tech-n", pydicom_file("CT_small.dcm").read_bytes(), "CT_small.dcm")
    assert r.status_code in (200, 201), r.text
    return r.json()


@pytest.fixture(scope="session")
def south_study(world: World) -> dict[str, str]:
    """A JPEG study uploaded by south's technologist."""
    data = (SAMPLES / "chest_xray__normal__IM-0009-0001.jpeg").read_bytes()
    r = world.upload("tech-s", data, "chest.jpeg", modality="DX", body_part="CHEST")
    assert r.status_code in (200, 201), r.text
    return r.json()


@pytest.fixture(scope="session")
def analysed(world: World, north_study: dict[str, str]) -> dict[str, Any]:
    """The north study analysed by its radiologist (the finished job)."""
    r = world.post("rad-n", f"/api/v1/studies/{north_study['study_id']}/analyses", json={})
    assert r.status_code == 202, r.text
    job = world.wait_job("rad-n", r.json()["job_id"])
    assert job["status"] == "succeeded", job
    return job

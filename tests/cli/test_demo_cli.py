"""`radvault demo`, the README's main job: the whole flow on the shipped samples."""

import os
from pathlib import Path

import pytest

from radvault.cli import main


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("RADVAULT_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("COLUMNS", "200")


def test_the_demo_ingests_analyses_verifies_and_says_how_to_log_in(
        tmp_path: Path, clean_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "demo"
    assert main(["demo", "--home", str(home)]) == 0
    out = capsys.readouterr().out
    assert f"created a demo vault in {home}" in out
    assert "1. ingest" in out and "2. analyse" in out
    assert ": clean" in out  # 3. verify
    # an MR sample without a body part is never answered unflagged by the default model
    assert "refer to a radiologist (" in out and "body_part_unknown" in out
    assert " %" in out  # probabilities as the reports print them
    assert "serve --insecure-http --port 8000" in out
    assert (home / "DEMO-PASSPHRASE.txt").is_file()

    # a second run reopens the same vault and finds every sample already stored
    assert main(["demo", "--home", str(home)]) == 0
    again = capsys.readouterr().out
    assert f"reopened the demo vault in {home}" in again and ": clean" in again

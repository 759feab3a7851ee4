"""`radvault analyze`, `train`, `evaluate` and `data fetch` as a user runs them (offline)."""

import json
from pathlib import Path

import pytest

from radvault.cli import main
from radvault.cli._analysis_cmds import medmnist_url
from radvault.errors import ConfigurationError

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "src" / "radvault" / "samples" / "images"
MODELS = REPO / "models"
needs_models = pytest.mark.skipif(not (MODELS / "radbench6").is_dir(),
                                  reason="no shipped models in this checkout")


@needs_models
def test_analyze_a_file_picks_the_specialist_and_reports_every_class(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    image = SAMPLES / "chest_xray__pneumonia__person117_bacteria_553.jpeg"
    heatmap = tmp_path / "cam.png"
    code = main(["analyze", str(image), "--modality", "DX", "--body-part", "CHEST",
                 "--heatmap", str(heatmap), "--json"])
    assert code == 0
    [result] = json.loads(capsys.readouterr().out)
    assert result["model_id"].startswith("chest_xray-")
    assert set(result["probabilities"]) == {"normal", "pneumonia"}
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert heatmap.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_models
def test_analyze_flags_an_image_of_a_kind_no_model_was_trained_on(
    capsys: pytest.CaptureFixture[str],
) -> None:
    image = SAMPLES / "chest_xray__normal__IM-0009-0001.jpeg"
    code = main(["analyze", str(image), "--modality", "MG", "--body-part", "BREAST", "--json"])
    assert code == 0
    [result] = json.loads(capsys.readouterr().out)
    assert result["refer"] is True
    assert "modality_not_trained" in result["reasons"]


def test_analyze_an_unknown_id_without_a_vault_fails_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RADVAULT_HOME", str(tmp_path / "none"))
    monkeypatch.setenv("RADVAULT_PASSPHRASE", "x" * 20)
    assert main(["analyze", "2.25.1"]) == 3
    assert "radvault init" in capsys.readouterr().err


def test_train_and_evaluate_show_their_options() -> None:
    assert main(["train", "--help"]) == 0
    assert main(["evaluate", "--help"]) == 0


def test_data_fetch_knows_the_official_medmnist_files_and_refuses_others(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert medmnist_url("pneumoniamnist").endswith("/pneumoniamnist.npz?download=1")
    with pytest.raises(ConfigurationError):
        medmnist_url("imagenet")
    assert main(["data", "fetch", "medmnist", "imagenet", "--out", str(tmp_path)]) == 2
    assert "unknown MedMNIST set" in capsys.readouterr().err

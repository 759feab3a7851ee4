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


def test_analyze_a_target_too_long_for_a_file_name_says_so_without_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["analyze", "x" * 300])
    err = capsys.readouterr().err
    assert code != 0 and "too long" in err and "Traceback" not in err


@needs_models
def test_analyze_prints_what_the_image_check_saw(capsys: pytest.CaptureFixture[str]) -> None:
    image = SAMPLES / "brain_mri__glioma__Te-glTr_0008.jpg"
    assert main(["analyze", str(image), "--modality", "DX", "--body-part", "CHEST"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "image_unlike_declared" in out
    assert "image check: the image looks like a brain MR" in out
    assert "not the DX CHEST it is recorded as" in out


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


@needs_models
def test_analyze_a_study_runs_every_instance_and_reports_one_that_fails_verification(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    import pydicom
    from pydicom.uid import generate_uid

    from radvault.config import load_settings
    from radvault.pipeline.ingest import IngestItem, Ingestor
    from radvault.vault.keys import KdfParams
    from radvault.vault.vault import Vault

    home = tmp_path / "vault"
    monkeypatch.setenv("RADVAULT_HOME", str(home))
    monkeypatch.setenv("RADVAULT_PASSPHRASE", "analyse a whole study")
    ct = pydicom.dcmread(Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm")
    for n in range(3):
        ct.SOPInstanceUID = ct.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ct.InstanceNumber = n + 1
        ct.save_as(tmp_path / f"ct{n}.dcm")
    vault = Vault.init(load_settings(env={}, home=home), "analyse a whole study",
                       kdf=KdfParams.fast())
    try:
        outcomes = Ingestor(vault, actor="tech").ingest_many(
            [IngestItem(path) for path in sorted(tmp_path.glob("ct*.dcm"))])
        study_id = vault.catalog.get_instance(outcomes[0].instance_id).study_id
        victim = next(o for o in vault.catalog.objects_of_instance(outcomes[1].instance_id)
                      if o.kind == "model_input")
        blob = vault.blobs.path_of(victim.blob_key)
    finally:
        vault.close()

    assert main(["analyze", study_id, "--heatmap", str(tmp_path / "cam.png")]) == 2
    assert "study" in capsys.readouterr().err and not (tmp_path / "cam.png").exists()
    assert main(["analyze", study_id, "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert sorted(r["target"] for r in first) == sorted(o.instance_id for o in outcomes)
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-3 for r in first)

    data = bytearray(blob.read_bytes())
    data[-40] ^= 0x80
    blob.write_bytes(bytes(data))
    assert main(["analyze", study_id]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert f"{outcomes[1].instance_id}: not analysed (IntegrityError" in out
    assert "1 of 3 instances not analysed" in out


def test_analyze_refuses_options_that_contradict_a_dicom_header(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pydicom.data import get_testdata_file

    ct = get_testdata_file("CT_small.dcm")  # ships with pydicom: no download
    assert main(["analyze", ct, "--modality", "US", "--json"]) == 2
    assert "contradicts the DICOM header (CT)" in capsys.readouterr().err


@needs_models
def test_a_dicom_file_without_a_modality_takes_one_from_the_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.Modality  # reads as "OT": the header says nothing, so the option is not refused
    ds.save_as(tmp_path / "nomod.dcm")
    assert main(["analyze", str(tmp_path / "nomod.dcm"), "--modality", "CT", "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert "modality_not_trained" not in result["reasons"]


def test_analyze_says_what_is_missing_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = SAMPLES / "chest_xray__normal__IM-0009-0001.jpeg"
    assert main(["analyze", str(tmp_path / "missing.png")]) == 6  # not taken for a vault id
    assert "no such file" in capsys.readouterr().err
    assert main(["analyze", str(image), "--model", str(tmp_path / "nosuch")]) == 6
    assert "no model folder" in capsys.readouterr().err
    assert main(["analyze", str(image), "--heatmap", str(tmp_path / "no" / "cam.png")]) == 2
    assert "--heatmap: no folder" in capsys.readouterr().err


@needs_models
def test_analyze_a_file_uses_the_configured_referral_threshold(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    image = SAMPLES / "chest_xray__normal__IM-0009-0001.jpeg"
    monkeypatch.setenv("RADVAULT_REFER_THRESHOLD", "1.0")  # nothing is that sure
    assert main(["analyze", str(image), "--modality", "DX", "--body-part", "CHEST",
                 "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert result["refer"] is True and "low_confidence" in result["reasons"]


@needs_models
def test_a_shipped_medmnist_model_verifies_with_the_shipped_keys(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    image = SAMPLES / "chest_xray__normal__IM-0009-0001.jpeg"
    model = MODELS / "medmnist" / "pneumoniamnist"
    assert main(["analyze", str(image), "--model", str(model), "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert result["model_id"].startswith("pneumoniamnist-")
    (tmp_path / "keys").mkdir()  # an empty trusted-key folder trusts nothing
    assert main(["analyze", str(image), "--model", str(model), "--keys",
                 str(tmp_path / "keys")]) == 5
    assert "untrusted key" in capsys.readouterr().err


def test_a_model_signing_key_inside_the_models_tree_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "models" / "keys"
    assert main(["keys", "model-key", "--out", str(tmp_path / "models" / "k.pem"),
                 "--keys", str(keys)]) == 2
    assert "keep the private key elsewhere" in capsys.readouterr().err


@needs_models
def test_the_heatmap_is_drawn_at_the_images_own_size(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    wide = tmp_path / "wide.png"  # 300 x 150: larger than the model input, not square
    Image.fromarray(np.tile(np.linspace(0, 255, 300, dtype=np.uint8), (150, 1))).save(wide)
    cam = tmp_path / "cam.png"
    assert main(["analyze", str(wide), "--modality", "DX", "--body-part", "CHEST",
                 "--heatmap", str(cam), "--json"]) == 0
    with Image.open(cam) as drawn:  # the image's long side, letterboxed as it is shown
        assert drawn.size == (300, 300)


def test_analyze_refuses_labels_for_a_vault_id(tmp_path, monkeypatch, capsys):
    # a user test found --modality/--body-part silently ignored for a study id
    from radvault.cli import main

    monkeypatch.setenv("RADVAULT_HOME", str(tmp_path / "nowhere"))
    code = main(["analyze", "2.25.1234", "--modality", "MR", "--body-part", "BRAIN"])
    assert code == 2
    assert "label an image FILE" in capsys.readouterr().err

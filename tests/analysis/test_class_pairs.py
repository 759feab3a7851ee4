"""A card written before training recorded each class's pairs can be given them, exactly."""

import json
import shutil
from pathlib import Path

import pytest

from radvault.analysis.export import Ed25519Signer, ModelKeyring, record_class_pairs
from radvault.analysis.inference import load_model
from radvault.errors import DatasetError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def old_radbench6(tmp_path: Path) -> Path:
    """The shipped radbench6 model as it was before session 9: no class_trained_on."""
    folder = tmp_path / "models" / "radbench6"
    shutil.copytree(REPO / "models" / "radbench6", folder)
    card = json.loads((folder / "model_card.json").read_text())
    card.pop("class_trained_on", None)
    (folder / "model_card.json").write_text(json.dumps(card))
    return folder


def test_the_pairs_come_from_the_training_split_the_card_names(old_radbench6, radbench_manifest,
                                                               tmp_path):
    before = json.loads((old_radbench6 / "model_card.json").read_text())
    signer = Ed25519Signer.generate()
    card = record_class_pairs(old_radbench6, radbench_manifest, signer=signer)
    assert card["model_id"] == before["model_id"]  # same network, same calibration
    assert card["onnx_sha256"] == before["onnx_sha256"]
    assert card["class_trained_on"]["kidney_stone"] == [{"modality": "CT",
                                                         "body_part": "KIDNEY"}]
    assert card["class_trained_on"]["glioma"] == [{"modality": "MR", "body_part": "BRAIN"}]
    assert set(card["class_trained_on"]) == set(before["classes"])
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / f"{signer.key_id}.pub").write_bytes(signer.public_pem())
    loaded = load_model(old_radbench6, keyring=ModelKeyring.from_dir(keys))
    assert loaded.card.class_trained_on["pneumonia"] == (("DX", "CHEST"),)


def test_another_manifest_is_refused(old_radbench6, toy_manifest):
    with pytest.raises(DatasetError, match="not the manifest radbench6 was trained on"):
        record_class_pairs(old_radbench6, toy_manifest, signer=Ed25519Signer.generate())

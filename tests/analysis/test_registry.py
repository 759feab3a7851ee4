"""The registry picks a specialist by modality and body part, else radbench6."""

from __future__ import annotations

import json

import pytest

from radvault.analysis.registry import ModelRegistry
from radvault.errors import ModelError


def fake_model(root, name, pairs):
    (root / name).mkdir(parents=True)
    (root / name / "model_card.json").write_text(json.dumps({
        "task": name, "classes": ["a", "b"],
        "trained_on": [{"modality": m, "body_part": b} for m, b in pairs]}))


@pytest.fixture()
def registry(tmp_path):
    fake_model(tmp_path, "radbench6", [("DX", "CHEST"), ("MR", "BRAIN"), ("CT", "CHEST")])
    fake_model(tmp_path, "chest_xray", [("DX", "CHEST")])
    fake_model(tmp_path, "lung_ct", [("CT", "CHEST")])
    (tmp_path / "keys").mkdir()
    return ModelRegistry(tmp_path)


def test_specialist_wins(registry, tmp_path):
    assert registry.select("DX", "CHEST") == tmp_path / "chest_xray"
    assert registry.select("ct", "chest") == tmp_path / "lung_ct"


def test_default_otherwise(registry, tmp_path):
    assert registry.select("MR", "BRAIN") == tmp_path / "radbench6"
    assert registry.select(None, None) == tmp_path / "radbench6"
    assert registry.select("CT", "KIDNEY") == tmp_path / "radbench6"


def test_a_model_is_found_by_its_folder_name_or_its_model_id(registry, tmp_path):
    # a result names the model id that made it; asking for that id gets that model
    card = tmp_path / "chest_xray" / "model_card.json"
    card.write_text(json.dumps({**json.loads(card.read_text()),
                                "model_id": "chest_xray-0eb703d244bc"}))
    assert registry.get("chest_xray-0eb703d244bc").path == tmp_path / "chest_xray"
    assert registry.get("chest_xray").model_id == "chest_xray-0eb703d244bc"
    with pytest.raises(ModelError, match="no model"):
        registry.get("chest_xray-ffffffffffff")  # another version: not installed
    with pytest.raises(ModelError, match="no model"):
        registry.get("")


def test_no_default_is_an_error(tmp_path):
    fake_model(tmp_path, "lung_ct", [("CT", "CHEST")])
    with pytest.raises(ModelError, match="no model 'radbench6'"):
        ModelRegistry(tmp_path).select("MR", "BRAIN")
    with pytest.raises(ModelError):
        ModelRegistry(tmp_path / "absent")


def test_shipped_models_are_listed_and_verify():
    from radvault.analysis.inference import load_model
    from radvault.analysis.registry import default_models_dir

    root = default_models_dir()
    if not (root / "radbench6" / "model_card.json").is_file():
        pytest.skip("no shipped models in this checkout")
    entries = ModelRegistry(root).entries()
    # every shipped diagnostic card is listed: entries() skips an unreadable one with only
    # a warning; the image check is not a diagnosis and is found on its own
    assert entries
    cards = sorted(card.parent.name for card in root.glob("*/model_card.json")
                   if card.parent.name != "image_check")
    assert [e.name for e in entries] == cards
    assert ModelRegistry(root).image_check_path() == root / "image_check"
    for entry in entries:
        assert load_model(entry.path).card.task == entry.task  # verified with models/keys


def test_a_cr_chest_film_reaches_the_chest_specialist(registry, tmp_path):
    assert registry.select("CR", "CHEST") == tmp_path / "chest_xray"  # CR as DX
    assert registry.select("CT", "HEAD") == tmp_path / "radbench6"


def test_cr_is_checked_as_dx_but_mr_head_is_not_taken_for_a_brain():
    from radvault.analysis.inference import load_model, refer_reasons
    from radvault.imaging.vocabulary import model_pair

    registry = ModelRegistry()
    chest = load_model(registry.select("CR", "CHEST"), keyring=registry.keyring).card
    assert chest.task == "chest_xray"
    assert refer_reasons(0.99, 0.8, chest, "CR", "CHEST", "normal") == ()
    # HEAD also covers orbits, sinuses and face: never answered as a brain unflagged
    assert registry.select("MR", "HEAD").name == "radbench6"
    brain = load_model(registry.get("brain_mri").path, keyring=registry.keyring).card
    assert refer_reasons(0.99, 0.8, brain, "MR", "HEAD", "glioma") == (
        "body_part_not_trained",)
    assert model_pair("cr", " chest ") == ("DX", "CHEST")
    assert model_pair("MR", "HEAD") == ("MR", "HEAD")

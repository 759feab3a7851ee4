"""Referral for what the model was not trained on: unknown body parts, classes of another modality.

Vault analysis has its own tests in ``test_analyse.py``; here file analysis, and the
per-class check (``class_trained_on``) that shipped cards do not carry yet, on a copy of
radbench6 whose card records it, signed with a test key.
"""

import json
from pathlib import Path

import pydicom
import pytest

from radvault.analysis.export import Ed25519Signer, write_model
from radvault.config import load_settings
from radvault.errors import InvalidRequest
from radvault.pipeline.analyse import Analyser
from radvault.pipeline.file_analysis import analyse_file
from radvault.pipeline.ingest import Ingestor
from radvault.vault.keys import KdfParams
from radvault.vault.vault import Vault

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "src" / "radvault" / "samples" / "images"
CHEST = SAMPLES / "chest_xray__pneumonia__person117_bacteria_553.jpeg"
BRAIN = SAMPLES / "brain_mri__glioma__Te-glTr_0008.jpg"
CT_SMALL = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
pytestmark = pytest.mark.skipif(not (REPO / "models" / "radbench6").is_dir(),
                                reason="no shipped models in this checkout")

#: radbench6's datasets and what their manifest rows are (each class selects one dataset).
DATASET_PAIRS = {"chest_xray": ("DX", "CHEST"), "brain_mri": ("MR", "BRAIN"),
                 "lung_ct": ("CT", "CHEST"), "kidney_ct": ("CT", "KIDNEY"),
                 "breast_us": ("US", "BREAST")}
BODY_PART_REASONS = {"body_part_unknown", "body_part_not_trained", "modality_not_trained"}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry holding radbench6 as shipped before session 9, without ``class_trained_on``
    in its card (signed with a test key), to compare with the shipped card, which has it."""
    root = tmp_path_factory.mktemp("models")
    card = json.loads((REPO / "models" / "radbench6" / "model_card.json").read_text())
    card.pop("class_trained_on")
    signer = Ed25519Signer.generate()
    write_model(root / "radbench6", (REPO / "models" / "radbench6" / "model.onnx").read_bytes(),
                card, signer)
    (root / "keys").mkdir()
    (root / "keys" / f"{signer.key_id}.pub").write_bytes(signer.public_pem())
    return root


def test_the_shipped_radbench6_card_records_each_class_s_training_pairs() -> None:
    card = json.loads((REPO / "models" / "radbench6" / "model_card.json").read_text())
    assert card["class_trained_on"] == {
        c["name"]: [dict(zip(("modality", "body_part"), DATASET_PAIRS[c["select"]["dataset"]],
                             strict=True))]
        for c in card["task_definition"]["classes"]}


@pytest.fixture
def vault(tmp_path: Path):
    v = Vault.init(load_settings(env={}, home=tmp_path / "vault"), "referral test passphrase",
                   kdf=KdfParams.fast())
    yield v
    v.close()


def test_a_file_with_a_modality_but_no_body_part_is_referred_as_unknown() -> None:
    pred = analyse_file(BRAIN, modality="MR").prediction
    assert pred.model_id.startswith("radbench6")
    assert pred.refer and "body_part_unknown" in pred.reasons
    assert "body_part_not_trained" not in pred.reasons


def test_a_body_part_option_that_is_no_defined_term_is_refused() -> None:
    # as at ingest: a surname typed as the body part is refused, never used or echoed
    with pytest.raises(InvalidRequest, match=r"^body part is not a DICOM") as caught:
        analyse_file(BRAIN, modality="MR", body_part="SMITH")
    assert "SMITH" not in str(caught.value)
    with pytest.raises(InvalidRequest, match=r"^modality is not a DICOM"):
        analyse_file(BRAIN, modality="XX")
    # a defined term in another case and with spaces is that term
    known = analyse_file(BRAIN, modality="mr", body_part=" brain ").prediction
    assert known.model_id.startswith("brain_mri")
    assert not BODY_PART_REASONS & set(known.reasons)


def test_a_file_whose_body_part_the_model_knows_is_not_referred_for_it() -> None:
    pred = analyse_file(BRAIN, modality="MR", body_part="BRAIN",
                        model_dir=REPO / "models" / "radbench6").prediction
    assert not BODY_PART_REASONS & set(pred.reasons)


def test_a_dicom_file_without_body_part_examined_is_referred_as_unknown() -> None:
    assert "BodyPartExamined" not in pydicom.dcmread(CT_SMALL, stop_before_pixels=True)
    pred = analyse_file(CT_SMALL).prediction
    assert pred.model_id.startswith("radbench6")
    assert pred.refer and "body_part_unknown" in pred.reasons
    given = analyse_file(CT_SMALL, body_part="CHEST",
                         model_dir=REPO / "models" / "radbench6").prediction
    assert not BODY_PART_REASONS & set(given.reasons)


def test_a_file_s_class_of_another_modality_is_referred_and_nothing_else_changes(
    models: Path,
) -> None:
    # a chest film said to be MR BRAIN: radbench6 sees a chest film, answers a DX class
    shipped = analyse_file(CHEST, modality="MR", body_part="BRAIN",  # before session 9
                           model_dir=models / "radbench6", keys_dir=models / "keys").prediction
    flagged = analyse_file(CHEST, modality="MR", body_part="BRAIN",
                           model_dir=REPO / "models" / "radbench6").prediction
    assert flagged.label == shipped.label == "pneumonia"
    assert flagged.probabilities == pytest.approx(shipped.probabilities, abs=1e-6)
    assert "class_not_trained_for_modality" not in shipped.reasons
    assert flagged.refer and "class_not_trained_for_modality" in flagged.reasons
    same = analyse_file(CHEST, modality="DX", body_part="CHEST",
                        model_dir=REPO / "models" / "radbench6").prediction
    assert same.label == "pneumonia"
    assert "class_not_trained_for_modality" not in same.reasons


def test_a_vault_image_s_class_of_another_modality_is_referred_and_nothing_else_changes(
    vault: Vault, models: Path,
) -> None:
    ingestor = Ingestor(vault, actor="tech")
    wrong = ingestor.ingest_file(CHEST, modality="MR", body_part="BRAIN").instance_id
    right = ingestor.ingest_file(BRAIN, modality="MR", body_part="BRAIN").instance_id
    shipped = Analyser.default(vault, actor="dr", models_dir=models).analyse_many(
        [wrong, right], model_name="radbench6")  # the card before session 9
    flagged = Analyser.default(vault, actor="dr")
    batch = flagged.analyse_many([wrong, right], model_name="radbench6")
    single = flagged.analyse_instance(wrong, model_name="radbench6")
    assert batch.failures == []
    for before, after in zip(shipped.results, batch.results, strict=True):
        assert after.predicted_class == before.predicted_class
        assert after.probabilities == pytest.approx(before.probabilities, abs=1e-6)
    assert batch.results[0].predicted_class == "pneumonia"
    assert "class_not_trained_for_modality" not in shipped.results[0].reasons
    for result in (batch.results[0], single):
        assert result.refer and "class_not_trained_for_modality" in result.reasons
    assert batch.results[1].predicted_class in ("glioma", "meningioma")
    assert "class_not_trained_for_modality" not in batch.results[1].reasons

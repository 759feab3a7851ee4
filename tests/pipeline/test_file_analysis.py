"""Analysing a file outside the vault, and naming vault instances by study or instance id."""

from pathlib import Path

import pytest

from radvault.config import load_settings
from radvault.errors import ConfigurationError, ObjectNotFound
from radvault.pipeline.analyse import Analyser
from radvault.pipeline.file_analysis import analyse_file
from radvault.pipeline.ingest import Ingestor
from radvault.vault.keys import KdfParams
from radvault.vault.vault import Vault

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "src" / "radvault" / "samples" / "images" / (
    "chest_xray__pneumonia__person117_bacteria_553.jpeg")


def test_a_chest_film_goes_to_the_chest_specialist_with_every_class_scored() -> None:
    result = analyse_file(SAMPLE, modality="DX", body_part="CHEST")
    pred = result.prediction
    assert pred.model_id.startswith("chest_xray")
    assert set(pred.probabilities) == {"normal", "pneumonia"}
    assert sum(pred.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert result.heatmap_png is None


def test_a_heatmap_is_drawn_only_when_asked_for() -> None:
    result = analyse_file(SAMPLE, modality="DX", body_part="CHEST", heatmap=True)
    assert result.heatmap_png is not None and result.heatmap_png.startswith(b"\x89PNG")


def test_an_option_contradicting_a_dicom_header_is_refused(tmp_path: Path) -> None:
    import pydicom

    ct = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
    with pytest.raises(ConfigurationError, match=r"--modality MR contradicts the DICOM header"):
        analyse_file(ct, modality="MR")


def test_a_target_names_a_study_s_instances_or_one_instance(tmp_path: Path) -> None:
    vault = Vault.init(load_settings(env={}, home=tmp_path / "vault"), "analysis file passphrase",
                       kdf=KdfParams.fast())
    try:
        outcome = Ingestor(vault, actor="tech").ingest_file(SAMPLE, modality="DX",
                                                            body_part="CHEST")
        analyser = Analyser.default(vault, actor="dr")
        assert analyser.instances_of(outcome.study_id) == [outcome.instance_id]
        assert analyser.instances_of(outcome.instance_id) == [outcome.instance_id]
        with pytest.raises(ObjectNotFound):
            analyser.instances_of("no-such-study")
    finally:
        vault.close()

"""Analysing a vault instance: result and audit entry together, idempotent by result id."""

from pathlib import Path

import pytest

from radvault.config import load_settings
from radvault.pipeline.analyse import Analyser
from radvault.pipeline.ingest import Ingestor
from radvault.pipeline.maintenance import verify_vault
from radvault.vault.keys import KdfParams
from radvault.vault.vault import Vault

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "src" / "radvault" / "samples" / "images" / (
    "chest_xray__pneumonia__person117_bacteria_553.jpeg")
pytestmark = pytest.mark.skipif(not (REPO / "models" / "radbench6").is_dir(),
                                reason="no shipped models in this checkout")


@pytest.fixture
def vault(tmp_path: Path):
    v = Vault.init(load_settings(env={}, home=tmp_path / "vault"), "analysis test passphrase",
                   kdf=KdfParams.fast())
    yield v
    v.close()


def test_a_result_is_stored_with_its_audit_entry_and_a_rerun_stores_nothing_new(
    vault: Vault,
) -> None:
    outcome = Ingestor(vault, actor="tech").ingest_file(SAMPLE, modality="DX", body_part="CHEST")
    analyser = Analyser.default(vault, actor="dr")
    first = analyser.analyse_instance(outcome.instance_id, result_id="job0001")
    again = analyser.analyse_instance(outcome.instance_id, result_id="job0001")
    assert again.result_id == first.result_id == "job0001"
    assert again.predicted_class == first.predicted_class
    assert sum(first.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert len(vault.catalog.results_of_instance(outcome.instance_id)) == 1
    entries = vault.audit.query(action="analyse")
    assert [e.object_ids[-1] for e in entries] == ["job0001"]
    assert verify_vault(vault).ok


def test_the_heatmap_is_a_png_computed_in_memory(vault: Vault) -> None:
    outcome = Ingestor(vault, actor="tech").ingest_file(SAMPLE, modality="DX", body_part="CHEST")
    png = Analyser.default(vault, actor="dr").heatmap_png(outcome.instance_id)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert not any(p.suffix == ".png" for p in vault.paths.home.rglob("*"))

"""Analysis results are signed rows: an edited diagnosis is refused on every read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from radvault.config import load_settings
from radvault.errors import IntegrityError
from radvault.pipeline.analyse import Analyser
from radvault.pipeline.ingest import Ingestor
from radvault.vault.keys import KdfParams
from radvault.vault.vault import Vault

if TYPE_CHECKING:
    from conftest import Kit

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "src" / "radvault" / "samples" / "images" / (
    "chest_xray__pneumonia__person117_bacteria_553.jpeg")
PASSPHRASE = "result signatures passphrase"
pytestmark = pytest.mark.skipif(not (REPO / "models" / "radbench6").is_dir(),
                                reason="no shipped models in this checkout")


@pytest.fixture
def analysed(tmp_path: Path):
    settings = load_settings(env={}, home=tmp_path / "vault")
    vault = Vault.init(settings, PASSPHRASE, kdf=KdfParams.fast())
    instance = Ingestor(vault, actor="tech").ingest_file(
        SAMPLE, modality="DX", body_part="CHEST").instance_id
    result = Analyser.default(vault, actor="dr").analyse_instance(instance)
    yield vault, instance, result
    vault.close()


def test_a_stored_result_carries_the_vaults_signature_and_reads_back(analysed) -> None:
    vault, instance, result = analysed
    (record,) = vault.results_of_instance(instance, actor="dr")
    assert record.result_id == result.result_id and record.signature
    assert record.signer_key_id == vault.signer.key_id


@pytest.mark.parametrize("edit", ["diagnosis", "moved", "signature removed"])
def test_an_edited_result_row_is_refused_and_audited(
        analysed, kit: type[Kit], edit: str) -> None:
    vault, instance, result = analysed
    if edit == "diagnosis":  # the review's attack: a confident "normal" with no referral
        (payload,) = kit.sql(vault.settings.home, "SELECT payload FROM results")[0]
        body = json.loads(payload)
        body["predicted_class"] = "kidney_stone"
        body["summary"]["refer"] = False
        kit.sql(vault.settings.home, "UPDATE results SET payload = ?", (json.dumps(body),))
    elif edit == "moved":
        other = Ingestor(vault, actor="tech").ingest_file(
            SAMPLE.with_name("chest_xray__normal__IM-0009-0001.jpeg"), modality="DX",
            body_part="CHEST").instance_id
        kit.sql(vault.settings.home, "UPDATE results SET instance_id = ?", (other,))
        instance = other
    else:
        kit.sql(vault.settings.home, "UPDATE results SET signature = NULL, signer_key_id = NULL")

    with pytest.raises(IntegrityError, match=f"result {result.result_id}"):
        vault.results_of_instance(instance, actor="dr")

    refused = vault.audit.query(action="integrity_failure", limit=5)
    assert refused and list(refused[0].object_ids) == [instance, result.result_id]
    assert refused[0].actor == "dr"


def _as_before_session_10(vault: Vault, kit: type[Kit]) -> None:
    """Make the catalog look as an older RadVault left it: no signature columns."""
    kit.sql(vault.settings.home, "ALTER TABLE results DROP COLUMN signature")
    kit.sql(vault.settings.home, "ALTER TABLE results DROP COLUMN signer_key_id")
    kit.sql(vault.settings.home, "DROP TABLE catalog_meta")


def test_results_stored_before_signing_are_signed_once_when_the_vault_opens(
        analysed, kit: type[Kit]) -> None:
    vault, instance, result = analysed
    settings = vault.settings
    vault.close()
    _as_before_session_10(vault, kit)

    reopened = Vault.open(settings, PASSPHRASE)
    try:
        (record,) = reopened.results_of_instance(instance, actor="dr")
        assert record.result_id == result.result_id and record.signature
        signed = reopened.audit.query(action="results.sign_older", limit=5)
        assert [(e.actor, e.details) for e in signed] == [("system", {"count": 1})]
    finally:
        reopened.close()
    again = Vault.open(settings, PASSPHRASE)  # nothing left to sign
    try:
        assert len(again.audit.query(action="results.sign_older", limit=5)) == 1
    finally:
        again.close()


def test_a_signature_removed_later_is_never_signed_again(analysed, kit: type[Kit]) -> None:
    # the review's attack: edit the row, remove its signature, wait for the next open
    vault, instance, _ = analysed
    settings = vault.settings
    vault.close()
    (payload,) = kit.sql(vault.settings.home, "SELECT payload FROM results")[0]
    body = json.loads(payload)
    body["predicted_class"] = "normal"
    kit.sql(vault.settings.home,
            "UPDATE results SET payload = ?, signature = NULL, signer_key_id = NULL",
            (json.dumps(body),))

    reopened = Vault.open(settings, PASSPHRASE)
    try:
        with pytest.raises(IntegrityError, match="carries no signature"):
            reopened.results_of_instance(instance, actor="dr")
        assert reopened.audit.query(action="results.sign_older", limit=5) == []
        from radvault.pipeline.maintenance import verify_vault

        assert not verify_vault(reopened).ok
    finally:
        reopened.close()


def test_verify_notes_results_that_await_their_signing_as_no_problem(
        analysed, kit: type[Kit]) -> None:
    from radvault.pipeline.maintenance import verify_vault

    vault, _, _ = analysed
    settings = vault.settings
    vault.close()
    _as_before_session_10(vault, kit)
    inspected = Vault.open(settings, PASSPHRASE, read_only=True)  # signs nothing
    try:
        report = verify_vault(inspected)
        assert report.ok, report.problems
        assert any("stored before results were signed" in n for n in report.notes)
    finally:
        inspected.close()


def test_a_catalog_made_before_result_signatures_gets_the_columns(
        tmp_path: Path, kit: type[Kit]) -> None:
    settings = load_settings(env={}, home=tmp_path / "vault")
    Vault.init(settings, PASSPHRASE, kdf=KdfParams.fast()).close()
    kit.sql(settings.home, "ALTER TABLE results DROP COLUMN signature")
    kit.sql(settings.home, "ALTER TABLE results DROP COLUMN signer_key_id")

    vault = Vault.open(settings, PASSPHRASE)
    try:
        columns = {r[1] for r in kit.sql(vault.settings.home, "PRAGMA table_info(results)")}
        assert {"signature", "signer_key_id"} <= columns
    finally:
        vault.close()


def test_verify_reports_an_edited_result(analysed, kit: type[Kit]) -> None:
    from radvault.pipeline.maintenance import verify_vault

    vault, _, result = analysed
    assert verify_vault(vault).ok
    kit.sql(vault.settings.home, "UPDATE results SET model_id = 'another-model'")
    report = verify_vault(vault)
    assert not report.ok
    assert any(p.startswith(f"result {result.result_id}:") for p in report.problems)

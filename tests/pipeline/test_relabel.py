"""Correcting what a study was recorded as: signed again, verified clean, audited."""

from __future__ import annotations

from pathlib import Path

import pytest

from radvault.errors import InvalidRequest, ObjectNotFound, ObjectShredded
from radvault.pipeline.analyse import Analyser
from radvault.pipeline.ingest import Ingestor
from radvault.pipeline.maintenance import relabel_study, shred_study, verify_vault
from radvault.pipeline.retrieve import open_model_input
from radvault.vault.vault import Vault

REPO = Path(__file__).resolve().parents[2]
BRAIN = REPO / "src" / "radvault" / "samples" / "images" / "brain_mri__glioma__Te-glTr_0008.jpg"


def test_a_brain_mr_recorded_as_a_chest_film_is_corrected_and_analysed_by_the_brain_model(
        vault: Vault) -> None:
    outcome = Ingestor(vault, actor="tech").ingest_file(BRAIN, modality="DX", body_part="CHEST")
    study = outcome.study_id
    analyser = Analyser.default(vault, actor="dr")
    wrong = analyser.analyse_instance(outcome.instance_id)
    assert wrong.model_id.startswith("chest_xray-")

    before = relabel_study(vault, study, modality="mr", body_part="brain", actor="admin")

    assert before == ("DX", "CHEST")
    record = vault.catalog.get_study(study)
    assert (record.modality, record.body_part) == ("MR", "BRAIN")
    report = verify_vault(vault)
    assert report.ok, report.problems  # every object row signed again over the new values
    open_model_input(vault, outcome.instance_id, actor="dr")  # reads verify too
    right = Analyser.default(vault, actor="dr").analyse_instance(outcome.instance_id)
    assert right.model_id.startswith("brain_mri-")
    assert "image_unlike_declared" not in right.reasons
    assert len(vault.results_of_instance(outcome.instance_id, actor="dr")) == 2  # both kept
    [entry] = vault.audit.query(action="study.relabel")
    assert (entry.actor, entry.outcome) == ("admin", "ok")
    assert entry.details == {"from": ["DX", "CHEST"], "to": ["MR", "BRAIN"]}


def test_a_relabel_to_no_defined_term_or_of_a_shredded_study_is_refused_and_audited(
        vault: Vault) -> None:
    outcome = Ingestor(vault, actor="tech").ingest_file(BRAIN, modality="DX", body_part="CHEST")
    study = outcome.study_id
    with pytest.raises(InvalidRequest):
        relabel_study(vault, study, modality="MR", body_part="Doe^Jane", actor="admin")
    with pytest.raises(InvalidRequest):
        relabel_study(vault, study, modality="", body_part="BRAIN", actor="admin")
    with pytest.raises(ObjectNotFound):
        relabel_study(vault, "2.25.1", modality="MR", body_part="BRAIN", actor="admin")
    shred_study(vault, study, actor="admin")
    with pytest.raises(ObjectShredded, match="shredded"):
        relabel_study(vault, study, modality="MR", body_part="BRAIN", actor="admin")
    refused = vault.audit.query(action="study.relabel")
    assert [e.outcome for e in refused] == ["refused"] * 4
    unknown = next(e for e in refused if e.details["error"] == "ObjectNotFound")
    assert not unknown.object_ids and unknown.details["study_hmac"]  # typed: digest only
    assert "Doe" not in repr([e.to_dict() for e in refused])
    record = vault.catalog.get_study(study)
    assert (record.modality, record.body_part) == ("DX", "CHEST")


def test_a_relabel_whose_audit_entry_cannot_be_written_changes_nothing(
        vault: Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    from radvault.errors import AuditChainError
    from radvault.vault.audit import AuditAppender

    outcome = Ingestor(vault, actor="tech").ingest_file(BRAIN, modality="DX", body_part="CHEST")

    def broken(*args: object, **kwargs: object) -> None:
        raise AuditChainError("the audit trail cannot be written")

    monkeypatch.setattr(AuditAppender, "append", broken)
    with pytest.raises(AuditChainError):
        relabel_study(vault, outcome.study_id, modality="MR", body_part="BRAIN",
                      actor="admin")
    monkeypatch.undo()
    record = vault.catalog.get_study(outcome.study_id)
    assert (record.modality, record.body_part) == ("DX", "CHEST")  # rolled back with it
    assert verify_vault(vault).ok

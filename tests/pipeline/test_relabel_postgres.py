"""A relabel racing an ingest into the same study on PostgreSQL: every object row ends up
signed over the study's final modality and body part."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pydicom

from radvault.pipeline.ingest import Ingestor
from radvault.pipeline.maintenance import verify_vault
from radvault.vault import _catalog_writer
from radvault.vault.vault import Vault


def test_a_relabel_during_an_ingest_into_its_study_waits_and_signs_the_new_rows_too(
        kit: Any, tmp_path: Path, pg_schema_url: str, monkeypatch: Any) -> None:
    settings = kit.new_settings(tmp_path / "home", catalog_url=pg_schema_url)
    kit.init_vault(settings).close()
    ingesting, relabelling = (Vault.open(settings, kit.PASSPHRASE) for _ in range(2))
    try:
        ct = kit.ct_small()
        study = Ingestor(ingesting, actor="tech").ingest_file(ct).study_id
        ds = pydicom.dcmread(ct)  # a second image of the same study
        ds.SOPInstanceUID += ".9"
        ds.SeriesInstanceUID += ".9"
        second = tmp_path / "second.dcm"
        ds.save_as(second)
        relabel = threading.Thread(target=lambda: relabelling.catalog.relabel_study(
            study, modality="MR", body_part="BRAIN", signer=relabelling.signer))
        original = _catalog_writer._Known.study_for

        def study_for(self: Any, instance: Any) -> Any:
            binding = original(self, instance)  # the study's values are read (and held)
            if not relabel.is_alive() and not relabel.ident:
                relabel.start()  # the relabel now runs while this batch is open
                time.sleep(0.5)
            return binding

        monkeypatch.setattr(_catalog_writer._Known, "study_for", study_for)
        out = Ingestor(ingesting, actor="tech").ingest_file(second)
        relabel.join(timeout=30)
        assert not relabel.is_alive()
        assert out.status == "stored" and out.study_id == study
        record = relabelling.catalog.get_study(study)
        assert (record.modality, record.body_part) == ("MR", "BRAIN")
        report = verify_vault(relabelling)
        assert report.ok, report.problems
    finally:
        ingesting.close()
        relabelling.close()

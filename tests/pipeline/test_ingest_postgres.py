"""The scale-out path: two ingest services share one PostgreSQL catalog.

Both ingest the same files at once, in batches; every file must end up
stored exactly once, the rest reported as duplicates, and the vault must
verify clean (catalog rows, signatures, blobs, audit chain).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from radvault.pipeline.ingest import Ingestor, IngestOutcome
from radvault.pipeline.maintenance import verify_vault
from radvault.vault.vault import Vault


def test_two_ingest_services_on_one_postgres_catalog_store_each_file_once(
        kit: Any, tmp_path: Path, pg_schema_url: str, run_at_once) -> None:
    settings = kit.new_settings(tmp_path / "home", catalog_url=pg_schema_url)
    kit.init_vault(settings).close()
    files = [kit.make_raster(tmp_path / "in" / f"{i}.png", seed=700 + i) for i in range(40)]
    files += [kit.ct_small()]
    vaults = [Vault.open(settings, kit.PASSPHRASE) for _ in range(2)]
    ingestors = [Ingestor(vault, actor=f"service{n}") for n, vault in enumerate(vaults)]
    outcomes: list[list[IngestOutcome]] = [[], []]

    def service(n: int) -> None:
        order = files if n == 0 else list(reversed(files))  # meet in the middle
        outcomes[n] = ingestors[n].ingest_paths(order, modality="MR")

    errors = run_at_once(2, service)
    try:
        assert errors == []
        by_file: dict[str, list[str]] = {}
        for result in outcomes:
            assert len(result) == len(files)
            for outcome in result:
                by_file.setdefault(outcome.name, []).append(outcome.status)
        assert all(sorted(s) == ["duplicate", "stored"] for s in by_file.values()), by_file
        stored = {o.instance_id for result in outcomes for o in result if o.status == "stored"}
        assert len(stored) == len(files)  # each file stored by exactly one service
        report = verify_vault(vaults[0])
        assert report.ok, report
        assert report.objects_checked == 2 * len(files)
    finally:
        for vault in vaults:
            vault.close()

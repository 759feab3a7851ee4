"""Exported (decrypted) files are the owner's alone, from the first byte written to the last."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from radvault.pipeline.ingest import Ingestor
from radvault.pipeline.retrieve import export_study
from radvault.vault.vault import Vault

if TYPE_CHECKING:
    from conftest import Kit


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that lets everyone read new files, as many login shells set."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("open_umask")
def test_exported_files_and_their_temporary_files_are_mode_0600(
    kit: Kit, vault: Vault, ingestor: Ingestor, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    instances = [kit.stored(ingestor.ingest_file(kit.ct_small())),
                 kit.stored(ingestor.ingest_file(kit.make_raster(tmp_path / "a.png", 5),
                                                 modality="DX"))]
    out = tmp_path / "exported" / "study"
    renamed: list[tuple[str, int]] = []
    replace = os.replace

    def watching_replace(src: str | Path, dst: str | Path) -> None:
        renamed.append((Path(src).name, _mode(Path(src))))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", watching_replace)
    for iid in instances:
        study = vault.catalog.get_instance(iid).study_id
        files = export_study(vault, study, out, actor=kit.ACTOR)

        assert [f.instance_id for f in files] == [iid]
        assert _mode(files[0].path) == 0o600
    assert len(renamed) == 2 and all(mode == 0o600 for _, mode in renamed), renamed
    assert _mode(out) == 0o700
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{iid}{suffix}" for iid, suffix in zip(instances, (".dcm", ".png"), strict=True))


@pytest.mark.usefixtures("open_umask")
def test_exporting_over_a_readable_file_leaves_a_private_one(
    kit: Kit, vault: Vault, ingestor: Ingestor, tmp_path: Path,
) -> None:
    iid = kit.stored(ingestor.ingest_file(kit.ct_small()))
    study = vault.catalog.get_instance(iid).study_id
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f"{iid}.dcm"
    stale.write_bytes(b"old")
    stale.chmod(0o644)

    (exported,) = export_study(vault, study, out, actor=kit.ACTOR)

    assert exported.path == stale and _mode(stale) == 0o600
    assert stale.read_bytes() != b"old"

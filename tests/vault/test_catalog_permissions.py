"""The embedded catalog is readable by the vault's owner only, like its key file."""

import stat
from pathlib import Path

from radvault.config import load_settings
from radvault.vault.catalog import Catalog
from radvault.vault.keys import KdfParams
from radvault.vault.vault import Vault


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_vault_s_catalog_and_its_wal_are_owner_only(tmp_path: Path) -> None:
    vault = Vault.init(load_settings(env={}, home=tmp_path / "home"), "catalog mode passphrase",
                       kdf=KdfParams.fast())
    try:
        home = tmp_path / "home"
        files = [home / "catalog.sqlite3", home / "catalog.sqlite3-wal"]
        assert all(f.exists() for f in files)
        assert [_mode(f) for f in files] == [0o600, 0o600]
    finally:
        vault.close()


def test_an_older_world_readable_catalog_is_tightened(tmp_path: Path) -> None:
    db = tmp_path / "catalog.sqlite3"
    db.touch(mode=0o644)
    db.chmod(0o644)
    Catalog.create(f"sqlite:///{db}").close()
    assert _mode(db) == 0o600

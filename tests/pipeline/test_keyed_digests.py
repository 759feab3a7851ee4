"""Keyed content digests: the catalog alone cannot confirm that a known file is in the vault.

The catalog is plaintext. What it records of each image (``source_sha256``,
``pixel_sha256``) is HMAC-SHA256 under keys derived from the vault's secrets,
not the plain SHA-256 that anyone holding the original file could compute.
Catalogs written before keep their plain values, which must still verify and
still catch a re-sent file as a duplicate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from radvault.config import Settings
from radvault.errors import IntegrityError, VaultLocked
from radvault.imaging.reading import read_image
from radvault.pipeline.ingest import Ingestor
from radvault.pipeline.maintenance import verify_vault
from radvault.pipeline.retrieve import open_image, open_model_input
from radvault.vault.catalog import object_record_message
from radvault.vault.vault import Vault

if TYPE_CHECKING:
    from conftest import Kit

ACTOR = "tester"


def _inputs(kit: Kit, folder: Path) -> dict[str, Path]:
    return {"dicom": kit.ct_small(), "png": kit.make_raster(folder / "a.png", seed=31)}


def _plain_pixels(path: Path) -> str:
    return read_image(path).pixel_sha256()


@pytest.fixture
def open_vault(kit: Kit, settings: Settings) -> Iterator[Callable[[], Vault]]:
    """Unlock the test's vault again (after it was edited on disk); closed at teardown."""
    opened: list[Vault] = []

    def _open() -> Vault:
        opened.append(Vault.open(settings, kit.PASSPHRASE))
        return opened[-1]

    yield _open
    for v in opened:
        v.close()


def _rewrite_digests(kit: Kit, vault: Vault, instance_id: str, *, source: str,
                     pixels: str) -> None:
    """Store these digests in the instance's row and sign its objects' rows over them.

    As an earlier RadVault (or a faulty writer) would have left them: the rows
    are validly signed by the vault's own key, so only the values differ.
    """
    home = vault.paths.home
    kit.sql(home, "UPDATE instances SET source_sha256 = ?, pixel_sha256 = ? "
                  "WHERE instance_id = ?", (source, pixels, instance_id))
    for obj in vault.catalog.objects_of_instance(instance_id):
        kit.sql(home, "UPDATE objects SET record_signature = ? WHERE object_id = ?",
                (vault.signer.sign(object_record_message(obj)), obj.object_id))


@pytest.mark.parametrize("kind", ["dicom", "png"])
def test_the_catalog_does_not_hold_the_plain_sha256_of_the_file_or_its_pixels(
    kit: Kit, vault: Vault, ingestor: Ingestor, tmp_path: Path, kind: str
) -> None:
    path = _inputs(kit, tmp_path / "in")[kind]
    data = path.read_bytes()
    iid = kit.stored(ingestor.ingest_file(path))

    row = vault.catalog.get_instance(iid)
    plain_source, plain_pixels = hashlib.sha256(data).hexdigest(), _plain_pixels(path)
    assert row.source_sha256 == vault.source_digest(data) != plain_source
    assert row.pixel_sha256 == vault.pixel_digest(read_image(path).pixel_message()) != plain_pixels
    assert len(row.source_sha256) == len(row.pixel_sha256) == 64
    # Nothing in the vault's home (catalog, its WAL, audit trail) names either plain value.
    for stored_file in (p for p in vault.paths.home.rglob("*") if p.is_file()):
        content = stored_file.read_bytes()
        assert plain_source.encode() not in content, stored_file
        assert plain_pixels.encode() not in content, stored_file


def test_the_same_file_gets_unrelated_digests_in_two_vaults(kit: Kit, tmp_path: Path) -> None:
    png = kit.make_raster(tmp_path / "in" / "a.png", seed=32)
    rows = []
    for name in ("first", "second"):
        with kit.init_vault(kit.new_settings(tmp_path / name)) as v:
            iid = kit.stored(Ingestor(v, actor=ACTOR).ingest_file(png))
            rows.append(v.catalog.get_instance(iid))

    first, second = rows
    assert first.source_sha256 != second.source_sha256
    assert first.pixel_sha256 != second.pixel_sha256


def test_the_same_file_ingested_twice_is_a_duplicate(
    kit: Kit, vault: Vault, ingestor: Ingestor, tmp_path: Path
) -> None:
    png = kit.make_raster(tmp_path / "in" / "a.png", seed=33)
    first = ingestor.ingest_file(png)

    again = ingestor.ingest_bytes(png.read_bytes(), "renamed.png")

    assert again.status == "duplicate"
    assert again.instance_id == kit.stored(first)
    assert vault.find_instance_by_source(png.read_bytes()) == vault.catalog.get_instance(
        again.instance_id)
    assert kit.count_rows(vault.paths.home, "instances") == 1


@pytest.mark.parametrize("kind", ["dicom", "png"])
def test_a_row_written_with_plain_sha256_still_reads_verifies_and_catches_a_resent_file(
    kit: Kit, vault: Vault, ingestor: Ingestor, tmp_path: Path,
    open_vault: Callable[[], Vault], kind: str,
) -> None:
    path = _inputs(kit, tmp_path / "in")[kind]
    data = path.read_bytes()
    iid = kit.stored(ingestor.ingest_file(path))
    plain_source = hashlib.sha256(data).hexdigest()
    _rewrite_digests(kit, vault, iid, source=plain_source, pixels=_plain_pixels(path))
    vault.close()
    legacy = open_vault()

    assert legacy.catalog.get_instance(iid).source_sha256 == plain_source
    open_image(legacy, iid, actor=ACTOR)
    open_model_input(legacy, iid, actor=ACTOR)
    report = verify_vault(legacy, actor=ACTOR)
    assert report.ok, report.problems
    assert legacy.find_instance_by_source(data) == legacy.catalog.get_instance(iid)
    again = Ingestor(legacy, actor=ACTOR).ingest_bytes(data, "resent")
    assert (again.status, again.instance_id) == ("duplicate", iid)
    assert kit.count_rows(legacy.paths.home, "instances") == 1


@pytest.mark.parametrize("recorded", ["keyed", "plain"])
def test_pixels_that_do_not_match_a_signed_digest_are_refused(
    kit: Kit, vault: Vault, ingestor: Ingestor, tmp_path: Path,
    open_vault: Callable[[], Vault], recorded: str,
) -> None:
    png = kit.make_raster(tmp_path / "in" / "a.png", seed=34)
    other = read_image(kit.make_raster(tmp_path / "in" / "b.png", seed=35))
    iid = kit.stored(ingestor.ingest_file(png))
    wrong = (vault.pixel_digest(other.pixel_message()) if recorded == "keyed"
             else other.pixel_sha256())
    _rewrite_digests(kit, vault, iid, source=vault.source_digest(png.read_bytes()),
                     pixels=wrong)
    vault.close()
    reopened = open_vault()

    with pytest.raises(IntegrityError, match="pixels do not match"):
        open_image(reopened, iid, actor=ACTOR)


def test_only_the_keyed_or_the_plain_digest_of_the_same_pixels_matches(
    kit: Kit, vault: Vault, tmp_path: Path
) -> None:
    message = read_image(kit.make_raster(tmp_path / "a.png", seed=36)).pixel_message()
    other = read_image(kit.make_raster(tmp_path / "b.png", seed=37)).pixel_message()
    plain = hashlib.sha256(b"".join(message)).hexdigest()

    assert vault.pixel_digest_matches(vault.pixel_digest(message), message)
    assert vault.pixel_digest_matches(plain, message)
    assert not vault.pixel_digest_matches(vault.pixel_digest(other), message)
    assert not vault.pixel_digest_matches(vault.source_digest(b"".join(message)), message)


def test_the_digest_keys_are_gone_once_the_vault_is_closed(kit: Kit, vault: Vault) -> None:
    vault.source_digest(b"warm")
    vault.pixel_digest([b"warm"])
    vault.close()

    with pytest.raises(VaultLocked):
        vault.source_digest(b"warm")
    with pytest.raises(VaultLocked):
        vault.pixel_digest([b"warm"])

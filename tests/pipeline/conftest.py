"""Shared fixtures of the pipeline tests: vaults with a fast KDF, real and synthetic images.

Every vault here is built with ``KdfParams.fast()`` (one pass over 64 KiB):
the key file's format and checks are the real ones, only the passphrase
stretching is cheap, so each test can unlock a vault in milliseconds.

Test modules reach the helpers through the ``kit`` fixture (conftest modules
are not importable by name when several test folders have one).
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image

from radvault.config import Settings, load_settings
from radvault.pipeline.ingest import Ingestor, IngestOutcome
from radvault.vault.keys import KdfParams
from radvault.vault.vault import Vault

DATA_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
DICOM_DIR = DATA_DIR / "dicom"
PASSPHRASE = "correct horse battery staple"
ACTOR = "tester"

#: A handful of real DICOM files across modalities and encodings (all decode, none burned-in).
DICOM_SAMPLES = (
    "nema_wg04/CT1_UNC.dcm",  # CT, explicit little endian
    "nema_wg04/MR3_UNC.dcm",  # MR
    "pydicom_data/693_J2KR.dcm",  # CT, JPEG 2000 lossless
    "pydicom_data/emri_small_RLE.dcm",  # MR, 10 frames, RLE
    "pydicom_data/liver.dcm",  # SEG, 3 frames
    "derived/emri_small_deflated.dcm",  # deflated transfer syntax
)


def ct_small() -> Path:
    """CT_small.dcm from the pydicom wheel (never ``get_testdata_file``: it may go online)."""
    return Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"


def require_dicom_dir() -> Path:
    """The shared DICOM corpus, or skip the test with the reason."""
    if not (DICOM_DIR / "README.md").is_file():
        pytest.skip(f"shared DICOM corpus not found at {DICOM_DIR}")
    return DICOM_DIR


def make_raster(path: Path, seed: int, *, shape: tuple[int, int] = (72, 96)) -> Path:
    """Write a small synthetic grey image (PNG or JPEG, by suffix) that is unique per seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    base = (xx * 255 // shape[1] + yy * 3) % 256
    noise = rng.integers(0, 40, size=shape)
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        Image.fromarray(pixels).save(path, quality=95)
    else:
        Image.fromarray(pixels).save(path)
    return path


def new_settings(home: Path, **overrides: Any) -> Settings:
    """Settings for a vault in ``home``, ignoring the caller's environment."""
    return load_settings(env={}, home=home, **overrides)


def init_vault(settings: Settings) -> Vault:
    """A new vault with the real key file format and a fast KDF."""
    return Vault.init(settings, PASSPHRASE, kdf=KdfParams.fast())


def file_digests(home: Path) -> dict[str, str]:
    """sha-256 of every file under ``home``, by relative path."""
    return {
        str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(home.rglob("*"))
        if p.is_file()
    }


def blob_files(home: Path) -> list[Path]:
    """Every complete blob file in the local blob store (temp files excluded)."""
    return sorted(p for p in (home / "blobs").rglob("*") if p.is_file()
                  and not p.name.startswith("."))


def blob_path(home: Path, blob_key: str) -> Path:
    """Where the local blob store keeps ``blob_key``."""
    return home / "blobs" / blob_key[:2] / blob_key


def sql(home: Path, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one SQL statement straight on the catalog file, as an attacker with file access would."""
    con = sqlite3.connect(home / "catalog.sqlite3")
    try:
        rows = con.execute(statement, params).fetchall()
        con.commit()
        return rows
    finally:
        con.close()


def count_rows(home: Path, table: str) -> int:
    """Rows in one catalog table."""
    return int(sql(home, f"SELECT count(*) FROM {table}")[0][0])


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings for a fresh vault home under ``tmp_path``."""
    return new_settings(tmp_path / "home")


@pytest.fixture
def vault(settings: Settings) -> Iterator[Vault]:
    """A new, unlocked, empty vault (closed after the test)."""
    v = init_vault(settings)
    try:
        yield v
    finally:
        v.close()


@pytest.fixture
def ingestor(vault: Vault) -> Ingestor:
    """An ingestor on the test vault."""
    return Ingestor(vault, actor=ACTOR)


def stored(outcome: IngestOutcome) -> str:
    """The instance id of a stored outcome (fails the test with the reason otherwise)."""
    assert outcome.status == "stored", f"{outcome.name}: {outcome.status} {outcome.reason}"
    assert outcome.instance_id is not None
    return outcome.instance_id


@pytest.fixture(scope="session")
def template_home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A closed vault holding three images (a DICOM, a PNG, a JPEG), built once per session.

    Tests copy it (:func:`copy_home`) and tamper with their copy.
    """
    root = tmp_path_factory.mktemp("template")
    home = root / "home"
    settings = new_settings(home)
    with init_vault(settings) as v:
        ing = Ingestor(v, actor=ACTOR)
        ids = {
            "dicom": stored(ing.ingest_file(ct_small())),
            "png": stored(ing.ingest_file(make_raster(root / "in" / "a.png", 1), modality="MR")),
            "jpeg": stored(ing.ingest_file(make_raster(root / "in" / "b.jpg", 2),
                                           modality="DX")),
        }
        objects = {name: {o.kind: o for o in v.catalog.objects_of_instance(iid)}
                   for name, iid in ids.items()}
        studies = {name: v.catalog.get_instance(iid).study_id for name, iid in ids.items()}
    return {"home": home, "ids": ids, "objects": objects, "studies": studies}


def copy_home(template: dict[str, Any], dest: Path) -> Path:
    """A private copy of the template vault's home."""
    target = dest / "home"
    shutil.copytree(template["home"], target)
    return target


class Kit:
    """The helpers above, handed to tests by the ``kit`` fixture."""

    PASSPHRASE = PASSPHRASE
    ACTOR = ACTOR
    DATA_DIR = DATA_DIR
    DICOM_DIR = DICOM_DIR
    DICOM_SAMPLES = DICOM_SAMPLES
    ct_small = staticmethod(ct_small)
    require_dicom_dir = staticmethod(require_dicom_dir)
    make_raster = staticmethod(make_raster)
    new_settings = staticmethod(new_settings)
    init_vault = staticmethod(init_vault)
    file_digests = staticmethod(file_digests)
    blob_files = staticmethod(blob_files)
    blob_path = staticmethod(blob_path)
    sql = staticmethod(sql)
    count_rows = staticmethod(count_rows)
    stored = staticmethod(stored)
    copy_home = staticmethod(copy_home)


@pytest.fixture(scope="session")
def kit() -> type[Kit]:
    """Helpers for building, inspecting and tampering with vaults."""
    return Kit

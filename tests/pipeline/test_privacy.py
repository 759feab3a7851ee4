"""Nothing identifying and no plaintext pixel reaches the disk: a byte-level search of the vault.

The shared DICOM corpus (minus ``broken/``) is copied with known PHI planted
in every file, ingested (burned-in images accepted, so that every file goes
in), and then every byte under RADVAULT_HOME (blobs, catalog database and its
WAL, audit file, key file, public key) is searched for

* each planted value, in ASCII/UTF-8 and in UTF-16 (both byte orders), and
  each file's original UIDs;
* 64-byte runs of plaintext pixels: of the PixelData as stored in each input
  file, of the decoded pixels and of the preprocessed float32 model input.

There must be no hit at all. The same search over the inputs (plus the model
inputs saved in the clear) finds every needle, which shows the search works.
The log records of the ingest, captured at DEBUG, must not carry PHI either.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom
import pytest

from radvault.imaging.preprocess import Preprocessor
from radvault.imaging.reading import read_image
from radvault.pipeline.ingest import Ingestor
from radvault.pipeline.retrieve import open_model_input

if TYPE_CHECKING:
    from conftest import Kit

WINDOW = 64
GRAM = 8  # any occurrence of a needle of 15+ bytes covers one 8-aligned 8-byte gram of it
SERIES_STEP = 8  # of the 96-slice MR series, every 8th slice (the rest are alike)

#: Planted values: long, odd and unique, so a hit can only be a leak.
PHI = {
    "PatientName": "QZVX^Marguerite^Planted",
    "PatientID": "QZVX-PID-4471",
    "PatientBirthDate": "19230611",
    "OtherPatientIDs": "QZVX-OTHER-9931",
    "PatientAddress": "17 Qzvx Lane, Springfield",
    "PatientTelephoneNumbers": "+15550199427",
    "AccessionNumber": "QZVXACC88213",
    "InstitutionName": "Qzvx Memorial Hospital",
    "InstitutionAddress": "3 Qzvx Road, Shelbyville",
    "ReferringPhysicianName": "QZVX^Referrer^Doctor",
    "PerformingPhysicianName": "QZVX^Performer",
    "OperatorsName": "QZVX^Operator",
    "StudyID": "QZVXSTUDY7",
    "StationName": "QZVXSTATION",
}


def _encodings(value: str) -> list[bytes]:
    return [value.encode("utf-8"), value.encode("utf-16-le"), value.encode("utf-16-be")]


def _varied(data: bytes) -> bool:
    """A run worth searching for: enough distinct bytes that it cannot match by chance."""
    return len(set(data)) >= 24


def _windows(data: bytes, count: int = 4) -> Iterator[bytes]:
    """Up to ``count`` varied 64-byte runs spread over ``data``."""
    if len(data) < WINDOW:
        return
    found = 0
    for start in np.linspace(0, len(data) - WINDOW, count + 2)[1:-1].astype(int):
        for pos in range(int(start), len(data) - WINDOW, 97):
            run = data[pos:pos + WINDOW]
            if _varied(run):
                yield run
                found += 1
                break
            if pos - start > 200_000:
                break
    if found == 0:
        return


@dataclass
class Needles:
    """What must never be found: text values and pixel runs, each with where it came from."""

    text: dict[bytes, str] = field(default_factory=dict)
    runs: dict[bytes, str] = field(default_factory=dict)

    def add_text(self, value: str, label: str) -> None:
        for raw in _encodings(value):
            self.text[raw] = label

    def add_runs(self, runs: Iterable[bytes], label: str) -> None:
        for run in runs:
            self.runs[run] = label


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def search(root: Path, needles: Needles) -> list[str]:
    """Every (needle, file) hit under ``root``.

    Needles of 15 bytes or more are looked up through the haystack's 8-aligned
    8-byte grams (an occurrence at any offset covers one of them, at one of
    eight offsets into the needle); candidates are confirmed with a plain
    search. Shorter needles are searched for directly.
    """
    labels = {**needles.text, **needles.runs}
    long = [n for n in labels if len(n) >= 2 * GRAM - 1]
    short = [n for n in labels if len(n) < 2 * GRAM - 1]
    grams = np.array([[int.from_bytes(n[o:o + GRAM], "little") for o in range(GRAM)]
                      for n in long], dtype=np.uint64).ravel()
    order = np.argsort(grams, kind="stable")
    sorted_grams, owner = grams[order], order // GRAM
    hits: list[str] = []
    for path in _files(root):
        data = path.read_bytes()
        where = str(path.relative_to(root))
        hits += [f"{labels[n]} in {where}" for n in short if n in data]
        usable = len(data) - len(data) % GRAM
        if not long or usable == 0:
            continue
        aligned = np.frombuffer(data[:usable], dtype="<u8")
        at = np.minimum(np.searchsorted(sorted_grams, aligned), len(sorted_grams) - 1)
        matched = np.unique(aligned[sorted_grams[at] == aligned])
        for i in np.unique(owner[np.isin(sorted_grams, matched)]):
            if long[i] in data:
                hits.append(f"{labels[long[i]]} in {where}")
    return hits


def _plant(source: Path, target: Path) -> tuple[dict[str, str], bytes]:
    """Copy ``source`` to ``target`` with PHI planted; return its UIDs and stored PixelData."""
    with warnings.catch_warnings():  # the originals break a few VR rules; we only copy them
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(source, force=True)  # two JPEG-LS files have no preamble
        for keyword, value in PHI.items():
            setattr(ds, keyword, value)
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(target)
        uids = {k: str(ds[k].value) for k in ("SOPInstanceUID", "StudyInstanceUID",
                                               "SeriesInstanceUID") if k in ds}
        pixels = next(ds[k].value for k in ("PixelData", "FloatPixelData",
                                             "DoubleFloatPixelData") if k in ds)
        return uids, bytes(pixels)


@pytest.fixture(scope="module")
def planted(kit: Kit, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Copies of the corpus (minus broken/) with PHI planted, and the needles to look for."""
    corpus = kit.require_dicom_dir()
    root = tmp_path_factory.mktemp("privacy")
    inputs = root / "inputs"
    clear = root / "clear"  # the same bytes a leak would write, for the positive control
    clear.mkdir()
    needles = Needles()
    for keyword, value in PHI.items():
        needles.add_text(value, keyword)
    preprocess = Preprocessor()
    series = sorted((corpus / "studyforrest_mr_t1").glob("*.dcm"))
    sources = [p for p in sorted(corpus.rglob("*.dcm"))
               if "broken" not in p.parts and (p not in series or p in series[::SERIES_STEP])]
    for source in sources:
        rel = source.relative_to(corpus)
        target = inputs / rel
        uids, pixel_data = _plant(source, target)
        label = str(rel)
        for keyword, uid in uids.items():
            needles.add_text(uid, f"original {keyword} of {label}")
        needles.add_runs(_windows(pixel_data, 2), f"stored PixelData of {label}")
        record = read_image(target)
        needles.add_runs(_windows(record.pixels.tobytes(), 2), f"decoded pixels of {label}")
        model_input = preprocess(record)
        needles.add_runs(_windows(model_input.tobytes(), 2), f"model input of {label}")
        np.savez(clear / f"{rel.stem}.npz", pixels=record.pixels, model_input=model_input)
    return {"inputs": inputs, "clear": clear, "needles": needles, "count": len(sources)}


def test_the_search_finds_every_needle_in_the_clear(planted: dict[str, object]) -> None:
    needles = planted["needles"]
    assert isinstance(needles, Needles)
    assert len(needles.runs) >= 3 * int(planted["count"])  # type: ignore[call-overload]
    found_in_inputs = search(planted["inputs"], needles)  # type: ignore[arg-type]
    found_in_clear = search(planted["clear"], needles)  # type: ignore[arg-type]
    found = {hit.split(" in ")[0] for hit in found_in_inputs + found_in_clear}
    ascii_labels = {needles.text[v.encode()] for v in PHI.values()}
    assert ascii_labels <= found
    assert set(needles.runs.values()) <= found


def test_no_phi_and_no_plaintext_pixels_anywhere_under_the_vault_home(
    kit: Kit, planted: dict[str, object], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = kit.new_settings(tmp_path / "home", accept_burned_in=True)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="radvault")
    caplog.set_level(logging.DEBUG, logger="pydicom")
    inputs = planted["inputs"]
    assert isinstance(inputs, Path)
    with kit.init_vault(settings) as vault:
        outcomes = Ingestor(vault, actor="tester").ingest_paths(_files(inputs))
        refused = [(o.name, o.reason) for o in outcomes if o.status == "refused"]
        assert not refused
        stored = [o for o in outcomes if o.status == "stored"]
        # the same instance in several transfer syntaxes goes in once
        assert len(stored) >= int(planted["count"]) - 8  # type: ignore[call-overload]
        # reading back decrypts in memory only: it must not leave anything behind either
        for outcome in stored[:5]:
            assert outcome.instance_id is not None
            open_model_input(vault, outcome.instance_id, actor="tester")
        wal = settings.home / "catalog.sqlite3-wal"
        assert wal.exists() and wal.stat().st_size > 0  # searched while it holds data

        needles = planted["needles"]
        assert isinstance(needles, Needles)
        hits = search(settings.home, needles)
        assert hits == []

    names = {p.name for p in settings.home.rglob("*") if p.is_file()}
    assert {"keys.json", "vault.pub", "catalog.sqlite3", "audit.log"} <= names
    assert search(settings.home, needles) == []  # after close (WAL checkpointed) as well

    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert caplog.records, "nothing was logged at DEBUG: the capture is not working"
    for keyword, value in PHI.items():
        assert value not in logged, f"{keyword} appears in the logs"
        for part in value.split("^"):
            if len(part) >= 6:
                assert part not in logged, f"part of {keyword} appears in the logs"

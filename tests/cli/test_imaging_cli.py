"""`radvault deid`, `radvault preprocess` and `radvault demo` as a user runs them."""

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from radvault.cli import main

DICOM_CORPUS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "dicom"
WHEEL_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
SECRET = "a-test-secret-that-is-long-enough-0123456789"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RADVAULT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RADVAULT_DEID_SECRET", raising=False)
    monkeypatch.delenv("RADVAULT_PASSPHRASE", raising=False)


def test_deid_writes_files_named_by_new_uid_and_a_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RADVAULT_DEID_SECRET", SECRET)
    out = tmp_path / "out"
    code = main(["deid", str(WHEEL_FILES / "CT_small.dcm"), str(WHEEL_FILES / "MR_small.dcm"),
                 "--out", str(out)])
    assert code == 0
    files = sorted(out.glob("*.dcm"))
    assert len(files) == 2
    for f in files:
        ds = pydicom.dcmread(f)
        assert f.name == f"{ds.SOPInstanceUID}.dcm"
        assert ds.PatientIdentityRemoved == "YES"
        assert str(ds.PatientName).startswith("RV-")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"written": 2, "failed": 0, "duplicates": 0}
    assert "CT_small" not in (out / "summary.json").read_text()


def test_deid_without_a_secret_fails_with_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["deid", str(WHEEL_FILES / "CT_small.dcm"), "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "RADVAULT_DEID_SECRET" in err
    assert "Traceback" not in err


def test_deid_reports_bad_and_refused_files_and_writes_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RADVAULT_DEID_SECRET", SECRET)
    bad = tmp_path / "scan.dcm"
    bad.write_text("not a dicom file at all")
    out = tmp_path / "out"
    code = main(["deid", str(bad), str(WHEEL_FILES / "SC_rgb_jpeg_dcmtk.dcm"),
                 str(WHEEL_FILES / "CT_small.dcm"), "--out", str(out)])
    assert code == 1
    summary = json.loads((out / "summary.json").read_text())
    errors = {f["error"] for f in summary["failed"]}
    assert errors == {"NotAnImage", "BurnedInAnnotationRefused"}
    assert len(list(out.glob("*.dcm"))) == 1


@pytest.mark.skipif(not DICOM_CORPUS.is_dir(), reason="../shared/data/dicom is not present")
def test_deid_over_the_whole_corpus_refuses_only_broken_burned_in_and_non_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RADVAULT_DEID_SECRET", SECRET)
    out = tmp_path / "out"
    main(["deid", str(DICOM_CORPUS), "--out", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    allowed = {"BurnedInAnnotationRefused", "NotAnImage", "CorruptImage",
               "UnsupportedTransferSyntax"}
    assert {f["error"] for f in summary["failed"]} <= allowed
    broken = {Path(f["path"]).name for f in summary["failed"] if "/broken/" in f["path"]}
    assert broken == {p.name for p in (DICOM_CORPUS / "broken").iterdir()}
    assert summary["counts"]["written"] >= 100
    assert len(list(out.glob("*.dcm"))) == summary["counts"]["written"]


def test_preprocess_writes_square_rgb_pngs_of_the_requested_size(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray((np.arange(40 * 60) % 251).astype(np.uint8).reshape(40, 60)).save(
        src / "patient-name.png")
    out = tmp_path / "out"
    code = main(["preprocess", str(src), str(WHEEL_FILES / "CT_small.dcm"), "--out", str(out),
                 "--size", "64", "--no-denoise"])
    assert code == 0
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 2
    assert all("patient" not in p.name for p in pngs)
    for p in pngs:
        with Image.open(p) as im:
            assert im.size == (64, 64)
            assert im.mode == "RGB"


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("deid", "preprocess", "init", "ingest", "verify", "audit", "keys",
                    "delete", "demo"):
        assert command in out

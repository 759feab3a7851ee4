"""`radvault deid`, `radvault preprocess` and `radvault demo` as a user runs them."""

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from radvault.cli import main
from radvault.cli._common import iter_input_files

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


def test_deid_summary_numbers_inputs_and_never_names_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # summary.json sits beside the de-identified files; input paths often hold a
    # patient's name. It numbers inputs; the operator's console matches numbers to paths.
    monkeypatch.setenv("RADVAULT_DEID_SECRET", SECRET)
    monkeypatch.chdir(tmp_path)
    bad = Path("bad") / "Truncatello_Basilisa_MRN11122233.dcm"
    bad.parent.mkdir()
    bad.write_bytes((WHEEL_FILES / "CT_small.dcm").read_bytes()[:-3000])
    ct = WHEEL_FILES / "CT_small.dcm"
    code = main(["deid", str(bad), str(ct), str(ct), "--out", "out"])
    assert code == 1
    text = (tmp_path / "out" / "summary.json").read_text()
    for secret in ("Truncatello", "Basilisa", "MRN11122233", "bad", "CT_small", "test_files"):
        assert secret not in text
    summary = json.loads(text)
    assert [(f["ordinal"], f["error"]) for f in summary["failed"]] == [(1, "CorruptImage")]
    assert summary["duplicates"] == [3]
    assert summary["counts"] == {"written": 1, "failed": 1, "duplicates": 1}
    err = capsys.readouterr().err
    assert f"#1 {bad}: CorruptImage: truncated" in err
    assert f"#3 {ct}" in err


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
    files = list(iter_input_files([DICOM_CORPUS]))  # what the run processed, in its order
    failed = [files[f["ordinal"] - 1] for f in summary["failed"]]
    broken = {p.name for p in failed if p.parent.name == "broken"}
    assert broken == {p.name for p in (DICOM_CORPUS / "broken").iterdir()}
    assert summary["counts"]["written"] >= 100
    assert len(list(out.glob("*.dcm"))) == summary["counts"]["written"]


def test_preprocess_summary_numbers_inputs_and_never_names_them(tmp_path: Path) -> None:
    bad = tmp_path / "Truncatello_Basilisa_MRN11122233.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    out = tmp_path / "out"
    code = main(["preprocess", str(WHEEL_FILES / "CT_small.dcm"), str(bad), "--out", str(out),
                 "--size", "32", "--no-denoise"])
    assert code == 1
    text = (out / "summary.json").read_text()
    assert "Truncatello" not in text and str(tmp_path) not in text
    assert [f["ordinal"] for f in json.loads(text)["failed"]] == [2]


def test_a_command_that_cannot_read_an_image_names_the_file_it_was_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Local output may name the path: the operator typed it. Only the message travels.
    bad = tmp_path / "Truncatello_Basilisa_MRN11122233.dcm"
    bad.write_bytes((WHEEL_FILES / "CT_small.dcm").read_bytes()[:-3000])
    assert main(["analyze", str(bad)]) == 7
    err = capsys.readouterr().err
    assert f"error: {bad}: truncated" in err
    assert "Traceback" not in err


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
    # named by run and ordinal: nothing of the input's name, nor a hash linking it to the
    # catalog; a second run into the same folder replaces nothing
    assert [p.name[-9:] for p in pngs] == ["-0001.png", "-0002.png"]
    assert main(["preprocess", str(src), "--out", str(out), "--size", "64", "--no-denoise"]) == 0
    assert len(list(out.glob("preview-*.png"))) == 3
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

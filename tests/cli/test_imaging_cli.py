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
                    "delete", "relabel", "demo"):
        assert command in out


# --- deid and preprocess take the vault's settings unless a flag says otherwise -------------

# (setting, flag that turns it on, flag that turns it off, built-in default)
DEID_OPTIONS = [
    ("retain_dates_shifted", "--retain-dates", "--no-retain-dates", False),
    ("retain_patient_characteristics", "--retain-patient-characteristics",
     "--no-retain-patient-characteristics", False),
    ("retain_device_identity", "--retain-device-identity", "--no-retain-device-identity", False),
    ("clean_descriptors", "--clean-descriptors", "--no-clean-descriptors", True),
    ("keep_private_tags", "--keep-private-tags", "--no-keep-private-tags", False),
    ("accept_burned_in", "--accept-burned-in", "--no-accept-burned-in", False),
]
# CID 7050 codes the output records for the options that have one
OPTION_CODES = {"retain_dates_shifted": "113107", "retain_patient_characteristics": "113108",
                "retain_device_identity": "113109", "clean_descriptors": "113105"}


def _deid_one(tmp_path: Path, setting: str, *flags: str) -> pydicom.Dataset | None:
    """De-identify the file that shows ``setting``; the output, or None if it was refused."""
    # SC_rgb_jpeg_dcmtk is refused for burned-in text unless accepted; CT_small has
    # private tags and records every coded option it was de-identified with.
    name = "SC_rgb_jpeg_dcmtk.dcm" if setting == "accept_burned_in" else "CT_small.dcm"
    out = tmp_path / f"out-{len(list(tmp_path.glob('out-*')))}"
    code = main(["deid", str(WHEEL_FILES / name), "--out", str(out), *flags])
    files = list(out.glob("*.dcm"))
    assert (code, len(files)) in {(0, 1), (1, 0)}
    return pydicom.dcmread(files[0]) if files else None


def _applied(setting: str, ds: pydicom.Dataset | None) -> bool:
    """Whether the de-identified output shows that ``setting`` was on."""
    if setting == "accept_burned_in":
        return ds is not None
    assert ds is not None
    if setting == "keep_private_tags":
        return any(element.tag.is_private for element in ds)
    codes = {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}
    return OPTION_CODES[setting] in codes


@pytest.mark.parametrize(("setting", "on", "off", "default"), DEID_OPTIONS)
def test_deid_without_flags_uses_the_built_in_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    setting: str, on: str, off: str, default: bool,
) -> None:
    monkeypatch.setenv("RADVAULT_DEID_SECRET", SECRET)
    assert _applied(setting, _deid_one(tmp_path, setting)) is default


@pytest.mark.parametrize("source", ["env", "toml"])
@pytest.mark.parametrize(("setting", "on", "off", "default"), DEID_OPTIONS)
def test_deid_takes_each_option_from_the_vault_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    setting: str, on: str, off: str, default: bool, source: str,
) -> None:
    # the same vault de-identifies the same way at ingest and in `radvault deid`
    monkeypatch.setenv("RADVAULT_DEID_SECRET", SECRET)
    value = not default
    if source == "env":
        monkeypatch.setenv(f"RADVAULT_{setting.upper()}", str(value).lower())
    else:
        home = tmp_path / "home"
        home.mkdir()
        (home / "radvault.toml").write_text(f"{setting} = {str(value).lower()}\n")
    assert _applied(setting, _deid_one(tmp_path, setting)) is value


@pytest.mark.parametrize(("setting", "on", "off", "default"), DEID_OPTIONS)
def test_deid_flags_override_the_vault_settings_both_ways(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    setting: str, on: str, off: str, default: bool,
) -> None:
    monkeypatch.setenv("RADVAULT_DEID_SECRET", SECRET)
    monkeypatch.setenv(f"RADVAULT_{setting.upper()}", "true")
    assert _applied(setting, _deid_one(tmp_path, setting, off)) is False
    monkeypatch.setenv(f"RADVAULT_{setting.upper()}", "false")
    assert _applied(setting, _deid_one(tmp_path, setting, on)) is True


@pytest.mark.skipif(not DICOM_CORPUS.is_dir(), reason="../shared/data/dicom is not present")
def test_deid_accepts_an_ultrasound_when_the_vault_accepts_burned_in_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RADVAULT_DEID_SECRET", SECRET)
    us = DICOM_CORPUS / "derived" / "US1_jpeg_baseline.dcm"
    assert main(["deid", str(us), "--out", str(tmp_path / "refused")]) == 1
    monkeypatch.setenv("RADVAULT_ACCEPT_BURNED_IN", "true")
    assert main(["deid", str(us), "--out", str(tmp_path / "accepted")]) == 0
    summary = json.loads((tmp_path / "accepted" / "summary.json").read_text())
    assert [f["burned_in_risk"] for f in summary["written"]] == [True]  # accepted, flagged


def _preprocess_one(tmp_path: Path, *flags: str) -> np.ndarray:
    out = tmp_path / f"out-{len(list(tmp_path.glob('out-*')))}"
    # MR_small: its VOI window clips, so every step changes the output
    assert main(["preprocess", str(WHEEL_FILES / "MR_small.dcm"), "--out", str(out),
                 *flags]) == 0
    [png] = out.glob("*.png")
    with Image.open(png) as im:
        return np.asarray(im)


@pytest.mark.parametrize("source", ["env", "toml"])
@pytest.mark.parametrize("step", ["window", "normalize", "enhance", "denoise"])
def test_preprocess_honours_a_setting_that_switches_a_step_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str, source: str
) -> None:
    with_step = _preprocess_one(tmp_path, "--size", "32", f"--{step}")
    without_step = _preprocess_one(tmp_path, "--size", "32", f"--no-{step}")
    assert not np.array_equal(with_step, without_step)
    if source == "env":
        monkeypatch.setenv(f"RADVAULT_PREPROCESS__{step.upper()}", "false")
    else:
        home = tmp_path / "home"
        home.mkdir()
        (home / "radvault.toml").write_text(f"[preprocess]\n{step} = false\n")
    # "as the model sees them": the vault's settings, not the flags' defaults
    assert np.array_equal(_preprocess_one(tmp_path, "--size", "32"), without_step)
    # an explicit flag still wins, both ways
    assert np.array_equal(_preprocess_one(tmp_path, "--size", "32", f"--{step}"), with_step)
    monkeypatch.setenv(f"RADVAULT_PREPROCESS__{step.upper()}", "true")
    assert np.array_equal(_preprocess_one(tmp_path, "--size", "32", f"--no-{step}"),
                          without_step)


def test_preprocess_takes_its_size_from_the_vault_settings_unless_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RADVAULT_PREPROCESS__SIZE", "48")
    assert _preprocess_one(tmp_path, "--no-denoise").shape == (48, 48, 3)
    assert _preprocess_one(tmp_path, "--no-denoise", "--size", "40").shape == (40, 40, 3)


def test_preprocess_refuses_a_size_out_of_range_instead_of_ignoring_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # --size 0 used to fall back silently to the default size
    code = main(["preprocess", str(WHEEL_FILES / "MR_small.dcm"), "--out", str(tmp_path / "o"),
                 "--size", "0"])
    assert code == 2
    assert "preprocess size must be within 8..4096, got 0" in capsys.readouterr().err

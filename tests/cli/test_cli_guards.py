"""The command line refuses what it cannot do in one clear line, before any slow work."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from radvault.cli import main
from radvault.config import load_settings
from radvault.vault.keys import KdfParams
from radvault.vault.vault import Vault

PASSPHRASE = "cli guards passphrase"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("RADVAULT_")]:
        monkeypatch.delenv(key)


@pytest.fixture
def home(tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    Vault.init(load_settings(env={}, home=home), PASSPHRASE, kdf=KdfParams.fast()).close()
    monkeypatch.setenv("RADVAULT_PASSPHRASE", PASSPHRASE)
    return home


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_without_a_vault_nobody_is_asked_for_a_passphrase(tmp_path: Path, clean_env: None,
                                                         capsys: pytest.CaptureFixture[str]):
    # No RADVAULT_PASSPHRASE and no terminal: before, this said "no passphrase".
    assert main(["--home", str(tmp_path / "none"), "ls"]) == 3
    line = _one_error_line(capsys.readouterr().err)
    assert "no vault in" in line and "radvault init" in line


@pytest.mark.parametrize("args", [["ls", "--limit", "-1"], ["ls", "--limit", "0"],
                                  ["audit", "tail", "-n", "0"], ["audit", "tail", "-n", "-5"]])
def test_counts_below_one_are_usage_errors_not_tracebacks(home: Path, args: list[str],
                                                          capsys: pytest.CaptureFixture[str]):
    assert main(["--home", str(home), *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Invalid value" in err


def test_analyze_names_a_folder_as_a_folder(tmp_path: Path, clean_env: None,
                                            capsys: pytest.CaptureFixture[str]):
    assert main(["analyze", str(tmp_path)]) == 2
    assert "is a folder: analyze takes one image file" in _one_error_line(capsys.readouterr().err)


def test_serve_on_a_port_in_use_is_one_error_and_no_banner(home: Path,
                                                           capsys: pytest.CaptureFixture[str]):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code = main(["--home", str(home), "serve", "--insecure-http", "--port", str(port)])
    out, err = capsys.readouterr()
    assert code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in _one_error_line(err)
    assert "RadVault API on" not in out


def test_debug_logging_shows_radvault_s_own_messages_without_library_chatter():
    import logging

    from radvault.cli._common import _own_debug_only

    def record(name: str, level: int) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, "message", None, None)

    assert _own_debug_only(record("radvault.pipeline.ingest", logging.DEBUG))
    assert not _own_debug_only(record("pylibjpeg.utils", logging.DEBUG))
    assert _own_debug_only(record("pylibjpeg.utils", logging.WARNING))


def test_ingest_of_folders_holding_no_file_says_so(home: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]):
    empty = tmp_path / "empty"
    (empty / ".hidden").mkdir(parents=True)
    assert main(["--home", str(home), "ingest", str(empty)]) == 6
    assert "no files to ingest" in _one_error_line(capsys.readouterr().err)


def test_the_same_passphrase_again_is_not_a_change(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]):
    monkeypatch.setenv("RADVAULT_NEW_PASSPHRASE", PASSPHRASE)
    assert main(["--home", str(home), "keys", "passphrase"]) == 2
    assert "the new passphrase is the current one" in _one_error_line(capsys.readouterr().err)


def test_init_says_what_to_do_next(tmp_path: Path, clean_env: None,
                                   monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]):
    monkeypatch.setenv("RADVAULT_PASSPHRASE", PASSPHRASE)
    assert main(["--home", str(tmp_path / "new"), "init"]) == 0
    out = capsys.readouterr().out
    assert "vault created in" in out and "radvault users add" in out


def test_an_unlabelled_picture_is_told_which_options_label_it(clean_env: None,
                                                             capsys: pytest.CaptureFixture[str]):
    image = (Path(__file__).resolve().parents[2] / "src" / "radvault" / "samples" / "images"
             / "chest_xray__normal__IM-0009-0001.jpeg")
    assert main(["analyze", str(image)]) == 0
    out = capsys.readouterr().out
    assert "refer to a radiologist" in out and "give --modality and --body-part" in out
    assert " %" in out  # probabilities as percentages, as the reports print them

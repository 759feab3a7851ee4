"""The DICOM commands: the allow-list, and ``radvault dicom serve`` as a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dicomkit import PASSPHRASE, add_sites, dcmtk, free_port, require_tool, write_series

from radvault.cli._app import main
from radvault.config import load_settings
from radvault.dicom.nodes import NodeRegistry
from radvault.vault.keys import KdfParams
from radvault.vault.vault import Vault


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A vault with the sites north and south."""
    home = tmp_path / "vault"
    with Vault.init(load_settings(env={}, home=home), PASSPHRASE, kdf=KdfParams.fast()) as v:
        add_sites(v, "north", "south")
    monkeypatch.setenv("RADVAULT_PASSPHRASE", PASSPHRASE)
    return home


def _audit(home: Path, action: str) -> list:
    with Vault.open(load_settings(env={}, home=home), PASSPHRASE) as vault:
        return [e for e in vault.audit.tail(1000) if str(e.action) == action]


def test_nodes_are_added_listed_and_removed_with_an_audit_trail(
        home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--home", str(home), "dicom", "nodes", "add", "CT_NORTH",
                 "--host", "127.0.0.1", "--site", "north", "--port", "104"]) == 0
    assert main(["--home", str(home), "dicom", "nodes", "add", "MR_SOUTH",
                 "--host", "10.0.0.7", "--site", "south"]) == 0
    registry = NodeRegistry.load(home / "dicom_nodes.toml")
    assert registry.match("CT_NORTH", "127.0.0.1").port == 104
    capsys.readouterr()
    assert main(["--home", str(home), "dicom", "nodes", "ls"]) == 0
    listing = capsys.readouterr().out
    assert "CT_NORTH" in listing and "MR_SOUTH" in listing and "south" in listing
    assert main(["--home", str(home), "dicom", "nodes", "remove", "MR_SOUTH"]) == 0
    assert [n.ae_title for n in NodeRegistry.load(home / "dicom_nodes.toml")] == ["CT_NORTH"]
    assert [e.details["ae_title"] for e in _audit(home, "dicom_node_add")] == [
        "CT_NORTH", "MR_SOUTH"]
    assert len(_audit(home, "dicom_node_remove")) == 1


def test_a_malformed_node_is_refused_with_a_clear_message(
        home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--home", str(home), "dicom", "nodes", "add", "WAY_TOO_LONG_AE_TITLE",
                 "--host", "127.0.0.1", "--site", "north"])
    assert code == 2
    assert "AE title" in capsys.readouterr().err
    assert not (home / "dicom_nodes.toml").exists()


def test_dicom_serve_runs_until_sigterm(home: Path, tmp_path: Path) -> None:
    require_tool("echoscu")
    assert main(["--home", str(home), "dicom", "nodes", "add", "CT_NORTH",
                 "--host", "127.0.0.1", "--site", "north"]) == 0
    port = free_port()
    code = "import sys; from radvault.cli._app import main; sys.exit(main(sys.argv[1:]))"
    env = dict(os.environ, RADVAULT_PASSPHRASE=PASSPHRASE, COLUMNS="200")
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--home", str(home), "dicom", "serve", "--port", str(port),
         "--ae-title", "RADVAULT"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            echo = dcmtk("echoscu", "-aet", "CT_NORTH", "-aec", "RADVAULT", "127.0.0.1", str(port))
            if echo.returncode == 0:
                break
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the SCP did not come up"
            time.sleep(0.2)
        files = write_series(tmp_path / "ct", "CT", 2)
        store = dcmtk("storescu", "-aet", "CT_NORTH", "-aec", "RADVAULT", "127.0.0.1",
                      str(port), *files)
        assert store.returncode == 0, store.stderr
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output
    assert f"listening on 127.0.0.1:{port}" in output and "DICOM SCP stopped" in output
    with Vault.open(load_settings(env={}, home=home), PASSPHRASE) as vault:
        (study,) = vault.catalog.list_studies(site="north")
        assert study.n_instances == 2


def test_adding_a_node_that_exists_is_refused_unless_replace_says_what_changed(
        home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--home", str(home), "dicom", "nodes", "add", "CT01",
                 "--host", "127.0.0.1", "--site", "north"]) == 0
    capsys.readouterr()

    refused = main(["--home", str(home), "dicom", "nodes", "add", "CT01",
                    "--host", "127.0.0.2", "--site", "south"])
    err = capsys.readouterr().err
    (node,) = NodeRegistry.load(home / "dicom_nodes.toml")
    assert refused == 2
    assert "CT01 is already allowed (from 127.0.0.1 for site north): give --replace" in err
    assert (node.host, node.site) == ("127.0.0.1", "north")

    replaced = main(["--home", str(home), "dicom", "nodes", "add", "CT01",
                     "--host", "127.0.0.2", "--site", "south", "--replace"])
    out = capsys.readouterr().out
    (node,) = NodeRegistry.load(home / "dicom_nodes.toml")
    assert replaced == 0
    assert "replaced CT01: host 127.0.0.1 -> 127.0.0.2; site north -> south" in out
    assert (node.host, node.site) == ("127.0.0.2", "south")
    entries = _audit(home, "dicom_node_add")
    assert [(str(e.outcome), e.details.get("replaced")) for e in entries] == [
        ("ok", None), ("refused", None), ("ok", ["host", "site"])]


@pytest.mark.parametrize("where", ["taken", "999.1.1.1", "8.8.8.8"])
def test_dicom_serve_that_cannot_listen_says_why_in_one_line(
        home: Path, capsys: pytest.CaptureFixture[str], where: str) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        host, port = ("127.0.0.1", taken.getsockname()[1]) if where == "taken" else (where, 11112)
        code = main(["--home", str(home), "dicom", "serve", "--host", host, "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines()[-1].startswith(f"error: cannot listen on {host}:{port}: ")
    assert "Traceback" not in err


def test_dicom_serve_without_a_vault_prints_only_that_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--home", str(tmp_path / "nowhere"), "dicom", "serve"])
    err = capsys.readouterr().err
    assert code == 3
    assert err.strip().startswith("error:") and "allow-list" not in err

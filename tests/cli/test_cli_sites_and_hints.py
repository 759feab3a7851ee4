"""Sites and typed hints at the command line: the README's default site works end to end,
an unknown site is refused with the command that adds it, and --modality/--body-part must
be DICOM defined terms (exit status 2, the typed value never repeated)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radvault.cli import main
from radvault.config import load_settings
from radvault.vault.keys import KdfParams
from radvault.vault.vault import Vault

PASSPHRASE = "correct horse battery staple"
PASSWORD = "Vivid-Lantern-42!"
SAMPLES = Path(__file__).resolve().parents[2] / "src" / "radvault" / "samples" / "images"

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    target = tmp_path / "vault"
    for key in [k for k in os.environ if k.startswith("RADVAULT_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("RADVAULT_HOME", str(target))
    monkeypatch.setenv("RADVAULT_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("RADVAULT_USER_PASSWORD", PASSWORD)
    monkeypatch.setenv("COLUMNS", "200")
    return target


@pytest.fixture
def vault_home(home: Path) -> Path:
    """A vault made by `Vault.init` alone (fast KDF), as vaults made before `init` registered
    the default site."""
    Vault.init(load_settings(env={}, home=home), PASSPHRASE, kdf=KdfParams.fast()).close()
    return home


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    def _run(*args: object) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return _run


@pytest.fixture
def png(tmp_path: Path) -> Path:
    path = tmp_path / "in" / "xray.png"
    path.parent.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 80), dtype=np.uint8)).save(path)
    return path


def _error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _audit_actions(home: Path) -> list[tuple[str, str]]:
    with Vault.open(load_settings(env={}, home=home), PASSPHRASE) as vault:
        return [(str(e.action), e.actor) for e in vault.audit]


# --------------------------------------------------------------------------- sites


def test_init_registers_the_default_site_and_the_readme_flow_grants_it(
        home: Path, run: Run, png: Path) -> None:
    assert run("init")[0] == 0  # the real command (strong KDF), once
    code, out, _ = run("sites", "list")
    assert code == 0 and out.split() == ["default"]

    code, out, _ = run("ingest", png, "--modality", "DX", "--body-part", "CHEST")
    assert code == 0 and "1 stored" in out
    assert run("users", "add", "dr.lee", "--role", "radiologist", "--site", "default")[0] == 0
    code, out, err = run("grants", "add", "dr.lee", "--site", "default")
    assert code == 0, err
    assert "granted site:default to dr.lee" in " ".join(out.split())

    actions = [action for action, actor in _audit_actions(home)
               if actor == "system" or action == "ingest"]
    assert actions[:3] == ["init", "site.add", "unlock"]  # registered at init...
    assert actions.count("site.add") == 1 and "ingest" in actions  # ...and never again


def test_a_vault_from_before_gets_the_default_site_on_its_first_default_ingest(
        vault_home: Path, run: Run, png: Path) -> None:
    assert run("sites", "list")[1].split() == []
    assert run("ingest", png, "--modality", "DX")[0] == 0
    assert run("sites", "list")[1].split() == ["default"]
    assert ("site.add", "system") in _audit_actions(vault_home)


def test_ingest_into_an_unknown_site_is_refused_and_stores_nothing(
        vault_home: Path, run: Run, png: Path) -> None:
    code, out, err = run("ingest", png, "--modality", "DX", "--site", "nowhere")

    assert code == 2, out
    line = _error(err)
    assert "unknown site 'nowhere'" in line and "`radvault sites add nowhere`" in line
    assert run("ls", "--json")[1].strip() == "[]"
    assert not any(a == "ingest" for a, _ in _audit_actions(vault_home))

    assert run("sites", "add", "nowhere")[0] == 0
    code, out, _ = run("ingest", png, "--modality", "DX", "--site", "nowhere")
    assert code == 0 and "1 stored" in out


def test_dicom_nodes_add_refuses_an_unknown_site(vault_home: Path, run: Run) -> None:
    code, _, err = run("dicom", "nodes", "add", "CT02", "--host", "127.0.0.1",
                       "--site", "nowhere2")

    assert code == 2
    line = _error(err)
    assert "unknown site 'nowhere2'" in line and "`radvault sites add nowhere2`" in line
    assert not (vault_home / "dicom_nodes.toml").exists()
    assert not any(a == "dicom_node_add" for a, _ in _audit_actions(vault_home))

    assert run("sites", "add", "nowhere2")[0] == 0
    assert run("dicom", "nodes", "add", "CT02", "--host", "127.0.0.1",
               "--site", "nowhere2")[0] == 0
    assert run("dicom", "nodes", "add", "CT03", "--host", "127.0.0.1",
               "--site", "default")[0] == 0  # the default site is always there


# --------------------------------------------------------------------------- hints


@pytest.mark.parametrize(("option", "value"), [
    ("--modality", "XX"), ("--modality", "<script>"), ("--body-part", "Doe_Jane"),
    ("--body-part", "MRN55512345"),
])
def test_ingest_refuses_a_hint_that_is_no_defined_term_before_opening_the_vault(
        home: Path, run: Run, png: Path, option: str, value: str) -> None:
    code, _, err = run("ingest", png, option, value)  # no vault here: refused before that

    assert code == 2
    line = _error(err)
    assert line.startswith(f"error: {option} is not a DICOM ") and "defined term" in line
    assert value not in line


def test_ingest_hints_ignore_case_and_spaces(vault_home: Path, run: Run, png: Path) -> None:
    assert run("ingest", png, "--modality", " dx", "--body-part", "Chest ")[0] == 0
    code, out, _ = run("ls", "--json")
    assert code == 0
    study = json.loads(out)[0]
    assert (study["modality"], study["body_part"]) == ("DX", "CHEST")


@pytest.mark.parametrize(("option", "value"), [("--modality", "XX"),
                                               ("--body-part", "Doe_Jane")])
def test_analyze_refuses_a_hint_that_is_no_defined_term(
        home: Path, run: Run, png: Path, option: str, value: str) -> None:
    code, _, err = run("analyze", png, option, value, "--json")

    assert code == 2
    line = _error(err)
    assert f"{option} is not a DICOM " in line and value not in line


def test_analyze_refuses_a_model_folder_that_holds_no_model(
        home: Path, run: Run, png: Path, tmp_path: Path) -> None:
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    code, _, err = run("analyze", png, "--model", empty, "--modality", "DX")
    assert code == 6 and "holds no model" in _error(err)
    shutil.rmtree(empty)
    assert run("analyze", png, "--model", empty)[0] == 6

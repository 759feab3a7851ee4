"""The vault commands end to end through ``radvault.cli.main`` (in-process).

``radvault init`` is run once for real (strong KDF); the other tests start
from a vault made with the fast KDF, which the CLI opens like any other (the
KDF parameters are recorded in the key file).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from radvault.cli import main
from radvault.config import load_settings
from radvault.errors import ObjectShredded
from radvault.pipeline.retrieve import open_image
from radvault.vault.keys import KdfParams
from radvault.vault.vault import Vault

PASSPHRASE = "correct horse battery staple"
CT_SMALL = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """RADVAULT_HOME and RADVAULT_PASSPHRASE point at a vault-to-be under ``tmp_path``."""
    target = tmp_path / "vault"
    monkeypatch.setenv("RADVAULT_HOME", str(target))
    monkeypatch.setenv("RADVAULT_PASSPHRASE", PASSPHRASE)
    for name in ("RADVAULT_ACCEPT_BURNED_IN", "RADVAULT_CATALOG_URL"):
        monkeypatch.delenv(name, raising=False)
    return target


@pytest.fixture
def vault_home(home: Path) -> Path:
    """An empty vault in RADVAULT_HOME, made with the fast KDF."""
    Vault.init(load_settings(env={}, home=home), PASSPHRASE, kdf=KdfParams.fast()).close()
    return home


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    """Run the CLI in-process; return (exit status, stdout, stderr).

    The console is made wide so that Rich tables do not fold the cells the tests
    look for (errors stay on one line at any width: see the narrow-pipe test).
    """
    monkeypatch.setenv("COLUMNS", "200")

    def _run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return _run


def _inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "inputs"
    (folder / "nested").mkdir(parents=True)
    shutil.copy(CT_SMALL, folder / "ct.dcm")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 80), dtype=np.uint8)).save(
        folder / "nested" / "xray.png")
    (folder / "notes.txt").write_text("not an image\n")
    return folder


def _digests(home: Path) -> dict[str, str]:
    return {str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(home.rglob("*")) if p.is_file()}


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


def test_an_error_stays_on_one_line_in_a_narrow_pipe(
    vault_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("RADVAULT_PASSPHRASE", "this is not the passphrase")
    capsys.readouterr()

    assert main(["ls"]) == 3

    line = _one_error_line(capsys.readouterr().err)
    assert len(line) > 80  # the test only means something for a long message


# --------------------------------------------------------------------------- init


def test_init_creates_a_vault_once(home: Path, run: Run) -> None:
    code, out, _ = run("init")

    assert code == 0, out
    assert "vault created" in out
    assert {"keys.json", "vault.pub", "catalog.sqlite3", "audit.log"} <= {
        p.name for p in home.iterdir()}
    assert (home / "blobs").is_dir()
    assert home.stat().st_mode & 0o077 == 0  # private to its owner
    assert PASSPHRASE.encode() not in (home / "keys.json").read_bytes()

    code, _, err = run("init")
    assert code != 0
    assert "already exists" in _one_error_line(err)

    code, out, _ = run("verify")
    assert code == 0 and "clean" in out


def test_init_refuses_a_short_passphrase(home: Path, run: Run,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADVAULT_PASSPHRASE", "short")

    code, _, err = run("init")

    assert code == 2
    assert "at least 12 characters" in _one_error_line(err)
    assert not (home / "keys.json").exists()


def test_no_passphrase_without_a_terminal_is_a_configuration_error(
    vault_home: Path, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RADVAULT_PASSPHRASE")

    code, _, err = run("ls")

    assert code == 2
    assert "RADVAULT_PASSPHRASE" in _one_error_line(err)


# --------------------------------------------------------------------------- the whole flow


def _studies(run: Run) -> list[dict[str, object]]:
    code, out, _ = run("ls", "--json")
    assert code == 0
    return json.loads(out)


def test_ingest_ls_show_export_verify_audit_rotate_and_shred(
    vault_home: Path, run: Run, tmp_path: Path
) -> None:
    inputs = _inputs(tmp_path)

    code, out, err = run("ingest", inputs, "--modality", "DX", "--body-part", "CHEST")
    assert code == 1, err  # one input was refused, the rest went in
    assert "2 stored, 0 duplicate, 1 refused" in out
    assert "NotAnImage" in out

    code, out, _ = run("ingest", inputs / "ct.dcm")
    assert code == 0 and "0 stored, 1 duplicate, 0 refused" in out

    studies = _studies(run)
    assert len(studies) == 2
    assert {s["modality"] for s in studies} == {"CT", "DX"}  # the hint never beats the header
    assert all(s["instances"] == 1 and not s["shredded"] for s in studies)
    ct = next(s for s in studies if s["modality"] == "CT")
    xray = next(s for s in studies if s["modality"] == "DX")
    assert xray["body_part"] == "CHEST"
    code, out, _ = run("ls")
    assert code == 0 and "2 studies" in out

    code, out, _ = run("show", ct["study_id"])
    flat = " ".join(out.split())
    assert code == 0 and str(ct["study_id"]) in flat and "dicom" in flat
    assert "model_input" in flat and "kek-0001" in flat
    instance_id = flat.split("instance ")[1].split()[0]
    code, out, _ = run("show", instance_id)  # an instance id shows its study
    assert code == 0 and str(ct["study_id"]) in " ".join(out.split())
    code, _, err = run("show", "2.25.404")
    assert code == 6 and "no instance" in _one_error_line(err)

    export_dir = tmp_path / "export"
    code, out, _ = run("export", ct["study_id"], "--out", export_dir)
    assert code == 0 and "exported 1 file(s)" in out
    exported = pydicom.dcmread(export_dir / f"{instance_id}.dcm")
    assert exported.SOPInstanceUID == instance_id
    assert str(exported.get("PatientName", "")) != str(pydicom.dcmread(CT_SMALL).PatientName)

    code, out, _ = run("verify")
    assert code == 0 and "4 objects (0 shredded), 4 blobs" in " ".join(out.split())

    # a study recorded as something it is not is corrected, signed again and audited
    code, _, err = run("relabel", xray["study_id"], "--modality", "MR", "--body-part", "Doe")
    assert code != 0 and "body part" in _one_error_line(err) and "Doe" not in err
    code, out, _ = run("relabel", xray["study_id"], "--modality", "mr", "--body-part", "brain")
    assert code == 0 and "recorded as MR BRAIN (was DX CHEST)" in " ".join(out.split())
    relabelled = next(s for s in _studies(run) if s["study_id"] == xray["study_id"])
    assert (relabelled["modality"], relabelled["body_part"]) == ("MR", "BRAIN")
    code, out, _ = run("verify")
    assert code == 0 and "4 objects (0 shredded), 4 blobs" in " ".join(out.split())
    code, out, _ = run("verify", "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] is True and report["objects_checked"] == 4

    code, out, _ = run("audit", "verify")
    assert code == 0 and "intact" in out
    code, out, _ = run("audit", "verify", "--json")
    assert code == 0 and json.loads(out)["ok"] is True
    code, out, _ = run("audit", "tail", "-n", "50")
    assert code == 0
    for action in ("init", "unlock", "ingest", "ingest_refused", "export", "verify"):
        assert action in out
    assert "error=NotAnImage" in "".join(out.split())  # a refusal shows its class

    code, out, _ = run("keys", "rotate")
    assert code == 0
    assert "kek-0002" in out and "4 data key(s) rewrapped" in " ".join(out.split())
    code, out, _ = run("export", xray["study_id"], "--out", export_dir)  # old objects still open
    assert code == 0
    code, out, _ = run("keys", "rotate", "--retire-old")
    assert code == 0 and "2 old key(s) retired" in " ".join(out.split())
    code, out, _ = run("verify")
    assert code == 0

    code, _, err = run("delete", ct["study_id"])
    assert code == 2 and "--shred" in _one_error_line(err)
    code, out, _ = run("delete", ct["study_id"], "--shred", "--yes")
    assert code == 0 and "2 data key(s) destroyed" in " ".join(out.split())
    assert next(s for s in _studies(run) if s["study_id"] == ct["study_id"])["shredded"]
    code, _, err = run("export", ct["study_id"], "--out", tmp_path / "again")
    assert code == 6 and "shredded" in _one_error_line(err)
    code, out, _ = run("verify", "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["objects_shredded"] == 2
    code, out, _ = run("audit", "verify")
    assert code == 0

    with Vault.open(load_settings(env={}, home=vault_home), PASSPHRASE) as vault:
        with pytest.raises(ObjectShredded):
            open_image(vault, instance_id, actor="tester")
        shreds = [e for e in vault.audit if e.action == "shred"]
        assert [e.object_ids for e in shreds] == [(ct["study_id"],)]


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize("damage", ["wrong passphrase", "missing key file", "corrupt key file"])
def test_a_locked_vault_exits_3_with_one_line_and_changes_nothing_else(
    vault_home: Path, run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    assert run("ingest", CT_SMALL)[0] == 0
    key_file = vault_home / "keys.json"
    if damage == "wrong passphrase":
        monkeypatch.setenv("RADVAULT_PASSPHRASE", "this is not the passphrase")
    elif damage == "missing key file":
        key_file.unlink()
    else:
        key_file.write_bytes(key_file.read_bytes()[:-30] + b"}")
    before = _digests(vault_home)
    entries = len((vault_home / "audit.log").read_bytes().splitlines())

    for command in (["ls"], ["verify"], ["export", "2.25.1", "--out", tmp_path / "x"],
                    ["keys", "rotate"], ["delete", "2.25.1", "--shred", "--yes"]):
        code, out, err = run(*command)
        assert code == 3, (command, out, err)
        line = _one_error_line(err)
        assert "this is not the passphrase" not in line
        assert {"wrong passphrase": "wrong passphrase", "missing key file": "not found",
                "corrupt key file": "corrupt"}[damage] in line

    after = _digests(vault_home)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert changed <= {"catalog.sqlite3", "catalog.sqlite3-wal", "catalog.sqlite3-shm",
                       "audit.log"}
    assert not (tmp_path / "x").exists()
    new_lines = (vault_home / "audit.log").read_bytes().splitlines()[entries:]
    assert len(new_lines) == 5  # one failed unlock per command, and nothing else
    assert all(json.loads(line)["action"] == "unlock_failed" for line in new_lines)


def test_verify_exits_5_and_names_the_problem_when_a_blob_was_altered(
    vault_home: Path, run: Run
) -> None:
    assert run("ingest", CT_SMALL)[0] == 0
    blob = sorted(p for p in (vault_home / "blobs").rglob("*") if p.is_file())[0]
    blob.write_bytes(blob.read_bytes() + b"x")

    code, _, err = run("verify")
    assert code == 5
    assert "PROBLEM" in err and blob.name in err.replace("\n", "")

    code, out, _ = run("verify", "--json")
    report = json.loads(out)
    assert code == 5 and report["ok"] is False
    assert any(blob.name in p and "blob size" in p for p in report["problems"])

    code, out, _ = run("audit", "verify")  # the audit trail itself is intact
    assert code == 0


def test_exported_anchors_prove_a_tail_deleted_from_catalog_and_file_alike(
    vault_home: Path, run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sqlite3

    monkeypatch.setenv("RADVAULT_AUDIT_CHECKPOINT_EVERY", "4")
    for _ in range(6):
        assert run("ls")[0] == 0  # each run appends (unlock, ...) and signs checkpoints
    anchors = tmp_path / "offsite" / "anchors.json"
    anchors.parent.mkdir()
    code, _, err = run("audit", "anchors", "--out", tmp_path / "no" / "such" / "dir.json")
    assert code == 2 and "cannot write" in _one_error_line(err)
    code, out, _ = run("audit", "anchors", "--out", anchors)
    assert code == 0 and "checkpoint(s) written" in out
    document = json.loads(anchors.read_text())
    newest = max(c["seq"] for c in document["checkpoints"])
    assert newest >= 8
    code, out, _ = run("audit", "verify", "--anchors", anchors)
    assert code == 0 and "intact" in out

    # someone with the host deletes the tail, its checkpoint and the file copy's lines
    cut = newest - 4
    with sqlite3.connect(vault_home / "catalog.sqlite3") as db:
        db.execute("DELETE FROM audit_entries WHERE seq > ?", (cut,))
        db.execute("DELETE FROM audit_checkpoints WHERE seq > ?", (cut,))
    log = vault_home / "audit.log"
    kept = [line for line in log.read_text().splitlines() if json.loads(line)["seq"] <= cut]
    log.write_text("\n".join(kept) + "\n")

    code, out, _ = run("audit", "verify", "--anchors", anchors, "--json")
    assert code == 5
    problems = json.loads(out)["problems"]
    assert any("kept by the external anchor" in p for p in problems)

    # an outside auditor: the public key handed over earlier, no passphrase
    trusted = tmp_path / "offsite" / "vault.pub"
    shutil.copy(vault_home / "vault.pub", trusted)
    monkeypatch.delenv("RADVAULT_PASSPHRASE")
    before = log.read_bytes()
    code, out, _ = run("audit", "verify", "--public-key", trusted, "--anchors", anchors,
                       "--json")
    # (the passphrase run above appended to the cut chain, signing a new checkpoint at
    # a sequence number the anchors also hold: the anchors catch that one too)
    assert code == 5
    assert any("external anchor" in p for p in json.loads(out)["problems"])
    assert log.read_bytes() == before  # nothing appended
    trusted.write_text("00" * 32 + "\n")  # someone else's key: no checkpoint verifies
    assert run("audit", "verify", "--public-key", trusted)[0] == 5
    trusted.write_text("not hex")
    assert run("audit", "verify", "--public-key", trusted)[0] == 2
    shutil.copy(vault_home / "vault.pub", trusted)
    copy = tmp_path / "only-the-log"
    copy.mkdir()
    shutil.copy(log, copy / "audit.log")
    monkeypatch.setenv("RADVAULT_HOME", str(copy))
    code, _, err = run("audit", "verify", "--public-key", trusted)
    assert code == 3 and "no vault" in _one_error_line(err)
    assert [p.name for p in copy.iterdir()] == ["audit.log"]  # no empty catalog made
    assert run("audit", "verify", "--anchors", tmp_path / "nowhere.json")[0] == 2


def test_a_changed_passphrase_unlocks_and_the_old_one_no_longer_does(
    vault_home: Path, run: Run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    assert run("ingest", _inputs(tmp_path) / "ct.dcm")[0] == 0
    monkeypatch.setenv("RADVAULT_NEW_PASSPHRASE", "short")
    code, _, err = run("keys", "passphrase")
    assert code == 2 and "at least 12 characters" in _one_error_line(err)
    monkeypatch.setenv("RADVAULT_NEW_PASSPHRASE", "a new and longer passphrase")
    code, out, _ = run("keys", "passphrase")
    assert code == 0 and "passphrase changed" in out
    assert run("ls")[0] == 3  # RADVAULT_PASSPHRASE still holds the old one
    monkeypatch.setenv("RADVAULT_PASSPHRASE", "a new and longer passphrase")
    code, out, _ = run("verify")
    assert code == 0
    code, out, _ = run("audit", "tail", "-n", "5")
    assert "passphrase_change" in out


def test_ingest_can_accept_or_refuse_burned_in_images_for_one_run(
    vault_home: Path, run: Run, monkeypatch: pytest.MonkeyPatch,
) -> None:
    screen = CT_SMALL.parent / "SC_rgb_jpeg_dcmtk.dcm"  # a secondary capture: at risk
    code, out, _ = run("ingest", screen)
    assert code == 1 and "BurnedInAnnotationRefused" in out  # the vault's default: refuse
    code, out, _ = run("ingest", screen, "--accept-burned-in")
    assert code == 0 and "1 stored" in out
    monkeypatch.setenv("RADVAULT_ACCEPT_BURNED_IN", "true")  # the vault accepts them...
    code, out, _ = run("ingest", CT_SMALL.parent / "SC_rgb_jpeg.dcm", "--no-accept-burned-in")
    assert code == 1 and "BurnedInAnnotationRefused" in out  # ...but not in this run


@pytest.mark.parametrize("columns", ["80", "120", "200"])
def test_ls_never_breaks_a_study_id_over_lines(
    vault_home: Path, run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, columns: str
) -> None:
    # ids are copied into show/export/delete: a user test found them folded at 80 columns
    assert run("ingest", _inputs(tmp_path) / "ct.dcm")[0] == 0
    monkeypatch.setenv("COLUMNS", columns)

    code, out, _ = run("ls")

    assert code == 0
    (study,) = _studies(run)
    assert any(study["study_id"] in line for line in out.splitlines())

"""``radvault pull`` against a real Orthanc: C-GET, C-MOVE and DICOMweb, into the vault.

One Orthanc (Debian package, loopback, throw-away config, stopped by its PID)
serves the module; each test pulls into its own fresh vault.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dicomkit import (
    PASSPHRASE,
    PATIENT_NAME,
    Orthanc,
    add_sites,
    dcmtk,
    free_port,
    require_dicom_dir,
    run_orthanc,
    sop_instance_uid,
    write_series,
)

from radvault.cli._app import main
from radvault.config import load_settings
from radvault.dicom.pull import PULL_ACTION, PullError, pull_dicomweb, pull_dimse
from radvault.errors import ConfigurationError
from radvault.pipeline.retrieve import open_image
from radvault.vault.keys import KdfParams
from radvault.vault.vault import Vault

RADVAULT_AE = "RADVAULT"


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Orthanc, int, dict]]:
    """A running Orthanc holding two studies, the port it C-MOVEs to, and what it holds.

    Study A: five generated CT slices, uploaded through the REST API.
    Study B: a real CT (uncompressed) and a real JPEG 2000 CT, sent with storescu.
    """
    folder = tmp_path_factory.mktemp("orthanc")
    move_port = free_port()
    modalities = {"radvault": [RADVAULT_AE, "127.0.0.1", move_port]}
    with run_orthanc(folder, modalities=modalities) as orthanc:
        generated = write_series(folder / "generated", "CT", 5)
        for path in generated:
            orthanc.upload(path)
        data = require_dicom_dir()
        real = [data / "nema_wg04/CT1_UNC.dcm", data / "pydicom_data/693_J2KR.dcm"]
        result = dcmtk("storescu", "-xv", "-aet", "UPLOADER", "-aec", orthanc.aet,
                       "127.0.0.1", str(orthanc.dicom_port), *real)
        assert result.returncode == 0, result.stderr
        studies = orthanc.get_json("/studies?expand")
        assert isinstance(studies, list) and len(studies) >= 2
        by_uid = {s["MainDicomTags"]["StudyInstanceUID"]:
                  len(orthanc.get_json(f"/studies/{s['ID']}/instances")) for s in studies}
        held = {"generated": str(sop_instance_uid(generated[0])), "by_uid": by_uid,
                "study_a": _study_of(generated[0]), "j2k_study": _study_of(real[1])}
        yield orthanc, move_port, held


def _study_of(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh vault home with the sites the tests pull into, and the passphrase in the
    environment for the CLI."""
    home = tmp_path / "vault"
    with Vault.init(load_settings(env={}, home=home), PASSPHRASE, kdf=KdfParams.fast()) as v:
        add_sites(v, "east", "west", "south", "x")
    monkeypatch.setenv("RADVAULT_PASSPHRASE", PASSPHRASE)
    return home


def _open(home: Path) -> Vault:
    return Vault.open(load_settings(env={}, home=home), PASSPHRASE)


def _check_stored(vault: Vault, site: str, expected: int) -> None:
    studies = vault.catalog.list_studies(site=site)
    instances = [i for s in studies for i in vault.catalog.instances_of_study(s.study_id)]
    assert len(instances) == expected
    for instance in instances:
        assert open_image(vault, instance.instance_id, actor="tester").pixels.size
        stored = next(o for o in vault.catalog.objects_of_instance(instance.instance_id)
                      if o.kind == "dicom")
        assert PATIENT_NAME.encode() not in bytes(vault.open_object(stored, actor="tester"))


def test_pull_one_study_by_c_get_from_the_command_line(pacs: tuple, home: Path) -> None:
    orthanc, _port, held = pacs
    code = main(["--home", str(home), "pull", "--from-ae", orthanc.aet, "--host", "127.0.0.1",
                 "--port", str(orthanc.dicom_port), "--study", held["study_a"],
                 "--site", "east"])
    assert code == 0
    with _open(home) as vault:
        _check_stored(vault, "east", 5)
        (entry,) = [e for e in vault.audit.tail(200) if str(e.action) == PULL_ACTION]
        assert entry.details["method"] == "get" and entry.details["stored"] == 5
        ingests = [e for e in vault.audit.tail(200) if str(e.action) == "ingest"]
        assert {e.actor for e in ingests} == {"dicom:ORTHANC"}


def test_pull_every_study_by_c_move(pacs: tuple, home: Path) -> None:
    orthanc, move_port, held = pacs
    with _open(home) as vault:
        report = pull_dimse(vault, peer_ae=orthanc.aet, host="127.0.0.1",
                            port=orthanc.dicom_port, site="west", actor="tester",
                            method="move", ae_title=RADVAULT_AE, listen_port=move_port)
        assert report.ok, report.problems
        assert len(report.studies) == len(held["by_uid"])
        total = sum(held["by_uid"].values())
        assert report.counts["stored"] == total
        _check_stored(vault, "west", total)


def test_pull_by_dicomweb_from_the_command_line(pacs: tuple, home: Path) -> None:
    orthanc, _port, held = pacs
    code = main(["--home", str(home), "pull", "--dicomweb", orthanc.dicomweb,
                 "--study", held["study_a"], "--site", "south"])
    assert code == 0
    with _open(home) as vault:
        _check_stored(vault, "south", 5)
        (entry,) = [e for e in vault.audit.tail(200) if str(e.action) == PULL_ACTION]
        assert entry.details["method"] == "dicomweb"


def test_pulling_again_stores_nothing_new(pacs: tuple, home: Path) -> None:
    orthanc, _port, held = pacs
    with _open(home) as vault:
        first = pull_dicomweb(vault, orthanc.dicomweb, site="south", actor="tester",
                              study_uids=[held["study_a"]])
        again = pull_dimse(vault, peer_ae=orthanc.aet, host="127.0.0.1",
                           port=orthanc.dicom_port, site="south", actor="tester",
                           study_uids=[held["study_a"]])
    assert first.counts["stored"] == 5
    assert again.counts == {"stored": 0, "duplicate": 5, "refused": 0}


def test_an_unknown_study_is_reported(pacs: tuple, home: Path) -> None:
    orthanc, _port, _held = pacs
    with _open(home) as vault:
        report = pull_dicomweb(vault, orthanc.dicomweb, site="south", actor="tester",
                               study_uids=["1.2.3.4.5.6.7.8.9"])
    assert not report.ok and report.problems and report.outcomes == []


def test_an_unreachable_pacs_fails_cleanly(home: Path) -> None:
    port = free_port()
    with _open(home) as vault, pytest.raises(PullError, match="refused or did not answer"):
        pull_dimse(vault, peer_ae="NOBODY", host="127.0.0.1", port=port, site="x",
                   actor="tester", study_uids=["1.2.3"])
    code = main(["--home", str(home), "pull", "--from-ae", "NOBODY", "--host", "127.0.0.1",
                 "--port", str(port), "--study", "1.2.3"])
    assert code == 1


class _NoServer:
    """A DICOMweb client that must not be asked anything."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the server was asked ({name}) before the site was checked")


def test_a_pull_into_an_unknown_site_is_refused_before_the_pacs_is_asked(
        home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()  # nobody listens: a pull that tried would fail with PullError (1)
    with _open(home) as vault:
        with pytest.raises(ConfigurationError, match="`radvault sites add nowhere`"):
            pull_dimse(vault, peer_ae="NOBODY", host="127.0.0.1", port=port, site="nowhere",
                       actor="tester", study_uids=["1.2.3"])
        with pytest.raises(ConfigurationError, match="unknown site 'nowhere'"):
            pull_dicomweb(vault, "http://127.0.0.1:9/dicom-web", site="nowhere",
                          actor="tester", study_uids=["1.2.3"], client=_NoServer())
        assert not [e for e in vault.audit.tail(200) if str(e.action) == PULL_ACTION]
    capsys.readouterr()
    code = main(["--home", str(home), "pull", "--from-ae", "NOBODY", "--host", "127.0.0.1",
                 "--port", str(port), "--study", "1.2.3", "--site", "nowhere"])
    assert code == 2
    assert "unknown site 'nowhere'" in capsys.readouterr().err


def test_pull_by_dicomweb_fetches_a_jpeg_2000_study_as_stored(pacs: tuple, home: Path) -> None:
    orthanc, _port, held = pacs
    code = main(["--home", str(home), "pull", "--dicomweb", orthanc.dicomweb,
                 "--study", held["j2k_study"], "--study", held["study_a"], "--site", "south"])
    assert code == 0
    with _open(home) as vault:
        _check_stored(vault, "south", held["by_uid"][held["j2k_study"]] + 5)


class _FailingStudyServer:
    """A DICOMweb client whose server fails every request about one study."""

    def __init__(self, failing: str, good: Path) -> None:
        self.failing, self.good = failing, good

    def _check(self, study_instance_uid: str) -> None:
        import requests

        if study_instance_uid == self.failing:
            response = requests.Response()
            response.status_code = 500
            raise requests.HTTPError("500 Server Error", response=response)

    def search_for_instances(self, study_instance_uid: str) -> list[dict]:
        self._check(study_instance_uid)
        return [{}]

    def iter_study(self, study_instance_uid: str, media_types: object = None) -> Iterator:
        import pydicom

        self._check(study_instance_uid)
        assert media_types == (("application/dicom", "*"),)  # any syntax, as stored
        yield pydicom.dcmread(self.good)


def test_a_dicomweb_study_that_fails_does_not_stop_the_others_and_is_audited_as_an_error(
        home: Path, tmp_path: Path) -> None:
    good = write_series(tmp_path / "good", "CT", 1)[0]
    client = _FailingStudyServer("1.2.3.4", good)
    with _open(home) as vault:
        report = pull_dicomweb(vault, "http://127.0.0.1:9/dicom-web", site="south",
                               actor="tester", study_uids=["1.2.3.4", _study_of(good)],
                               client=client)
        (entry,) = [e for e in vault.audit.tail(200) if str(e.action) == PULL_ACTION]
    assert not report.ok
    assert report.problems == ["a study failed: DICOMweb server http://127.0.0.1:9/dicom-web "
                               "failed the request (HTTP 500)"]
    assert report.counts["stored"] == 1
    assert str(entry.outcome) == "error"
    assert (entry.details["problems"], entry.details["stored"]) == (1, 1)


def test_a_c_move_the_pacs_cannot_deliver_is_an_audited_error_naming_the_destination(
        pacs: tuple, home: Path) -> None:
    orthanc, move_port, held = pacs
    elsewhere = free_port()  # not where the PACS sends RADVAULT's instances
    assert elsewhere != move_port
    with _open(home) as vault:
        report = pull_dimse(vault, peer_ae=orthanc.aet, host="127.0.0.1",
                            port=orthanc.dicom_port, site="west", actor="tester",
                            study_uids=[held["study_a"]], method="move",
                            ae_title=RADVAULT_AE, listen_port=elsewhere)
        (entry,) = [e for e in vault.audit.tail(200) if str(e.action) == PULL_ACTION]
    assert not report.ok and report.counts["stored"] == 0
    (problem,) = report.problems
    assert "retrieve ended with status 0x" in problem
    assert (f"the PACS may not know RadVault's move destination: AE title {RADVAULT_AE} "
            f"at 127.0.0.1:{elsewhere}") in problem
    assert str(entry.outcome) == "error"


def test_a_c_move_whose_listen_port_is_taken_fails_in_one_line_and_is_audited(
        pacs: tuple, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    orthanc, _port, held = pacs
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["--home", str(home), "pull", "--from-ae", orthanc.aet,
                     "--host", "127.0.0.1", "--port", str(orthanc.dicom_port),
                     "--study", held["study_a"], "--method", "move",
                     "--listen-port", str(port)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"error: cannot listen on 127.0.0.1:{port}: Address already in use" in err
    assert "Traceback" not in err
    with _open(home) as vault:
        (entry,) = [e for e in vault.audit.tail(200) if str(e.action) == PULL_ACTION]
    assert str(entry.outcome) == "error"


def test_pull_a_jpeg_2000_study_by_c_get(pacs: tuple, home: Path) -> None:
    orthanc, _port, held = pacs
    with _open(home) as vault:
        report = pull_dimse(vault, peer_ae=orthanc.aet, host="127.0.0.1",
                            port=orthanc.dicom_port, site="east", actor="tester",
                            study_uids=[held["j2k_study"]])
        assert report.ok, report.problems
        _check_stored(vault, "east", held["by_uid"][held["j2k_study"]])

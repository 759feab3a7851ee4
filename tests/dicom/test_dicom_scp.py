"""The SCP as modalities and PACS see it: DCMTK's echoscu, storescu and findscu against it.

Exact status codes are checked with pynetdicom as the SCU (DCMTK prints them
only as text); everything else goes through the DCMTK tools, as a real
modality would.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from dicomkit import (
    BIRTH_DATE,
    PASSPHRASE,
    PATIENT_ID,
    PATIENT_NAME,
    add_sites,
    dcmtk,
    make_dataset,
    require_dicom_dir,
    sop_instance_uid,
    write_series,
)
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, UltrasoundMultiFrameImageStorage

from conftest import NORTH, SOUTH
from radvault.config import load_settings
from radvault.dicom.nodes import DicomNode, NodeRegistry
from radvault.dicom.scp import (
    ASSOCIATION_ACTION,
    ASSOCIATION_END_ACTION,
    FIND_ACTION,
    DicomServer,
)
from radvault.pipeline.ingest import Ingestor
from radvault.pipeline.retrieve import open_image
from radvault.vault.keys import KdfParams
from radvault.vault.vault import Vault

#: Real files, grouped by the storescu option that proposes their transfer syntax.
#: Every one of these is stored (the emri_small variants share one SOP Instance UID,
#: so the second and later arrive as duplicates: still a Success).
REAL_STORED = {
    (): ["nema_wg04/CT1_UNC.dcm", "nema_wg04/MR1_UNC.dcm",
         "pydicom_data/eCT_Supplemental.dcm", "pydicom_data/emri_small_big_endian.dcm"],
    ("-xv",): ["pydicom_data/693_J2KR.dcm"],  # JPEG 2000 lossless
    ("-xw",): ["pydicom_data/RG3_J2KI.dcm"],  # JPEG 2000 lossy, CR
    ("-xs",): ["pydicom_data/bad_sequence.dcm"],  # JPEG lossless SV1
    ("-xt",): ["pydicom_data/emri_small_jpeg_ls_lossless.dcm"],  # JPEG-LS lossless
    ("-xr",): ["pydicom_data/emri_small_RLE.dcm"],  # RLE
    ("-xd",): ["derived/emri_small_deflated.dcm"],  # deflated explicit VR
}


def _entries(vault: Vault, action: str, server: DicomServer | None = None) -> list:
    """Audit entries of ``action`` (after ``server``'s associations ended and were audited)."""
    if server is not None:
        assert server.wait_idle()
    return [e for e in vault.audit.tail(10_000) if str(e.action) == action]


def _scu_args(server: DicomServer, calling: str = NORTH.ae_title) -> list[str]:
    host, port = server.address
    return ["-aet", calling, "-aec", server.ae_title, host, str(port)]


# --------------------------------------------------------------------------- associations


def test_echo_from_an_allowed_node_succeeds_and_is_audited(
        server: DicomServer, vault: Vault) -> None:
    result = dcmtk("echoscu", *_scu_args(server))
    assert result.returncode == 0, result.stderr
    accepted = _entries(vault, ASSOCIATION_ACTION)
    assert [(e.actor, str(e.outcome)) for e in accepted] == [("dicom:CT_NORTH", "ok")]
    assert accepted[0].details["site"] == "north"
    ends = _entries(vault, ASSOCIATION_END_ACTION, server)
    assert len(ends) == 1 and ends[0].details["stored"] == 0


def test_an_unknown_calling_ae_is_rejected_and_audited(server: DicomServer,
                                                       vault: Vault) -> None:
    result = dcmtk("echoscu", *_scu_args(server, "INTRUDER"))
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stderr
    refused = _entries(vault, ASSOCIATION_ACTION)
    assert [(e.actor, str(e.outcome)) for e in refused] == [("dicom:INTRUDER", "refused")]
    assert refused[0].details["reason"] == "calling AE not allowed"
    assert _entries(vault, ASSOCIATION_END_ACTION, server) == []


def test_an_allowed_ae_from_another_host_is_rejected(
        start_server: Callable[..., DicomServer], vault: Vault) -> None:
    server = start_server(nodes=NodeRegistry([DicomNode("CT_NORTH", "192.0.2.10", "north")]))
    result = dcmtk("echoscu", *_scu_args(server))
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stderr
    (entry,) = _entries(vault, ASSOCIATION_ACTION)
    assert str(entry.outcome) == "refused"
    assert entry.details["reason"] == "host not allowed for this AE title"


def test_a_request_for_another_called_ae_is_rejected(server: DicomServer,
                                                     vault: Vault) -> None:
    host, port = server.address
    result = dcmtk("echoscu", "-aet", NORTH.ae_title, "-aec", "SOMEONE_ELSE", host, str(port))
    assert result.returncode != 0
    assert "Called AE Title Not Recognized" in result.stderr
    assert str(_entries(vault, ASSOCIATION_ACTION)[0].outcome) == "refused"


def test_a_site_check_that_fails_rejects_for_now_and_is_audited(
        server: DicomServer, vault: Vault, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    import radvault.dicom.scp as scp

    def database_down(*_args: object) -> bool:
        raise RuntimeError("the catalog database went away")

    monkeypatch.setattr(scp, "site_exists", database_down)
    host, port = server.address
    result = dcmtk("echoscu", "-aet", NORTH.ae_title, "-aec", "RADVAULT", host, str(port))
    assert result.returncode != 0
    (entry,) = _entries(vault, ASSOCIATION_ACTION)
    assert str(entry.outcome) == "refused"
    assert entry.details["reason"] == "the node's site could not be checked"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "site check: unexpected RuntimeError" in logged
    assert "went away" not in logged  # the stack's frames, never the message


def test_a_node_of_a_site_nobody_registered_is_rejected_and_audited(
        start_server: Callable[..., DicomServer], vault: Vault, tmp_path: Path) -> None:
    # The allow-list file was edited by hand (`dicom nodes add` refuses such a site).
    server = start_server(nodes=NodeRegistry([DicomNode("CT_EAST", "127.0.0.1", "east")]))
    files = write_series(tmp_path / "east", "CT", 1)
    result = dcmtk("storescu", *_scu_args(server, "CT_EAST"), *files)
    assert result.returncode != 0
    (entry,) = _entries(vault, ASSOCIATION_ACTION)
    assert (entry.actor, str(entry.outcome)) == ("dicom:CT_EAST", "refused")
    assert entry.details["reason"] == "the node's site is unknown"
    assert vault.catalog.list_studies() == [] and _entries(vault, "ingest") == []


def test_a_node_of_the_default_site_registers_it_on_first_use(
        start_server: Callable[..., DicomServer], vault: Vault, tmp_path: Path) -> None:
    server = start_server(nodes=NodeRegistry([DicomNode("CT_MAIN", "127.0.0.1", "default")]))
    files = write_series(tmp_path / "main", "CT", 1)
    result = dcmtk("storescu", *_scu_args(server, "CT_MAIN"), *files)
    assert result.returncode == 0, result.stderr
    assert [(e.actor, list(e.object_ids)) for e in _entries(vault, "site.add", server)
            if "site:default" in e.object_ids] == [("system", ["site:default"])]
    assert vault.catalog.list_studies(site="default")[0].n_instances == 1


def test_server_sockets_have_nagle_off(server: DicomServer) -> None:
    ae = AE(ae_title=NORTH.ae_title)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate(*server.address, ae_title=server.ae_title)
    try:
        assert assoc.is_established
        (peer,) = server._ae.active_associations  # the server side of this association
        raw = peer.dul.socket.socket
        assert raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        assoc.release()


# --------------------------------------------------------------------------- C-STORE


# bad_sequence.dcm's SOP Instance UID is not a UID: pydicom warns while pynetdicom decodes
# the C-STORE command, and pytest's warnings-as-errors would turn that into a broken message.
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_storescu_real_files_in_every_transfer_syntax_are_stored(
        server: DicomServer, vault: Vault) -> None:
    data = require_dicom_dir()
    sent: list[Path] = []
    for options, names in REAL_STORED.items():
        files = [data / n for n in names]
        result = dcmtk("storescu", *options, *_scu_args(server), *files)
        assert result.returncode == 0, (options, result.stderr)
        assert "Store Failed" not in result.stderr
        sent += files
    expected = {sop_instance_uid(p) for p in sent}
    studies = vault.catalog.list_studies(site="north")
    instances = [i for s in studies for i in vault.catalog.instances_of_study(s.study_id)]
    assert len(instances) == len(expected)
    assert not {i.instance_id for i in instances} & expected  # UIDs were replaced
    for instance in instances:
        record = open_image(vault, instance.instance_id, actor="tester")
        assert record.pixels.size > 0
    (end,) = _entries(vault, ASSOCIATION_END_ACTION, server)[-1:]
    assert end.details["refused"] == 0


def test_a_generated_series_in_one_association_lands_as_one_study(
        server: DicomServer, vault: Vault, tmp_path: Path) -> None:
    study_uid = generate_uid()
    files = write_series(tmp_path / "ct", "CT", 20, study_uid=study_uid)
    for modality in ("DX", "MG", "XA", "NM", "MR"):  # the other storage classes
        write_series(tmp_path / "ct", modality, 1, study_uid=study_uid)
    result = dcmtk("storescu", "+sd", *_scu_args(server), tmp_path / "ct")
    assert result.returncode == 0, result.stderr
    (study,) = vault.catalog.list_studies(site="north")
    assert study.n_instances == 25
    assert study.study_id != study_uid
    instances = vault.catalog.instances_of_study(study.study_id)
    assert len({i.series_id for i in instances}) == 6
    record = open_image(vault, instances[0].instance_id, actor="tester")
    assert (record.rows, record.columns) == (64, 64)
    ingests = [e for e in _entries(vault, "ingest") if e.actor == "dicom:CT_NORTH"]
    assert len(ingests) == 25
    (end,) = _entries(vault, ASSOCIATION_END_ACTION, server)
    assert end.details["stored"] == 25
    assert len(files) == 20


def test_a_burned_in_ultrasound_is_refused_and_audited(server: DicomServer,
                                                       vault: Vault) -> None:
    data = require_dicom_dir()
    result = dcmtk("storescu", "-v", *_scu_args(server), data / "nema_wg04/US1_UNC.dcm")
    assert result.returncode != 0
    assert "Received Store Response (Unknown Status: 0x124)" in result.stderr  # Not Authorised
    assert vault.catalog.list_studies() == []
    (refused,) = _entries(vault, "ingest_refused")
    assert refused.actor == "dicom:CT_NORTH"
    assert refused.details == {"error": "BurnedInAnnotationRefused",
                               "policy": "burned_in_annotation"}
    (end,) = _entries(vault, ASSOCIATION_END_ACTION, server)
    assert end.details["refused"] == 1


def _store_with_pynetdicom(server: DicomServer, ds: pydicom.Dataset, sop_class: str
                           ) -> pydicom.Dataset:
    ae = AE(ae_title=NORTH.ae_title)
    ae.add_requested_context(sop_class)
    assoc = ae.associate(*server.address, ae_title=server.ae_title)
    assert assoc.is_established
    try:
        return assoc.send_c_store(ds)
    finally:
        assoc.release()


def test_refusals_carry_the_failure_status_of_their_reason(server: DicomServer,
                                                           vault: Vault) -> None:
    study, series = generate_uid(), generate_uid()
    us = make_dataset("US", study_uid=study, series_uid=series, frames=2)
    status = _store_with_pynetdicom(server, us, UltrasoundMultiFrameImageStorage)
    assert status.Status == 0x0124  # Refused: Not Authorised (burned-in policy)
    assert status.ErrorComment == "BurnedInAnnotationRefused"

    broken = make_dataset("CT", study_uid=study, series_uid=series)
    broken.PixelData = broken.PixelData[:100]  # truncated pixels
    status = _store_with_pynetdicom(server, broken, CTImageStorage)
    assert 0xA700 <= status.Status <= 0xCFFF
    assert vault.catalog.list_studies() == []
    assert len(_entries(vault, "ingest_refused")) == 2


def test_an_instance_of_another_sites_study_is_refused_not_merged(
        server: DicomServer, vault: Vault, tmp_path: Path) -> None:
    files = write_series(tmp_path / "ct", "CT", 4)  # one study, four instances
    first = dcmtk("storescu", *_scu_args(server, NORTH.ae_title), *files[:2])
    assert first.returncode == 0, first.stderr

    second = dcmtk("storescu", "-v", *_scu_args(server, SOUTH.ae_title), files[2])
    ds = pydicom.dcmread(files[3])
    ds.SOPInstanceUID = generate_uid()
    ae = AE(ae_title=SOUTH.ae_title)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(*server.address, ae_title=server.ae_title)
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()

    assert second.returncode != 0
    assert "Received Store Response (Unknown Status: 0x124)" in second.stderr
    assert (status.Status, status.ErrorComment) == (0x0124, "StudySiteConflict")
    (study,) = vault.catalog.list_studies()
    assert (study.site, study.n_instances) == ("north", 2)
    refused = _entries(vault, "ingest_refused", server)
    assert [(e.actor, e.details, list(e.object_ids)) for e in refused] == [
        ("dicom:MR_SOUTH", {"error": "StudySiteConflict"}, [study.study_id])] * 2
    ends = [e for e in _entries(vault, ASSOCIATION_END_ACTION) if e.actor == "dicom:MR_SOUTH"]
    assert sum(e.details["refused"] for e in ends) == 2


def test_success_comes_after_the_instance_is_sealed_signed_and_audited(
        server: DicomServer, vault: Vault) -> None:
    ds = make_dataset("CT", study_uid=generate_uid(), series_uid=generate_uid())
    status = _store_with_pynetdicom(server, ds, CTImageStorage)
    assert status.Status == 0x0000
    # By the time the response arrived, everything is there: no waiting.
    (study,) = vault.catalog.list_studies(site="north")
    (instance,) = vault.catalog.instances_of_study(study.study_id)
    kinds = {o.kind for o in vault.catalog.objects_of_instance(instance.instance_id)}
    assert kinds == {"dicom", "model_input"}
    assert any(instance.instance_id in e.object_ids for e in _entries(vault, "ingest"))
    stored = bytes(vault.open_object(
        next(o for o in vault.catalog.objects_of_instance(instance.instance_id)
             if o.kind == "dicom"), actor="tester"))
    assert PATIENT_NAME.encode() not in stored and PATIENT_ID.encode() not in stored


def test_burned_in_instances_are_stored_when_the_vault_accepts_them(
        start_server: Callable[..., DicomServer], tmp_path: Path) -> None:
    settings = load_settings(env={}, home=tmp_path / "accepting", accept_burned_in=True)
    accepting = Vault.init(settings, PASSPHRASE, kdf=KdfParams.fast())
    add_sites(accepting, NORTH.site)
    try:
        server = start_server(vault=accepting)
        us = make_dataset("US", study_uid=generate_uid(), series_uid=generate_uid(), frames=2)
        status = _store_with_pynetdicom(server, us, UltrasoundMultiFrameImageStorage)
        assert status.Status == 0x0000
        assert accepting.catalog.list_studies(site="north")[0].n_instances == 1
        server.stop()
    finally:
        accepting.close()


# --------------------------------------------------------------------------- C-FIND


@pytest.fixture
def two_sites(vault: Vault, tmp_path: Path) -> dict[str, str]:
    """One 3-slice CT study at site north and one MR study at site south."""
    ids = {}
    for node, modality, n in ((NORTH, "CT", 3), (SOUTH, "MR", 2)):
        ingestor = Ingestor(vault, actor="tester", site=node.site)
        for path in write_series(tmp_path / node.site, modality, n):
            outcome = ingestor.ingest_file(path)
            assert outcome.status == "stored"
            ids[node.site] = outcome.study_id
    return ids


def _find(server: DicomServer, out: Path, *keys: str, calling: str = NORTH.ae_title
          ) -> list[pydicom.Dataset]:
    out.mkdir(parents=True, exist_ok=True)
    args = [item for key in keys for item in ("-k", key)]
    result = dcmtk("findscu", "-S", "-X", "-od", out, *args, *_scu_args(server, calling))
    assert result.returncode == 0, result.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


STUDY_KEYS = ("QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientName", "PatientID",
              "PatientBirthDate", "StudyDate", "AccessionNumber", "ModalitiesInStudy",
              "NumberOfStudyRelatedInstances", "NumberOfStudyRelatedSeries")


def test_findscu_study_level_returns_only_de_identified_values_of_the_nodes_site(
        server: DicomServer, vault: Vault, two_sites: dict[str, str], tmp_path: Path) -> None:
    (answer,) = _find(server, tmp_path / "north", *STUDY_KEYS)
    study = vault.catalog.get_study(two_sites["north"])
    assert answer.StudyInstanceUID == two_sites["north"]
    assert str(answer.PatientName) == study.patient_pseudonym.strip()
    assert answer.PatientID == study.patient_pseudonym
    assert str(answer.PatientName).startswith("RV-")
    assert answer.PatientBirthDate == "" and answer.StudyDate == ""
    assert answer.AccessionNumber == ""
    assert answer.ModalitiesInStudy == "CT"
    assert int(answer.NumberOfStudyRelatedInstances) == 3
    assert int(answer.NumberOfStudyRelatedSeries) == 1
    raw = b"".join(p.read_bytes() for p in (tmp_path / "north").glob("rsp*.dcm"))
    for secret in (PATIENT_NAME, PATIENT_ID, BIRTH_DATE, "ACC-9917", "Saint Example"):
        assert secret.encode() not in raw

    (south,) = _find(server, tmp_path / "south", *STUDY_KEYS, calling=SOUTH.ae_title)
    assert south.StudyInstanceUID == two_sites["south"]
    finds = _entries(vault, FIND_ACTION)
    assert [(e.actor, e.details["matches"]) for e in finds] == [
        ("dicom:CT_NORTH", 1), ("dicom:MR_SOUTH", 1)]


def test_findscu_series_level_lists_the_series_of_a_study(
        server: DicomServer, two_sites: dict[str, str], tmp_path: Path) -> None:
    (series,) = _find(server, tmp_path / "series", "QueryRetrieveLevel=SERIES",
                      f"StudyInstanceUID={two_sites['north']}", "SeriesInstanceUID",
                      "Modality", "NumberOfSeriesRelatedInstances")
    assert series.StudyInstanceUID == two_sites["north"]
    assert series.Modality == "CT"
    assert int(series.NumberOfSeriesRelatedInstances) == 3
    # another site's study is out of reach, even when named
    assert _find(server, tmp_path / "other", "QueryRetrieveLevel=SERIES",
                 f"StudyInstanceUID={two_sites['south']}", "SeriesInstanceUID") == []


def test_findscu_cannot_match_on_identifying_values(
        server: DicomServer, two_sites: dict[str, str], tmp_path: Path) -> None:
    assert _find(server, tmp_path / "a", "QueryRetrieveLevel=STUDY", "PatientName=Doe*") == []
    assert _find(server, tmp_path / "b", "QueryRetrieveLevel=STUDY",
                 f"PatientBirthDate={BIRTH_DATE}") == []
    assert len(_find(server, tmp_path / "c", "QueryRetrieveLevel=STUDY",
                     "PatientName=RV-*")) == 1

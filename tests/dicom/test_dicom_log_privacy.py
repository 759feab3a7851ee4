"""No DICOM value reaches a log or stderr on the C-STORE path, even one pynetdicom or
pydicom find invalid and would quote (a UID that carries a medical record number)."""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom
import pytest
from dicomkit import dcmtk, make_dataset, require_dicom_dir
from pydicom.uid import generate_uid

from conftest import NORTH
from radvault.dicom._logs import REDACTED, RedactValues
from radvault.dicom.scp import DicomServer
from radvault.vault.vault import Vault

BAD_UID = "1.2.840.99.MRN0042.19610225"  # non-conformant: 'MRN0042' is no number


def _send(server: DicomServer, *args: str | Path) -> str:
    host, port = server.address
    result = dcmtk("storescu", "-v", "-aet", NORTH.ae_title, "-aec", server.ae_title,
                   host, str(port), *args)
    assert result.returncode == 0, result.stderr
    assert server.wait_idle()
    return result.stderr


def test_a_non_conformant_uid_is_stored_and_never_logged_or_printed(
        server: DicomServer, vault: Vault, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    ds = make_dataset("CT", study_uid=generate_uid(), series_uid=generate_uid())
    ds.SOPInstanceUID = BAD_UID
    ds.file_meta.MediaStorageSOPInstanceUID = BAD_UID
    path = tmp_path / "bad-uid.dcm"
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):
        ds.save_as(path, enforce_file_format=True)
    data = require_dicom_dir()
    bad_sequence = data / "pydicom_data" / "bad_sequence.dcm"
    its_uid = str(pydicom.dcmread(bad_sequence, stop_before_pixels=True).SOPInstanceUID)

    with caplog.at_level(logging.DEBUG):
        _send(server, path)
        _send(server, "-xs", bad_sequence)

    assert sum(s.n_instances for s in vault.catalog.list_studies(site="north")) == 2
    logged = caplog.text + "".join(repr(r.args) for r in caplog.records)
    printed = "".join(capfd.readouterr())
    for value in (BAD_UID, "MRN0042", its_uid):
        assert value not in logged
        assert value not in printed
    assert "Non-conformant '...' value '...'" in logged  # the warning is kept, its value is not


def test_library_records_lose_their_quoted_values_and_exceptions() -> None:
    record = logging.LogRecord("pynetdicom.utils", logging.WARNING, __file__, 1,
                               "Non-conformant %r value '%s'", ("Affected UID", BAD_UID), None)
    try:
        raise ValueError(BAD_UID)
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    debug = logging.LogRecord("pynetdicom.dimse", logging.DEBUG, __file__, 1, "dump", (), None)

    assert RedactValues().filter(record)
    assert record.getMessage() == f"Non-conformant {REDACTED} value {REDACTED} (ValueError)"
    assert record.exc_info is None
    assert not RedactValues().filter(debug)

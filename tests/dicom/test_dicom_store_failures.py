"""A C-STORE that fails unexpectedly: refused with Processing Failure, audited, and its
PHI-free stack logged (types and file:line:function, never the message)."""

from __future__ import annotations

import logging
import threading

import pytest
from pydicom.dataset import Dataset

from radvault.dicom._storage import StoreReceiver
from radvault.vault.vault import Vault

MRN = "MRN-4711-DOE"  # planted: must never reach a log record
STORAGE_LOG = "radvault.dicom._storage"


class FakeStoreEvent:
    """The one thing :class:`StoreReceiver` asks of pynetdicom's ``EVT_C_STORE`` event."""

    def encoded_dataset(self, include_meta: bool = True) -> bytes:
        return b"\0" * 128 + b"DICM" + MRN.encode()


def _stacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == STORAGE_LOG and r.levelno == logging.ERROR]


def _no_phi(caplog: pytest.LogCaptureFixture) -> None:
    assert MRN not in caplog.text + "".join(repr(r.args) for r in caplog.records)
    assert all(r.exc_info is None for r in caplog.records)


def test_an_unexpected_ingest_failure_logs_its_stack_without_phi(
    vault: Vault, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = StoreReceiver(vault, "dicom:CT_NORTH", "north", threading.Lock())

    def ingest_with_a_bug(data: bytes, name: str) -> None:
        header = {"PatientID": MRN}  # a local holding PHI
        raise AttributeError(f"no attribute for {header['PatientID']}")  # a message with PHI

    monkeypatch.setattr(receiver.ingestor, "ingest_bytes", ingest_with_a_bug)
    with caplog.at_level(logging.INFO):
        status: Dataset = receiver(FakeStoreEvent())

    assert status.Status == 0x0110 and status.ErrorComment == "AttributeError"
    assert receiver.counts["refused"] == 1
    [stack] = _stacks(caplog)
    assert stack.startswith("C-STORE from dicom:CT_NORTH: ingest failed: unexpected "
                            "AttributeError\n")
    assert " in __call__\n" in stack and stack.endswith(" in ingest_with_a_bug")
    assert "radvault/dicom/_storage.py:" in stack and "test_dicom_store_failures.py:" in stack
    _no_phi(caplog)
    [entry] = vault.audit.tail(1)  # the refusal is audited, by type only
    assert (entry.actor, entry.details) == ("dicom:CT_NORTH",
                                            {"error": "AttributeError", "via": "c-store"})


def test_a_failure_to_audit_a_refusal_logs_its_stack(
    vault: Vault, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = StoreReceiver(vault, "dicom:CT_NORTH", "north", threading.Lock())

    def ingest_failing(data: bytes, name: str) -> None:
        raise RuntimeError(MRN)

    def audit_failing(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device", f"/audit/{MRN}")

    monkeypatch.setattr(receiver.ingestor, "ingest_bytes", ingest_failing)
    monkeypatch.setattr(vault.audit, "append", audit_failing)
    with caplog.at_level(logging.INFO):
        status = receiver(FakeStoreEvent())

    assert status.Status == 0x0110  # the status still goes back
    ingest, audit = _stacks(caplog)
    assert ingest.startswith("C-STORE from dicom:CT_NORTH: ingest failed: unexpected "
                             "RuntimeError\n")
    assert audit.startswith("could not audit a refused C-STORE from dicom:CT_NORTH: "
                            "unexpected OSError\n")
    own, _, context = audit.partition("\nraised while handling: ")
    assert " in _failed\n" in own and own.endswith(" in audit_failing")
    assert context.startswith("RuntimeError\n") and context.endswith(" in ingest_failing")
    _no_phi(caplog)

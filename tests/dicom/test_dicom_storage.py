"""What the DICOM faces share: accepted SOP classes and syntaxes, statuses, actors, memory only."""

from __future__ import annotations

import pytest
from pydicom.uid import UID
from pynetdicom import _config as pynetdicom_config

from radvault import errors
from radvault.dicom import STATUS_BY_ERROR, STORAGE_SOP_CLASSES, accepted_transfer_syntaxes
from radvault.dicom._storage import actor_for, check_in_memory_receive
from radvault.dicom.scp import DicomServer
from radvault.errors import ConfigurationError
from radvault.vault.vault import Vault


def test_the_storage_classes_cover_the_modalities_of_the_issue() -> None:
    names = " ".join(UID(u).name for u in STORAGE_SOP_CLASSES)
    for needle in ("CT Image", "MR Image", "Computed Radiography", "Digital X-Ray",
                   "Ultrasound Image", "Ultrasound Multi-frame", "Secondary Capture",
                   "X-Ray Angiographic", "Nuclear Medicine", "Digital Mammography"):
        assert needle in names


def test_only_decodable_transfer_syntaxes_are_accepted() -> None:
    accepted = {str(u) for u in accepted_transfer_syntaxes()}
    assert {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99",
            "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.5",
            "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.50"} <= accepted
    assert "1.2.840.10008.1.2.4.100" not in accepted  # MPEG-2: no decoder, never negotiated


def test_every_refusal_maps_to_a_failure_status_of_an_error_that_exists() -> None:
    for name, code in STATUS_BY_ERROR.items():
        assert issubclass(getattr(errors, name), errors.RadVaultError)
        assert code == 0x0124 or 0xA700 <= code <= 0xCFFF


@pytest.mark.parametrize(("ae", "actor"), [
    ("CT_NORTH", "dicom:CT_NORTH"), ("  MR 1 ", "dicom:MR_1"), ("../x;y", "dicom:.._x_y"),
    ("", "dicom:_"),
])
def test_actors_are_safe_for_the_audit_trail(ae: str, actor: str) -> None:
    assert actor_for(ae) == actor


def test_spooling_received_images_to_disk_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                     vault: Vault) -> None:
    check_in_memory_receive()
    monkeypatch.setattr(pynetdicom_config, "STORE_RECV_CHUNKED_DATASET", True)
    with pytest.raises(ConfigurationError, match="temporary"):
        check_in_memory_receive()
    with pytest.raises(ConfigurationError):
        DicomServer(vault, nodes=None)  # type: ignore[arg-type]


def test_c_get_proposes_compressed_syntaxes_each_on_its_own_within_the_context_limit() -> None:
    from radvault.dicom._storage import retrieve_contexts

    contexts = retrieve_contexts()
    assert len(contexts) <= 127  # and one for C-GET itself: pynetdicom's 128
    ct = [syntaxes for uid, syntaxes in contexts if uid == "1.2.840.10008.5.1.4.1.1.2"]
    assert ["1.2.840.10008.1.2.4.90"] in ct and ["1.2.840.10008.1.2.4.91"] in ct
    assert "1.2.840.10008.1.2.1" in ct[0]  # the native syntaxes share one context
    assert all(len(s) == 1 for s in ct[1:])

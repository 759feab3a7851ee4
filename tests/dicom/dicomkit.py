"""Helpers of the DICOM tests: synthetic instances, DCMTK runners, a throw-away PKI and Orthanc.

Imported by name from the test modules (``tests/dicom`` is on ``sys.path``
under pytest's default import mode), like ``tests/api/apikit.py``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

DATA_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
DICOM_DIR = DATA_DIR / "dicom"
PASSPHRASE = "correct horse battery staple"
ORTHANC_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")

#: Identifying values every synthetic instance carries (they must never come back out).
PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-0042"
BIRTH_DATE = "19700101"

SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "MG": "1.2.840.10008.5.1.4.1.1.1.2",
    "XA": "1.2.840.10008.5.1.4.1.1.12.1",
    "NM": "1.2.840.10008.5.1.4.1.1.20",
    "US": "1.2.840.10008.5.1.4.1.1.3.1",  # multi-frame ultrasound
    "SC": "1.2.840.10008.5.1.4.1.1.7",
}


# --------------------------------------------------------------------------- sites


def add_sites(vault: object, *names: str) -> None:
    """Register sites in ``vault``, as ``radvault sites add`` does: studies go only into
    sites that exist, and a node of an unknown site is rejected."""
    from radvault.access.store import AccessStore
    from radvault.access.users import ensure_site

    store = AccessStore.create(vault.catalog.write_engine())  # type: ignore[attr-defined]
    for name in names:
        ensure_site(store, name, actor="cli:tests", audit=vault.audit.append)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- synthetic DICOM


def make_dataset(modality: str, *, study_uid: str, series_uid: str, index: int = 1,
                 size: int = 64, seed: int = 0, frames: int = 1,
                 patient_name: str = PATIENT_NAME, patient_id: str = PATIENT_ID) -> Dataset:
    """A small, valid, uncompressed instance of ``modality`` with identifying values."""
    rng = np.random.default_rng(seed * 1000 + index)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SOP_CLASSES[modality]
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SOP_CLASSES[modality]
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = BIRTH_DATE
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC-9917"
    ds.InstitutionName = "Saint Example Hospital"
    ds.ReferringPhysicianName = "House^Gregory"
    ds.Modality = modality
    ds.InstanceNumber = index
    ds.SeriesNumber = 1
    ds.BodyPartExamined = "CHEST"
    if modality in ("XA", "NM", "DX", "MG"):
        ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    if modality in ("US", "SC"):
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        pixels = rng.integers(0, 255, (frames, size, size), dtype=np.uint8)
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        pixels = rng.integers(0, 4000, (frames, size, size), dtype=np.uint16)
        if modality == "CT":
            ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
            ds.ImagePositionPatient = [0, 0, float(index)]
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.tobytes()
    return ds


def write_series(folder: Path, modality: str, n: int, *, study_uid: str | None = None,
                 size: int = 64, seed: int = 0, **kwargs: object) -> list[Path]:
    """Write ``n`` instances of one new series (of ``study_uid`` or a new study) to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    paths = []
    for i in range(1, n + 1):
        ds = make_dataset(modality, study_uid=study_uid, series_uid=series_uid, index=i,
                          size=size, seed=seed, **kwargs)  # type: ignore[arg-type]
        path = folder / f"{modality}_{seed}_{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def require_dicom_dir() -> Path:
    """The shared DICOM corpus, or skip the test with the reason."""
    if not (DICOM_DIR / "README.md").is_file():
        pytest.skip(f"shared DICOM corpus not found at {DICOM_DIR}")
    return DICOM_DIR


def sop_instance_uid(path: Path) -> str:
    """A file's SOP Instance UID (header only)."""
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_tool(name: str, package: str = "dcmtk") -> str:
    """The path of an external program, or skip with the reason and how to get it."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (Debian package {package}; "
                    "tools/install_test_services.sh installs it)")
    return path


def dcmtk(tool: str, *args: str | Path, timeout: float = 60,
          cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK tool (TCP_NODELAY on) and return its completed process."""
    exe = require_tool(tool)
    env = dict(os.environ, TCP_NODELAY="1")
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd, check=False)


# --------------------------------------------------------------------------- PKI


@dataclass(frozen=True)
class Pki:
    """A throw-away CA with a server, a client and a rogue (self-signed) client identity."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(key: rsa.RSAPrivateKey, path: Path) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path


def _cert(subject: str, key: rsa.RSAPrivateKey, issuer: x509.Name | None,
          issuer_key: rsa.RSAPrivateKey, *, ca: bool, server: bool = False) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False), critical=True)
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(folder: Path) -> Pki:
    """Generate the CA, server, client and rogue identities as PEM files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca = _cert("RadVault Test CA", ca_key, None, ca_key, ca=True)

    def issue(stem: str, cn: str, *, server: bool) -> tuple[Path, Path]:
        key = _key()
        cert = _cert(cn, key, ca.subject, ca_key, ca=False, server=server)
        (folder / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return folder / f"{stem}.pem", _write_key(key, folder / f"{stem}.key")

    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server_cert, server_key = issue("server", "localhost", server=True)
    client_cert, client_key = issue("client", "CT_NORTH", server=False)
    rogue_key = _key()
    rogue = _cert("Rogue", rogue_key, None, rogue_key, ca=False)
    (folder / "rogue.pem").write_bytes(rogue.public_bytes(serialization.Encoding.PEM))
    return Pki(folder / "ca.pem", server_cert, server_key, client_cert, client_key,
               folder / "rogue.pem", _write_key(rogue_key, folder / "rogue.key"))


# --------------------------------------------------------------------------- Orthanc


@dataclass(frozen=True)
class Orthanc:
    """A running throw-away Orthanc."""

    aet: str
    dicom_port: int
    http_port: int
    pid: int

    @property
    def url(self) -> str:
        """The REST root."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        """The DICOMweb root."""
        return f"{self.url}/dicom-web"

    def get_json(self, path: str) -> object:
        """GET a REST resource as JSON."""
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.load(response)

    def upload(self, path: Path) -> dict[str, object]:
        """POST one DICOM file to /instances (the REST upload)."""
        request = urllib.request.Request(self.url + "/instances", data=path.read_bytes(),
                                         headers={"Content-Type": "application/dicom"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)


def require_orthanc() -> str:
    """The Orthanc binary (with the DICOMweb plugin), or skip with the reason."""
    exe = require_tool("Orthanc", "orthanc")
    if not ORTHANC_DICOMWEB_PLUGIN.is_file():
        pytest.skip(f"Orthanc DICOMweb plugin not found at {ORTHANC_DICOMWEB_PLUGIN} "
                    "(Debian package orthanc-dicomweb)")
    return exe


@contextmanager
def run_orthanc(folder: Path, *, modalities: dict[str, Sequence[object]] | None = None,
                aet: str = "ORTHANC") -> Iterator[Orthanc]:
    """Start Orthanc on loopback with a throw-away config in ``folder``; stop it by its PID."""
    exe = require_orthanc()
    folder.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = free_port(), free_port()
    config = {
        "Name": "radvault-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomModalities": modalities or {},
        "Plugins": [str(ORTHANC_DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "SaveJobs": False,
        "HttpServerEnabled": True,
        "OrthancExplorerEnabled": False,
        "WebDavEnabled": False,
    }
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log = (folder / "orthanc.log").open("w")
    proc = subprocess.Popen([exe, str(config_path)], stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, TCP_NODELAY="1"))
    server = Orthanc(aet, dicom_port, http_port, proc.pid)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                server.get_json("/system")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("Orthanc did not start: see "
                                       f"{folder / 'orthanc.log'}") from None
                time.sleep(0.05)
        yield server
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()

"""DICOM ingest throughput: RadVault's SCP versus Orthanc, on the same generated corpus.

Corpus (generated, seeded): 500 CT images 512x512 16-bit and 500 Secondary
Capture images 256x256 8-bit, over 20 studies (10 of each kind, 50 images per
study); ``--quick`` makes 50 + 50 over 4 studies. Both servers run on
loopback in this machine, Orthanc from the Debian package with its default
storage settings (plaintext files, fsync on) and TCP_NODELAY=1; RadVault's
SCP in this process over a fresh vault (fast KDF: it only changes unlocking).

Each kind is sent with DCMTK's ``storescu`` over one association (TCP_NODELAY=1),
to Orthanc, then to RadVault; the time is the wall time of the storescu
process. STOW-RS (25 instances per request, the files' bytes in one
multipart/related body, one request at a time over one keep-alive connection)
goes to Orthanc's DICOMweb plugin and to RadVault's ``/dicomweb`` (the API in a
child process, ``uvicorn`` on 127.0.0.1, plain HTTP like Orthanc's, over a
second fresh vault so nothing is a duplicate; bearer token from a
technologist's login, which is not timed).

RadVault acknowledges each instance only after it is de-identified (PS3.15),
preprocessed for the model, sealed (AES-256-GCM, fsynced), cataloged with a
signed row (SQLite, synchronous=FULL) and audited (hash chain, signed
checkpoints). **Secondary Capture images are refused by default** (their pixels
routinely carry burned-in text): this benchmark's vault sets
``accept_burned_in=True`` so they are measured, and says so in its output.

A profile pass ingests part of the corpus through the same ingest flow with
cProfile and reports where the time goes per stage.

Usage::

    python benchmarks/dicom_ingest.py [--quick] [--profile-n 40] [--keep] [--no-radvault-stow]

Prints a table and writes ``benchmarks/results/dicom_ingest.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import os
import pstats
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from _common import add_site, print_table, write_results
from radvault.config import load_settings
from radvault.dicom.nodes import DicomNode, NodeRegistry
from radvault.dicom.scp import DicomServer
from radvault.pipeline.ingest import Ingestor
from radvault.vault.keys import KdfParams
from radvault.vault.vault import Vault

PASSPHRASE = "benchmark passphrase, not a secret"
API_USER = "bench-tech"
API_PASSWORD = "Benchmark-Password-42!"
CALLING_AE = "BENCH_SCU"
ORTHANC_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
TARGET_RATIO = 1.0
STOW_BATCH = 25

log = logging.getLogger("dicom_ingest")


# --------------------------------------------------------------------------- corpus


def _phantom(rng: np.random.Generator, size: int, slice_index: int) -> np.ndarray:
    """A smooth body-like phantom with noise: compressible and realistic enough to preprocess."""
    y, x = np.ogrid[-1:1:size * 1j, -1:1:size * 1j]
    body = (x ** 2 / 0.8 + y ** 2 / 0.55) < 1
    organ = ((x - 0.25) ** 2 + (y + 0.1) ** 2) < (0.15 + 0.05 * np.sin(slice_index / 7)) ** 2
    image = np.where(body, 1000.0, 0.0) + np.where(organ, 300.0, 0.0)
    return image + rng.normal(0, 20, (size, size))


def _instance(kind: str, study: str, series: str, index: int, patient: int,
              rng: np.random.Generator) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    sop_class = CTImageStorage if kind == "CT" else SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientName = f"Bench^Patient{patient}"
    ds.PatientID = f"BENCH-{patient:04d}"
    ds.PatientBirthDate = "19600101"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.StudyDate = "20240301"
    ds.AccessionNumber = f"ACC{patient:06d}"
    ds.InstitutionName = "Benchmark General"
    ds.InstanceNumber = index
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    if kind == "CT":
        ds.Modality = "CT"
        ds.Rows = ds.Columns = 512
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.ImagePositionPatient = [0.0, 0.0, float(index)]
        ds.PixelData = _phantom(rng, 512, index).astype(np.int16).tobytes()
    else:
        ds.Modality = "OT"
        ds.ConversionType = "WSD"
        ds.Rows = ds.Columns = 256
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = np.clip(_phantom(rng, 256, index) / 5, 0, 255).astype(np.uint8).tobytes()
    return ds


def generate_corpus(root: Path, per_kind: int, studies_per_kind: int, seed: int = 7
                    ) -> dict[str, list[Path]]:
    """Write ``per_kind`` CT and SC instances over ``studies_per_kind`` studies each."""
    rng = np.random.default_rng(seed)
    corpus: dict[str, list[Path]] = {}
    patient = 0
    for kind in ("CT", "SC"):
        folder = root / kind
        folder.mkdir(parents=True)
        paths = []
        per_study = -(-per_kind // studies_per_kind)
        for s in range(studies_per_kind):
            patient += 1
            study, series = generate_uid(), generate_uid()
            for i in range(min(per_study, per_kind - len(paths))):
                path = folder / f"{kind}_{s:02d}_{i:03d}.dcm"
                _instance(kind, study, series, i + 1, patient, rng).save_as(
                    path, enforce_file_format=True)
                paths.append(path)
        corpus[kind] = paths
    return corpus


# --------------------------------------------------------------------------- servers


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env() -> dict[str, str]:
    return dict(os.environ, TCP_NODELAY="1")


@contextmanager
def orthanc(folder: Path) -> Iterator[dict[str, Any]]:
    """Start Orthanc on loopback with a throw-away config; stop it by its PID."""
    exe = shutil.which("Orthanc")
    if exe is None:
        raise SystemExit("Orthanc not installed (tools/install_test_services.sh)")
    dicom_port, http_port = _free_port(), _free_port()
    config = {
        "Name": "bench", "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"), "DicomAet": "ORTHANC",
        "DicomPort": dicom_port, "HttpPort": http_port, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "SaveJobs": False,
        "Plugins": [str(ORTHANC_PLUGIN)] if ORTHANC_PLUGIN.is_file() else [],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "orthanc.json").write_text(json.dumps(config))
    with open(folder / "orthanc.log", "w") as logfile:
        proc = subprocess.Popen([exe, str(folder / "orthanc.json")], stdout=logfile,
                                stderr=subprocess.STDOUT, env=_env())
        url = f"http://127.0.0.1:{http_port}"
        try:
            for _ in range(600):
                try:
                    with urllib.request.urlopen(url + "/system", timeout=1) as r:
                        version = json.load(r)["Version"]
                    break
                except OSError:
                    if proc.poll() is not None:
                        raise SystemExit(f"Orthanc failed to start: {folder / 'orthanc.log'}"
                                         ) from None
                    time.sleep(0.05)
            yield {"aet": "ORTHANC", "port": dicom_port, "url": url, "version": version,
                   "dicomweb": ORTHANC_PLUGIN.is_file()}
        finally:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)


def _orthanc_count(url: str) -> int:
    with urllib.request.urlopen(url + "/statistics", timeout=10) as r:
        return int(json.load(r)["CountInstances"])


def _orthanc_reset(url: str) -> None:
    with urllib.request.urlopen(url + "/instances", timeout=30) as r:
        ids = json.load(r)
    for iid in ids:
        request = urllib.request.Request(f"{url}/instances/{iid}", method="DELETE")
        urllib.request.urlopen(request, timeout=30).close()


# --------------------------------------------------------------------------- senders


def storescu(files: list[Path], called: str, port: int, folder: Path) -> float:
    """Send ``files`` (one folder) over one association; return the wall time."""
    exe = shutil.which("storescu")
    if exe is None:
        raise SystemExit("storescu not installed (DCMTK: tools/install_test_services.sh)")
    start = time.perf_counter()
    result = subprocess.run([exe, "+sd", "-aet", CALLING_AE, "-aec", called, "127.0.0.1",
                             str(port), str(folder)], capture_output=True, text=True,
                            env=_env(), check=False)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"storescu to {called} failed:\n{result.stderr[-2000:]}")
    return elapsed


def stow(files: list[Path], url: str, token: str | None = None) -> float:
    """POST ``files`` to a STOW-RS endpoint, ``STOW_BATCH`` per request; return the wall time.

    Every request must answer 200 (every instance stored): a refused instance
    would make the run look faster than it is.
    """
    import requests

    bodies = []
    for i in range(0, len(files), STOW_BATCH):
        boundary = uuid.uuid4().hex
        parts = []
        for path in files[i:i + STOW_BATCH]:
            parts.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
            parts.append(path.read_bytes())
            parts.append(b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        bodies.append((boundary, b"".join(parts)))
    session = requests.Session()
    if token is not None:
        session.headers["Authorization"] = f"Bearer {token}"
    start = time.perf_counter()
    for boundary, body in bodies:
        response = session.post(url, data=body, headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json"}, timeout=300)
        if response.status_code != 200:
            raise SystemExit(f"STOW-RS to {url} answered {response.status_code}: "
                             f"{response.text[:500]}")
    return time.perf_counter() - start


def _api_settings(home: Path) -> Any:
    return load_settings(env={}, home=home, accept_burned_in=True)


def _serve_api(home: str, port: str) -> None:
    """The child process: RadVault's API (with ``/dicomweb``) over the benchmark's second vault."""
    import uvicorn

    from radvault.api import create_app
    from radvault.pipeline.clinical import ClinicalService, ServiceSettings

    settings = _api_settings(Path(home))
    with Vault.open(settings, PASSPHRASE) as vault:
        service = ClinicalService.build(vault, ServiceSettings(argon2=(1, 8, 1), workers=1))
        uvicorn.run(create_app(settings, service=service), host="127.0.0.1", port=int(port),
                    log_level="warning", access_log=False, ws="none")


@contextmanager
def radvault_api(home: Path) -> Iterator[dict[str, Any]]:
    """A fresh vault with a technologist, served by the API in a child process; its token.

    The technologist's password uses cheap argon2 parameters: logging in is not
    what is measured (and happens once, before the clock starts).
    """
    import requests

    from radvault.pipeline.clinical import ClinicalService, ServiceSettings, operator_principal

    with Vault.init(_api_settings(home), PASSPHRASE, kdf=KdfParams.fast()) as vault:
        service = ClinicalService.build(vault, ServiceSettings(argon2=(1, 8, 1),
                                                               start_workers=False))
        operator = operator_principal("cli:benchmark")
        service.add_site(operator, "bench")
        service.add_user(operator, API_USER, "technologist", site="bench", password=API_PASSWORD)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, __file__, "--serve-api", str(home), str(port)],
                            env=_env())
    try:
        for _ in range(1200):
            if proc.poll() is not None:
                raise SystemExit("the RadVault API server exited")
            try:
                if requests.get(url + "/api/v1/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.05)
        else:
            raise SystemExit("the RadVault API server did not start")
        login = requests.post(url + "/api/v1/auth/token", timeout=30, data={
            "grant_type": "password", "username": API_USER, "password": API_PASSWORD})
        login.raise_for_status()
        yield {"url": url, "token": login.json()["access_token"]}
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def _stored_in(home: Path) -> int:
    with Vault.open(_api_settings(home), PASSPHRASE) as vault:
        return sum(s.n_instances for s in vault.catalog.list_studies(limit=10_000))


# --------------------------------------------------------------------------- profile


_STAGES = {
    "duplicate check": ("vault.py", "find_instance_by_source"),
    "parse DICOM": ("reading.py", "read_dicom_dataset"),
    "decode pixels (x2)": ("reading.py", "record_from_dataset"),
    "de-identify": ("deid.py", "__call__"),
    "re-encode DICOM": ("dataset.py", "save_as"),
    "pixel digest (keyed)": ("vault.py", "pixel_digest"),
    "preprocess": ("preprocess.py", "__call__"),
    "encode model input": ("ingest.py", "encode_model_input"),
    "seal (AES-GCM)": ("sealing.py", "seal"),
    "blob write + fsync": ("blobstore.py", "put_many"),
    "identity record": ("ingest.py", "_merge_identity"),
    "catalog (signed rows)": ("catalog.py", "add_many"),
    "audit append": ("audit.py", "append_many"),
}


def _ingest_all(files: list[Path], home: Path, profiler: cProfile.Profile | None) -> float:
    """Ingest ``files`` (bytes in memory, as the SCP does) into a new vault; return seconds."""
    settings = load_settings(env={}, home=home, accept_burned_in=True)
    vault = Vault.init(settings, PASSPHRASE, kdf=KdfParams.fast())
    try:
        add_site(vault, "bench")
        ingestor = Ingestor(vault, actor="dicom:BENCH_SCU", site="bench")
        blobs = [p.read_bytes() for p in files]
        ingestor.ingest_bytes(blobs[0], "warm-up")
        start = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        for data in blobs[1:]:
            outcome = ingestor.ingest_bytes(data, "bench")
            assert outcome.status == "stored", outcome
        if profiler is not None:
            profiler.disable()
        return time.perf_counter() - start
    finally:
        vault.close()


def profile_ingest(files: list[Path], home: Path) -> dict[str, Any]:
    """Ingest ``files`` without, then with cProfile (fresh vaults); time per stage."""
    plain = _ingest_all(files, home / "plain", None)
    profiler = cProfile.Profile()
    wall = _ingest_all(files, home / "profiled", profiler)
    n = len(files) - 1
    stats = pstats.Stats(profiler, stream=io.StringIO()).stats  # type: ignore[attr-defined]
    stages: dict[str, float] = {}
    for label, (filename, func) in _STAGES.items():
        # max, not sum: functions of one name may nest (blobstore.put_many calls the
        # store's put_many), and cumulative time already includes the inner one.
        total = max((v[3] for k, v in stats.items() if k[0].endswith(filename) and k[2] == func),
                    default=0.0)
        stages[label] = 1000 * total / n
    fsync = sum(v[2] for k, v in stats.items() if k[2] == "<built-in method posix.fsync>")
    commit = sum(v[2] for k, v in stats.items()
                 if k[2] == "<method 'commit' of 'sqlite3.Connection' objects>")
    return {"instances": n, "ms_per_instance": 1000 * plain / n,
            "ms_per_instance_profiled": 1000 * wall / n,
            "stage_ms_per_instance": stages,
            "fsync_ms_per_instance": 1000 * fsync / n,
            "sqlite_commit_ms_per_instance": 1000 * commit / n}


# --------------------------------------------------------------------------- main


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 + 50 instances, 4 studies")
    parser.add_argument("--profile-n", type=int, default=40,
                        help="instances of each kind in the profile pass (0: none)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--no-radvault-stow", action="store_true",
                        help="skip RadVault's STOW-RS (no API server)")
    parser.add_argument("--serve-api", nargs=2, metavar=("HOME", "PORT"),
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, write the JSON, and return the results."""
    args = _parse(argv)
    if args.serve_api:
        _serve_api(*args.serve_api)
        return {}
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    per_kind, studies = (50, 2) if args.quick else (500, 10)
    work = Path(tempfile.mkdtemp(prefix="radvault-dicom-bench-"))
    rows: list[list[Any]] = []
    results: dict[str, Any] = {"quick": args.quick, "per_kind": per_kind,
                               "studies": 2 * studies, "accept_burned_in": True}
    try:
        t0 = time.perf_counter()
        corpus = generate_corpus(work / "corpus", per_kind, studies)
        results["generate_s"] = time.perf_counter() - t0
        sizes = {k: sum(p.stat().st_size for p in v) for k, v in corpus.items()}

        settings = load_settings(env={}, home=work / "vault", accept_burned_in=True)
        vault = Vault.init(settings, PASSPHRASE, kdf=KdfParams.fast())
        add_site(vault, "bench")  # the node's site must exist
        nodes = NodeRegistry([DicomNode(CALLING_AE, "127.0.0.1", "bench")])
        measured: dict[tuple[str, str, str], float] = {}
        api_home = work / "vault-api"
        with ExitStack() as stack:
            pacs = stack.enter_context(orthanc(work / "orthanc"))
            scp = stack.enter_context(DicomServer(vault, nodes, port=0))
            api = None if args.no_radvault_stow else stack.enter_context(radvault_api(api_home))
            results["orthanc_version"] = pacs["version"]
            for kind, files in corpus.items():
                folder = work / "corpus" / kind
                measured[("Orthanc", "C-STORE", kind)] = storescu(files, "ORTHANC",
                                                                  pacs["port"], folder)
                assert _orthanc_count(pacs["url"]) == len(files)
                _orthanc_reset(pacs["url"])
                measured[("RadVault", "C-STORE", kind)] = storescu(files, scp.ae_title,
                                                                   scp.address[1], folder)
                if pacs["dicomweb"]:
                    measured[("Orthanc", "STOW-RS", kind)] = stow(
                        files, pacs["url"] + "/dicom-web/studies")
                    assert _orthanc_count(pacs["url"]) == len(files)
                    _orthanc_reset(pacs["url"])
                if api is not None:
                    measured[("RadVault", "STOW-RS", kind)] = stow(
                        files, api["url"] + "/dicomweb/studies", api["token"])
            assert scp.wait_idle()
            stored = sum(s.n_instances for s in vault.catalog.list_studies(limit=10_000))
        vault.close()
        results["radvault_stored"] = stored
        if stored != 2 * per_kind:
            raise SystemExit(f"RadVault stored {stored} of {2 * per_kind} instances")
        if not args.no_radvault_stow:
            results["radvault_stow_stored"] = stow_stored = _stored_in(api_home)
            if stow_stored != 2 * per_kind:
                raise SystemExit(f"RadVault's STOW-RS stored {stow_stored} of {2 * per_kind}")

        for (target, protocol, kind), seconds in sorted(measured.items()):
            n = len(corpus[kind])
            rate = n / seconds
            other = measured.get(("Orthanc", protocol, kind))
            ratio = rate / (n / other) if target == "RadVault" and other else None
            rows.append([target, protocol, kind, n, seconds, rate,
                         sizes[kind] / seconds / 1e6, ratio])
        stow_note = ("RadVault STOW-RS: not measured (--no-radvault-stow)"
                     if args.no_radvault_stow else
                     "RadVault STOW-RS: the API (/dicomweb) in a child process over a second "
                     "fresh vault, bearer token of a technologist; each request answers only "
                     "once its 25 instances are de-identified, preprocessed, sealed, cataloged "
                     "and audited, their flushes and commits shared (group commit), so its "
                     "rate is bound by the per-instance CPU work (parse, de-identify, "
                     "re-encode, preprocess), not by fsync as C-STORE's is")
        results["rows"] = [dict(zip(("target", "protocol", "kind", "instances", "seconds",
                                     "instances_per_s", "mb_per_s", "ratio_vs_orthanc"),
                                    r, strict=True)) for r in rows]
        results["notes"] = [stow_note,
                            "SC images are accepted only because this vault sets "
                            "accept_burned_in=True (refused by default)",
                            "RadVault acknowledges after de-identify, preprocess, seal, "
                            "catalog (signed) and audit; Orthanc stores plaintext"]
        if args.profile_n:
            n = min(args.profile_n, per_kind) + 1
            results["profile"] = {k: profile_ingest(v[:n], work / f"profile-{k}")
                                  for k, v in corpus.items()}
    finally:
        if args.keep:
            print(f"work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    print_table("DICOM ingest, one association per kind (storescu) / 25 per request (STOW-RS)",
                ["target", "protocol", "kind", "n", "s", "inst/s", "MB/s", "ratio"], rows)
    for kind, prof in results.get("profile", {}).items():
        stage_rows = [[stage, ms] for stage, ms in prof["stage_ms_per_instance"].items()]
        stage_rows += [["(of which fsync)", prof["fsync_ms_per_instance"]],
                       ["(of which SQLite commit)", prof["sqlite_commit_ms_per_instance"]],
                       ["total per instance (profiled)", prof["ms_per_instance_profiled"]],
                       ["total per instance (not profiled, no network)",
                        prof["ms_per_instance"]]]
        print_table(f"where RadVault's time goes, {kind} (ms per instance, cumulative, "
                    "cProfile)", ["stage", "ms"], stage_rows)
    for note in results["notes"]:
        print(f"note: {note}")
    path = write_results("dicom_ingest", results)
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()

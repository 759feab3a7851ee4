"""The HTTP API under concurrent clients on loopback, and its cost over the in-process pipeline.

A RadVault server runs in a child process (``uvicorn`` on 127.0.0.1, plain HTTP:
loopback only) over a fresh vault with one technologist and one radiologist.
``--clients`` threads then drive it, each with its own connection:

* **login**: the OAuth2 password flow (argon2id at RFC 9106 parameters by
  default: this is what a real login costs);
* **study list**: ``GET /api/v1/studies`` (authentication, policy, catalog);
* **upload-to-result**: upload a PNG, start its analysis (202), poll the job
  until it succeeded, fetch the result; one latency per image.

Requests per second (all clients together) and p50/p99 latency are reported
per operation. Then one client uploads ``--uploads`` images one at a time, and
the same number of images go through the pipeline in-process
(``Ingestor.ingest_bytes`` and ``Analyser.analyse_instance`` on a vault of the
same settings, one at a time); the ratio of these two p50 upload-to-result
latencies says what the API adds (HTTP, authentication, policy, auditing, the
background job and its polling). The model is the shipped ``radbench6`` when
present, else a tiny signed model made for the run (the result says which).

Usage::

    python benchmarks/api.py [--clients 4] [--logins 5] [--lists 40] [--uploads 4]
                             [--argon2 production|fast] [--time-limit 300]

Everything is bounded: counts per client, and a wall-clock limit after which
the remaining requests of a phase are skipped. Prints a table and writes
``benchmarks/results/api.json``.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from _common import REPO, add_site, print_table, write_results
from radvault.config import PreprocessSettings, load_settings

PASSPHRASE = "benchmark passphrase, not a secret"
PASSWORD = "Bench-Mark-Lantern-42!"
SAMPLE = REPO / "src" / "radvault" / "samples" / "images" / "chest_xray__normal__IM-0009-0001.jpeg"
TINY_PRE = PreprocessSettings(size=64, denoise=False)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (1..32)")
    parser.add_argument("--logins", type=int, default=5, help="logins per client")
    parser.add_argument("--lists", type=int, default=40, help="study lists per client")
    parser.add_argument("--uploads", type=int, default=4, help="uploads per client")
    parser.add_argument("--argon2", choices=("production", "fast"), default="production",
                        help="password hashing cost (production: RFC 9106, 64 MiB)")
    parser.add_argument("--time-limit", type=float, default=300.0,
                        help="seconds after which remaining requests are skipped")
    parser.add_argument("--serve", nargs=5,
                        metavar=("HOME", "MODELS", "PORT", "ARGON2", "PREPROCESS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= 32 or min(args.logins, args.lists, args.uploads) < 1:
        parser.error("--clients must be within 1..32 and the counts positive")
    return args


# --------------------------------------------------------------------------- set-up


def _argon2(kind: str) -> tuple[int, int, int]:
    return (3, 65536, 4) if kind == "production" else (1, 8, 1)


def _tiny_model(root: Path) -> Path:
    """A small signed ONNX classifier (conv, pool, linear) written as ``radbench6``."""
    from onnx import TensorProto, helper, numpy_helper

    from radvault.analysis.export import Ed25519Signer, input_spec, write_model
    from radvault.imaging.preprocess import settings_to_dict

    rng = np.random.default_rng(0)
    weights = {"cw": rng.normal(0, .5, (8, 3, 3, 3)), "cb": rng.normal(0, .1, 8),
               "fw": rng.normal(0, 1, (3, 8)), "fb": rng.normal(0, .1, 3)}
    weights = {k: v.astype(np.float32) for k, v in weights.items()}
    size = TINY_PRE.size
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "cw", "cb"], ["c"], kernel_shape=[3, 3],
                          strides=[4, 4], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["features"]),
         helper.make_node("GlobalAveragePool", ["features"], ["p"]),
         helper.make_node("Flatten", ["p"], ["f"], axis=1),
         helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], transB=1)],
        "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT,
                                       ["N", 8, size // 4, size // 4])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    signer = Ed25519Signer.generate()
    write_model(root / "radbench6", model.SerializeToString(), {
        "task": "tiny", "classes": ["normal", "pneumonia", "other"], "input": input_spec(size),
        "preprocessing": settings_to_dict(TINY_PRE), "temperature": 1.0,
        "trained_on": [{"modality": "DX", "body_part": "CHEST"}],
        "cam": {"output": "features", "weight": weights["fw"].tolist(),
                "bias": weights["fb"].tolist()}}, signer)
    (root / "keys").mkdir(exist_ok=True)
    (root / "keys" / f"{signer.key_id}.pub").write_bytes(signer.public_pem())
    return root


def _models(workdir: Path) -> tuple[Path, str]:
    """The shipped registry when it has the default model, else a tiny one."""
    from radvault.analysis.registry import default_models_dir

    shipped = default_models_dir()
    if (shipped / "radbench6" / "model_card.json").is_file():
        return shipped, "shipped"
    return _tiny_model(workdir / "models"), "tiny"


def _preprocess(kind: str) -> PreprocessSettings:
    """The vault's preprocessing: the tiny model's, or the default (the shipped models')."""
    return TINY_PRE if kind == "tiny" else PreprocessSettings()


def _settings(home: Path, preprocess: PreprocessSettings) -> Any:
    return load_settings(env={}, home=home, preprocess=preprocess)


def _make_vault(home: Path, preprocess: PreprocessSettings, argon2: str, models: Path) -> None:
    from radvault.pipeline.clinical import ClinicalService, ServiceSettings, operator_principal
    from radvault.vault.keys import KdfParams
    from radvault.vault.vault import Vault

    with Vault.init(_settings(home, preprocess), PASSPHRASE, kdf=KdfParams.fast()) as vault:
        service = ClinicalService.build(vault, ServiceSettings(
            argon2=_argon2(argon2), start_workers=False, models_dir=models))
        operator = operator_principal("cli:benchmark")
        service.add_site(operator, "bench")
        service.add_user(operator, "tech", "technologist", site="bench", password=PASSWORD)
        service.add_user(operator, "rad", "radiologist", site="bench", password=PASSWORD)
        service.grant(operator, "rad", site="bench")


def _serve(home: str, models: str, port: str, argon2: str, kind: str) -> None:
    """The child process: the API over the benchmark vault."""
    import uvicorn

    from radvault.api import create_app
    from radvault.pipeline.clinical import ClinicalService, ServiceSettings
    from radvault.vault.vault import Vault

    settings = _settings(Path(home), _preprocess(kind))
    with Vault.open(settings, PASSPHRASE) as vault:
        service = ClinicalService.build(vault, ServiceSettings(
            argon2=_argon2(argon2), models_dir=Path(models), workers=2))
        uvicorn.run(create_app(settings, service=service), host="127.0.0.1", port=int(port),
                    log_level="warning", access_log=False, ws="none")


def _images(n: int) -> list[bytes]:
    """``n`` distinct chest radiographs (a real sample with a little seeded noise), PNG."""
    base = np.asarray(Image.open(SAMPLE).convert("L").resize((512, 512)), dtype=np.int16)
    out = []
    for i in range(n):
        noise = np.random.default_rng(i).integers(-3, 4, base.shape)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


# --------------------------------------------------------------------------- measuring


class Phase:
    """Latencies of one operation over all clients, and the wall time they took."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.latencies: list[float] = []
        self.errors = 0
        self.skipped = 0
        self._lock = threading.Lock()

    def run(self, clients: int, per_client: int, call: Callable[[httpx.Client, int, int], None],
            base_url: str) -> dict[str, Any]:
        def worker(c: int) -> None:
            with httpx.Client(base_url=base_url, timeout=120) as client:
                for i in range(per_client):
                    if time.monotonic() > self.deadline:
                        with self._lock:
                            self.skipped += per_client - i
                        return
                    start = time.perf_counter()
                    try:
                        call(client, c, i)
                    except (httpx.HTTPError, AssertionError):
                        with self._lock:
                            self.errors += 1
                        continue
                    with self._lock:
                        self.latencies.append(time.perf_counter() - start)

        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(worker, range(clients)))
        wall = time.perf_counter() - started
        return _stats(self.latencies, wall, self.errors, self.skipped)


def _stats(latencies: list[float], wall: float, errors: int = 0,
           skipped: int = 0) -> dict[str, Any]:
    arr = np.asarray(latencies) if latencies else None
    return {
        "n": len(latencies), "errors": errors, "skipped": skipped, "wall_s": round(wall, 3),
        "rps": round(len(latencies) / wall, 2) if wall > 0 else None,
        "p50_ms": round(float(np.percentile(arr, 50)) * 1000, 1) if arr is not None else None,
        "p99_ms": round(float(np.percentile(arr, 99)) * 1000, 1) if arr is not None else None,
    }


def _login(client: httpx.Client, user: str) -> str:
    r = client.post("/api/v1/auth/token", data={"grant_type": "password", "username": user,
                                                 "password": PASSWORD})
    assert r.status_code == 200, r.status_code
    return str(r.json()["access_token"])


def _wait_ready(base_url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the benchmark server exited")
        try:
            if httpx.get(f"{base_url}/api/v1/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError("the benchmark server did not start")


def _in_process(home: Path, preprocess: PreprocessSettings, models: Path,
                images: list[bytes]) -> dict[str, Any]:
    """Upload-to-result by calling the pipeline directly, one image at a time."""
    from radvault.pipeline.analyse import Analyser
    from radvault.pipeline.ingest import Ingestor
    from radvault.vault.keys import KdfParams
    from radvault.vault.vault import Vault

    with Vault.init(_settings(home, preprocess), PASSPHRASE, kdf=KdfParams.fast()) as vault:
        add_site(vault, "bench")
        ingestor = Ingestor(vault, actor="benchmark", site="bench")
        analyser = Analyser.default(vault, actor="benchmark", models_dir=models)
        analyser.model_for("DX", "CHEST")  # load once, as the server's first job does
        latencies = []
        started = time.perf_counter()
        for i, data in enumerate(images):
            t0 = time.perf_counter()
            outcome = ingestor.ingest_bytes(data, f"img-{i}.png", modality="DX",
                                            body_part="CHEST")
            assert outcome.instance_id is not None, outcome.reason
            analyser.analyse_instance(outcome.instance_id)
            latencies.append(time.perf_counter() - t0)
        return _stats(latencies, time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with ``--serve``, be its server)."""
    args = _parse(argv)
    if args.serve:
        _serve(*args.serve)
        return 0
    deadline = time.monotonic() + args.time_limit
    with tempfile.TemporaryDirectory(prefix="radvault-bench-") as tmp:
        work = Path(tmp)
        models, kind = _models(work)
        preprocess = _preprocess(kind)
        _make_vault(work / "server", preprocess, args.argon2, models)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        base_url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        proc = subprocess.Popen([sys.executable, __file__, "--serve", str(work / "server"),
                                 str(models), str(port), args.argon2, kind], env=env)
        try:
            _wait_ready(base_url, proc)
            with httpx.Client(base_url=base_url, timeout=120) as c:
                rad = _login(c, "rad")
                tech = _login(c, "tech")
            results: dict[str, Any] = {}

            def login(c: httpx.Client, _k: int, _i: int) -> None:
                _login(c, "rad")

            results["login"] = Phase(deadline).run(args.clients, args.logins, login, base_url)

            def list_studies(c: httpx.Client, _k: int, _i: int) -> None:
                r = c.get("/api/v1/studies", headers={"Authorization": f"Bearer {rad}"})
                assert r.status_code == 200, r.status_code

            results["study_list"] = Phase(deadline).run(args.clients, args.lists,
                                                         list_studies, base_url)
            images = _images((args.clients + 2) * args.uploads)

            def upload_to_result(c: httpx.Client, k: int, i: int) -> None:
                data = images[k * args.uploads + i]
                r = c.post("/api/v1/uploads", headers={"Authorization": f"Bearer {tech}"},
                           files={"file": (f"img-{k}-{i}.png", data)},
                           data={"modality": "DX", "body_part": "CHEST"})
                assert r.status_code == 201, r.status_code
                study, instance = r.json()["study_id"], r.json()["instance_id"]
                auth = {"Authorization": f"Bearer {rad}"}
                r = c.post(f"/api/v1/studies/{study}/analyses", json={}, headers=auth)
                assert r.status_code == 202, r.status_code
                job = r.json()["job_id"]
                while True:
                    state = c.get(f"/api/v1/jobs/{job}", headers=auth).json()["status"]
                    if state in ("succeeded", "failed"):
                        assert state == "succeeded", state
                        break
                    time.sleep(0.01)
                r = c.get(f"/api/v1/studies/{study}/instances/{instance}/result",
                          headers=auth)
                assert r.status_code == 200, r.status_code

            results["upload_to_result"] = Phase(deadline).run(
                args.clients, args.uploads, upload_to_result, base_url)
            # One client, one image at a time: the like-for-like comparison with in-process.
            results["upload_to_result_serial"] = Phase(deadline).run(
                1, args.uploads, lambda c, _k, i: upload_to_result(c, args.clients, i),
                base_url)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        serial = images[-args.uploads:]
        results["in_process"] = _in_process(work / "inproc", preprocess, models, serial)
    http_p50 = results["upload_to_result_serial"]["p50_ms"]
    local_p50 = results["in_process"]["p50_ms"]
    ratio = round(http_p50 / local_p50, 2) if http_p50 and local_p50 else None
    rows = [(name, r["n"], r["errors"], r["rps"], r["p50_ms"], r["p99_ms"])
            for name, r in results.items()]
    print_table(f"RadVault API on loopback, {args.clients} clients ({kind} model, argon2 "
                f"{args.argon2})", ["operation", "n", "errors", "req/s", "p50 ms", "p99 ms"],
                rows)
    print(f"upload-to-result, one at a time, over HTTP / in-process (p50): {ratio}x")
    path = write_results("api", {
        "config": {"clients": args.clients, "logins": args.logins, "lists": args.lists,
                   "uploads": args.uploads, "argon2": args.argon2, "model": kind,
                   "time_limit_s": args.time_limit},
        "results": results, "upload_to_result_http_over_in_process_p50": ratio,
        "notes": ["the server and the clients share this machine's CPUs",
                  "in-process: one image at a time, no HTTP, no job queue, no polling"],
    })
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

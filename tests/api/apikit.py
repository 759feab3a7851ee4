"""Helpers of the API tests: a tiny signed model, a live uvicorn server, a world of users.

The server runs in a thread of the test process (so tests can look at the
vault's audit trail directly) on a random free port of 127.0.0.1. The vault
uses a fast KDF and fast argon2 parameters; the model is a tiny signed ONNX
network built here in a second (the real ones are trained elsewhere).

A module with a name of its own (``conftest`` modules clash between test folders),
imported by this folder's ``conftest.py`` and test modules.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pydicom
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec
from onnx import TensorProto, helper, numpy_helper

from radvault.access.oidc import OIDCSettings
from radvault.access.users import LockoutPolicy
from radvault.analysis.export import Ed25519Signer, input_spec, write_model
from radvault.api import ApiSettings, create_app
from radvault.config import PreprocessSettings, Settings, load_settings
from radvault.imaging.preprocess import settings_to_dict
from radvault.pipeline.clinical import ClinicalService, ServiceSettings, operator_principal
from radvault.vault.audit import AuditEntry
from radvault.vault.keys import KdfParams
from radvault.vault.vault import Vault

PASSWORD = "Vivid-Lantern-42!"
ISSUER = "https://radvault.test"
AUDIENCE = "radvault-api"
IDP = "https://sso.hospital.test/realms/radiology"
IDP_CLIENT = "radvault"
IDP_KEY = ec.generate_private_key(ec.SECP256R1())
PASSPHRASE = "correct horse battery staple"
CLASSES = ("normal", "pneumonia", "tumour")
PREPROCESS = PreprocessSettings(size=32, denoise=False, clahe_tile_grid=4)
UPLOAD_CAP = 1024 * 1024
SAMPLES = Path(__file__).resolve().parents[2] / "src" / "radvault" / "samples" / "images"

#: username -> (role, site, grant): every role, two sites.
USERS: dict[str, tuple[str, str | None, str | None]] = {
    "admin1": ("admin", None, None),
    "tech-n": ("technologist", "north", None),
    "tech-s": ("technologist", "south", None),
    "rad-n": ("radiologist", "north", "north"),
    "rad-s": ("radiologist", "south", "south"),
    "phys-n": ("physician", "north", "north"),
    "audit1": ("auditor", None, None),
}


def pydicom_file(name: str) -> Path:
    """A file of pydicom's own test data (never ``get_testdata_file``: it may go online)."""
    return Path(pydicom.__file__).parent / "data" / "test_files" / name


def tiny_model(root: Path, *, size: int = 32, seed: int = 0) -> Path:
    """Write a signed three-class ONNX model (conv, ReLU, pool, linear) as ``radbench6``.

    It has the same outputs as the shipped models (``logits``, ``features``)
    and CAM weights in its card, so every path of analysis and explanation runs.
    """
    rng = np.random.default_rng(seed)
    channels = 4
    arrays = {
        "conv_w": rng.normal(0, 0.5, (channels, 3, 3, 3)).astype(np.float32),
        "conv_b": rng.normal(0, 0.1, (channels,)).astype(np.float32),
        "fc_w": rng.normal(0, 1.0, (len(CLASSES), channels)).astype(np.float32),
        "fc_b": rng.normal(0, 0.1, (len(CLASSES),)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["image", "conv_w", "conv_b"], ["conv"], kernel_shape=[3, 3],
                         strides=[4, 4], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["features"]),
        helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", len(CLASSES)]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT,
                                       ["N", channels, size // 4, size // 4])],
        [numpy_helper.from_array(a, n) for n, a in arrays.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    signer = Ed25519Signer.generate()
    card = {
        "task": "tiny", "classes": list(CLASSES), "input": input_spec(size),
        "preprocessing": settings_to_dict(PREPROCESS), "temperature": 1.0,
        "trained_on": [{"modality": "CT", "body_part": ""}, {"modality": "DX", "body_part": ""}],
        "metrics": {"test": {"accuracy": 0.5, "balanced_accuracy": 0.5, "n": 12}},
        "cam": {"output": "features", "weight": arrays["fc_w"].tolist(),
                "bias": arrays["fc_b"].tolist()},
    }
    write_model(root / "radbench6", model.SerializeToString(), card, signer)
    (root / "keys").mkdir(parents=True, exist_ok=True)
    (root / "keys" / f"{signer.key_id}.pub").write_bytes(signer.public_pem())
    return root


def fixed_image_check(root: Path, looks_like: str = "brain_mri", *,
                      probability: float = 0.99995) -> Path:
    """Write a signed image check into registry ``root`` that takes every image for
    ``looks_like`` with ``probability`` (its threshold is 0.86): the wiring of the
    check, without depending on pixels.

    It knows two sources: ``chest_film`` (DX, no body part: the tiny model's DX pair)
    and ``brain_mri`` (MR BRAIN).
    """
    sources = {"chest_film": ("DX", ""), "brain_mri": ("MR", "BRAIN")}
    classes = list(sources)
    logit = float(np.log(probability / (1.0 - probability)))  # two classes: p = sigmoid
    bias = np.array([logit if c == looks_like else 0.0 for c in classes], dtype=np.float32)
    arrays = {"fc_w": np.zeros((len(classes), 3), np.float32), "fc_b": bias}
    nodes = [helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1)]
    size = PREPROCESS.size
    graph = helper.make_graph(
        nodes, "fixed_check",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", len(classes)])],
        [numpy_helper.from_array(a, n) for n, a in arrays.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    signer = Ed25519Signer.generate()
    pairs = {c: [{"modality": m, "body_part": b}] for c, (m, b) in sources.items()}
    card = {"task": "image_source", "classes": classes, "input": input_spec(size),
            "preprocessing": settings_to_dict(PREPROCESS), "temperature": 1.0,
            "trained_on": [p[0] for p in pairs.values()], "class_trained_on": pairs,
            "image_check": {"threshold": 0.86, "chosen_by": {"split": "none: a test fixture"}}}
    write_model(root / "image_check", model.SerializeToString(), card, signer)
    (root / "keys").mkdir(parents=True, exist_ok=True)
    (root / "keys" / f"{signer.key_id}.pub").write_bytes(signer.public_pem())
    return root


class ServerThread:
    """A real uvicorn server on 127.0.0.1 (random free port) in a daemon thread."""

    def __init__(self, app: Any, **ssl: Any) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                access_log=False, lifespan="on", ws="none", http="h11", **ssl)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self.port = 0

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@dataclass
class World:
    """A running RadVault: its vault, service, server, and helpers to talk to it."""

    settings: Settings
    vault: Vault
    service: ClinicalService
    server: ServerThread
    base_url: str
    tokens: dict[str, str] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=60, **kwargs)

    def login(self, username: str, password: str = PASSWORD) -> dict[str, Any]:
        with self.client() as c:
            r = c.post("/api/v1/auth/token", data={"grant_type": "password",
                                                    "username": username, "password": password})
        assert r.status_code == 200, r.text
        return r.json()

    def token(self, username: str) -> str:
        if username not in self.tokens:
            self.tokens[username] = self.login(username)["access_token"]
        return self.tokens[username]

    def auth(self, username: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(username)}"}

    def get(self, username: str | None, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", username, path, **kwargs)

    def post(self, username: str | None, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", username, path, **kwargs)

    def request(self, method: str, username: str | None, path: str,
                **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        if username is not None:
            headers.update(self.auth(username))
        with self.client() as c:
            return c.request(method, path, headers=headers, **kwargs)

    def upload(self, username: str, data: bytes, name: str = "image.dcm",
               **fields: str) -> httpx.Response:
        return self.post(username, "/api/v1/uploads", files={"file": (name, data)},
                         data=fields or None)

    def mark(self) -> int:
        tail = self.vault.audit.tail(1)
        return tail[-1].seq if tail else 0

    def audit_since(self, mark: int, action: str | None = None) -> list[AuditEntry]:
        found = self.vault.audit.query(action=action, limit=500)
        return [e for e in found if e.seq > mark]

    def add_user(self, username: str, role: str, site: str | None = None, *,
                 grant_site: str | None = None, password: str | None = PASSWORD) -> str:
        operator = operator_principal("cli:tests")
        self.service.add_user(operator, username, role, site=site, password=password)
        if grant_site is not None:
            self.service.grant(operator, username, site=grant_site)
        return username

    def wait_job(self, username: str, job_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            r = self.get(username, f"/api/v1/jobs/{job_id}")
            assert r.status_code == 200, r.text
            body = r.json()
            if body["status"] in ("succeeded", "failed"):
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {body['status']}")
            time.sleep(0.05)


def idp_jwks() -> dict[str, Any]:
    """The hospital identity provider's public key set (a locally generated P-256 key)."""
    import jwt

    jwk = jwt.algorithms.ECAlgorithm.to_jwk(IDP_KEY.public_key(), as_dict=True)
    return {"keys": [{**jwk, "kid": "idp-1", "alg": "ES256", "use": "sig"}]}


@contextmanager
def served_world(home: Path, models: Path, **options: Any) -> Iterator[World]:
    """:func:`build_world`, stopped and closed when the block ends (for fixtures)."""
    w = build_world(home, models, **options)
    try:
        yield w
    finally:
        w.server.stop()
        w.vault.close()


def build_world(home: Path, models: Path, *, refer_threshold: float | None = None,
                **service_overrides: Any) -> World:
    """Create a vault, its service and a live server with every role's user."""
    env = {} if refer_threshold is None else {"RADVAULT_REFER_THRESHOLD": str(refer_threshold)}
    settings = load_settings(env=env, home=home, preprocess=PREPROCESS)
    vault = Vault.init(settings, PASSPHRASE, kdf=KdfParams.fast())
    options: dict[str, Any] = {
        "argon2": (1, 8, 1), "workers": 1, "models_dir": models,
        "lockout": LockoutPolicy(threshold=3, base=timedelta(seconds=30)),
        "issuer": ISSUER, "audience": AUDIENCE,
        "oidc": OIDCSettings(issuer=IDP, audience=IDP_CLIENT, jwks=idp_jwks()),
        **service_overrides}
    service = ClinicalService.build(vault, ServiceSettings(**options))
    operator = operator_principal("cli:tests")
    for site in ("north", "south"):
        service.add_site(operator, site)
    for name, (role, site, grant) in USERS.items():
        service.add_user(operator, name, role, site=site, password=PASSWORD)
        if grant is not None:
            service.grant(operator, name, site=grant)
    app = create_app(settings, service=service, api=ApiSettings(max_upload_bytes=UPLOAD_CAP))
    server = ServerThread(app).start()
    return World(settings, vault, service, server, f"http://127.0.0.1:{server.port}")

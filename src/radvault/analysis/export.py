"""Model folders: ONNX file, model card and a signature over both.

A model is a folder::

    model.onnx        the network, opset 17; input ``image`` (N, 3, S, S) float32 in
                      [0, 1]; outputs ``logits`` (N, K) and ``features`` (N, C, h, w),
                      the last convolutional feature map (for class activation maps)
    model_card.json   task, classes, input size, preprocessing settings, training
                      manifest sha-256, seed, temperature, metrics on val and test,
                      creation date, the ONNX file's sha-256, and the linear layer's
                      weights for class activation maps
    signature.json    Ed25519 signature over ``MESSAGE_PREFIX + onnx_sha256 + "\\0" +
                      card_sha256`` (hex digests of the two files' bytes), with the
                      signer's key id

Signers are any object with ``.sign(data: bytes) -> bytes`` and ``.key_id``
(the vault's signer, or :class:`Ed25519Signer`). Verifiers are any object
with ``.verify(message, signature)`` that raises
:class:`radvault.errors.IntegrityError` on a bad signature.

Shipped models are signed with a *model signing key* whose private half stays
with the release maintainer (never in the repository); its public half is
committed as ``models/keys/<key_id>.pub`` (PEM). :class:`ModelKeyring`
reads such a folder, so a fresh checkout can verify the shipped models with no
vault at all. The trust anchor is then the checkout itself: whoever can change
``models/keys`` can change what is trusted.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import warnings
from collections.abc import Mapping
from datetime import UTC, datetime
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from radvault.errors import IntegrityError, ModelError, ModelIntegrityError

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "CARD_FILE",
    "MESSAGE_PREFIX",
    "ONNX_FILE",
    "SIGNATURE_FILE",
    "Ed25519Signer",
    "Ed25519Verifier",
    "ModelKeyring",
    "Signer",
    "Verifier",
    "export_model",
    "jsonable",
    "keys_dir_near",
    "new_signing_key",
    "onnx_bytes_from_torch",
    "signing_message",
    "update_card",
    "write_model",
]

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
CARD_FILE = "model_card.json"
SIGNATURE_FILE = "signature.json"
MESSAGE_PREFIX = b"radvault-model/1\0"
CARD_FORMAT = "radvault-model-card/1"
SIGNATURE_FORMAT = "radvault-model-signature/1"
OPSET = 17


class Signer(Protocol):
    """What signs a model: the vault's signer or :class:`Ed25519Signer`."""

    key_id: str

    def sign(self, data: bytes) -> bytes:
        """Return a signature over ``data``."""
        ...


class Verifier(Protocol):
    """What checks a model signature; raises ``IntegrityError`` when it is bad."""

    def verify(self, message: bytes, signature: bytes) -> None:
        """Raise :class:`radvault.errors.IntegrityError` unless the signature is good."""
        ...


def _key_id(public_raw: bytes) -> str:
    return "model-" + hashlib.sha256(public_raw).hexdigest()[:16]


class Ed25519Signer:
    """An Ed25519 model signing key (for shipped models and tests).

    Parameters
    ----------
    private_key : cryptography Ed25519PrivateKey
    """

    def __init__(self, private_key: Any) -> None:
        from cryptography.hazmat.primitives import serialization

        self._key = private_key
        raw = private_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                    serialization.PublicFormat.Raw)
        self.key_id = _key_id(raw)

    @classmethod
    def generate(cls) -> Ed25519Signer:
        """A fresh random key."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, path: str | PathLike[str], password: bytes | None = None) -> Ed25519Signer:
        """Load a PKCS#8 PEM private key.

        Raises
        ------
        ModelError
            If the file is missing or not an Ed25519 private key.
        """
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        try:
            key = serialization.load_pem_private_key(Path(path).read_bytes(), password=password)
        except (OSError, ValueError, TypeError) as exc:
            raise ModelError(f"{path}: cannot load signing key ({type(exc).__name__})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ModelError(f"{path}: not an Ed25519 private key")
        return cls(key)

    def private_pem(self, password: bytes | None = None) -> bytes:
        """The private key as PKCS#8 PEM (encrypted when a password is given)."""
        from cryptography.hazmat.primitives import serialization

        enc = (serialization.BestAvailableEncryption(password) if password
               else serialization.NoEncryption())
        return self._key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8, enc)

    def public_pem(self) -> bytes:
        """The public key as SubjectPublicKeyInfo PEM (what ``models/keys`` holds)."""
        from cryptography.hazmat.primitives import serialization

        return self._key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)

    def verifier(self) -> Ed25519Verifier:
        """The matching verifier."""
        return Ed25519Verifier(self._key.public_key())

    def sign(self, data: bytes) -> bytes:
        """Sign ``data``."""
        return bytes(self._key.sign(data))


class Ed25519Verifier:
    """Checks signatures made by one Ed25519 public key.

    Raises
    ------
    ModelError
        If the key is not an Ed25519 public key.
    """

    def __init__(self, public_key: Any) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        if not isinstance(public_key, Ed25519PublicKey):
            raise ModelError("not an Ed25519 public key")
        self._key = public_key
        self.key_id = _key_id(public_key.public_bytes(serialization.Encoding.Raw,
                                                      serialization.PublicFormat.Raw))

    @classmethod
    def from_pem(cls, data: bytes) -> Ed25519Verifier:
        """Load a SubjectPublicKeyInfo PEM.

        Raises
        ------
        ModelError
            If the bytes are not an Ed25519 public key.
        """
        from cryptography.hazmat.primitives import serialization

        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError) as exc:
            raise ModelError(f"cannot load public key ({type(exc).__name__})") from None
        return cls(key)

    def verify(self, message: bytes, signature: bytes) -> None:
        """Check a signature.

        Raises
        ------
        IntegrityError
            If the signature does not match.
        """
        from cryptography.exceptions import InvalidSignature

        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            raise IntegrityError("model signature does not verify") from None


def keys_dir_near(folder: str | PathLike[str]) -> Path:
    """The trusted-keys folder of a folder of models: its own ``keys``, else its parent's
    (``models/medmnist`` uses ``models/keys``); ``folder/keys`` when there is neither."""
    folder = Path(folder)
    for candidate in (folder / "keys", folder.parent / "keys"):
        if candidate.is_dir():
            return candidate
    return folder / "keys"


class ModelKeyring:
    """Trusted model signing keys, looked up by key id (``models/keys/*.pub``).

    Parameters
    ----------
    verifiers : mapping of key id to Ed25519Verifier
    """

    def __init__(self, verifiers: Mapping[str, Ed25519Verifier]) -> None:
        self._verifiers = dict(verifiers)

    @classmethod
    def from_dir(cls, folder: str | PathLike[str]) -> ModelKeyring:
        """Read every ``*.pub`` PEM in a folder (an absent folder gives an empty keyring).

        Raises
        ------
        ModelError
            If a ``.pub`` file is not an Ed25519 public key.
        """
        folder = Path(folder)
        found: dict[str, Ed25519Verifier] = {}
        if folder.is_dir():
            for pub in sorted(folder.glob("*.pub")):
                v = Ed25519Verifier.from_pem(pub.read_bytes())
                found[v.key_id] = v
        return cls(found)

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Trusted key ids."""
        return tuple(sorted(self._verifiers))

    def verifier(self, key_id: str) -> Ed25519Verifier:
        """The verifier for a key id.

        Raises
        ------
        ModelIntegrityError
            If the key is not trusted.
        """
        try:
            return self._verifiers[key_id]
        except KeyError:
            raise ModelIntegrityError(f"model signed by an untrusted key {key_id!r}") from None


def new_signing_key(key_path: str | PathLike[str], keys_dir: str | PathLike[str]) -> str:
    """Make a model signing key: the private half at ``key_path`` (PKCS#8 PEM, mode 0600),
    the public half as ``keys_dir/<key id>.pub``, where model loading looks for it.

    Keep ``key_path`` outside the model folders and any repository; whoever can
    write to ``keys_dir`` decides which signatures are trusted. Returns the key id.

    Raises
    ------
    ModelError
        If ``key_path`` exists (a key is never overwritten) or cannot be written.
    """
    key_file, keys = Path(key_path), Path(keys_dir)
    models_tree = keys.resolve().parent
    if key_file.resolve().is_relative_to(models_tree):
        raise ModelError(f"{key_file}: inside {models_tree}, where models and their public keys "
                         "live; keep the private key elsewhere")
    signer = Ed25519Signer.generate()
    try:
        keys.mkdir(parents=True, exist_ok=True)
        key_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ModelError(f"{key_file}: exists; a signing key is never overwritten") from None
    except OSError as exc:
        raise ModelError(f"cannot create {key_file} ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(signer.private_pem())
            fh.flush()
            os.fsync(fh.fileno())
        _atomic_write(keys / f"{signer.key_id}.pub", signer.public_pem())
    except OSError as exc:  # no half-made key is left behind to block a retry
        key_file.unlink(missing_ok=True)
        raise ModelError(f"cannot write the signing key ({exc.strerror})") from None
    return signer.key_id


def signing_message(onnx_sha256: str, card_sha256: str) -> bytes:
    """The bytes a model signature covers."""
    return MESSAGE_PREFIX + onnx_sha256.encode("ascii") + b"\0" + card_sha256.encode("ascii")


def _fp16_initializers(model_bytes: bytes, min_elements: int = 64) -> bytes:
    """Store large float32 initializers as float16 with a Cast back to float32.

    Arithmetic stays float32 (ONNX Runtime folds the casts when it loads the
    model); only the stored weights are rounded, which halves the file.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    casts = []
    for init in list(graph.initializer):
        if init.data_type != TensorProto.FLOAT:
            continue
        arr = numpy_helper.to_array(init)
        if arr.size < min_elements:
            continue
        half = numpy_helper.from_array(arr.astype(np.float16), name=init.name + "__fp16")
        graph.initializer.remove(init)
        graph.initializer.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT,
                                      name=init.name + "__cast"))
    for i, node in enumerate(casts):
        graph.node.insert(i, node)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def onnx_bytes_from_torch(model: nn.Module, size: int, *, fp16_weights: bool = False) -> bytes:
    """Export a :func:`~radvault.analysis.networks.build_network` classifier to ONNX.

    Opset 17 through the TorchScript exporter (``dynamo=False``); the batch
    axis is dynamic. Outputs ``logits`` and ``features``.

    Parameters
    ----------
    model : torch.nn.Module
        A classifier with ``forward_features``.
    size : int
        Input side length.
    fp16_weights : bool
        Store weights as float16 (half the file size; arithmetic stays float32).

    Returns
    -------
    bytes
        The serialised ONNX model.

    Raises
    ------
    ModelError
        If the export fails.
    """
    import torch

    class _Both(torch.nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.inner.forward_features(x)

    was_training = model.training
    model.eval()
    buf = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # dynamo=False is a deliberate choice (it handles these networks today);
            # torch warns that the TorchScript exporter is the legacy one.
            warnings.filterwarnings("ignore", category=DeprecationWarning,
                                    message=".*legacy TorchScript-based ONNX export")
            # EfficientNet's strided slices cannot be constant-folded; the exported graph
            # computes them at run time instead (same result), so this is noise on a console.
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx\.",
                                    message="Constant folding - Only steps=1 can be constant "
                                            "folded")
            torch.onnx.export(
                _Both(model), (torch.zeros(1, 3, size, size),), buf, opset_version=OPSET,
                dynamo=False, input_names=["image"], output_names=["logits", "features"],
                dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"},
                              "features": {0: "batch"}},
                do_constant_folding=True,
            )
    except Exception as exc:  # the exporter raises many unrelated types
        raise ModelError(f"ONNX export failed ({type(exc).__name__}: {exc})") from exc
    finally:
        model.train(was_training)
    data = buf.getvalue()
    return _fp16_initializers(data) if fp16_weights else data


def _canonical_json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")


def _atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` through a flushed temporary file and a rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_model(out_dir: str | PathLike[str], onnx_bytes: bytes, card: Mapping[str, Any],
                signer: Signer | None) -> dict[str, Any]:
    """Write a model folder: ONNX file, card (with ONNX digest and date added), signature.

    Parameters
    ----------
    out_dir : path
        Created if needed; existing model files are replaced.
    onnx_bytes : bytes
    card : mapping
        Card fields (task, classes, input, preprocessing, training, metrics...);
        ``format``, ``onnx_sha256``, ``model_id`` and ``created`` are filled in.
    signer : Signer or None
        Without one the folder has no ``signature.json`` and
        :func:`~radvault.analysis.inference.load_model` refuses it unless told
        ``require_signature=False``.

    Returns
    -------
    dict
        The card as written.

    Raises
    ------
    ModelError
        If the card is not JSON-serialisable (NaN included) or a file cannot be written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx_sha = hashlib.sha256(onnx_bytes).hexdigest()
    full = dict(card)
    full["format"] = CARD_FORMAT
    full["onnx_sha256"] = onnx_sha
    full.setdefault("created", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    full["model_id"] = f"{full.get('task', 'model')}-{onnx_sha[:12]}"
    try:
        if full.get("class_bias") is not None:  # same network, other predictions: another id
            calibration = _canonical_json(jsonable({"temperature": full.get("temperature"),
                                                     "class_bias": full["class_bias"]}))
            full["model_id"] += "-b" + hashlib.sha256(calibration).hexdigest()[:6]
        card_bytes = _canonical_json(jsonable(full))
    except (TypeError, ValueError) as exc:
        raise ModelError(f"model card is not valid JSON ({exc})") from None
    try:
        _atomic_write(out / ONNX_FILE, onnx_bytes)
        _atomic_write(out / CARD_FILE, card_bytes)
        sig_path = out / SIGNATURE_FILE
        if signer is None:
            sig_path.unlink(missing_ok=True)
            log.warning("model written without a signature")
        else:
            card_sha = hashlib.sha256(card_bytes).hexdigest()
            sig = signer.sign(signing_message(onnx_sha, card_sha))
            _atomic_write(sig_path, _canonical_json({
                "format": SIGNATURE_FORMAT, "algorithm": "Ed25519",
                "key_id": str(signer.key_id), "onnx_sha256": onnx_sha,
                "card_sha256": card_sha, "signature": base64.b64encode(sig).decode("ascii"),
            }))
    except OSError as exc:
        raise ModelError(f"{out}: cannot write model ({exc.strerror})") from None
    return json.loads(card_bytes)


def jsonable(obj: Any) -> Any:
    """Turn numpy scalars/arrays and tuples into JSON types; NaN and infinities become None.

    What model cards and ``evaluate --json`` go through, so that
    ``json.dumps(..., allow_nan=False)`` writes strict JSON.
    """
    import math

    import numpy as np

    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def export_model(model: nn.Module, out_dir: str | PathLike[str], *, card: Mapping[str, Any],
                 size: int, signer: Signer | None = None,
                 fp16_weights: bool = False) -> dict[str, Any]:
    """Export a torch classifier as a signed model folder.

    The linear layer's weights and bias are added to the card (``cam``) so that
    class activation maps can be computed from the ONNX ``features`` output.

    Parameters
    ----------
    model : torch.nn.Module
        A :func:`~radvault.analysis.networks.build_network` classifier.
    out_dir : path
    card : mapping
        Card fields, see :func:`write_model`; should hold ``task``, ``classes``,
        ``preprocessing``, ``training``, ``temperature``, ``metrics``, ``trained_on``.
    size : int
        Input side length.
    signer : Signer, optional
    fp16_weights : bool
        Store weights as float16.

    Returns
    -------
    dict
        The card as written.

    Raises
    ------
    ModelError
        If export or writing fails.
    """
    data = onnx_bytes_from_torch(model, size, fp16_weights=fp16_weights)
    full = dict(card)
    full.setdefault("input", input_spec(size))
    full["cam"] = cam_spec(model)
    return write_model(out_dir, data, full, signer)


def input_spec(size: int) -> dict[str, Any]:
    """The card's description of the network input."""
    return {"name": "image", "shape": ["N", 3, size, size], "dtype": "float32",
            "range": [0.0, 1.0], "size": size}


def cam_spec(model: nn.Module) -> dict[str, Any]:
    """The linear layer's weights, for class activation maps without torch."""
    fc = model.fc
    return {"output": "features", "weight": fc.weight.detach().cpu().numpy().tolist(),
            "bias": fc.bias.detach().cpu().numpy().tolist()}


def _model_to_update(out: Path) -> tuple[dict[str, Any], bytes]:
    """A model folder's card and ONNX bytes, for a release step that rewrites the card.

    Raises
    ------
    ModelError
        If the folder is not a model, or its ONNX file is not the one its card names.
    """
    try:
        card = json.loads((out / CARD_FILE).read_text(encoding="utf-8"))
        onnx_bytes = (out / ONNX_FILE).read_bytes()
    except (OSError, ValueError) as exc:
        raise ModelError(f"{out}: not a model folder ({type(exc).__name__})") from None
    if hashlib.sha256(onnx_bytes).hexdigest() != card.get("onnx_sha256"):
        raise ModelError(f"{out}: the ONNX file does not match its card")
    return card, onnx_bytes


def mark_release(model_dir: str | PathLike[str], *, refer_always: bool, why: str,
                 signer: Signer) -> dict[str, Any]:
    """Record the release maintainer's verdict in a model's card and sign it again.

    ``refer_always`` makes every prediction of the model carry the referral reason
    ``model_not_validated`` (for a model that failed on held-out data but has to
    ship, so that no answer of it reaches a clinician unflagged). The ONNX file is
    untouched; the card keeps every field, plus ``release``.

    Raises
    ------
    ModelError
        If the folder is not a model (its current signature is not checked here:
        the new one replaces it, so only run this on a model you trust).
    """
    return update_card(model_dir, {"release": {"refer_always": bool(refer_always),
                                               "why": str(why)}}, signer=signer)


def update_card(model_dir: str | PathLike[str], fields: Mapping[str, Any], *,
                signer: Signer) -> dict[str, Any]:
    """Set top-level fields of a model's card and sign it again (a release step).

    The ONNX file and the model id are unchanged; every other field is kept.

    Raises
    ------
    ModelError
        If the folder is not a model (its current signature is not checked here:
        the new one replaces it, so only run this on a model you trust).
    """
    out = Path(model_dir)
    card, onnx_bytes = _model_to_update(out)
    card.update(fields)
    return write_model(out, onnx_bytes, card, signer)


def record_class_pairs(model_dir: str | PathLike[str], manifest: str | PathLike[str], *,
                       signer: Signer) -> dict[str, Any]:
    """Add ``class_trained_on`` to a card written before training recorded it, and sign again.

    Each class's (modality, body part) pairs are read from the training split of the
    manifest the card names (its sha-256 must match ``training.manifest_sha256``),
    selected by the card's own task definition, so they are exactly what training saw;
    serving then refers a prediction of a class never trained on the image's modality.
    The ONNX file and the model id are unchanged.

    Raises
    ------
    ModelError
        If the folder is not a model, or the pairs disagree with the card's ``trained_on``.
    DatasetError
        If the manifest is not the one the model was trained on, or cannot be read.
    """
    from radvault.analysis.manifest import load_manifest
    from radvault.analysis.tasks import Task
    from radvault.errors import DatasetError

    out = Path(model_dir)
    card, onnx_bytes = _model_to_update(out)
    training = card.get("training") or {}
    rows = load_manifest(manifest, verify_sha256=False, check_leak=False)
    if rows.sha256 != training.get("manifest_sha256"):
        raise DatasetError(f"{manifest}: not the manifest {out.name} was trained on")
    task = Task.from_dict(card["task_definition"])
    pairs: dict[str, set[tuple[str, str]]] = {c: set() for c in task.class_names}
    for row in rows.split((training.get("splits") or {}).get("train", "train")):
        label = task.label_of(row.columns)
        if label is not None:
            pairs[task.class_names[label]].add((row.modality, row.body_part))
    union = {p for ps in pairs.values() for p in ps}
    if union != {(p["modality"], p["body_part"]) for p in card.get("trained_on", [])}:
        raise ModelError(f"{out}: the manifest's pairs differ from the card's trained_on")
    card["class_trained_on"] = {c: [{"modality": m, "body_part": b} for m, b in sorted(ps)]
                                for c, ps in pairs.items()}
    return write_model(out, onnx_bytes, card, signer)

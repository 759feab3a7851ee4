"""Model folders: ONNX Runtime agrees with torch, and any alteration is refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from radvault.analysis.datasets import read_pixels
from radvault.analysis.export import (
    Ed25519Signer,
    ModelKeyring,
    export_model,
    onnx_bytes_from_torch,
)
from radvault.analysis.inference import load_model, onnx_session
from radvault.analysis.manifest import load_manifest
from radvault.analysis.networks import build_network
from radvault.config import PreprocessSettings
from radvault.errors import ModelIntegrityError
from radvault.imaging.preprocess import Preprocessor


@pytest.fixture(scope="module")
def real_batch(radbench_manifest):
    """One preprocessed test image of each radbench dataset (real pixels, 64 px)."""
    manifest = load_manifest(radbench_manifest, verify_sha256=False)
    pre = Preprocessor(PreprocessSettings(size=64))
    picked = {}
    for row in manifest.split("test"):
        picked.setdefault(row.columns["dataset"], row)
    return np.stack([pre.from_array(read_pixels(r.file)[0]) for r in picked.values()])


@pytest.mark.parametrize("fp16", [False, True])
@pytest.mark.parametrize("network", ["resnet18", "densenet121", "efficientnet-b0"])
def test_onnx_runtime_agrees_with_torch_on_real_images(real_batch, network, fp16):
    torch.manual_seed(0)
    net = build_network(network, 6, width=0.25).eval()
    with torch.no_grad():
        net(torch.rand(4, 3, 64, 64))  # exercise, then make BN statistics non-trivial
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        if fp16:
            for p in net.parameters():
                p.copy_(p.half().float())
        logits, feats = net.forward_features(torch.from_numpy(real_batch))
    sess = onnx_session(onnx_bytes_from_torch(net, 64, fp16_weights=fp16))
    o_logits, o_feats = sess.run(["logits", "features"], {"image": real_batch})
    assert real_batch.shape[0] == 5
    tol = 1e-4 if not fp16 else 1e-2  # fp16 storage also rounds the fused conv+BN weights
    assert np.abs(o_logits - logits.numpy()).max() < tol
    assert np.abs(o_feats - feats.numpy()).max() < tol


def test_fp16_weights_halve_the_file():
    net = build_network("resnet18", 3, width=0.25).eval()
    assert len(onnx_bytes_from_torch(net, 32, fp16_weights=True)) < 0.6 * len(
        onnx_bytes_from_torch(net, 32))


@pytest.fixture()
def model_copy(trained, tmp_path, signer):
    """The trained toy model in a registry-like folder with its key in keys/."""
    dest = tmp_path / "models" / "toy"
    shutil.copytree(trained.model_dir, dest, ignore=shutil.ignore_patterns("train"))
    keys = tmp_path / "models" / "keys"
    keys.mkdir()
    (keys / f"{signer.key_id}.pub").write_bytes(signer.public_pem())
    return dest


def test_signed_model_loads_with_the_vault_verifier_or_the_keyring(model_copy, signer):
    assert load_model(model_copy, signer.verifier()).card.task == "toy"
    assert load_model(model_copy).card.classes == ("disc", "square", "bars")  # models/keys


def test_altered_onnx_is_refused(model_copy):
    onnx = model_copy / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match=r"model\.onnx"):
        load_model(model_copy)


def test_altered_card_is_refused(model_copy):
    card_path = model_copy / "model_card.json"
    card = json.loads(card_path.read_text())
    card["temperature"] = 0.5
    card_path.write_text(json.dumps(card, indent=1, sort_keys=True) + "\n")
    with pytest.raises(ModelIntegrityError, match=r"model_card\.json"):
        load_model(model_copy)


def test_resigned_by_an_untrusted_key_is_refused(model_copy, trained):
    from radvault.analysis.export import write_model

    card = json.loads((model_copy / "model_card.json").read_text())
    card["temperature"] = 0.5
    write_model(model_copy, (model_copy / "model.onnx").read_bytes(), card,
                Ed25519Signer.generate())
    with pytest.raises(ModelIntegrityError, match="untrusted key"):
        load_model(model_copy)


def test_wrong_verifier_is_refused(model_copy):
    with pytest.raises(ModelIntegrityError):
        load_model(model_copy, Ed25519Signer.generate().verifier())


def test_unsigned_model_is_refused_unless_allowed(model_copy):
    (model_copy / "signature.json").unlink()
    with pytest.raises(ModelIntegrityError, match="not signed"):
        load_model(model_copy)
    assert load_model(model_copy, require_signature=False).card.task == "toy"


def test_export_model_writes_cam_weights_and_input(tmp_path, signer):
    net = build_network("resnet18", 2, width=0.125).eval()
    card = export_model(net, tmp_path / "m", size=32, signer=signer, card={
        "task": "t", "classes": ["a", "b"], "preprocessing": {"size": 32},
        "trained_on": [{"modality": "CT", "body_part": "CHEST"}]})
    assert np.asarray(card["cam"]["weight"]).shape == (2, net.fc.in_features)
    assert card["input"]["size"] == 32
    ring = ModelKeyring({signer.key_id: signer.verifier()})
    assert load_model(tmp_path / "m", keyring=ring).card.size == 32


def test_jsonable_turns_every_non_finite_float_into_null():
    from radvault.analysis.export import jsonable

    out = jsonable({"a": float("nan"), "b": [np.float64("inf"), (1, -np.inf)],
                    "c": np.array([0.5, np.nan])})
    assert out == {"a": None, "b": [None, [1, None]], "c": [0.5, None]}
    json.dumps(out, allow_nan=False)  # strict JSON


def test_efficientnet_export_keeps_torchs_constant_folding_warnings_off_the_console():
    import warnings

    net = build_network("efficientnet-b0", 3).eval()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        onnx_bytes_from_torch(net, 32)
        warnings.warn("a warning of the caller's own still shows", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen if issubclass(w.category, UserWarning)] == [
        "a warning of the caller's own still shows"]

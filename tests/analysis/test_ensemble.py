"""Seed ensembles: one signed ONNX model that averages its members' logits, CAM intact."""

from __future__ import annotations

import json

import numpy as np
import pytest

from radvault.analysis.datasets import ManifestSource
from radvault.analysis.ensemble import build_ensemble, merge_onnx
from radvault.analysis.export import ModelKeyring
from radvault.analysis.inference import load_model
from radvault.analysis.training import TrainConfig, train
from radvault.errors import ModelError, ModelIntegrityError


@pytest.fixture(scope="module")
def second(tmp_path_factory, toy_manifest, toy_task_file, tiny_settings, signer):
    out = tmp_path_factory.mktemp("second")
    config = TrainConfig(source=ManifestSource(toy_manifest, toy_task_file),
                         out_dir=out / "toy", network="resnet18", width=0.25,
                         preprocess=tiny_settings, epochs=2, batch_size=8, seed=1, threads=1,
                         checkpoint_dir=out / "ckpt", device="cpu")
    return train(config, progress=False, signer=signer)


@pytest.fixture
def keyring(signer):
    return ModelKeyring({signer.key_id: signer.verifier()})


def test_the_ensemble_serves_the_mean_of_its_members_logits(
    trained, second, toy_manifest, toy_task_file, signer, keyring, tmp_path,
):
    source = ManifestSource(toy_manifest, toy_task_file)
    card = build_ensemble([trained.model_dir, second.model_dir], source, tmp_path / "ens",
                          signer=signer, keyring=keyring)
    ensemble = load_model(tmp_path / "ens", keyring=keyring)
    members = [load_model(d, keyring=keyring) for d in (trained.model_dir, second.model_dir)]
    x = source.load("test", members[0].card.preprocess_settings).images[:6]
    expected = (members[0].logits(x) + members[1].logits(x)) / 2
    np.testing.assert_allclose(ensemble.logits(x), expected, rtol=1e-4, atol=1e-4)

    assert card["network"]["name"] == "ensemble"
    assert [m["model_id"] for m in card["training"]["members"]] == [
        m.card.model_id for m in members]
    assert card["training"]["seed"] == [0, 1]
    # the split its members trained on: what evaluating the ensemble checks leakage against
    assert card["training"]["splits"] == {"train": "train", "val": "val", "test": "test"}
    assert card["metrics"]["val"]["auc_macro"] is not None and card["metrics"]["test"]
    assert card["temperature"] > 0
    heatmap = ensemble.cam(x[0])
    assert heatmap.shape == (32, 32) and np.isfinite(heatmap).all()
    probabilities = ensemble.predict(x)[0].probabilities
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_members_that_do_not_fit_together_or_fail_verification_are_refused(
    trained, second, toy_manifest, toy_task_file, signer, keyring, tmp_path,
):
    source = ManifestSource(toy_manifest, toy_task_file)
    with pytest.raises(ModelError, match="at least two"):
        build_ensemble([trained.model_dir], source, tmp_path / "one", signer=signer,
                       keyring=keyring)
    with pytest.raises(ModelError, match="at least two"):
        merge_onnx([(trained.model_dir / "model.onnx").read_bytes()])

    import shutil

    altered = tmp_path / "altered"
    shutil.copytree(second.model_dir, altered)
    card = json.loads((altered / "model_card.json").read_text())
    card["preprocessing"]["size"] = 64
    (altered / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(ModelIntegrityError):
        build_ensemble([trained.model_dir, altered], source, tmp_path / "bad", signer=signer,
                       keyring=keyring)
    assert not (tmp_path / "bad").exists()


def test_models_made_with_other_preprocessing_are_not_combined(
    trained, second, toy_manifest, toy_task_file, signer, keyring, tmp_path,
):
    from radvault.analysis.export import write_model

    card = json.loads((second.model_dir / "model_card.json").read_text())
    card["preprocessing"]["enhance"] = not card["preprocessing"]["enhance"]
    write_model(tmp_path / "other", (second.model_dir / "model.onnx").read_bytes(), card, signer)
    with pytest.raises(ModelError, match="preprocessing differs"):
        build_ensemble([trained.model_dir, tmp_path / "other"],
                       ManifestSource(toy_manifest, toy_task_file), tmp_path / "bad",
                       signer=signer, keyring=keyring)

"""Class-bias calibration: fitted on validation data, chosen by grouped cross-validation."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from radvault.analysis.calibration import (
    compare_calibrations,
    fit_bias_temperature,
    fit_temperature,
    nll,
    softmax,
)
from radvault.analysis.datasets import ManifestSource
from radvault.analysis.export import ModelKeyring, write_model
from radvault.analysis.inference import ModelCard, load_model
from radvault.analysis.recalibrate import recalibrate_model
from radvault.errors import ModelError


def _shifted(n_per_class: int = 60, shift: float = 3.0, seed: int = 0):
    """Logits of a good ranker whose class 1 is under-scored by ``shift`` everywhere."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n_per_class)
    z = rng.normal(0.0, 1.0, (len(y), 3))
    z[np.arange(len(y)), y] += 4.0
    z[:, 1] -= shift
    groups = np.array([f"g{i // 5}" for i in range(len(y))])  # five images per series
    return z, y, groups


def test_softmax_adds_the_class_bias_after_dividing_by_the_temperature() -> None:
    z = np.array([[1.0, 2.0, 0.5]])
    expected = np.exp(z / 2 + [0, -1, 1]) / np.exp(z / 2 + [0, -1, 1]).sum()
    np.testing.assert_allclose(softmax(z, 2.0, [0, -1, 1]), expected)
    assert nll(z, [2], 2.0, [0, -1, 1]) == pytest.approx(-np.log(expected[0, 2]))


def test_class_biases_undo_a_class_that_is_scored_too_low() -> None:
    z, y, _ = _shifted()
    plain = fit_temperature(z, y)
    biased = fit_bias_temperature(z, y)
    assert biased.bias is not None and biased.bias[0] == 0.0
    assert biased.bias[1] - np.mean([biased.bias[0], biased.bias[2]]) > 1.5
    assert biased.nll_after < plain.nll_after
    accuracy = (softmax(z, biased.temperature, biased.bias).argmax(1) == y).mean()
    assert accuracy > (z.argmax(1) == y).mean() + 0.1
    assert biased.as_dict()["method"] == "bias_temperature"
    assert len(biased.as_dict()["class_bias"]) == 3


def test_cross_validation_picks_biases_only_when_they_help_unseen_groups() -> None:
    z, y, groups = _shifted()
    report = compare_calibrations(z, y, groups, repeats=2)
    assert report["choice"] == "bias_temperature"
    assert report["bias_temperature"]["nll_mean"] < report["temperature"]["nll_mean"]
    assert report["groups"] == len(set(groups)) and report["folds"] == 5

    # a shift that belongs to the series, not the class: biases fitted on some
    # series do not carry over to the others
    rng = np.random.default_rng(1)
    z2, y2, _ = _shifted(shift=0.0, seed=1)
    groups2 = np.array([f"s{i % 6}" for i in range(len(y2))])
    for g in range(6):
        z2[groups2 == f"s{g}", rng.integers(3)] += 4.0
    noisy = compare_calibrations(z2, y2, groups2, repeats=2)
    assert noisy["choice"] == "temperature"


def test_cross_validation_needs_groups_for_every_image_and_two_of_them() -> None:
    z, y, groups = _shifted()
    with pytest.raises(ModelError, match="one group per"):
        compare_calibrations(z, y, groups[:-1])
    with pytest.raises(ModelError, match="two groups"):
        compare_calibrations(z, y, ["one"] * len(y))


def _card_with(trained, tmp_path, **changes):
    folder = tmp_path / "model"
    shutil.copytree(trained.model_dir, folder)
    card = json.loads((folder / "model_card.json").read_text())
    card.update(changes)
    return folder, card


def test_a_card_class_bias_changes_predictions_cams_and_the_model_id(
    trained, toy_manifest, toy_task_file, signer, tmp_path,
) -> None:
    keyring = ModelKeyring({signer.key_id: signer.verifier()})
    base = load_model(trained.model_dir, keyring=keyring)
    x = ManifestSource(toy_manifest, toy_task_file).load(
        "test", base.card.preprocess_settings).images[:4]
    bias = [0.0, 0.0, 50.0]  # class 2 always wins
    folder, card = _card_with(trained, tmp_path, class_bias=bias)
    written = write_model(folder, (folder / "model.onnx").read_bytes(), card, signer)
    assert written["model_id"].startswith(base.model_id + "-b")
    biased = load_model(folder, keyring=keyring)
    assert {p.index for p in biased.predict(x)} == {2}
    np.testing.assert_allclose(biased.probabilities(x),
                               softmax(base.logits(x), base.card.temperature, bias), atol=1e-6)
    expected_cam = base.cam(x[0], class_index=2)
    np.testing.assert_allclose(biased.cam(x[0]), expected_cam, atol=1e-6)


@pytest.mark.parametrize("bias", [[0.0, 1.0], [0.0, 1.0, float("inf")], "high"])
def test_a_card_with_a_malformed_class_bias_is_refused(trained, tmp_path, bias) -> None:
    card = json.loads((trained.model_dir / "model_card.json").read_text())
    card["class_bias"] = bias
    with pytest.raises(ModelError, match=r"class_bias|malformed"):
        ModelCard.from_dict(card)


def test_recalibrate_writes_a_signed_model_with_its_evidence(
    trained, toy_manifest, toy_task_file, signer, tmp_path,
) -> None:
    keyring = ModelKeyring({signer.key_id: signer.verifier()})
    folder, card = _card_with(trained, tmp_path, release={"refer_always": True, "why": "x"})
    write_model(folder, (folder / "model.onnx").read_bytes(), card, signer)
    source = ManifestSource(toy_manifest, toy_task_file)
    out = recalibrate_model(folder, source, tmp_path / "recal", method="auto",
                            signer=signer, keyring=keyring)
    model = load_model(tmp_path / "recal", keyring=keyring)
    cal = out["calibration"]
    assert cal["method"] == cal["cross_validation"]["choice"]
    assert cal["recalibrated_from"] == load_model(folder, keyring=keyring).model_id
    assert out["metrics"]["val"]["n"] == 24 and out["metrics"]["test"]["n"] == 24
    assert out["release"] == {"refer_always": True, "why": "x"}  # the verdict is kept
    assert model.card.temperature == out["temperature"]
    assert (model.card.class_bias is not None) == (cal["method"] == "bias_temperature")

    forced = recalibrate_model(folder, source, tmp_path / "forced",
                               method="bias_temperature", signer=signer, keyring=keyring,
                               test_split="")
    assert forced["calibration"]["method"] in ("bias_temperature", "temperature")
    assert forced["metrics"]["test"] is None
    with pytest.raises(ModelError, match="method"):
        recalibrate_model(folder, source, tmp_path / "x", method="isotonic", signer=signer,
                          keyring=keyring)

"""The image check refers an image that looks like another trained source than declared."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from radvault.analysis.datasets import ManifestSource
from radvault.analysis.export import update_card
from radvault.analysis.image_check import ImageCheck, set_image_check_threshold
from radvault.analysis.inference import load_model
from radvault.analysis.registry import ModelRegistry
from radvault.errors import ModelError, ModelIntegrityError

# the toy classes stand in for three sources, each trained on one (modality, body part)
SOURCES = {"disc": ("CT", "CHEST"), "square": ("MR", "BRAIN"), "bars": ("US", "BREAST")}


@pytest.fixture(scope="module")
def check_dir(trained, signer, tmp_path_factory):
    """The toy model as an image check: each class one source, threshold 0.5."""
    out = tmp_path_factory.mktemp("check") / "image_check"
    shutil.copytree(trained.model_dir, out)
    update_card(out, {
        "trained_on": [{"modality": m, "body_part": b} for m, b in SOURCES.values()],
        "class_trained_on": {c: [{"modality": m, "body_part": b}]
                             for c, (m, b) in SOURCES.items()}}, signer=signer)
    set_image_check_threshold(out, 0.5, evidence={"split": "val"}, signer=signer)
    return out


@pytest.fixture(scope="module")
def check(check_dir, signer):
    return ImageCheck(load_model(check_dir, signer.verifier()))


@pytest.fixture(scope="module")
def toy_test(toy_manifest, toy_task_file, tiny_settings):
    return ManifestSource(toy_manifest, toy_task_file).load("test", tiny_settings)


def _one_of(toy_test, check, label: str) -> np.ndarray:
    """A test image of ``label`` that the check takes for ``label`` above its threshold."""
    images = toy_test.images.astype(np.float32)
    probs = check.model.probabilities(images)
    k = check.model.card.classes.index(label)
    for i in np.flatnonzero(np.asarray(toy_test.labels) == k):
        if probs[i].argmax() == k and probs[i, k] >= check.threshold:
            return images[i:i + 1]
    pytest.fail(f"the toy check recognises no {label} test image")


def test_an_image_that_looks_like_another_source_than_declared_is_referred(check, toy_test):
    disc = _one_of(toy_test, check, "disc")  # looks like a CT CHEST image
    declared_as_brain_mr = check.guess(disc, ["MR"], ["BRAIN"])[0]
    assert declared_as_brain_mr.source == "disc"
    assert declared_as_brain_mr.unlike_declared
    assert not check.guess(disc, ["CT"], ["CHEST"])[0].unlike_declared


def test_a_declaration_the_check_never_saw_is_not_second_guessed(check, toy_test):
    disc = _one_of(toy_test, check, "disc")
    for modality, body_part in (("CR", "KNEE"), ("", ""), ("CT", "")):
        guess = check.guess(disc, [modality], [body_part])[0]
        assert not guess.unlike_declared and guess.matches_declared is None
    assert check.guess(disc, ["CT"], ["CHEST"])[0].matches_declared is True
    assert check.guess(disc, ["MR"], ["BRAIN"])[0].matches_declared is False


def test_a_guess_under_the_threshold_refers_nothing(check_dir, signer, toy_test):
    strict = ImageCheck(load_model(check_dir, signer.verifier()), threshold=1.0)
    images = toy_test.images.astype(np.float32)
    guesses = strict.guess(images, ["MR"] * len(images), ["BRAIN"] * len(images))
    assert not any(g.unlike_declared for g in guesses)


def test_the_diagnostic_answer_carries_the_reason_and_what_the_check_saw(
        trained, signer, check, toy_test):
    model = load_model(trained.model_dir, signer.verifier())
    disc = _one_of(toy_test, check, "disc")
    pred = model.predict(disc, modality="MR", body_part="BRAIN", image_check=check)[0]
    assert "image_unlike_declared" in pred.reasons and pred.refer
    assert pred.image_check["looks_like"] == "disc"
    assert pred.image_check["model_id"] == check.model_id
    assert pred.as_dict()["image_check"]["unlike_declared"] is True
    declared_right = model.predict(disc, modality="CT", body_part="CHEST", threshold=1e-9,
                                   image_check=check)[0]
    assert declared_right.reasons == ()
    assert declared_right.image_check["unlike_declared"] is False
    assert model.predict(disc)[0].image_check is None  # no check asked for, none run


def test_the_check_sees_any_model_input_size_area_resized(check, toy_test):
    disc = _one_of(toy_test, check, "disc")
    big = np.repeat(np.repeat(disc, 4, axis=2), 4, axis=3)  # the same image at 4x the size
    small = check.fit_input(big)
    assert small.shape == disc.shape
    np.testing.assert_allclose(small, disc, atol=1e-6)  # 4 x 4 block means give it back
    assert check.guess(big, ["MR"], ["BRAIN"])[0].unlike_declared


def test_a_model_without_a_chosen_threshold_is_not_an_image_check(trained, signer):
    with pytest.raises(ModelError, match="not an image check"):
        ImageCheck(load_model(trained.model_dir, signer.verifier()))
    with pytest.raises(ModelError, match=r"must be in \(0, 1\]"):
        set_image_check_threshold(trained.model_dir, 1.5, evidence={}, signer=signer)


def test_the_registry_finds_the_check_but_never_serves_it_as_a_diagnosis(check_dir, tmp_path):
    root = tmp_path / "models"
    root.mkdir()
    shutil.copytree(check_dir, root / "image_check")
    registry = ModelRegistry(root, default="image_check")
    assert registry.image_check_path() == root / "image_check"
    assert registry.entries() == []
    with pytest.raises(ModelError, match="no model 'image_check'"):
        registry.select("CT", "CHEST")
    assert ModelRegistry(tmp_path).image_check_path() is None


def test_an_altered_check_is_refused(check_dir, signer, tmp_path):
    altered = tmp_path / "image_check"
    shutil.copytree(check_dir, altered)
    card = altered / "model_card.json"
    card.write_text(card.read_text().replace('"threshold": 0.5', '"threshold": 0.99'))
    with pytest.raises(ModelIntegrityError):
        load_model(altered, signer.verifier())


def test_the_shipped_check_verifies_and_knows_the_five_radbench_sources():
    registry = ModelRegistry()
    path = registry.image_check_path()
    assert path is not None, "models/image_check is missing"
    check = ImageCheck(load_model(path, keyring=registry.keyring))
    assert check.sources == {
        "chest_xray": (("DX", "CHEST"),), "brain_mri": (("MR", "BRAIN"),),
        "lung_ct": (("CT", "CHEST"),), "kidney_ct": (("CT", "KIDNEY"),),
        "breast_us": (("US", "BREAST"),)}
    assert 0.5 <= check.threshold < 1.0
    assert check.model.card.raw["image_check"]["chosen_by"]["split"] == "val"

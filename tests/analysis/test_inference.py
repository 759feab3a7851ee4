"""Serving: calibrated probabilities, the refer flag, and no torch needed."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from radvault.analysis.datasets import ManifestSource
from radvault.analysis.evaluate import evaluate_model
from radvault.analysis.export import CARD_FORMAT
from radvault.analysis.inference import ModelCard, load_model, refer_reasons
from radvault.errors import ModelError


@pytest.fixture(scope="module")
def loaded(trained, signer):
    return load_model(trained.model_dir, signer.verifier())


@pytest.fixture(scope="module")
def test_images(trained, toy_manifest, toy_task_file, tiny_settings):
    return ManifestSource(toy_manifest, toy_task_file).load("test", tiny_settings)


def test_predict_gives_calibrated_probabilities(loaded, test_images):
    batch = test_images.images[:6].astype(np.float32)
    preds = loaded.predict(batch)
    assert len(preds) == 6
    for p in preds:
        assert sum(p.probabilities.values()) == pytest.approx(1.0)
        assert p.label == max(p.probabilities, key=p.probabilities.get)
        assert p.model_id == loaded.card.model_id
    probs = loaded.probabilities(batch)
    t = loaded.card.temperature
    logits = loaded.logits(batch)
    expected = np.exp(logits / t) / np.exp(logits / t).sum(1, keepdims=True)
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-7)


def test_refer_flag_on_low_confidence(loaded, test_images):
    batch = test_images.images[:4].astype(np.float32)
    assert all(p.refer and "low_confidence" in p.reasons
               for p in loaded.predict(batch, threshold=1.0))
    tiny = loaded.predict(batch, threshold=1e-9)
    assert not any(p.refer for p in tiny)


def test_refer_flag_on_untrained_modality_or_body_part(loaded, test_images):
    x = test_images.images[:1].astype(np.float32)
    assert loaded.predict(x, modality="CT", body_part="CHEST", threshold=1e-9)[0].reasons == ()
    assert loaded.predict(x, modality="MR", threshold=1e-9)[0].reasons == (
        "modality_not_trained",)
    assert loaded.predict(x, modality="CT", body_part="KIDNEY", threshold=1e-9)[0].reasons == (
        "body_part_not_trained",)
    assert loaded.predict(x, modality="", threshold=1e-9)[0].refer  # unknown modality
    assert loaded.predict(x, modality="CT", body_part="", threshold=1e-9)[0].reasons == (
        "body_part_unknown",)
    assert loaded.predict(x, modality="CT", threshold=1e-9)[0].reasons == ()  # not checked


def test_refer_reasons_table():
    card = _card()
    assert refer_reasons(0.79, 0.80, card, None, None) == ("low_confidence",)
    assert refer_reasons(0.80, 0.80, card, None, None) == ()
    assert refer_reasons(0.95, 0.80, card, "mr", "brain") == ()
    assert refer_reasons(0.95, 0.80, card, "MR", "CHEST") == ("body_part_not_trained",)
    assert refer_reasons(0.50, 0.80, card, "US", "BREAST") == ("low_confidence",
                                                              "modality_not_trained")


def _card(**fields) -> ModelCard:
    # by default the last class means "no disease", as the task file says
    classes = fields.pop("classes", ("a", "b"))
    raw = fields.pop("raw", {"task_definition": {"classes": [
        {"name": c, "normal": c == classes[-1]} for c in classes]}})
    return ModelCard(**{"model_id": "m", "task": "t", "classes": classes, "size": 8,
                        "preprocessing": {}, "temperature": 1.0,
                        "trained_on": (("DX", "CHEST"), ("MR", "BRAIN")),
                        "onnx_sha256": "0" * 64, "raw": raw, **fields})


def test_a_model_without_a_normal_class_refers_every_answer():
    # radbench6 names one of six diseases for every image, a normal one too
    diseases = _card(classes=("pneumonia", "glioma"), raw={})
    assert diseases.normal_classes == ()
    assert refer_reasons(0.99, 0.80, diseases, "DX", "CHEST") == ("no_normal_class",)
    assert refer_reasons(0.99, 0.80, diseases, None, None) == ("no_normal_class",)
    # cards before session 10 say nothing: a class named as a shipped "normal" counts
    for name in ("normal", "notumor", "normal_or_benign", "chest_xray/normal"):
        assert _card(classes=("a", name), raw={}).normal_classes == (name,)
    # a task file's marks win over names, both ways
    marked = _card(classes=("healthy-ish", "normal"), raw={"task_definition": {"classes": [
        {"name": "healthy-ish", "normal": True}, {"name": "normal", "normal": False}]}})
    assert marked.normal_classes == ("healthy-ish",)
    unmarked = _card(classes=("a", "normal"), raw={"task_definition": {"classes": [
        {"name": "a", "normal": False}, {"name": "normal", "normal": False}]}})
    assert refer_reasons(0.99, 0.80, unmarked, None, None) == ("no_normal_class",)


def test_an_unknown_body_part_is_referred_when_the_card_names_the_trained_ones():
    card = _card()
    assert refer_reasons(0.95, 0.80, card, "MR", "") == ("body_part_unknown",)
    assert refer_reasons(0.95, 0.80, card, "MR", " ") == ("body_part_unknown",)
    assert refer_reasons(0.50, 0.80, card, "DX", "") == ("low_confidence", "body_part_unknown")
    # None: the caller has no such information by design, nothing is checked
    assert refer_reasons(0.95, 0.80, card, "MR", None) == ()
    assert refer_reasons(0.95, 0.80, card, None, "") == ()
    # an unknown modality says it all: no body part reason on top
    assert refer_reasons(0.95, 0.80, card, "", "") == ("modality_not_trained",)
    assert refer_reasons(0.95, 0.80, card, "OT", None) == ("modality_not_trained",)
    # a model trained on images without a body part knows such images
    unnamed = _card(trained_on=(("DX", ""), ("MR", "BRAIN")))
    assert refer_reasons(0.95, 0.80, unnamed, "DX", "") == ()
    assert refer_reasons(0.95, 0.80, unnamed, "MR", "") == ("body_part_unknown",)
    # a card that lists no trained_on pairs says nothing of what the model knows
    assert refer_reasons(0.95, 0.80, _card(trained_on=()), "MR", "") == ()


def test_a_class_never_trained_for_the_images_modality_is_referred():
    pairs = {"a": (("DX", "CHEST"),), "b": (("MR", "BRAIN"),)}
    card = _card(class_trained_on=pairs)
    assert refer_reasons(0.95, 0.80, card, "MR", "BRAIN", "a") == (
        "class_not_trained_for_modality",)
    assert refer_reasons(0.95, 0.80, card, "MR", "BRAIN", "b") == ()
    assert refer_reasons(0.95, 0.80, card, "mr", "", "a") == (
        "body_part_unknown", "class_not_trained_for_modality")
    assert refer_reasons(0.95, 0.80, card, "MR", None, "a") == (
        "class_not_trained_for_modality",)
    assert refer_reasons(0.95, 0.80, card, "US", "BREAST", "a") == ("modality_not_trained",)
    assert refer_reasons(0.95, 0.80, card, None, None, "a") == ()
    assert refer_reasons(0.95, 0.80, card, "MR", "BRAIN") == ()  # no label given
    # without class_trained_on (every shipped card so far) the check does not run
    assert refer_reasons(0.95, 0.80, _card(), "MR", "BRAIN", "a") == ()


def test_a_class_trained_on_the_modality_but_not_the_body_part_is_referred():
    # as radbench6: two CT classes, one per body part
    pairs = {"lung": (("CT", "CHEST"),), "stone": (("CT", "KIDNEY"),)}
    card = _card(classes=("lung", "stone"), trained_on=(("CT", "CHEST"), ("CT", "KIDNEY")),
                 class_trained_on=pairs)
    assert refer_reasons(0.95, 0.80, card, "CT", "CHEST", "stone") == (
        "class_not_trained_for_body_part",)
    assert refer_reasons(0.95, 0.80, card, "CT", "KIDNEY", "stone") == ()
    # a body part the model never saw for CT, or none: those reasons say it already
    assert refer_reasons(0.95, 0.80, card, "CT", "BRAIN", "stone") == (
        "body_part_not_trained",)
    assert refer_reasons(0.95, 0.80, card, "CT", "", "stone") == ("body_part_unknown",)
    assert refer_reasons(0.95, 0.80, card, "CT", None, "stone") == ()


def test_every_reason_given_is_listed_in_order():
    from radvault.analysis.inference import REFER_REASONS

    card = _card(class_trained_on={"a": (("DX", "CHEST"),), "b": (("MR", "BRAIN"),)},
                 raw={"release": {"refer_always": True, "why": "x"}})
    given = refer_reasons(0.1, 0.80, card, "MR", "", "a")
    assert given == ("model_not_validated", "no_normal_class", "low_confidence",
                     "body_part_unknown", "class_not_trained_for_modality")
    assert set(given) < set(REFER_REASONS)
    assert [r for r in REFER_REASONS if r in given] == list(given)


def _card_dict(**fields) -> dict:
    return {"format": CARD_FORMAT, "model_id": "m", "task": "t", "classes": ["a", "b"],
            "input": {"size": 8}, "preprocessing": {}, "onnx_sha256": "0" * 64,
            "trained_on": [{"modality": "DX", "body_part": "CHEST"},
                           {"modality": "MR", "body_part": "BRAIN"}], **fields}


def test_the_card_reads_class_trained_on_and_checks_it():
    base = _card_dict()
    assert ModelCard.from_dict(base).class_trained_on is None
    card = ModelCard.from_dict({**base, "class_trained_on": {
        "a": [{"modality": "dx", "body_part": "chest"}],
        "b": [{"modality": "MR", "body_part": "BRAIN"}]}})
    assert card.class_trained_on == {"a": (("DX", "CHEST"),), "b": (("MR", "BRAIN"),)}
    for bad in ({"a": [{"modality": "DX", "body_part": "CHEST"}]},  # a class missing
                {"a": [{"modality": "DX", "body_part": "CHEST"}],
                 "b": [{"modality": "CT", "body_part": "CHEST"}]},  # not in trained_on
                {"a": [{"body_part": "CHEST"}], "b": []},  # no modality
                ["a", "b"]):  # not a mapping
        with pytest.raises(ModelError, match=r"class_trained_on|malformed"):
            ModelCard.from_dict({**base, "class_trained_on": bad})


def test_a_model_marked_not_validated_refers_every_image(trained, signer, test_images,
                                                          tmp_path):
    import shutil

    from radvault.analysis.export import mark_release

    shutil.copytree(trained.model_dir, tmp_path / "m")
    mark_release(tmp_path / "m", refer_always=True, why="fails on held-out series",
                 signer=signer)
    marked = load_model(tmp_path / "m", signer.verifier())
    assert marked.card.model_id == trained.card["model_id"]  # same network, new signed card
    assert marked.card.raw["release"] == {"refer_always": True,
                                          "why": "fails on held-out series"}
    x = test_images.images[:3].astype(np.float32)
    for p in marked.predict(x, threshold=1e-9):
        assert p.refer and p.reasons == ("model_not_validated",)


def test_default_threshold_comes_from_settings(loaded):
    assert loaded.refer_threshold == pytest.approx(0.80)


def test_wrong_batch_shape_is_refused(loaded):
    with pytest.raises(ModelError, match="expected a batch"):
        loaded.predict(np.zeros((1, 3, 16, 16), np.float32))


def test_evaluate_matches_the_training_report(loaded, toy_manifest, toy_task_file, trained):
    metrics = evaluate_model(loaded, ManifestSource(toy_manifest, toy_task_file), "test")
    assert metrics["accuracy"] == pytest.approx(trained.test_metrics["accuracy"])
    assert metrics["auc_macro"] == pytest.approx(trained.test_metrics["auc_macro"], abs=1e-6)
    assert 0.0 <= metrics["referred_fraction"] <= 1.0


def test_serving_modules_do_not_import_torch():
    code = ("import sys, radvault.analysis.inference, radvault.analysis.registry, "
            "radvault.analysis.evaluate, radvault.analysis.explain; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_predict_records_uses_the_cards_preprocessing_and_metadata(loaded, toy_manifest,
                                                                  toy_task_file):
    from radvault.analysis.datasets import read_pixels
    from radvault.imaging.records import ImageRecord

    source = ManifestSource(toy_manifest, toy_task_file)
    row = source.rows("test")[0][0]
    pixels = read_pixels(row.file)[0]
    record = ImageRecord(pixels=pixels[None], source_format="png", modality="CT",
                         body_part="CHEST")
    other = ImageRecord(pixels=pixels[None], source_format="png")  # modality unknown: OT
    no_part = ImageRecord(pixels=pixels[None], source_format="png", modality="CT")
    ours, unknown, partless = loaded.predict_records([record, other, no_part], threshold=1e-9)
    direct = loaded.predict(loaded.preprocess(record)[None], threshold=1e-9)[0]
    assert ours.probabilities == pytest.approx(direct.probabilities)
    assert not ours.refer
    assert unknown.reasons == ("modality_not_trained",)
    assert partless.reasons == ("body_part_unknown",)
    assert partless.probabilities == ours.probabilities  # the flag changes nothing else

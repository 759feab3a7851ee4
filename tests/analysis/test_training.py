"""Training learns an easy task, resumes from its checkpoint, and every switch works."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest
import torch

from radvault.analysis.datasets import ManifestSource
from radvault.analysis.training import (
    Optimisation,
    TrainConfig,
    augment_batch,
    resolve_device,
    train,
)
from radvault.errors import ModelError


def test_training_beats_chance_on_an_easy_task(trained):
    test = trained.test_metrics
    assert test is not None
    assert test["accuracy"] > 0.6  # chance is 1/3
    assert test["auc_macro"] > 0.8
    assert len(trained.history) >= 2
    assert trained.card["training"]["best_epoch"] == trained.best_epoch


def test_card_records_what_service_needs(trained, toy_manifest):
    from radvault.analysis.manifest import load_manifest

    card = trained.card
    assert card["classes"] == ["disc", "square", "bars"]
    assert card["input"]["size"] == 32
    assert card["preprocessing"]["size"] == 32 and card["preprocessing"]["denoise"] is False
    assert card["training"]["manifest_sha256"] == load_manifest(toy_manifest).sha256
    assert card["training"]["seed"] == 0
    assert card["temperature"] > 0
    assert set(card["metrics"]) == {"val", "test"}
    assert card["trained_on"] == [{"modality": "CT", "body_part": "CHEST"}]
    assert card["class_trained_on"] == {c: [{"modality": "CT", "body_part": "CHEST"}]
                                        for c in card["classes"]}
    assert card["calibration"]["ece_after"] <= card["calibration"]["ece_before"] + 1e-9


def _config(manifest, task, settings, out, **kw):
    # the CPU unless a test names a GPU: "auto" would pick a GPU where there is one, and
    # these tests protect the CPU path (bit-for-bit repeatable; the GPU tests say "cuda")
    kw.setdefault("device", "cpu")
    return TrainConfig(source=ManifestSource(manifest, task), out_dir=out / "m",
                       network="resnet18", width=0.125, preprocess=settings, batch_size=16,
                       threads=1, checkpoint_dir=out / "ckpt", **kw)


def test_resume_continues_from_the_checkpoint(toy_manifest, toy_task_file, tiny_settings,
                                              tmp_path):
    opt = Optimisation(early_stopping=False)
    first = train(_config(toy_manifest, toy_task_file, tiny_settings, tmp_path, epochs=1,
                          optimisation=opt), progress=False)
    assert [h["epoch"] for h in first.history] == [1]
    # a different epoch budget is a different configuration: refused
    with pytest.raises(ModelError, match=r"different configuration \(differs: epochs\)"):
        train(_config(toy_manifest, toy_task_file, tiny_settings, tmp_path, epochs=2,
                      optimisation=opt, resume=True), progress=False)
    ckpt = torch.load(tmp_path / "ckpt" / "checkpoint.pt", weights_only=True)
    fingerprint = json.loads(ckpt["fingerprint"])
    fingerprint["epochs"] = 2  # pretend the first run had been planned for two epochs
    ckpt["fingerprint"] = json.dumps(fingerprint, sort_keys=True)
    torch.save(ckpt, tmp_path / "ckpt" / "checkpoint.pt")
    # finish_now exports the best epoch so far without training on
    early = train(_config(toy_manifest, toy_task_file, tiny_settings, tmp_path, epochs=2,
                          optimisation=opt, resume=True, finish_now=True), progress=False)
    assert [h["epoch"] for h in early.history] == [1]
    assert early.card["training"]["epochs_run"] == 1 and early.card["training"]["epochs"] == 2
    second = train(_config(toy_manifest, toy_task_file, tiny_settings, tmp_path, epochs=2,
                           optimisation=opt, resume=True), progress=False)
    assert [h["epoch"] for h in second.history] == [1, 2]
    assert second.history[0] == first.history[0]


def test_everything_switched_off_still_trains(toy_manifest, toy_task_file, tiny_settings,
                                              tmp_path):
    result = train(_config(toy_manifest, toy_task_file, tiny_settings, tmp_path, epochs=1,
                           optimisation=Optimisation.off(), test_split=""), progress=False)
    assert result.temperature == 1.0 and result.card["calibration"] is None
    assert result.test_metrics is None


def test_same_seed_same_history(toy_manifest, toy_task_file, tiny_settings, tmp_path):
    runs = [train(_config(toy_manifest, toy_task_file, tiny_settings, tmp_path / str(i),
                          epochs=1, test_split=""), progress=False) for i in range(2)]
    assert runs[0].history[0]["loss"] == pytest.approx(runs[1].history[0]["loss"], rel=1e-5)


def test_augmentation_keeps_shape_and_range_and_only_flips_when_allowed():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 32, 32)
    y = augment_batch(x, gen, hflip=True)
    assert y.shape == x.shape and float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    # a left-bright image stays left-bright without flips
    half = torch.zeros(16, 3, 32, 32)
    half[..., :12] = 1.0
    out = augment_batch(half, torch.Generator().manual_seed(1), hflip=False)
    left, right = out[..., :16].mean(dim=(1, 2, 3)), out[..., 16:].mean(dim=(1, 2, 3))
    assert bool((left > right).all())
    flipped = augment_batch(half, torch.Generator().manual_seed(1), hflip=True)
    left, right = flipped[..., :16].mean(dim=(1, 2, 3)), flipped[..., 16:].mean(dim=(1, 2, 3))
    assert bool((left < right).any())


def test_bad_options_are_refused(toy_manifest, toy_task_file, tiny_settings, tmp_path):
    with pytest.raises(ModelError, match="finish_now needs resume"):
        _config(toy_manifest, toy_task_file, tiny_settings, tmp_path, finish_now=True)
    with pytest.raises(ModelError):
        Optimisation(balance="oversample")
    with pytest.raises(ModelError):
        Optimisation(patience=0)


def test_device_choice(toy_manifest, toy_task_file, tiny_settings, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ModelError, match="sees no CUDA GPU"):
        resolve_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cuda:0") == "cuda:0"
    with pytest.raises(ModelError, match="sees 1 CUDA GPU"):
        resolve_device("cuda:7")
    with pytest.raises(ModelError, match="device must be auto, cpu or cuda"):
        resolve_device("cuda:abc")
    with pytest.raises(ModelError, match="device must be auto, cpu or cuda"):
        resolve_device("meta")
    with pytest.raises(ModelError, match="device must be auto, cpu or cuda"):
        _config(toy_manifest, toy_task_file, tiny_settings, tmp_path, device="tpu")


def test_cpu_run_records_its_device(trained):
    assert trained.card["training"]["device"] == "cpu"
    assert trained.card["training"]["threads"] >= 1  # a seed repeats only at one count


def test_augmentation_is_a_function_of_its_generator_alone():
    # The draws come from the CPU generator, so the stream (and the next draw
    # after a batch) is the same whatever device the batch lives on.
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    a, b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    out = augment_batch(x, a, hflip=True)
    assert torch.equal(out, augment_batch(x.clone(), b, hflip=True))
    assert torch.equal(torch.rand(3, generator=a), torch.rand(3, generator=b))


def needs_cuda(test):  # type: ignore[no-untyped-def]
    """Skip without a CUDA GPU, in CI too (it has none)."""
    return pytest.mark.optional(
        pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")(test))


@needs_cuda
def test_augmentation_on_a_gpu_matches_the_cpu():
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    cpu = augment_batch(x, torch.Generator().manual_seed(5), hflip=True)
    gpu = augment_batch(x.cuda(), torch.Generator().manual_seed(5), hflip=True)
    assert torch.allclose(cpu, gpu.cpu(), atol=1e-5)


@needs_cuda
def test_a_gpu_run_trains_resumes_and_exports_on_the_cpu(toy_manifest, toy_task_file,
                                                         tiny_settings, tmp_path):
    opt = Optimisation(early_stopping=False)
    first = train(_config(toy_manifest, toy_task_file, tiny_settings, tmp_path, epochs=1,
                          optimisation=opt, device="cuda"), progress=False)
    assert first.card["training"]["device"] == "cuda"
    more = train(_config(toy_manifest, toy_task_file, tiny_settings, tmp_path, epochs=1,
                         optimisation=opt, device="cuda", resume=True, finish_now=True),
                 progress=False)
    assert [h["epoch"] for h in more.history] == [1]
    assert more.val_metrics["nll"] == pytest.approx(first.val_metrics["nll"], abs=1e-6)


def test_class_without_training_images_is_refused(toy_manifest, tiny_settings, tmp_path):
    from radvault.analysis.tasks import Task, TaskClass

    task = Task("t", (TaskClass("disc", {"label": "disc"}),
                      TaskClass("ghost", {"label": "ghost"})))
    with pytest.raises(ModelError, match="a class has no training images"):
        train(_config(toy_manifest, task, tiny_settings, tmp_path, epochs=1), progress=False)


def test_a_run_can_start_from_another_runs_backbone(toy_manifest, toy_task_file, tiny_settings,
                                                   tmp_path):
    from radvault.analysis.networks import build_network
    from radvault.analysis.training import load_backbone

    opt = Optimisation(early_stopping=False)
    train(_config(toy_manifest, toy_task_file, tiny_settings, tmp_path / "a", epochs=1,
                  optimisation=opt), progress=False)
    checkpoint = tmp_path / "a" / "ckpt" / "checkpoint.pt"
    source = torch.load(checkpoint, map_location="cpu", weights_only=True)["best_state"]

    five_classes = build_network("resnet18", 5, width=0.125)
    load_backbone(five_classes, checkpoint)
    loaded = five_classes.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in source.items() if not k.startswith("fc."))
    assert loaded["fc.weight"].shape == (5, source["fc.weight"].shape[1])

    with pytest.raises(ModelError, match="network differs"):
        load_backbone(build_network("resnet18", 3, width=0.25), checkpoint)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="not a training checkpoint"):
        load_backbone(five_classes, tmp_path / "junk.pt")

    tuned = train(_config(toy_manifest, toy_task_file, tiny_settings, tmp_path / "b", epochs=1,
                          optimisation=opt, init_from=checkpoint), progress=False)
    assert tuned.card["training"]["init_from_sha256"] == hashlib.sha256(
        checkpoint.read_bytes()).hexdigest()


def test_out_of_range_options_are_refused_by_the_config(toy_manifest, toy_task_file,
                                                       tiny_settings, tmp_path):
    config = _config(toy_manifest, toy_task_file, tiny_settings, tmp_path)
    for kw, message in (({"weight_decay": -1.0}, "weight decay must be at least 0"),
                        ({"threads": 0}, "threads must be at least 1"),
                        ({"dropout": 1.0}, r"dropout must be within \[0, 1\)"),
                        ({"lr": 0.0}, "learning rate must be positive"),
                        ({"batch_size": 0}, "at least 1"),
                        ({"network": "densenet121", "width": 0.5}, "resnet18 only"),
                        ({"network": "efficientnet-b0", "width": 2.0}, "resnet18 only"),
                        ({"network": "vgg16"}, "unknown network"),
                        ({"width": 0.0}, "width must be within"),
                        ({"width": float("nan")}, "width must be within"),
                        ({"network": "densenet121", "stem": "small"}, "resnet18 only"),
                        ({"network": "densenet121", "width": 1.0,
                          "preprocess": replace(config.preprocess, size=28)},
                         "densenet121 needs an input of at least 32 px, not 28"),
                        ({"network": "efficientnet-b0", "width": 1.0,
                          "preprocess": replace(config.preprocess, size=16)},
                         "at least 32 px")):
        with pytest.raises(ModelError, match=message):
            replace(config, **kw)
    # the other networks at their only width are fine
    assert replace(config, network="densenet121", width=1.0).width == 1.0


def test_the_default_checkpoint_lives_beside_the_model_folder_and_resumes(
        toy_manifest, toy_task_file, tiny_settings, tmp_path):
    opt = Optimisation(early_stopping=False)
    config = replace(_config(toy_manifest, toy_task_file, tiny_settings, tmp_path, epochs=1,
                             optimisation=opt, test_split=""), checkpoint_dir=None)
    assert config.checkpoint_path == (tmp_path / "m.checkpoint").resolve() / "checkpoint.pt"
    first = train(config, progress=False)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.onnx",
                                                                   "model_card.json"]
    assert sorted(p.name for p in (tmp_path / "m.checkpoint").iterdir()) == [
        "checkpoint.pt", "history.json"]
    again = train(replace(config, resume=True, finish_now=True), progress=False)
    assert again.history == first.history
    # a run begun before the checkpoint moved (inside the model folder) still resumes
    (tmp_path / "m.checkpoint").rename(tmp_path / "legacy")
    (tmp_path / "legacy").rename(tmp_path / "m" / "train")
    assert config.checkpoint_path == (tmp_path / "m" / "train").resolve() / "checkpoint.pt"
    assert train(replace(config, resume=True, finish_now=True),
                 progress=False).history == first.history


def test_a_second_preprocessing_joins_every_split_and_the_card_says_so(
        toy_manifest, toy_task_file, tiny_settings, tmp_path):
    from dataclasses import replace

    from radvault.errors import ModelError

    enhanced = replace(tiny_settings, enhance=True, denoise=True)
    result = train(_config(toy_manifest, toy_task_file, tiny_settings, tmp_path, epochs=1,
                           also_preprocess=(enhanced,)), progress=False)
    card = result.card
    assert card["training"]["counts"]["train"] == [40, 40, 40]  # 20 per class, twice
    assert card["training"]["counts"]["val"] == [16, 16, 16]
    assert card["also_preprocessed_with"][0]["enhance"] is True
    assert card["preprocessing"]["enhance"] == tiny_settings.enhance  # serving: the first
    assert card["copies_per_image"] == 2
    with pytest.raises(ModelError, match="keep the input size"):
        _config(toy_manifest, toy_task_file, tiny_settings, tmp_path,
                also_preprocess=(replace(tiny_settings, size=64),))
    with pytest.raises(ModelError, match="repeats a preprocessing"):
        _config(toy_manifest, toy_task_file, tiny_settings, tmp_path,
                also_preprocess=(tiny_settings,))

"""The training/evaluation commands that reproduce the shipped models."""

from __future__ import annotations

import json

from radvault.analysis.commands import main
from radvault.analysis.export import Ed25519Signer


def test_train_then_evaluate_round_trip(toy_manifest, toy_task_file, tmp_path, capsys):
    signer = Ed25519Signer.generate()
    key = tmp_path / "key.pem"
    key.write_bytes(signer.private_pem())
    (tmp_path / "models" / "keys").mkdir(parents=True)
    (tmp_path / "models" / "keys" / f"{signer.key_id}.pub").write_bytes(signer.public_pem())
    out = tmp_path / "models" / "toy"
    rc = main(["train", "--manifest", str(toy_manifest), "--task", str(toy_task_file),
               "--out", str(out), "--size", "32", "--width", "0.125", "--epochs", "1",
               "--threads", "1", "--no-denoise", "--signing-key", str(key), "--quiet",
               "--checkpoint-dir", str(tmp_path / "ckpt")])
    assert rc == 0
    assert "test: ACC" in capsys.readouterr().out
    card = json.loads((out / "model_card.json").read_text())
    assert card["preprocessing"]["size"] == 32 and card["preprocessing"]["denoise"] is False
    rc = main(["evaluate", "--model", str(out), "--manifest", str(toy_manifest),
               "--task", str(toy_task_file), "--split", "test",
               "--json", str(tmp_path / "m.json"), "--roc", str(tmp_path / "roc.png")])
    assert rc == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["accuracy"] == card["metrics"]["test"]["accuracy"]
    assert (tmp_path / "roc.png").read_bytes()[:4] == b"\x89PNG"

    # a second seed, then both as one ensemble, verified with the key folder
    other = tmp_path / "runs" / "toy-seed1"
    assert main(["train", "--manifest", str(toy_manifest), "--task", str(toy_task_file),
                 "--out", str(other), "--size", "32", "--width", "0.125", "--epochs", "1",
                 "--seed", "1", "--threads", "1", "--no-denoise", "--signing-key", str(key),
                 "--quiet", "--checkpoint-dir", str(tmp_path / "ckpt1")]) == 0
    ensemble = tmp_path / "models" / "toy-ensemble"
    rc = main(["ensemble", str(out), str(other), "--manifest", str(toy_manifest),
               "--task", str(toy_task_file), "--out", str(ensemble),
               "--keys", str(tmp_path / "models" / "keys"), "--signing-key", str(key)])
    assert rc == 0
    assert "of 2 models written" in capsys.readouterr().out
    assert json.loads((ensemble / "model_card.json").read_text())["network"]["name"] == "ensemble"
    assert main(["evaluate", "--model", str(ensemble), "--manifest", str(toy_manifest),
                 "--task", str(toy_task_file)]) == 0


def test_errors_become_exit_status_2(toy_manifest, tmp_path, capsys):
    rc = main(["evaluate", "--model", str(tmp_path), "--manifest", str(toy_manifest),
               "--task", "no-such-task"])
    assert rc == 2
    assert "unknown task" in capsys.readouterr().err


def test_a_gpu_asked_for_on_a_machine_without_one_fails_before_the_data_is_read(
        tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc = main(["train", "--manifest", str(tmp_path / "missing.csv"), "--task", "radbench6",
               "--out", str(tmp_path / "m"), "--device", "cuda"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "sees no CUDA GPU" in err and "missing.csv" not in err


def test_recalibrate_reports_its_cross_validation_and_writes_a_loadable_model(
    trained, toy_manifest, toy_task_file, signer, tmp_path, capsys,
):
    key = tmp_path / "key.pem"
    key.write_bytes(signer.private_pem())
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / f"{signer.key_id}.pub").write_bytes(signer.public_pem())
    out = tmp_path / "recalibrated"
    rc = main(["recalibrate", str(trained.model_dir), "--manifest", str(toy_manifest),
               "--task", str(toy_task_file), "--out", str(out), "--signing-key", str(key),
               "--keys", str(keys)])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "grouped cross-validation inside val" in printed and "bias_temperature" in printed
    assert "test: ACC" in printed
    assert json.loads((out / "model_card.json").read_text())["calibration"]["requested"] == "auto"
    rc = main(["recalibrate", str(trained.model_dir), "--manifest", str(toy_manifest),
               "--task", str(toy_task_file), "--out", str(tmp_path / "x"), "--keys",
               str(tmp_path)])  # no trusted key there: the model fails verification
    assert rc == 5 and not (tmp_path / "x").exists()  # integrity


def test_a_new_model_key_signs_what_train_writes_and_evaluate_trusts_it(
        toy_manifest, toy_task_file, tmp_path, capsys):
    from radvault.cli import main as radvault

    key, keys = tmp_path / "secret" / "signing.pem", tmp_path / "models" / "keys"
    assert radvault(["keys", "model-key", "--out", str(key), "--keys", str(keys)]) == 0
    assert "model signing key model-" in capsys.readouterr().out
    assert key.stat().st_mode & 0o777 == 0o600
    [pub] = keys.glob("model-*.pub")
    assert Ed25519Signer.from_pem(key).key_id == pub.stem
    assert radvault(["keys", "model-key", "--out", str(key), "--keys", str(keys)]) == 1
    assert "never overwritten" in capsys.readouterr().err
    inside = tmp_path / "models" / "toy" / "signing.pem"
    assert radvault(["keys", "model-key", "--out", str(inside), "--keys", str(keys)]) == 1
    assert "keep the private key elsewhere" in capsys.readouterr().err
    assert not inside.exists() and len(list(keys.glob("*.pub"))) == 1

    common = ["--manifest", str(toy_manifest), "--task", str(toy_task_file)]
    toy = ["--size", "32", "--width", "0.125", "--epochs", "1", "--threads", "1",
           "--no-denoise", "--quiet"]
    signed, unsigned = tmp_path / "models" / "toy", tmp_path / "models" / "unsigned"
    assert main(["train", *common, "--out", str(signed), *toy, "--signing-key", str(key),
                 "--checkpoint-dir", str(tmp_path / "c1")]) == 0
    assert main(["evaluate", "--model", str(signed), *common]) == 0  # found in ../keys
    capsys.readouterr()
    assert main(["evaluate", "--model", str(signed), *common,
                 "--json", str(tmp_path / "no" / "such" / "m.json")]) == 2
    assert "cannot read or write" in capsys.readouterr().err
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (signed / "..").resolve().joinpath("keys").rename(elsewhere / "keys")
    assert main(["evaluate", "--model", str(signed), *common]) == 5  # untrusted: integrity
    assert main(["evaluate", "--model", str(signed), *common,
                 "--keys", str(elsewhere / "keys")]) == 0

    assert main(["train", *common, "--out", str(unsigned), *toy,
                 "--checkpoint-dir", str(tmp_path / "c2")]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--model", str(unsigned), *common]) == 5
    assert "not signed" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(unsigned), *common, "--allow-unsigned"]) == 0

"""The training/evaluation commands that reproduce the shipped models."""

from __future__ import annotations

import json

from radvault.analysis.export import Ed25519Signer
from radvault.cli.models import main


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
    assert radvault(["keys", "model-key", "--out", str(key), "--keys", str(keys)]) == 2
    assert "never overwritten" in capsys.readouterr().err
    inside = tmp_path / "models" / "toy" / "signing.pem"
    assert radvault(["keys", "model-key", "--out", str(inside), "--keys", str(keys)]) == 2
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


TINY = ["--size", "32", "--width", "0.125", "--epochs", "1", "--threads", "1", "--no-denoise",
        "--quiet", "--device", "cpu"]


def _custom_split_leak(toy_manifest, tmp_path):
    """The toy set with splits dev/tune/holdout, one holdout row a copy of a dev image."""
    import csv
    import shutil

    root = tmp_path / "d"
    shutil.copytree(toy_manifest.parent, root)
    with open(root / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    names = {"train": "dev", "val": "tune", "test": "holdout"}
    for r in rows:
        r["split"] = names[r["split"]]
    held = next(r for r in rows if r["split"] == "holdout")
    dev = next(r for r in rows if r["split"] == "dev" and r["label"] == held["label"])
    held["path"], held["sha256"] = dev["path"], dev["sha256"]
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root / "manifest.csv"


def test_a_leak_into_a_custom_named_split_is_refused(toy_manifest, toy_task_file, tmp_path,
                                                     capsys):
    manifest = _custom_split_leak(toy_manifest, tmp_path)
    rc = main(["train", "--manifest", str(manifest), "--task", str(toy_task_file),
               "--train-split", "dev", "--val-split", "tune", "--test-split", "holdout",
               "--out", str(tmp_path / "m"), *TINY])
    assert rc == 2 and not (tmp_path / "m").exists()
    assert "split 'holdout' share a sha-256 with split 'dev'" in capsys.readouterr().err
    # evaluate has no --train-split: the model card names the split trained on
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_card.json").write_text(json.dumps({"training": {"splits": {"train": "dev"}}}))
    rc = main(["evaluate", "--model", str(model), "--manifest", str(manifest),
               "--task", str(toy_task_file), "--split", "holdout"])
    assert rc == 2
    assert "split 'holdout' share a sha-256 with split 'dev'" in capsys.readouterr().err


def test_manifest_without_task_is_a_usage_error(toy_manifest, tmp_path, capsys):
    rc = main(["evaluate", "--model", str(tmp_path), "--manifest", str(toy_manifest)])
    assert rc == 2
    assert capsys.readouterr().err.strip() == "error: --task is required with --manifest"


def _write_dicom(path, patient_id, value):
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
    ds.PatientID, ds.Modality, ds.BodyPartExamined = patient_id, "DX", "CHEST"
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = (np.arange(256).reshape(16, 16) * (value % 3 + 1) % 256).astype(
        np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_train_from_a_dicom_folder_and_a_labels_csv(tmp_path, capsys):
    dicoms = tmp_path / "scans"
    dicoms.mkdir()
    lines = ["file,label"]
    for i in range(12):
        _write_dicom(dicoms / f"im{i}.dcm", patient_id=f"P{i // 2}", value=i)
        lines.append(f"im{i}.dcm,{'normal' if i % 4 < 2 else 'abnormal'}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "model"
    rc = main(["train", "--dicom-folder", str(dicoms), "--labels", str(tmp_path / "labels.csv"),
               "--out", str(out), *TINY])
    assert rc == 0, capsys.readouterr().err
    card = json.loads((out / "model_card.json").read_text())
    assert card["task"] == "scans" and card["classes"] == ["abnormal", "normal"]
    assert card["trained_on"] == [{"modality": "DX", "body_part": "CHEST"}]
    capsys.readouterr()
    other = tmp_path / "other"
    assert main(["train", "--dicom-folder", str(dicoms), "--out", str(other), *TINY]) == 2
    assert "error: --labels is required with --dicom-folder" in capsys.readouterr().err
    assert main(["train", "--dicom-folder", str(dicoms), "--folder", str(dicoms),
                 "--labels", str(tmp_path / "labels.csv"), "--out", str(other), *TINY]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_medmnist_class_names_are_given_with_classes(tmp_path, capsys):
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 24), ("val", 12), ("test", 12)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28), np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 3).reshape(-1, 1).astype(np.uint8)
    npz = tmp_path / "dermamnist_64.npz"
    np.savez(npz, **arrays)
    out = tmp_path / "model"
    assert main(["train", "--medmnist", str(npz), "--out", str(out), *TINY]) == 2
    assert "pass the class names in label order (--classes" in capsys.readouterr().err
    assert main(["train", "--medmnist", str(npz), "--classes", "akiec, bcc,bkl",
                 "--out", str(out), *TINY]) == 0
    card = json.loads((out / "model_card.json").read_text())
    assert card["task"] == "dermamnist" and card["classes"] == ["akiec", "bcc", "bkl"]
    capsys.readouterr()
    assert main(["train", "--medmnist", str(npz), "--classes", "akiec,", "--out",
                 str(tmp_path / "x"), *TINY]) == 2
    assert "two or more comma-separated names" in capsys.readouterr().err
    assert main(["train", "--folder", str(tmp_path), "--classes", "a,b", "--out",
                 str(tmp_path / "x"), *TINY]) == 2
    assert "--classes is used only with --medmnist" in capsys.readouterr().err


def test_data_fetch_hints_at_classes_for_a_set_whose_names_are_unknown(
        tmp_path, capsys, monkeypatch):
    import io
    from types import MappingProxyType

    import numpy as np

    from radvault.cli import main as radvault

    buf = io.BytesIO()
    np.savez(buf, train_images=np.zeros((2, 28, 28), np.uint8),
             train_labels=np.zeros((2, 1), np.uint8), test_images=np.zeros((2, 28, 28), np.uint8))

    class Response(io.BytesIO):
        headers = MappingProxyType({})  # no Content-Length

    monkeypatch.setattr("urllib.request.urlopen",
                        lambda url, timeout: Response(buf.getvalue()))
    assert radvault(["data", "fetch", "medmnist", "dermamnist", "--out", str(tmp_path)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--medmnist" in out and "--classes NAME0,NAME1,..." in out
    assert radvault(["data", "fetch", "medmnist", "breastmnist", "--out", str(tmp_path)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "breastmnist.npz" in out and "--classes" not in out


def test_data_fetch_checks_a_published_digest_and_keeps_nothing_that_differs(
        tmp_path, capsys, monkeypatch):
    import hashlib
    import http.client
    import io
    import urllib.error
    from types import MappingProxyType

    import numpy as np

    from radvault.cli import main as radvault

    buf = io.BytesIO()
    np.savez(buf, train_images=np.zeros((2, 28, 28), np.uint8),
             train_labels=np.zeros((2, 1), np.uint8), test_images=np.zeros((2, 28, 28), np.uint8))
    data = buf.getvalue()

    class Response(io.BytesIO):
        headers = MappingProxyType({"Content-Length": str(len(data))})

    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout: Response(data))
    fetch = ["data", "fetch", "medmnist", "breastmnist", "--out", str(tmp_path)]
    md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
    assert radvault([*fetch, "--md5", md5.upper()]) == 0
    out = capsys.readouterr().out
    assert f"md5 {md5}" in out and "md5 matches" in out
    assert f"sha256 {hashlib.sha256(data).hexdigest()}" in out
    (tmp_path / "breastmnist.npz").unlink()
    assert radvault([*fetch, "--sha256", "0" * 64]) != 0
    err = " ".join(capsys.readouterr().err.split())
    assert "is not the expected" in err and "not kept" in err
    assert list(tmp_path.iterdir()) == []  # neither the file nor a partial one
    assert radvault([*fetch, "--md5", "xyz"]) == 2
    assert "--md5 must be 32 hexadecimal digits" in capsys.readouterr().err

    def offline(url, timeout):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    assert radvault(fetch) != 0
    err = capsys.readouterr().err
    assert err.startswith("error: could not download") and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []

    class CutShort(Response):
        def read(self, size=-1):
            raise http.client.IncompleteRead(b"", 100)

    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout: CutShort(data))
    assert radvault(fetch) != 0
    err = capsys.readouterr().err
    assert err.startswith("error: could not download") and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


# --- evaluate's report, strict JSON and ROC; option checks; models never overwritten ---

def _signed_copy(trained, signer, dest, **card_changes):
    """The trained toy model re-signed in dest (with card changes), its key in dest/../keys."""
    from radvault.analysis.export import write_model

    card = json.loads((trained.model_dir / "model_card.json").read_text())
    card.update(card_changes)
    write_model(dest, (trained.model_dir / "model.onnx").read_bytes(), card, signer)
    keys = dest.parent / "keys"
    keys.mkdir(exist_ok=True)
    (keys / f"{signer.key_id}.pub").write_bytes(signer.public_pem())
    return dest


def test_evaluate_prints_every_figure_and_writes_strict_json_and_a_roc_beside_it(
        trained, signer, toy_manifest, toy_task_file, tmp_path, capsys):
    # a class bias that makes every prediction "disc": square and bars are never
    # predicted, so their precision is undefined (NaN inside, null in the file)
    model = _signed_copy(trained, signer, tmp_path / "models" / "toy",
                         class_bias=[50.0, 0.0, 0.0])
    out = tmp_path / "m.json"
    assert main(["evaluate", "--model", str(model), "--manifest", str(toy_manifest),
                 "--task", str(toy_task_file), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    first, *rest = printed.splitlines()
    assert " on toy/test: ACC 0.3333  AUC " in first and first.endswith(tuple("0123456789"))
    report = "\n".join(rest)
    for figure in ("Diagnostic Reliability Index (DRI = accuracy, eq. 9) 0.3333",
                   "MCC (multi-class)", "Jaccard (macro)", "Cohen's kappa",
                   "AUC (one vs rest, macro)", "balanced accuracy: mean recall 0.3333",
                   "paper's (sens + spec) / 2, macro 0.5000", "before calibration",
                   "sensitivity specificity BA (paper)", "confusion matrix"):
        assert figure in report, figure
    assert "    true \\ pred disc square bars" in report
    table_row, matrix_row = (line.split()[1:] for line in rest if line.startswith("    bars "))
    assert table_row[:5] == ["8", "0.0000", "1.0000", "0.5000", "n/a"]  # precision undefined
    assert matrix_row == ["8", "0", "0"]  # every bars image predicted disc

    def no_constants(name):
        raise ValueError(f"non-standard JSON constant {name}")

    metrics = json.loads(out.read_text(), parse_constant=no_constants)
    assert metrics["per_class"]["square"]["precision"] is None
    assert metrics["per_class"]["disc"]["precision"] == 1 / 3
    roc = tmp_path / "m.roc.png"
    assert roc.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"ROC curve written to {roc}" in printed
    # --roc still names the file, and then nothing is written beside the JSON
    roc.unlink()
    assert main(["evaluate", "--model", str(model), "--manifest", str(toy_manifest),
                 "--task", str(toy_task_file), "--json", str(out),
                 "--roc", str(tmp_path / "curve.png")]) == 0
    assert (tmp_path / "curve.png").is_file() and not roc.exists()
    assert "trained on" not in capsys.readouterr().err
    # the training split can be measured, with a warning that it proves nothing
    assert main(["evaluate", "--model", str(model), "--manifest", str(toy_manifest),
                 "--task", str(toy_task_file), "--split", "train"]) == 0
    assert "is the split this model was trained on" in capsys.readouterr().err


def test_evaluate_help_says_where_the_roc_curve_goes(capsys):
    assert main(["evaluate", "--help"]) == 0
    assert ".roc.png" in " ".join(capsys.readouterr().out.split())


def test_out_of_range_train_options_fail_with_one_line_before_the_data_are_read(
        tmp_path, capsys):
    common = ["train", "--manifest", str(tmp_path / "missing.csv"), "--task", "radbench6",
              "--out", str(tmp_path / "m"), "--device", "cpu"]
    for extra, message in ((["--weight-decay", "-1"], "weight decay must be at least 0"),
                           (["--threads", "0"], "threads must be at least 1"),
                           (["--dropout", "1"], "dropout must be within [0, 1)"),
                           (["--lr", "0"], "learning rate must be positive"),
                           (["--epochs", "0"], "at least 1"),
                           (["--size", "4"], "size must be within 8..4096"),
                           (["--network", "densenet121", "--width", "0.5"], "resnet18 only"),
                           (["--network", "densenet121", "--size", "28"],
                            "densenet121 needs an input of at least 32 px, not 28")):
        assert main([*common, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
        assert "missing.csv" not in err


def test_a_model_folder_is_never_replaced_without_overwrite(
        trained, signer, toy_manifest, toy_task_file, tmp_path, capsys):
    model = _signed_copy(trained, signer, tmp_path / "models" / "toy")
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    data = ["--manifest", str(toy_manifest), "--task", str(toy_task_file)]
    tiny = ["--size", "32", "--width", "0.125", "--epochs", "1", "--threads", "1",
            "--no-denoise", "--quiet", "--device", "cpu"]
    keys = ["--keys", str(model.parent / "keys")]
    for argv in (["train", *data, *tiny, "--out", str(model)],
                 ["ensemble", str(model), str(model), *data, *keys, "--out", str(model)],
                 ["recalibrate", str(model), *data, *keys, "--out", str(model)]):
        assert main(argv) == 2, argv[0]
        assert "already holds a model; pass --overwrite" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before  # signature kept

    assert main(["train", *data, *tiny, "--out", str(model), "--overwrite"]) == 0
    assert "ECE before -> after calibration: val " in capsys.readouterr().out
    assert not (model / "signature.json").exists()  # asked for: replaced, unsigned
    # the checkpoint went beside the model folder, not into it
    assert sorted(p.name for p in model.iterdir()) == ["model.onnx", "model_card.json"]
    assert (model.parent / "toy.checkpoint" / "checkpoint.pt").is_file()


def test_an_unreadable_image_in_a_dataset_is_named_to_the_operator(tmp_path, capsys):
    # the local command names the file the operator gave it; only the message travels
    import numpy as np
    from PIL import Image

    folder = tmp_path / "data"
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True)
        for i in range(3):
            value = 40 * i + (7 if label == "b" else 0)  # no file under both classes
            Image.fromarray(np.full((16, 16), value, np.uint8)).save(folder / label / f"{i}.png")
    bad = folder / "a" / "Doe_John_MRN123.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    assert main(["train", "--folder", str(folder), "--out", str(tmp_path / "m"),
                 "--epochs", "1", "--size", "32", "--device", "cpu", "--no-verify-sha256"]) != 0
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Doe_John_MRN123.png" in err and "Traceback" not in err

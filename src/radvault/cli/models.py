"""The model commands' face: train, ensemble, recalibrate and evaluate (argparse).

``radvault train|ensemble|recalibrate|evaluate`` pass their arguments here, and
``python -m radvault.cli.models train ...`` runs the same without the rest of the CLI
(``tools/sweep.py`` starts one per run). It parses options and calls the analysis
layer; :func:`build_train_config` turns parsed options into a
:class:`~radvault.analysis.training.TrainConfig` so that a tool can reuse it. Until
session 10 it lived in the analysis layer as ``radvault.analysis.commands``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from radvault.config import PreprocessSettings
from radvault.errors import RadVaultError, exit_status, operator_message

__all__ = ["build_parser", "build_preprocess", "build_source", "build_train_config", "main"]

log = logging.getLogger(__name__)


def _add_data_options(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", type=Path, help="manifest CSV (radbench layout)")
    src.add_argument("--medmnist", type=Path, help="MedMNIST .npz file")
    src.add_argument("--folder", type=Path, help="folder with one sub-folder per class")
    src.add_argument("--dicom-folder", type=Path, metavar="DIR",
                     help="folder of DICOM files, labelled by --labels")
    p.add_argument("--labels", type=Path, metavar="CSV",
                   help="with --dicom-folder: columns path (or file, relative to DIR) and "
                        "label, optionally split and group")
    p.add_argument("--classes", metavar="A,B,...",
                   help="with --medmnist: class names in label order (comma-separated), for "
                        "sets other than pneumoniamnist and breastmnist")
    p.add_argument("--task", help="task name or JSON file (required with --manifest; "
                                  "default: the labels of --folder/--dicom-folder)")
    p.add_argument("--modality", default="OT", help="modality of --medmnist/--folder images "
                                                    "(DICOM: read from the headers)")
    p.add_argument("--body-part", default="", help="body part of --medmnist/--folder images")
    p.add_argument("--no-verify-sha256", action="store_true",
                   help="skip re-hashing manifest files (leakage is still checked)")
    p.add_argument("--cache-dir", type=Path, help="cache of preprocessed public images")


def build_parser(prog: str = "python -m radvault.cli.models") -> argparse.ArgumentParser:
    """The argument parser (sub-commands ``train``, ``ensemble``, ``recalibrate``, ``evaluate``)."""
    parser = argparse.ArgumentParser(prog=prog)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train, calibrate, export and sign a model")
    _add_data_options(t)
    t.add_argument("--out", type=Path, required=True, help="model folder to write")
    t.add_argument("--overwrite", action="store_true",
                   help="replace a model already in --out (refused otherwise)")
    t.add_argument("--network", default="resnet18",
                   help="resnet18 (default), densenet121 or efficientnet-b0")
    t.add_argument("--width", type=float, default=1.0,
                   help="ResNet channel multiplier (default 1.0; resnet18 only, the others "
                        "take 1.0)")
    t.add_argument("--init-from", type=Path, default=None, metavar="CHECKPOINT",
                   help="start from another run's checkpoint.pt (same network, width and "
                        "stem; transfer learning); the linear layer starts fresh")
    t.add_argument("--stem", choices=("imagenet", "small"), default="imagenet",
                   help="ResNet stem: 7x7 stride 2 + max-pool, or 3x3 stride 1 for 28 px "
                        "MedMNIST images (default imagenet)")
    t.add_argument("--size", type=int, default=224,
                   help="input size in pixels (default 224, the paper's; 128 is much cheaper "
                        "on a CPU)")
    t.add_argument("--epochs", type=int, default=30, help="at most this many (default 30)")
    t.add_argument("--batch-size", type=int, default=32, help="default 32")
    t.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 0.001)")
    t.add_argument("--dropout", type=float, default=0.30, help="default 0.30")
    t.add_argument("--weight-decay", type=float, default=0.0, help="default 0")
    t.add_argument("--seed", type=int, default=0, help="default 0")
    t.add_argument("--patience", type=int, default=8,
                   help="early stopping: epochs without a better validation AUC (default 8)")
    t.add_argument("--balance", choices=("sampler", "weights", "none"), default="sampler",
                   help="class balance: balanced sampling (default), a class-weighted loss, "
                        "or none")
    t.add_argument("--no-augment", action="store_true")
    t.add_argument("--no-schedule", action="store_true")
    t.add_argument("--no-early-stopping", action="store_true")
    t.add_argument("--no-calibration", action="store_true")
    t.add_argument("--no-enhance", action="store_true", help="preprocessing without CLAHE")
    t.add_argument("--no-denoise", action="store_true", help="preprocessing without bilateral")
    t.add_argument("--also-enhanced", action="store_true",
                   help="also train (and validate) on a copy of every image preprocessed with "
                        "CLAHE and the bilateral filter: for a model that reads other models' "
                        "inputs, such as the image check")
    t.add_argument("--train-split", default="train")
    t.add_argument("--val-split", default="val")
    t.add_argument("--test-split", default="test")
    t.add_argument("--checkpoint-dir", type=Path,
                   help="where checkpoint.pt and history.json go (default: OUT.checkpoint, "
                        "beside the model folder, so that copying a model leaves it behind)")
    t.add_argument("--resume", action="store_true")
    t.add_argument("--finish-now", action="store_true",
                   help="with --resume: export the checkpoint's best epoch without training on")
    t.add_argument("--threads", type=int, help="torch threads (at least 1)")
    t.add_argument("--device", default="auto",
                   help="auto (a CUDA GPU when PyTorch sees one, else the CPU), cpu or cuda[:N]; "
                        "export, calibration and metrics run on the CPU either way")
    t.add_argument("--fp16-weights", action="store_true")
    t.add_argument("--signing-key", type=Path, help="Ed25519 PKCS#8 PEM model signing key")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    n = sub.add_parser("ensemble", help="combine trained models of one task into one "
                                        "calibrated, signed model (mean of their logits)")
    n.add_argument("members", type=Path, nargs="+", help="model folders (two or more)")
    _add_data_options(n)
    n.add_argument("--out", type=Path, required=True, help="model folder to write")
    n.add_argument("--overwrite", action="store_true",
                   help="replace a model already in --out (refused otherwise)")
    n.add_argument("--val-split", default="val", help="split that calibrates the ensemble")
    n.add_argument("--test-split", default="test", help="split measured only ('' for none)")
    n.add_argument("--signing-key", type=Path, help="Ed25519 PKCS#8 PEM model signing key")
    n.add_argument("--keys", type=Path,
                   help="folder of trusted model public keys (<key id>.pub) that verify the "
                        "members (default: each member's ../keys)")
    r = sub.add_parser("recalibrate", help="fit a model's calibration again on the validation "
                                           "split (optionally with class biases) and sign it "
                                           "as a new model folder")
    r.add_argument("model", type=Path, help="model folder (verified on load)")
    _add_data_options(r)
    r.add_argument("--out", type=Path, required=True, help="model folder to write")
    r.add_argument("--overwrite", action="store_true",
                   help="replace a model already in --out (refused otherwise)")
    r.add_argument("--method", choices=("auto", "temperature", "bias_temperature"),
                   default="auto",
                   help="auto: the method with the lower out-of-fold NLL in grouped "
                        "cross-validation inside the validation split (default)")
    r.add_argument("--val-split", default="val", help="split that calibrates the model")
    r.add_argument("--test-split", default="test", help="split measured only ('' for none)")
    r.add_argument("--signing-key", type=Path, help="Ed25519 PKCS#8 PEM model signing key")
    r.add_argument("--keys", type=Path,
                   help="folder of trusted model public keys (default: the model's ../keys)")
    e = sub.add_parser("evaluate", help="metrics of a model on one split",
                       description="Print (and with --json write) a model's metrics on one "
                                   "split: a summary line (ACC AUC MCC BA JI CK ECE), then "
                                   "the Diagnostic Reliability Index, both balanced "
                                   "accuracies, ECE before and after calibration, per-class "
                                   "sensitivity, specificity and paper BA, and the confusion "
                                   "matrix.")
    _add_data_options(e)
    e.add_argument("--model", type=Path, required=True)
    e.add_argument("--keys", type=Path,
                   help="folder of trusted model public keys (default: the model's ../keys)")
    e.add_argument("--allow-unsigned", action="store_true",
                   help="evaluate a model trained without --signing-key (never served)")
    e.add_argument("--split", default="test")
    e.add_argument("--json", type=Path,
                   help="write the metrics here as strict JSON (undefined figures are null), "
                        "and the ROC curve PNG beside it (same name, .roc.png) unless --roc "
                        "names another file")
    e.add_argument("--roc", type=Path, help="write the ROC curve PNG here")
    return parser


def build_source(args: argparse.Namespace) -> Any:
    """The data source named by the options.

    Leakage is checked against the split trained on: ``--train-split`` for
    ``train``; for commands on trained models, the split their model cards
    name (read here only to choose the check; the cards are verified on load),
    else ``train``.

    Raises
    ------
    ConfigurationError
        If options that belong together are missing or misplaced.
    DatasetError
        If the data are unusable.
    """
    from radvault.analysis.datasets import (
        ManifestSource,
        MedMNISTSource,
        dicom_folder_manifest,
        folder_manifest,
    )
    from radvault.analysis.manifest import check_leakage, load_manifest
    from radvault.analysis.tasks import Task
    from radvault.errors import ConfigurationError

    dicom_folder = getattr(args, "dicom_folder", None)
    labels_csv = getattr(args, "labels", None)
    class_names = getattr(args, "classes", None)
    if labels_csv and not dicom_folder:
        raise ConfigurationError("--labels is used only with --dicom-folder")
    if class_names and not args.medmnist:
        raise ConfigurationError("--classes is used only with --medmnist")
    if args.medmnist:
        classes = None
        if class_names:
            classes = [c.strip() for c in class_names.split(",")]
            if len(classes) < 2 or not all(classes):
                raise ConfigurationError("--classes needs two or more comma-separated names")
        return MedMNISTSource(args.medmnist, classes, modality=args.modality,
                              body_part=args.body_part)
    if hasattr(args, "train_split"):
        trained_on = [args.train_split]
    else:  # evaluate, recalibrate, ensemble: the split(s) the models' cards name
        models = [args.model] if getattr(args, "model", None) else getattr(args, "members", [])
        trained_on = []
        for folder in models:
            try:
                card = json.loads((Path(folder) / "model_card.json").read_text("utf-8"))
                trained_on.append(str(card["training"]["splits"]["train"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # an ensemble, or no readable card: loading the model will say
    if dicom_folder:
        if not labels_csv:
            raise ConfigurationError("--labels is required with --dicom-folder")
        manifest = dicom_folder_manifest(dicom_folder, labels_csv)
    elif args.folder:
        manifest = folder_manifest(args.folder, modality=args.modality,
                                   body_part=args.body_part)
    else:
        if not args.task:
            raise ConfigurationError("--task is required with --manifest")
        manifest = load_manifest(args.manifest, verify_sha256=False, check_leak=False)
    trained_on = list(dict.fromkeys(s for s in trained_on if s in manifest.splits)) or ["train"]
    for split in trained_on:  # before re-hashing every file: a leak fails fast
        check_leakage(manifest, train_split=split)
    if args.manifest and not args.no_verify_sha256:
        manifest.verify_files()
    task = args.task
    if not task:
        labels = sorted({r.label for r in manifest.rows})
        task = Task.from_labels(Path(args.folder or dicom_folder).resolve().name, labels)
    return ManifestSource(manifest, task, train_split=trained_on[0])


def build_preprocess(args: argparse.Namespace) -> PreprocessSettings:
    """The preprocessing settings named by parsed ``train`` options."""
    return PreprocessSettings(size=args.size, enhance=not args.no_enhance,
                              denoise=not args.no_denoise, clahe_tile_grid=min(8, args.size))


def build_train_config(args: argparse.Namespace, source: Any) -> Any:
    """A :class:`TrainConfig` from parsed ``train`` options.

    Raises
    ------
    ModelError
        If an option is out of range (checked here, before any data are read).
    ConfigurationError
        If the preprocessing settings are (``--size`` below 8, say).
    """
    from radvault.analysis.training import Optimisation, TrainConfig

    return TrainConfig(
        source=source, out_dir=args.out, network=args.network, width=args.width, stem=args.stem,
        init_from=args.init_from,
        preprocess=build_preprocess(args),
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, dropout=args.dropout,
        weight_decay=args.weight_decay, seed=args.seed,
        optimisation=Optimisation(augment=not args.no_augment, balance=args.balance,
                                  schedule="none" if args.no_schedule else "cosine",
                                  early_stopping=not args.no_early_stopping,
                                  patience=args.patience,
                                  calibration=not args.no_calibration),
        train_split=args.train_split, val_split=args.val_split, test_split=args.test_split,
        checkpoint_dir=args.checkpoint_dir, cache_dir=args.cache_dir, resume=args.resume,
        finish_now=args.finish_now, threads=args.threads, fp16_weights=args.fp16_weights,
        device=args.device,
        also_preprocess=((PreprocessSettings(size=args.size, enhance=True, denoise=True,
                                             clahe_tile_grid=min(8, args.size)),)
                         if getattr(args, "also_enhanced", False) else ()))


def _summary(m: dict[str, Any]) -> str:
    auc = "n/a" if m.get("auc_macro") is None else f"{m['auc_macro']:.4f}"
    return (f"ACC {m['accuracy']:.4f}  AUC {auc}  MCC {m['mcc']:.4f}  "
            f"BA {m['balanced_accuracy']:.4f}  JI {m['jaccard_macro']:.4f}  "
            f"CK {m['cohen_kappa']:.4f}  ECE {m['ece']:.4f}")


def _print_val_test(val: dict[str, Any], test: dict[str, Any] | None,
                    calibration: dict[str, Any] | None = None) -> None:
    """The summary lines of a written model, then its ECE before and after calibration
    (validation from the card's calibration record, test from the test metrics)."""
    print("val : " + _summary(val))
    if test:
        print("test: " + _summary(test))
    if not calibration:  # trained without calibration: nothing to compare
        return
    parts = []
    if calibration.get("ece_before") is not None and calibration.get("ece_after") is not None:
        parts.append(f"val {calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f}")
    if test and test.get("ece_uncalibrated") is not None:
        parts.append(f"test {test['ece_uncalibrated']:.4f} -> {test['ece']:.4f}")
    if parts:
        print("ECE before -> after calibration: " + ", ".join(parts))


def _refuse_overwrite(args: argparse.Namespace) -> None:
    """Refuse an ``--out`` folder that already holds a model, unless ``--overwrite``.

    Writing replaces the model and drops its signature when no key is given, so a
    signed model (a shipped one, say) must never be replaced by a slip of ``--out``.

    Raises
    ------
    ModelError
        If ``--out`` holds ``model_card.json`` or ``model.onnx`` and ``--overwrite`` is absent.
    """
    from radvault.analysis.export import CARD_FILE, ONNX_FILE
    from radvault.errors import ModelError

    if args.overwrite:
        return
    if any((args.out / name).exists() for name in (CARD_FILE, ONNX_FILE)):
        raise ModelError(f"{args.out} already holds a model; pass --overwrite to replace it")


def _evaluate(args: argparse.Namespace, source: Any) -> int:
    from radvault.analysis.evaluate import evaluate_model, metrics_json, metrics_report
    from radvault.analysis.inference import load_model
    from radvault.analysis.metrics import roc_curve_png

    _, keyring = _signer_and_keyring(args)
    model = load_model(args.model, keyring=keyring, require_signature=not args.allow_unsigned)
    trained_on = (model.card.raw.get("training") or {}).get("splits", {}).get("train")
    if args.split == trained_on:
        print(f"warning: {args.split!r} is the split this model was trained on; its figures "
              "say nothing about unseen images", file=sys.stderr)
    metrics = evaluate_model(model, source, args.split, cache_dir=args.cache_dir)
    where = f"{metrics['model_id']} on {metrics['task']}/{args.split}"
    print(f"{where}: {_summary(metrics)}")  # the first line stays as it was: scripts read it
    print(metrics_report(metrics))
    if args.json:
        args.json.write_text(metrics_json(metrics))
        print(f"metrics written to {args.json}")
    roc = args.roc or (args.json.with_suffix(".roc.png") if args.json else None)
    if roc:
        pred = metrics["predictions"]
        roc.write_bytes(roc_curve_png(pred["y_true"], pred["probs"], metrics["classes"],
                                      title=f"ROC, {where}"))
        print(f"ROC curve written to {roc}")
    return 0


def _signer_and_keyring(args: argparse.Namespace) -> tuple[Any, Any]:
    """The signing key (``--signing-key``) and trusted keys (``--keys``) named, if any."""
    from radvault.analysis.export import Ed25519Signer, ModelKeyring

    key = getattr(args, "signing_key", None)
    signer = Ed25519Signer.from_pem(key) if key else None
    keys = getattr(args, "keys", None)
    return signer, ModelKeyring.from_dir(keys) if keys else None


def _recalibrate(args: argparse.Namespace, source: Any) -> int:
    from radvault.analysis.recalibrate import recalibrate_model

    signer, keyring = _signer_and_keyring(args)
    card = recalibrate_model(args.model, source, args.out, method=args.method, signer=signer,
                             keyring=keyring, val_split=args.val_split,
                             test_split=args.test_split, cache_dir=args.cache_dir)
    cal = card["calibration"]
    cv = cal["cross_validation"]
    if "skipped" in cv:
        print(f"cross-validation inside {args.val_split}: skipped ({cv['skipped']})")
    else:
        print(f"grouped cross-validation inside {args.val_split} ({cv['groups']} groups, "
              f"{cv['folds']} folds x {cv['repeats']}), out of fold:")
        for name in ("temperature", "bias_temperature"):
            m = cv[name]
            print(f"  {name:17s} NLL {m['nll_mean']:.4f} +/- {m['nll_sd']:.4f}  "
                  f"ACC {m['accuracy_mean']:.4f} +/- {m['accuracy_sd']:.4f}")
    print(f"model {card['model_id']} written to {args.out} ({cal['method']}, "
          f"T={card['temperature']:.3f})")
    _print_val_test(card["metrics"]["val"], card["metrics"]["test"], cal)
    return 0


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Run a sub-command; returns the exit status."""
    parser = build_parser(prog) if prog else build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help or a usage error
        return int(exc.code or 0)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "train":  # a wrong device or option fails now, not after hashing
            from radvault.analysis.training import resolve_device

            resolve_device(args.device)
            build_train_config(args, None)  # the data source is not needed to check the rest
        if args.command in ("train", "ensemble", "recalibrate"):
            _refuse_overwrite(args)
        source = build_source(args)
        if args.command == "train":
            from radvault.analysis.training import train

            signer, _ = _signer_and_keyring(args)
            result = train(build_train_config(args, source), progress=not args.quiet,
                           signer=signer)
            print(f"model {result.card['model_id']} written to {result.model_dir} "
                  f"(best epoch {result.best_epoch}, T={result.temperature:.3f}, "
                  f"{result.seconds / 60:.1f} min)")
            _print_val_test(result.val_metrics, result.test_metrics,
                            result.card["calibration"])
            return 0
        if args.command == "ensemble":
            from radvault.analysis.ensemble import build_ensemble

            signer, keyring = _signer_and_keyring(args)
            card = build_ensemble(args.members, source, args.out, signer=signer, keyring=keyring,
                                  val_split=args.val_split, test_split=args.test_split,
                                  cache_dir=args.cache_dir)
            print(f"ensemble {card['model_id']} of {len(args.members)} models written to "
                  f"{args.out} (T={card['temperature']:.3f})")
            _print_val_test(card["metrics"]["val"], card["metrics"]["test"], card["calibration"])
            return 0
        if args.command == "recalibrate":
            return _recalibrate(args, source)
        return _evaluate(args, source)
    except RadVaultError as exc:
        print(f"error: {operator_message(exc)}", file=sys.stderr)  # names a bad image's file
        status = exit_status(exc)  # integrity 5, not found 6, ... as every radvault command
        return 2 if status == 1 else status  # an unusable dataset, task or model: usage, 2
    except OSError as exc:  # e.g. --json or --out in a folder that cannot be written
        where = f" {exc.filename}" if exc.filename else ""
        print(f"error: cannot read or write{where}: {exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

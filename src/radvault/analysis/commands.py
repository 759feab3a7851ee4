"""Command-line entry for training and evaluation, usable before the main CLI wires them.

``python -m radvault.analysis.commands train ...`` and ``... evaluate ...``
take the same options the ``radvault train`` / ``radvault evaluate`` commands
expose; :func:`build_train_config` turns parsed options into a
:class:`~radvault.analysis.training.TrainConfig` so that any face can reuse it.
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
from radvault.errors import RadVaultError, exit_status

__all__ = ["build_parser", "build_preprocess", "build_source", "build_train_config", "main"]

log = logging.getLogger(__name__)


def _add_data_options(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", type=Path, help="manifest CSV (radbench layout)")
    src.add_argument("--medmnist", type=Path, help="MedMNIST .npz file")
    src.add_argument("--folder", type=Path, help="folder with one sub-folder per class")
    p.add_argument("--task", help="task name or JSON file (with --manifest)")
    p.add_argument("--modality", default="OT", help="modality of --medmnist/--folder images")
    p.add_argument("--body-part", default="", help="body part of --medmnist/--folder images")
    p.add_argument("--no-verify-sha256", action="store_true",
                   help="skip re-hashing manifest files (leakage is still checked)")
    p.add_argument("--cache-dir", type=Path, help="cache of preprocessed public images")


def build_parser(prog: str = "python -m radvault.analysis.commands") -> argparse.ArgumentParser:
    """The argument parser (sub-commands ``train``, ``ensemble``, ``recalibrate``, ``evaluate``)."""
    parser = argparse.ArgumentParser(prog=prog)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train, calibrate, export and sign a model")
    _add_data_options(t)
    t.add_argument("--out", type=Path, required=True, help="model folder to write")
    t.add_argument("--network", default="resnet18")
    t.add_argument("--width", type=float, default=1.0, help="ResNet channel multiplier")
    t.add_argument("--init-from", type=Path, default=None, metavar="CHECKPOINT",
                   help="start from another run's checkpoint.pt (same network, width and "
                        "stem; transfer learning); the linear layer starts fresh")
    t.add_argument("--stem", choices=("imagenet", "small"), default="imagenet",
                   help="ResNet stem: 7x7 stride 2 + max-pool, or 3x3 stride 1 for 28 px "
                        "MedMNIST images")
    t.add_argument("--size", type=int, default=224)
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--dropout", type=float, default=0.30)
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--patience", type=int, default=8)
    t.add_argument("--balance", choices=("sampler", "weights", "none"), default="sampler")
    t.add_argument("--no-augment", action="store_true")
    t.add_argument("--no-schedule", action="store_true")
    t.add_argument("--no-early-stopping", action="store_true")
    t.add_argument("--no-calibration", action="store_true")
    t.add_argument("--no-enhance", action="store_true", help="preprocessing without CLAHE")
    t.add_argument("--no-denoise", action="store_true", help="preprocessing without bilateral")
    t.add_argument("--train-split", default="train")
    t.add_argument("--val-split", default="val")
    t.add_argument("--test-split", default="test")
    t.add_argument("--checkpoint-dir", type=Path)
    t.add_argument("--resume", action="store_true")
    t.add_argument("--finish-now", action="store_true",
                   help="with --resume: export the checkpoint's best epoch without training on")
    t.add_argument("--threads", type=int)
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
    r.add_argument("--method", choices=("auto", "temperature", "bias_temperature"),
                   default="auto",
                   help="auto: the method with the lower out-of-fold NLL in grouped "
                        "cross-validation inside the validation split (default)")
    r.add_argument("--val-split", default="val", help="split that calibrates the model")
    r.add_argument("--test-split", default="test", help="split measured only ('' for none)")
    r.add_argument("--signing-key", type=Path, help="Ed25519 PKCS#8 PEM model signing key")
    r.add_argument("--keys", type=Path,
                   help="folder of trusted model public keys (default: the model's ../keys)")
    e = sub.add_parser("evaluate", help="metrics of a model on one split")
    _add_data_options(e)
    e.add_argument("--model", type=Path, required=True)
    e.add_argument("--keys", type=Path,
                   help="folder of trusted model public keys (default: the model's ../keys)")
    e.add_argument("--allow-unsigned", action="store_true",
                   help="evaluate a model trained without --signing-key (never served)")
    e.add_argument("--split", default="test")
    e.add_argument("--json", type=Path, help="write the metrics here")
    e.add_argument("--roc", type=Path, help="write a ROC curve PNG here")
    return parser


def build_source(args: argparse.Namespace) -> Any:
    """The data source named by the options.

    Raises
    ------
    DatasetError
        If the data are unusable.
    """
    from radvault.analysis.datasets import ManifestSource, MedMNISTSource, folder_manifest
    from radvault.analysis.manifest import load_manifest
    from radvault.analysis.tasks import Task

    if args.medmnist:
        return MedMNISTSource(args.medmnist, modality=args.modality, body_part=args.body_part)
    if args.folder:
        manifest = folder_manifest(args.folder, modality=args.modality,
                                   body_part=args.body_part)
        labels = sorted({r.label for r in manifest.rows})
        return ManifestSource(manifest, args.task or Task.from_labels(args.folder.name, labels))
    if not args.task:
        raise SystemExit("--task is required with --manifest")
    manifest = load_manifest(args.manifest, verify_sha256=not args.no_verify_sha256)
    return ManifestSource(manifest, args.task)


def build_preprocess(args: argparse.Namespace) -> PreprocessSettings:
    """The preprocessing settings named by parsed ``train`` options."""
    return PreprocessSettings(size=args.size, enhance=not args.no_enhance,
                              denoise=not args.no_denoise, clahe_tile_grid=min(8, args.size))


def build_train_config(args: argparse.Namespace, source: Any) -> Any:
    """A :class:`TrainConfig` from parsed ``train`` options."""
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
        device=args.device)


def _summary(m: dict[str, Any]) -> str:
    auc = "n/a" if m.get("auc_macro") is None else f"{m['auc_macro']:.4f}"
    return (f"ACC {m['accuracy']:.4f}  AUC {auc}  MCC {m['mcc']:.4f}  "
            f"BA {m['balanced_accuracy']:.4f}  JI {m['jaccard_macro']:.4f}  "
            f"CK {m['cohen_kappa']:.4f}  ECE {m['ece']:.4f}")


def _print_val_test(val: dict[str, Any], test: dict[str, Any] | None) -> None:
    print("val : " + _summary(val))
    if test:
        print("test: " + _summary(test))


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
    _print_val_test(card["metrics"]["val"], card["metrics"]["test"])
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
        if args.command == "train":  # a wrong device fails now, not after hashing the data
            from radvault.analysis.training import resolve_device

            resolve_device(args.device)
        source = build_source(args)
        if args.command == "train":
            from radvault.analysis.training import train

            signer, _ = _signer_and_keyring(args)
            result = train(build_train_config(args, source), progress=not args.quiet,
                           signer=signer)
            print(f"model {result.card['model_id']} written to {result.model_dir} "
                  f"(best epoch {result.best_epoch}, T={result.temperature:.3f}, "
                  f"{result.seconds / 60:.1f} min)")
            _print_val_test(result.val_metrics, result.test_metrics)
            return 0
        if args.command == "ensemble":
            from radvault.analysis.ensemble import build_ensemble

            signer, keyring = _signer_and_keyring(args)
            card = build_ensemble(args.members, source, args.out, signer=signer, keyring=keyring,
                                  val_split=args.val_split, test_split=args.test_split,
                                  cache_dir=args.cache_dir)
            print(f"ensemble {card['model_id']} of {len(args.members)} models written to "
                  f"{args.out} (T={card['temperature']:.3f})")
            _print_val_test(card["metrics"]["val"], card["metrics"]["test"])
            return 0
        if args.command == "recalibrate":
            return _recalibrate(args, source)
        from radvault.analysis.evaluate import evaluate_model
        from radvault.analysis.inference import load_model
        from radvault.analysis.metrics import roc_curve_png

        _, keyring = _signer_and_keyring(args)
        model = load_model(args.model, keyring=keyring,
                           require_signature=not args.allow_unsigned)
        metrics = evaluate_model(model, source, args.split, cache_dir=args.cache_dir)
        print(f"{metrics['model_id']} on {metrics['task']}/{args.split}: {_summary(metrics)}")
        if args.json:
            args.json.write_text(json.dumps(metrics, indent=1))
        if args.roc:
            pred = metrics["predictions"]
            args.roc.write_bytes(roc_curve_png(pred["y_true"], pred["probs"],
                                               metrics["classes"]))
        return 0
    except RadVaultError as exc:
        print(f"error: {exc}", file=sys.stderr)
        status = exit_status(exc)  # integrity 5, not found 6, ... as every radvault command
        return 2 if status == 1 else status  # an unusable dataset, task or model: usage, 2
    except OSError as exc:  # e.g. --json or --out in a folder that cannot be written
        where = f" {exc.filename}" if exc.filename else ""
        print(f"error: cannot read or write{where}: {exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

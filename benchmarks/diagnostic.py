"""Diagnostic performance of the shipped models, in the layout of the paper's Table 3.

For every model folder under ``models/`` and ``models/medmnist/`` (verified
against ``models/keys``), evaluate on the test split of its data with ONNX
Runtime: radbench tasks on ``../shared/data/radbench``, MedMNIST models
(28 x 28) on ``../shared/data/medmnist``. Prints MCC, JI %, BA %, CK, AUC %, DRI % beside
the paper's figures, the plain baseline of ``radbench/BASELINE.md`` and the
MedMNIST v2 published baselines, and writes ``benchmarks/results/diagnostic.json``.
For a model whose test split spans modalities (``radbench6``), accuracy, MCC and
per-class recall are also given per modality (the per-dataset models are one
modality each).

With ``--runs DIR`` (the ``RUNS`` folder of ``tools/train_shipped_models.sh``)
every trained seed is evaluated too, and the spread over seeds is reported.

Usage::

    .venv/bin/python benchmarks/diagnostic.py [--models models] [--runs /tmp/radvault-runs]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"

# Paper (JISIS 16(2), 2026), Table 3, proposed framework.
PAPER = {"mcc": 0.957, "ji": 97.01, "ba": 98.08, "ck": 0.954, "auc": 99.12, "dri": 98.14}
# ../shared/data/radbench/BASELINE.md (MONAI resnet18 128 px, one seed): ACC, AUC, MCC.
BASELINE = {
    "chest_xray": {"acc": 0.870, "auc": 0.974, "mcc": 0.753},
    "brain_mri": {"acc": 0.744, "auc": 0.925, "mcc": 0.673},
    "lung_ct": {"acc": 0.519, "auc": 0.771, "mcc": 0.047},
    "kidney_ct": {"acc": 0.282, "auc": 0.769, "mcc": -0.047},
    "breast_us": {"acc": 0.683, "auc": 0.768, "mcc": 0.481},
    "radbench6": {"acc": 0.890, "auc": 0.986, "mcc": 0.857},
}
# MedMNIST v2 (Yang et al., Sci Data 2023), best published baseline per set.
MEDMNIST_V2 = {"pneumoniamnist": {"auc": 0.991, "acc": 0.946},
               "breastmnist": {"auc": 0.919, "acc": 0.863}}
MEDMNIST_META = {"pneumoniamnist": ("DX", "CHEST"), "breastmnist": ("US", "BREAST")}


def table3_row(m: dict[str, Any]) -> dict[str, float | None]:
    """Table-3 figures from :func:`compute_metrics` output (percent where the paper uses %)."""
    auc = m.get("auc_macro")
    return {"mcc": m["mcc"], "ji": 100 * m["jaccard_macro"], "ba": 100 * m["balanced_accuracy"],
            "ba_paper": 100 * m["balanced_accuracy_paper"], "ck": m["cohen_kappa"],
            "auc": None if auc is None else 100 * auc, "dri": 100 * m["accuracy"]}


def source_for(task: str, manifest: Any) -> Any:
    """The data source a model's task is evaluated on."""
    from radvault.analysis.datasets import ManifestSource, MedMNISTSource
    from radvault.analysis.tasks import builtin_task_names

    if task in builtin_task_names():
        return ManifestSource(manifest, task)
    npz = DATA / "medmnist" / f"{task}.npz"
    if npz.is_file():
        modality, body_part = MEDMNIST_META.get(task, ("OT", ""))
        return MedMNISTSource(npz, modality=modality, body_part=body_part)
    raise SystemExit(f"no evaluation data for task {task!r}")


def evaluate_dir(model_dir: Path, manifest: Any, keyring: Any, cache: Path | None
                 ) -> dict[str, Any]:
    from radvault.analysis.evaluate import evaluate_model
    from radvault.analysis.inference import load_model

    model = load_model(model_dir, keyring=keyring)
    t0 = time.perf_counter()
    metrics = evaluate_model(model, source_for(model.card.task, manifest), "test",
                             cache_dir=cache)
    predictions = metrics.pop("predictions")
    card = model.card.raw
    return {
        "model_dir": str(model_dir.relative_to(ROOT) if model_dir.is_relative_to(ROOT)
                         else model_dir),
        "model_id": model.card.model_id, "task": model.card.task,
        "seed": card["training"]["seed"], "input_size": model.card.size,
        "network": card["network"], "val_auc": card["metrics"]["val"]["auc_macro"],
        "epochs_run": card["training"]["epochs_run"],
        "train_seconds": card["training"]["seconds"],
        "eval_seconds": round(time.perf_counter() - t0, 2),
        "table3": table3_row(metrics),
        "per_class_recall": {c: v["sensitivity"] for c, v in metrics["per_class"].items()},
        "ece": metrics["ece"], "referred_fraction": metrics["referred_fraction"],
        "confusion_matrix": metrics["confusion_matrix"], "metrics": metrics,
        "by_modality": by_modality(predictions, list(model.card.classes)),
    }


def by_modality(predictions: dict[str, Any], classes: list[str]) -> dict[str, Any]:
    """Accuracy, MCC and per-class recall on each modality's share of a multi-modal test split."""
    from sklearn.metrics import matthews_corrcoef

    y = np.asarray(predictions["y_true"])
    pred = np.asarray(predictions["probs"]).argmax(axis=1)
    mods = np.asarray(predictions["modalities"])
    out: dict[str, Any] = {}
    if len(set(mods.tolist())) < 2:
        return out
    for mod in sorted(set(mods.tolist())):
        sel = mods == mod
        yt, yp = y[sel], pred[sel]
        out[mod] = {
            "images": int(sel.sum()), "accuracy": float((yt == yp).mean()),
            "mcc": float(matthews_corrcoef(yt, yp)) if len(set(yt.tolist())) > 1 else None,
            "recall": {classes[c]: float((yp[yt == c] == c).mean()) for c in sorted(set(yt))},
        }
    return out


def spread(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"seeds": sorted(r["seed"] for r in rows)}
    for key in ("mcc", "ji", "ba", "ck", "auc", "dri"):
        vals = [r["table3"][key] for r in rows if r["table3"][key] is not None]
        out[key] = {"mean": statistics.fmean(vals),
                    "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                    "min": min(vals), "max": max(vals)}
    return out


def fmt(v: float | None, digits: int) -> str:
    return "   n/a" if v is None else f"{v:6.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--runs", type=Path, help="folder of per-seed runs to report spread")
    parser.add_argument("--cache-dir", type=Path, help="cache of preprocessed public images")
    parser.add_argument("--seeds-from", type=Path, metavar="JSON",
                        help="keep the per-seed spread of an earlier diagnostic.json for tasks "
                             "whose runs are not in --runs (their model folders are gone) and "
                             "whose shipped model is unchanged")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results"
                        / "diagnostic.json")
    args = parser.parse_args(argv)

    from radvault.analysis.export import ModelKeyring
    from radvault.analysis.manifest import load_manifest
    from radvault.analysis.registry import ModelRegistry

    manifest = load_manifest(DATA / "radbench" / "manifest.csv")  # sha-256 + leakage checked
    registry = ModelRegistry(args.models)
    keyring = ModelKeyring.from_dir(args.models / "keys")
    folders = [e.path for e in registry.entries()]
    folders += sorted(p.parent for p in (args.models / "medmnist").glob("*/model_card.json"))
    shipped = [evaluate_dir(d, manifest, keyring, args.cache_dir) for d in folders]
    seeds: dict[str, Any] = {}
    if args.runs and args.runs.is_dir():
        for task_dir in sorted(p for p in args.runs.iterdir()
                               if p.is_dir() and not p.name.startswith(".")):
            rows = [evaluate_dir(d, manifest, keyring, args.cache_dir)
                    for d in sorted(task_dir.glob("seed*")) if (d / "signature.json").is_file()]
            if rows:
                seeds[task_dir.name] = {"runs": [{k: r[k] for k in ("seed", "val_auc", "table3")}
                                                 for r in rows], "spread": spread(rows)}

    if args.seeds_from is not None:
        # An earlier spread describes the runs the shipped model was chosen from; it is
        # kept only while that model is still the one shipped.
        earlier = json.loads(args.seeds_from.read_text())
        then = {r["task"]: r["model_id"] for r in earlier.get("shipped", [])}
        now = {r["task"]: r["model_id"] for r in shipped}
        for task, entry in earlier.get("seeds", {}).items():
            if task in seeds:
                continue
            if then.get(task) != now.get(task):
                print(f"{task}: spread over seeds not carried over (the shipped model changed)")
                continue
            seeds[task] = {**entry, "from": entry.get("from", args.seeds_from.name)}

    header = f"{'task':<16}{'MCC':>7}{'JI %':>8}{'BA %':>8}{'CK':>7}{'AUC %':>8}{'DRI %':>8}"
    print("Table 3 layout, test split (shipped models; ONNX Runtime, calibrated)")
    print(header)
    print(f"{'paper':<16}{PAPER['mcc']:7.3f}{PAPER['ji']:8.2f}{PAPER['ba']:8.2f}"
          f"{PAPER['ck']:7.3f}{PAPER['auc']:8.2f}{PAPER['dri']:8.2f}")
    for r in shipped:
        t = r["table3"]
        print(f"{r['task']:<16}{fmt(t['mcc'], 3)} {fmt(t['ji'], 2)} {fmt(t['ba'], 2)}"
              f"{fmt(t['ck'], 3)} {fmt(t['auc'], 2)} {fmt(t['dri'], 2)}")
    print("\nAgainst radbench/BASELINE.md (ACC / AUC / MCC) and MedMNIST v2 (ACC / AUC)")
    for r in shipped:
        t, ref = r["table3"], BASELINE.get(r["task"]) or MEDMNIST_V2.get(r["task"])
        if ref is None:
            continue
        auc = t["auc"] / 100 if t["auc"] is not None else float("nan")
        ours = f"ACC {t['dri'] / 100:.3f} AUC {auc:.3f} MCC {t['mcc']:.3f}"
        theirs = " ".join(f"{k.upper()} {v:.3f}" for k, v in ref.items())
        print(f"{r['task']:<16}ours {ours}   reference {theirs}")
    for r in shipped:
        for mod, m in r["by_modality"].items():
            mcc = "n/a" if m["mcc"] is None else f"{m['mcc']:.3f}"
            recall = ", ".join(f"{c} {v:.2f}" for c, v in m["recall"].items())
            print(f"{r['task']:<16}{mod:<4} {m['images']:4d} images: ACC {m['accuracy']:.3f} "
                  f"MCC {mcc}  recall {recall}")
    for task, s in seeds.items():
        sp = s["spread"]
        print(f"{task:<16}seeds {sp['seeds']}: AUC {sp['auc']['mean']:.2f} "
              f"± {sp['auc']['std']:.2f} %, MCC {sp['mcc']['mean']:.3f} ± {sp['mcc']['std']:.3f}"
              f", DRI {sp['dri']['mean']:.2f} ± {sp['dri']['std']:.2f} %")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "paper_table3": PAPER, "radbench_baseline": BASELINE, "medmnist_v2": MEDMNIST_V2,
        "shipped": shipped, "seeds": seeds}, indent=1))
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

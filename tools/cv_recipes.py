"""Rank training recipes by grouped cross-validation over the train and validation splits.

For a task whose validation split is too small to rank recipes (lung_ct holds
one benign series in validation), the train and validation rows are pooled
and cut into K folds by group (patient or slice series), stratified by class.
Fold k is held out; fold k+1 is the early-stopping split; the other folds
train. Every recipe runs on every fold with the same seeds, through
``tools/sweep.py``, and is ranked by its mean held-out macro AUC. The test
split is never read: its rows are not in any fold manifest.

Usage (``--`` separates these options from the ``train`` options every run shares)::

    .venv/bin/python tools/cv_recipes.py --manifest ../shared/data/radbench/manifest.csv \\
        --task lung_ct --folds 4 --seeds 1 2 3 --out /tmp/cv --jobs 16 \\
        --config "r128=--size 128" --config "r256=--size 256" \\
        -- --width 0.5 --epochs 30 --patience 10 --fp16-weights --cache-dir /tmp/cache

``OUT/folds/fold<k>.csv`` are the fold manifests (absolute paths, splits
``train``, ``val`` and ``heldout``); ``OUT/cv_summary.json`` holds every run's
held-out figures and, per recipe, their mean and spread over folds and seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sweep  # tools/sweep.py, beside this file

from radvault.analysis.manifest import file_sha256

#: How many fold assignments to try before refusing: StratifiedGroupKFold is greedy
#: and, with few groups per class, may leave a class out of a fold.
_MAX_SHUFFLES = 200


def fold_manifests(manifest: Path, task: str, folds: int, out: Path,
                   splits: tuple[str, ...] = ("train", "val")) -> tuple[list[Path], int]:
    """Write one manifest per fold; the files and the shuffle seed that made them.

    Each fold manifest holds only the task's rows of ``splits``, relabelled
    ``heldout`` (fold k), ``val`` (fold k+1) and ``train`` (the rest). Every
    one of the three holds every class, so each run is trained, stopped and
    scored on all of them.

    Raises
    ------
    SystemExit
        If the task has too few groups of some class for that many folds.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    from radvault.analysis.datasets import ManifestSource
    from radvault.analysis.manifest import Manifest, to_csv_bytes

    source = ManifestSource(manifest, task)
    rows, labels = [], []
    for split in splits:
        for row, label in source.rows(split):
            rows.append(row)
            labels.append(label)
    y = np.array(labels)
    groups = [r.group_key for r in rows]
    n_classes = len(source.task.class_names)
    for cls in range(n_classes):
        n = len({g for g, lb in zip(groups, labels, strict=True) if lb == cls})
        if n < folds:
            raise SystemExit(
                f"error: class {source.task.class_names[cls]!r} has {n} group(s) in "
                f"{'+'.join(splits)}: too few for {folds} folds (each fold must hold it)")
    for shuffle in range(_MAX_SHUFFLES):
        cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=shuffle)
        fold_of = np.empty(len(rows), dtype=int)
        for k, (_, held) in enumerate(cv.split(np.zeros(len(rows)), y, groups)):
            fold_of[held] = k
        if all(len(set(y[fold_of == k])) == n_classes for k in range(folds)):
            break
    else:
        raise SystemExit(f"error: no assignment of groups to {folds} folds holds every class "
                         f"in every fold (tried {_MAX_SHUFFLES} shuffles)")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(folds):
        def role(f: int, k: int = k) -> str:
            return "heldout" if f == k else "val" if f == (k + 1) % folds else "train"
        fold_rows = [dataclasses.replace(r, split=role(f), columns={**r.columns,
                                                                    "split": role(f)})
                     for r, f in zip(rows, fold_of, strict=True)]
        path = out / f"fold{k}.csv"
        path.write_bytes(to_csv_bytes(Manifest.from_rows(fold_rows).rows))
        paths.append(path)
    return paths, shuffle


def summarise_cv(sweep_summary: dict[str, Any], recipes: list[str], folds: int,
                 reference: str | None = None) -> dict[str, Any]:
    """Per recipe, the held-out figures of every (fold, seed), their mean and spread, and
    the paired held-out AUC difference against ``reference`` (default: the runner-up)."""
    keys = ("auc_macro", "accuracy", "mcc", "balanced_accuracy")
    out: dict[str, Any] = {"recipes": {}, "metric": "held-out macro AUC (mean over folds "
                                                      "and seeds)"}
    for recipe in recipes:
        runs = []
        for k in range(folds):
            cfg = sweep_summary["configs"].get(f"{recipe}_f{k}", {})
            for r in cfg.get("runs", []):
                if r.get("finished"):
                    runs.append({"fold": k, "seed": r["seed"], "best_epoch": r["best_epoch"],
                                 "heldout": r["test"], "val": r["val"]})
        agg = {key: sweep._mean_sd([r["heldout"][key] for r in runs]) for key in keys}
        per_fold = {k: sweep._mean_sd([r["heldout"]["auc_macro"] for r in runs
                                       if r["fold"] == k])["mean"] for k in range(folds)}
        out["recipes"][recipe] = {"runs": runs, "finished": len(runs), "heldout": agg,
                                  "heldout_auc_by_fold": per_fold}
    complete = [r for r in recipes
                if out["recipes"][r]["heldout"]["auc_macro"]["mean"] is not None]
    out["ranking"] = sorted(complete, reverse=True,
                            key=lambda r: out["recipes"][r]["heldout"]["auc_macro"]["mean"])
    ref = reference if reference in out["recipes"] else None
    if ref is None and len(out["ranking"]) >= 2:
        ref = out["ranking"][1]
    if ref is not None:
        base = {(r["fold"], r["seed"]): r["heldout"]["auc_macro"]
                for r in out["recipes"][ref]["runs"]}
        out["paired_against"] = ref
        for recipe in recipes:
            # paired by (fold, seed): both recipes saw the same data and the same seed
            diffs = [r["heldout"]["auc_macro"] - base[(r["fold"], r["seed"])]
                     for r in out["recipes"][recipe]["runs"]
                     if recipe != ref and base.get((r["fold"], r["seed"])) is not None
                     and r["heldout"]["auc_macro"] is not None]
            out["recipes"][recipe]["paired_vs_reference"] = {
                "n": len(diffs), "wins": sum(d > 0 for d in diffs), **sweep._mean_sd(diffs)}
    return out


def print_cv(cv: dict[str, Any]) -> None:
    """One line per recipe, best held-out AUC first."""
    print(f"{'recipe':<12} {'runs':>4}  {'held-out AUC':>15} {'ACC':>15} {'MCC':>15} "
          f"{'BA':>15}")
    for name in cv["ranking"]:
        h = cv["recipes"][name]["heldout"]
        print(f"{name:<12} {cv['recipes'][name]['finished']:>4}  "
              f"{sweep._fmt(h['auc_macro']):>15} {sweep._fmt(h['accuracy']):>15} "
              f"{sweep._fmt(h['mcc']):>15} {sweep._fmt(h['balanced_accuracy']):>15}")
    ref = cv.get("paired_against")
    for name in cv["ranking"]:
        d = cv["recipes"][name].get("paired_vs_reference") or {}
        if name != ref and d.get("mean") is not None:
            print(f"paired ({name} - {ref}): {d['mean']:+.4f} ± {d['sd']:.4f}, "
                  f"better in {d['wins']} of {d['n']}")

def main(argv: list[str] | None = None) -> int:
    """Write the folds, run every recipe on every fold, rank; 1 if a run failed."""
    argv, common = sweep.split_common(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--pool", nargs="+", default=["train", "val"], metavar="SPLIT",
                   help="splits pooled into the folds (never the test split)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--config", action="append", required=True, metavar="NAME=ARGS",
                   help="a recipe: its name and the train options that differ")
    p.add_argument("--reference", default=None, metavar="NAME",
                   help="recipe every other is compared with, run by run (default: the "
                        "runner-up)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--jobs", type=int, default=None)
    p.add_argument("--deadline", type=float, default=None, metavar="SECONDS")
    p.add_argument("--kill-after", type=float, default=None, metavar="SECONDS")
    args = p.parse_args(argv)
    if args.folds < 3:
        p.error("--folds must be at least 3 (held-out, early-stopping and training folds)")
    if any(("--manifest" in c or "-split" in c or c == "--task") for c in common):
        p.error("the shared train options must not name --manifest, --task or a split")
    recipes = sweep.parse_configs(p, args.config)
    paths, shuffle = fold_manifests(args.manifest, args.task, args.folds, args.out / "folds",
                                    tuple(args.pool))
    print(f"{args.folds} folds written to {args.out / 'folds'} (shuffle {shuffle})", flush=True)
    sweep_argv = ["--out", str(args.out / "runs"), "--seeds", *map(str, args.seeds)]
    for opt, value in (("--jobs", args.jobs), ("--deadline", args.deadline),
                       ("--kill-after", args.kill_after)):
        if value is not None:
            sweep_argv += [opt, str(value)]
    for name, extra in recipes.items():
        for k, path in enumerate(paths):
            sweep_argv += ["--config", f"{name}_f{k}={extra} --manifest {path} "
                                       f"--test-split heldout"]
    status = sweep.main([*sweep_argv, "--", "--task", args.task, *common])
    sweep_summary = json.loads((args.out / "runs" / "summary.json").read_text())
    cv = summarise_cv(sweep_summary, list(recipes), args.folds, args.reference)
    cv.update(task=args.task, folds=args.folds, fold_shuffle=shuffle, seeds=args.seeds,
              recipes_args=recipes, common_args=common, pooled_splits=args.pool,
              manifest_sha256=file_sha256(args.manifest),
              fold_groups=[_heldout_groups(path) for path in paths])
    (args.out / "cv_summary.json").write_text(json.dumps(cv, indent=1))
    print_cv(cv)
    return status


def _heldout_groups(fold_manifest: Path) -> list[str]:
    """The groups (series) a fold holds out, for the record."""
    import csv

    with open(fold_manifest, newline="") as fh:
        return sorted({r["group"] for r in csv.DictReader(fh) if r["split"] == "heldout"})


if __name__ == "__main__":
    raise SystemExit(main())

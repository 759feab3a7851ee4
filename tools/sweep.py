"""Train a grid of recipes over several seeds in parallel and compare them on validation.

Usage (``--`` separates the sweep's options from the ``train`` options every run shares)::

    .venv/bin/python tools/sweep.py --out /tmp/sweep --jobs 12 --seeds 1 2 3 \\
        --config "r128=--size 128" --config "r224=--size 224" \\
        -- --manifest ../shared/data/radbench/manifest.csv --task radbench6 \\
           --width 0.5 --epochs 30 --patience 8 --fp16-weights --cache-dir /tmp/cache

Each run is ``python -m radvault.cli.models train`` in its own process
(``OUT/<config>/seed<N>/``, log beside it). The preprocessed splits are built
once per distinct setting before any run starts, so parallel runs do not all
preprocess the same images. ``OUT/summary.json`` holds every run's validation
and test figures and, per config, their mean and spread over seeds.

The ranking uses validation figures only (mean macro AUC over seeds, then
mean accuracy); test figures are carried along for the report and never used
to choose. Written for a machine with a GPU and many cores; it runs on a
laptop too, slowly.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any


def _train_args(common: list[str], extra: list[str], out: str = "/nonexistent"
                ) -> argparse.Namespace:
    """The ``train`` options of one run: the shared ones, then the recipe's."""
    from radvault.cli.models import build_parser

    return build_parser().parse_args(["train", *common, *extra, "--out", out])


def _data_key(ns: argparse.Namespace) -> tuple[Any, ...]:
    """What decides a run's data: source, task and splits (not the training options)."""
    return (str(ns.manifest), str(ns.medmnist), str(ns.folder), str(ns.dicom_folder),
            str(ns.labels), ns.classes, ns.task, ns.modality, ns.body_part, ns.train_split,
            ns.val_split, ns.test_split)


def _prepare(common: list[str], extra: list[str], split: str) -> str:
    """Preprocess one split of one recipe into the shared cache (run in a worker).

    Only the data source and the preprocessing settings are built, so a recipe
    whose training options are wrong still has its images prepared (its runs
    then fail and say why).
    """
    from radvault.cli.models import build_preprocess, build_source

    args = _train_args(common, extra)
    args.no_verify_sha256 = True  # the parent process verified each manifest once
    source = build_source(args)
    if split in source.splits:
        source.load(split, build_preprocess(args), cache_dir=args.cache_dir)
    return split


def _run_figures(card: dict[str, Any], split: str) -> dict[str, float | None]:
    m = (card.get("metrics") or {}).get(split) or {}
    return {k: m.get(k) for k in ("auc_macro", "accuracy", "mcc", "balanced_accuracy", "nll",
                                  "ece")}


def _mean_sd(values: list[float]) -> dict[str, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "sd": None}
    return {"mean": statistics.fmean(vals),
            "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0}


def summarise(out: Path, configs: dict[str, list[str]], seeds: list[int],
              common: list[str]) -> dict[str, Any]:
    """Read every finished run's model card; per config, mean and spread over seeds.

    Configs are ranked within their task (a sweep may hold several tasks).
    """
    summary: dict[str, Any] = {"configs": {}, "ranking": {}}
    for name, extra in configs.items():
        runs = []
        for seed in seeds:
            card_path = out / name / f"seed{seed}" / "model_card.json"
            if not card_path.is_file():
                runs.append({"seed": seed, "finished": False})
                continue
            card = json.loads(card_path.read_text())
            runs.append({"seed": seed, "finished": True, "model_id": card["model_id"],
                         "best_epoch": card["training"].get("best_epoch"),
                         "seconds": card["training"].get("seconds"),
                         "val": _run_figures(card, "val"), "test": _run_figures(card, "test")})
        done = [r for r in runs if r["finished"]]
        agg = {split: {k: _mean_sd([r[split][k] for r in done])
                       for k in ("auc_macro", "accuracy", "mcc", "nll")}
               for split in ("val", "test")}
        summary["configs"][name] = {"args": extra, "runs": runs, "finished": len(done),
                                    "task": _train_args(common, extra).task, **agg}

    def by_validation(name: str) -> tuple[float, float]:
        val = summary["configs"][name]["val"]  # a task without an AUC ranks by accuracy
        return (val["auc_macro"]["mean"] or 0.0, val["accuracy"]["mean"] or 0.0)

    for task in dict.fromkeys(c["task"] for c in summary["configs"].values()):
        summary["ranking"][task] = sorted(
            (n for n, c in summary["configs"].items() if c["finished"] and c["task"] == task),
            key=by_validation, reverse=True)
    for name in (n for ranked in summary["ranking"].values() for n in ranked):
        # seeds of each config, best validation AUC first
        cfg = summary["configs"][name]
        cfg["seeds_by_val_auc"] = [r["seed"] for r in sorted(
            (r for r in cfg["runs"] if r["finished"]),
            key=lambda r: (r["val"]["auc_macro"] or 0.0, r["val"]["accuracy"] or 0.0),
            reverse=True)]
    return summary


def _fmt(stat: dict[str, float | None]) -> str:
    if stat["mean"] is None:
        return "-"
    return f"{stat['mean']:.4f}±{stat['sd']:.4f}"


def print_table(summary: dict[str, Any]) -> None:
    """One line per config, by task, best (by validation) first."""
    print(f"{'config':<16} {'n':>2}  {'val AUC':>15} {'val ACC':>15} {'val NLL':>15}  "
          f"{'test AUC':>15} {'test ACC':>15} {'test MCC':>15}")
    for name in (n for ranked in summary["ranking"].values() for n in ranked):
        c = summary["configs"][name]
        print(f"{name:<16} {c['finished']:>2}  {_fmt(c['val']['auc_macro']):>15} "
              f"{_fmt(c['val']['accuracy']):>15} {_fmt(c['val']['nll']):>15}  "
              f"{_fmt(c['test']['auc_macro']):>15} {_fmt(c['test']['accuracy']):>15} "
              f"{_fmt(c['test']['mcc']):>15}")


def split_common(argv: list[str] | None) -> tuple[list[str], list[str]]:
    """The tool's own options and, after ``--``, the ``train`` options every run shares."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]


def parse_configs(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, str]:
    """``--config NAME=ARGS`` items as name -> ARGS (not yet split); a malformed or
    repeated name is a usage error."""
    configs: dict[str, str] = {}
    for item in items:
        name, sep, extra = item.partition("=")
        if not sep or not name:
            parser.error(f"--config {item!r}: expected NAME=ARGS (ARGS may be empty)")
        if name in configs:
            parser.error(f"--config {name!r} given twice")
        configs[name] = extra
    return configs


def main(argv: list[str] | None = None) -> int:
    """Run the sweep; the exit status is 1 if any run failed, 2 for bad options."""
    argv, common = split_common(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--config", action="append", required=True, metavar="NAME=ARGS",
                   help="a recipe: its name and the train options that differ")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="runs at a time (each on one CPU thread, sharing the GPU if any)")
    p.add_argument("--deadline", type=float, default=None, metavar="SECONDS",
                   help="launch no new run after this many seconds (those not started count as "
                        "failed); report what finished")
    p.add_argument("--kill-after", type=float, default=None, metavar="SECONDS",
                   help="stop runs still going after this many seconds (they count as "
                        "failed) and report what finished")
    args = p.parse_args(argv)
    configs = {name: shlex.split(extra)
               for name, extra in parse_configs(p, args.config).items()}
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    from radvault.cli.models import build_source
    from radvault.errors import RadVaultError

    # Each data source is checked once here (sha-256 of every file, unless the shared
    # options say --no-verify-sha256); the runs then skip the re-hashing.
    checked = set()
    for name, extra in configs.items():
        ns = _train_args(common, extra)
        if _data_key(ns) not in checked:
            checked.add(_data_key(ns))
            try:
                build_source(ns)
            except RadVaultError as exc:
                print(f"error: recipe {name}: {exc}", file=sys.stderr)
                return 2
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        keys, futures = set(), []
        for extra in configs.values():
            ns = _train_args(common, extra)
            key = (_data_key(ns), ns.size, ns.no_enhance, ns.no_denoise)
            if key not in keys:
                keys.add(key)
                splits = (ns.train_split, ns.val_split, ns.test_split)
                futures += [pool.submit(_prepare, common, extra, s) for s in splits if s]
        for f in futures:
            try:
                f.result()
            except Exception as exc:  # the recipe's runs will fail too, and say why
                print(f"preparing a split failed ({type(exc).__name__}: {exc})", flush=True)
    print(f"caches ready after {time.monotonic() - started:.0f}s", flush=True)
    try:
        failed = _run_all(args, configs, common, started)
    except KeyboardInterrupt:
        print("interrupted; summarising what finished", flush=True)
        failed = ["interrupted"]

    summary = summarise(args.out, configs, args.seeds, common)
    summary["seconds"] = round(time.monotonic() - started, 1)
    summary["failed"] = failed
    summary["common_args"] = common
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print_table(summary)
    return 1 if failed else 0


def _launch(args: argparse.Namespace, extra: list[str], common: list[str], name: str,
            seed: int) -> tuple[subprocess.Popen[bytes], Any]:
    """Start one run (its log beside its folder); the process and the open log."""
    run_dir = args.out / name / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "model_card.json").unlink(missing_ok=True)  # no stale result counts
    cmd = [sys.executable, "-m", "radvault.cli.models", "train", *common, *extra,
           "--seed", str(seed), "--out", str(run_dir), "--quiet", "--threads", "1",
           "--no-verify-sha256", "--overwrite"]  # a sweep run again replaces its own runs
    log = (args.out / name / f"seed{seed}.log").open("wb")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log


def _run_all(args: argparse.Namespace, configs: dict[str, list[str]], common: list[str],
             started: float) -> list[str]:
    """Run every (recipe, seed) as its own process, ``args.jobs`` at a time; the failed ones."""
    queue = [(name, seed) for seed in args.seeds for name in configs]
    running: list[tuple[subprocess.Popen[bytes], Any, str, int]] = []
    failed: list[str] = []
    killing_since: float | None = None
    try:
        while queue or running:
            elapsed = time.monotonic() - started
            killing = args.kill_after is not None and elapsed > args.kill_after
            late = killing or (args.deadline is not None and elapsed > args.deadline)
            while queue and len(running) < args.jobs and not late:
                name, seed = queue.pop(0)
                running.append((*_launch(args, configs[name], common, name, seed), name, seed))
            if late and queue:
                print(f"{elapsed:6.0f}s past the time limit: {len(queue)} run(s) not started",
                      flush=True)
                failed += [f"{name}/seed{seed} (not started)" for name, seed in queue]
                queue.clear()
            if killing:
                killing_since = killing_since or time.monotonic()
                for proc, *_ in running:  # SIGTERM, then SIGKILL 10 s later
                    (proc.kill if time.monotonic() - killing_since > 10 else proc.terminate)()
            time.sleep(1.0)
            for entry in list(running):
                proc, log, name, seed = entry
                if proc.poll() is not None:
                    running.remove(entry)
                    log.close()
                    status = "done" if proc.returncode == 0 else f"FAILED ({proc.returncode})"
                    if proc.returncode:
                        failed.append(f"{name}/seed{seed}")
                    print(f"{time.monotonic() - started:6.0f}s {name}/seed{seed} {status}",
                          flush=True)
    finally:  # never leave a run holding the GPU behind
        for proc, log, name, seed in running:
            proc.kill()
            proc.wait()
            log.close()
            failed.append(f"{name}/seed{seed}")
    return failed


if __name__ == "__main__":
    raise SystemExit(main())

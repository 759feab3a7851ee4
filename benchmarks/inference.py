"""Inference benchmark: end-to-end vault analysis against ONNX Runtime alone, as a ratio.

For a sample of radbench test images (radbench6 classes), ingested into a fresh
vault whose model-input preprocessing equals the default model's card:

- end to end: ``Analyser.analyse_instance`` = open the sealed model input,
  back-verify (signature, blob digest, AEAD tags), infer with ONNX Runtime, run the
  image check (``models/image_check``, since session 11; ``--without-image-check``
  leaves it out), store the result in the catalog and audit it;
- baseline: ``LoadedModel.predict`` on the very same preprocessed arrays,
  one image at a time, in the same process;
- batched end to end: ``Analyser.analyse_many`` (the same checks per image,
  one inference call and one commit per batch of ``--batch`` images), against
  ``LoadedModel.predict`` on the same arrays in the same batches.

Reports images/s of each pair and their ratios (issue 4 target: >= 0.90 for
throughput, which is the batched pair), and the single-image latency (median,
p95). Repeated rounds, interleaved, median taken. ``--threads`` sets ONNX
Runtime's threads for both paths: with 1 (the default) the batched path's
checks run on the other core; run it with ``--threads 2`` too, which is what a
2-core machine does by default (``benchmarks/results/inference_threads2.json``).
"""

from __future__ import annotations

import argparse
import csv
import random
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import print_table, write_results
from radvault.analysis.image_check import ImageCheck
from radvault.analysis.inference import load_model
from radvault.analysis.registry import ModelRegistry
from radvault.config import load_settings
from radvault.pipeline.analyse import Analyser
from radvault.pipeline.ingest import Ingestor
from radvault.pipeline.retrieve import open_model_input
from radvault.vault.keys import KdfParams
from radvault.vault.vault import Vault

RADBENCH = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "radbench"
HINTS = {"chest_xray": ("DX", "CHEST"), "brain_mri": ("MR", "BRAIN"),
         "lung_ct": ("CT", "CHEST"), "kidney_ct": ("CT", "KIDNEY"),
         "breast_us": ("US", "BREAST")}


def sample_rows(count: int, seed: int) -> list[dict[str, str]]:
    """A seeded sample of test-split rows across the five datasets."""
    with open(RADBENCH / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    random.Random(seed).shuffle(rows)
    return rows[:count]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and write benchmarks/results/inference.json."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=32, help="images per batch")
    parser.add_argument("--threads", type=int, default=1,
                        help="ONNX Runtime intra-op threads, for both paths (default 1: the "
                             "batched path then verifies on the other core)")
    parser.add_argument("--without-image-check", action="store_true",
                        help="end to end without the image check (as before session 11)")
    args = parser.parse_args(argv)
    if not (RADBENCH / "manifest.csv").is_file():
        raise SystemExit(f"no radbench data at {RADBENCH}")
    registry = ModelRegistry()
    model_dir = registry.get(registry.default).path
    model = load_model(model_dir, keyring=registry.keyring, threads=args.threads)
    rounds: list[dict[str, float]] = []
    e2e_lat: list[float] = []
    base_lat: list[float] = []
    with tempfile.TemporaryDirectory(prefix="rv-bench-inf-") as tmp:
        settings = load_settings(env={}, home=Path(tmp) / "vault")
        settings = replace(settings, preprocess=model.card.preprocess_settings,
                           accept_burned_in=True)
        vault = Vault.init(settings, "benchmark passphrase", kdf=KdfParams.fast())
        try:
            ingestor = Ingestor(vault, actor="bench")
            ids = []
            for row in sample_rows(args.images, args.seed):
                modality, body_part = HINTS[row["dataset"]]
                out = ingestor.ingest_file(RADBENCH / row["path"], modality=modality,
                                           body_part=body_part)
                if out.instance_id:
                    ids.append(out.instance_id)
            arrays = [open_model_input(vault, i, actor="bench").array for i in ids]
            analyser = Analyser(vault, registry, actor="bench")
            analyser._models[model_dir] = model  # the same session as the baseline
            check_dir = registry.image_check_path()
            analyser._check_looked_up = True  # the check with the same thread count, or none
            analyser._check = (None if args.without_image_check or check_dir is None else
                               ImageCheck(load_model(check_dir, keyring=registry.keyring,
                                                     threads=args.threads)))
            for m in (model,):  # warm-up
                m.predict(arrays[0][None])
            batches = [arrays[k:k + args.batch] for k in range(0, len(arrays), args.batch)]
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                for a in arrays:
                    s = time.perf_counter()
                    model.predict(a[None])
                    base_lat.append(time.perf_counter() - s)
                base = time.perf_counter() - t0
                t0 = time.perf_counter()
                for i in ids:
                    s = time.perf_counter()
                    analyser.analyse_instance(i, model_name=registry.default)
                    e2e_lat.append(time.perf_counter() - s)
                e2e = time.perf_counter() - t0
                t0 = time.perf_counter()
                for chunk in batches:
                    model.predict(np.stack(chunk))
                base_batched = time.perf_counter() - t0
                t0 = time.perf_counter()
                outcome = analyser.analyse_many(ids, model_name=registry.default,
                                                batch_size=args.batch)
                e2e_batched = time.perf_counter() - t0
                if outcome.failures:
                    raise SystemExit(f"analysis failed: {outcome.failures[:3]}")
                rounds.append({"baseline_ips": len(ids) / base, "e2e_ips": len(ids) / e2e,
                               "baseline_batched_ips": len(ids) / base_batched,
                               "e2e_batched_ips": len(ids) / e2e_batched})
        finally:
            vault.close()
    def med(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    ratio_single = statistics.median(r["e2e_ips"] / r["baseline_ips"] for r in rounds)
    ratio = statistics.median(r["e2e_batched_ips"] / r["baseline_batched_ips"] for r in rounds)
    rows = [
        ("ONNX Runtime alone, one at a time", med("baseline_ips"),
         statistics.median(base_lat) * 1e3, percentile(base_lat, 95) * 1e3, None),
        ("end to end, one at a time", med("e2e_ips"), statistics.median(e2e_lat) * 1e3,
         percentile(e2e_lat, 95) * 1e3, ratio_single),
        (f"ONNX Runtime alone, batches of {args.batch}", med("baseline_batched_ips"),
         None, None, None),
        (f"end to end, batches of {args.batch} (analyse_many)", med("e2e_batched_ips"),
         None, None, ratio),
    ]
    checked = "none" if analyser._check is None else analyser._check.model_id
    print_table(f"inference, {len(ids)} images x {args.rounds} rounds, model {model.model_id}, "
                f"{args.threads} ONNX Runtime thread(s)"
                " (end to end = open + verify + infer + image check + store + audit; "
                f"image check: {checked})",
                ["path", "images/s", "median ms", "p95 ms", "ratio"], rows)
    verdict = "met" if ratio >= 0.90 else "NOT met"
    print(f"throughput ratio, batched end-to-end / ONNX Runtime alone: {ratio:.2f} "
          f"(target >= 0.90: {verdict}); one at a time: {ratio_single:.2f}")
    result = {"model_id": model.model_id, "image_check": checked,
              "images": len(ids), "batch": args.batch,
              "onnxruntime_threads": args.threads,
              "rounds": rounds,
              "baseline_images_per_s": med("baseline_ips"),
              "end_to_end_images_per_s": med("e2e_ips"),
              "baseline_batched_images_per_s": med("baseline_batched_ips"),
              "end_to_end_batched_images_per_s": med("e2e_batched_ips"),
              "ratio": ratio, "ratio_one_at_a_time": ratio_single, "target": 0.90,
              "latency_ms": {"baseline_median": rows[0][2], "baseline_p95": rows[0][3],
                             "end_to_end_median": rows[1][2], "end_to_end_p95": rows[1][3]}}
    name = "inference" if args.threads == 1 else f"inference_threads{args.threads}"
    write_results(name + ("_without_image_check" if args.without_image_check else ""), result)
    return result


if __name__ == "__main__":
    main()

"""Imaging baseline: images/s for read + de-identify + preprocess.

Two corpora from ``../shared/data``:

- ``dicom/``: every DICOM file except the ``broken/`` folder. Per file:
  read (parse the file), de-identify (PS3.15 Basic Profile on the dataset;
  images flagged for burned-in annotation are accepted, to time every file),
  decode (pixels of the de-identified dataset into an ImageRecord), preprocess
  (the middle frame, as the analysis engine would).
- ``radbench/``: a seeded sample spread evenly over the five datasets
  (PNG/JPEG). Per file: read (Pillow decode into an ImageRecord) and
  preprocess; PNG/JPEG carry no DICOM header, so there is nothing to
  de-identify.

Each stage is timed per file with ``time.perf_counter``; the table shows the
median per stage and images/s = files / sum of all stage times, one process,
one thread of Python (OpenCV may use its own threads). No target: this is the
baseline later issues are measured against. Run::

    .venv/bin/python benchmarks/imaging.py [--sample 300] [--seed 0] [--size 224]

Results go to ``benchmarks/results/imaging.json``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _common import DATA_DIR, print_table, summarize, write_results
from radvault.config import PreprocessSettings
from radvault.errors import RadVaultError
from radvault.imaging.deid import Deidentifier, DeidOptions
from radvault.imaging.preprocess import Preprocessor, settings_to_dict
from radvault.imaging.reading import read_dicom_dataset, read_image, record_from_dataset

# A fixed, public benchmark secret: pseudonyms here protect nothing.
SECRET = hashlib.sha256(b"radvault benchmark secret, not for real data").digest()
DICOM_STAGES = ("read", "deid", "decode", "preprocess")
IMAGE_STAGES = ("read", "preprocess")
WARMUP = 3


class Timings:
    """Per-stage timings and failures of one group of files."""

    def __init__(self, stages: Sequence[str]) -> None:
        self.stages = stages
        self.seconds: dict[str, list[float]] = {s: [] for s in stages}
        self.per_file: list[tuple[str, float]] = []
        self.failures: list[dict[str, str]] = []

    def run(self, name: str, steps: Sequence[tuple[str, Callable[[Any], Any]]]) -> None:
        """Run ``steps`` in order, feeding each the previous result; time each one."""
        spent: dict[str, float] = {}
        value: Any = None
        for stage, step in steps:
            start = time.perf_counter()
            try:
                value = step(value)
            except RadVaultError as exc:
                self.failures.append({"file": name, "stage": stage, "error": type(exc).__name__,
                                      "message": str(exc)})
                return
            spent[stage] = time.perf_counter() - start
        for stage, seconds in spent.items():
            self.seconds[stage].append(seconds)
        self.per_file.append((name, sum(spent.values())))

    def summary(self) -> dict[str, Any]:
        total = sum(seconds for _, seconds in self.per_file)
        ok = len(self.per_file)
        slowest = sorted(self.per_file, key=lambda item: -item[1])[:5]
        return {
            "files": ok + len(self.failures),
            "ok": ok,
            "failed": len(self.failures),
            "images_per_s": ok / total if total else None,
            "stages": {s: summarize(self.seconds[s]) for s in self.stages},
            "per_image": summarize(seconds for _, seconds in self.per_file),
            "slowest": [{"file": f, "seconds": s} for f, s in slowest],
            "failures": self.failures,
        }


def dicom_files(root: Path) -> list[Path]:
    """Every DICOM file under ``root`` except the deliberately broken ones."""
    return sorted(p for p in root.rglob("*.dcm") if "broken" not in p.relative_to(root).parts)


def radbench_sample(root: Path, count: int, seed: int) -> list[tuple[str, Path]]:
    """``count`` images spread evenly over the datasets, chosen by a seeded RNG."""
    with (root / "manifest.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    by_dataset: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        by_dataset[row["dataset"]].append(row["path"])
    rng = random.Random(seed)
    per_dataset = -(-count // len(by_dataset))
    sample: list[tuple[str, Path]] = []
    for dataset in sorted(by_dataset):
        paths = sorted(by_dataset[dataset])
        chosen = rng.sample(paths, min(per_dataset, len(paths)))
        sample.extend((dataset, root / p) for p in sorted(chosen))
    return sample[:count] if len(sample) > count else sample


def bench_dicom(root: Path, preprocess: Preprocessor) -> dict[str, Timings]:
    # accept burned-in risk: the point is to time every file through every stage
    deidentify = Deidentifier(SECRET, DeidOptions(accept_burned_in=True))
    files = dicom_files(root)
    groups: dict[str, Timings] = defaultdict(lambda: Timings(DICOM_STAGES))
    for path in files[:WARMUP]:  # load decoder plugins and caches, untimed
        Timings(DICOM_STAGES).run(str(path), _dicom_steps(path, deidentify, preprocess))
    for path in files:
        group = path.relative_to(root).parts[0]
        name = str(path.relative_to(root))
        groups[group].run(name, _dicom_steps(path, deidentify, preprocess))
    return groups


def _dicom_steps(path: Path, deidentify: Deidentifier, preprocess: Preprocessor):
    return (
        ("read", lambda _: read_dicom_dataset(path)),
        ("deid", lambda ds: deidentify(ds, in_place=True).dataset),  # as ingest does
        ("decode", lambda ds: record_from_dataset(ds, str(path))),
        ("preprocess", preprocess),
    )


def bench_radbench(root: Path, preprocess: Preprocessor, count: int,
                   seed: int) -> dict[str, Timings]:
    sample = radbench_sample(root, count, seed)
    groups: dict[str, Timings] = defaultdict(lambda: Timings(IMAGE_STAGES))
    for _, path in sample[:WARMUP]:
        Timings(IMAGE_STAGES).run(str(path), _image_steps(path, preprocess))
    for dataset, path in sample:
        groups[dataset].run(str(path.relative_to(root)), _image_steps(path, preprocess))
    return groups


def _image_steps(path: Path, preprocess: Preprocessor):
    return (("read", lambda _: read_image(path)), ("preprocess", preprocess))


def _merge(groups: dict[str, Timings], stages: Sequence[str]) -> Timings:
    total = Timings(stages)
    for timings in groups.values():
        for stage in stages:
            total.seconds[stage].extend(timings.seconds[stage])
        total.per_file.extend(timings.per_file)
        total.failures.extend(timings.failures)
    return total


def _rows(groups: dict[str, Timings], stages: Sequence[str]) -> tuple[list[list[Any]], dict]:
    rows: list[list[Any]] = []
    results: dict[str, Any] = {}
    for name, timings in [*sorted(groups.items()), ("all", _merge(groups, stages))]:
        summary = timings.summary()
        results[name] = summary
        medians = [summary["stages"][s]["median"] for s in stages]
        medians.append(summary["per_image"]["median"])
        rows.append([
            name, summary["ok"], summary["failed"],
            *(None if m is None else m * 1e3 for m in medians),
            summary["images_per_s"],
        ])
    return rows, results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA_DIR, help="the shared data folder")
    parser.add_argument("--sample", type=int, default=300, help="radbench images to sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=224, help="preprocess output size")
    args = parser.parse_args(argv)

    settings = PreprocessSettings(size=args.size)
    preprocess = Preprocessor(settings)
    payload: dict[str, Any] = {
        "preprocess": settings_to_dict(settings),
        "radbench_sample": args.sample,
        "seed": args.seed,
        "corpora": {},
    }
    corpora = [
        ("dicom", DICOM_STAGES, lambda: bench_dicom(args.data / "dicom", preprocess)),
        ("radbench", IMAGE_STAGES,
         lambda: bench_radbench(args.data / "radbench", preprocess, args.sample, args.seed)),
    ]
    for name, stages, bench in corpora:
        if not (args.data / name).is_dir():
            print(f"skipping {name}: {args.data / name} not found")
            continue
        rows, results = _rows(bench(), stages)
        payload["corpora"][name] = results
        print_table(
            f"{name}: median ms per stage, images/s (one process)",
            ["group", "ok", "failed", *(f"{s} ms" for s in stages), "total ms", "images/s"],
            rows,
        )
        for failure in results["all"]["failures"]:
            print(f"  failed at {failure['stage']}: {failure['file']} ({failure['error']})")
    path = write_results("imaging", payload)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

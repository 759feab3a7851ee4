"""What the vault costs: ingest images/s and seal/open MB/s, each against its plain counterpart.

1. Ingest. The same inputs go through two pipelines in one run:

   - ``plain``: the imaging pipeline alone, writing plain files. Per input:
     read the bytes; DICOM: parse, de-identify (PS3.15), decode the pixels,
     write the de-identified DICOM; PNG/JPEG: decode, write the file as given;
     then preprocess and ``np.save`` the model input. Plain ``write``, no fsync.
   - ``vault``: ``Ingestor.ingest_paths`` on a fresh vault with the default
     settings (``durability="full"``): the same imaging work, plus the source
     digest (idempotency), the pixel digest, sealing both objects (AES-256-GCM,
     per-object data key), crash-safe blob writes (each file and folder
     fsynced, once per batch), the signed catalog rows, the sealed identity
     record and the hash-chained audit entries, committed per batch (group
     commit) in SQLite with ``synchronous=FULL``.

   Inputs: the shared DICOM corpus minus ``broken/`` (burned-in images
   accepted, so every file is processed) and a seeded sample of radbench
   PNG/JPEG images spread over its five datasets, with the manifest's modality
   as the hint. Each round runs both pipelines over all inputs, in alternating
   order; the reported ratio is the median over rounds of vault images/s
   divided by plain images/s from the same round (a noisy, shared machine
   hits both alike). Target: >= 0.90.

2. Seal/open. On the very plaintexts the vault seals (de-identified DICOM,
   original PNG/JPEG, encoded model inputs of a seeded subset of the inputs):
   ``sealing.seal`` / ``sealing.open_sealed`` against raw ``AESGCM.encrypt`` /
   ``decrypt`` in the same chunk size with a fresh nonce per chunk (as
   ``benchmarks/seal.py`` does on one big random buffer). ``seal`` also draws
   and wraps a data key per object and hashes the blob (the digest the catalog
   signs), so raw encrypt + SHA-256 is shown too. ``open_sealed`` does not hash
   (a vault read checks the blob's sha-256 first, in ``Vault.open_object``), so
   that check + ``open_sealed`` is shown against raw sha-256 + decrypt too: the
   two directions compared alike. Medians of interleaved runs. Target: >= 0.80.

Run from the repository root::

    .venv/bin/python benchmarks/vault.py [--rounds 3] [--sample 200] [--seed 0] [--profile]

Prints tables and writes ``benchmarks/results/vault.json``. ``--profile``
adds a cProfile of one vault ingest pass, one file at a time in one thread
(so a batch of one image: every image pays its own flushes and commit):
wall seconds per step (imaging, sealing, blob writes, catalog, audit, fsync,
SQLite commits) and the top functions by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import csv
import hashlib
import io
import itertools
import os
import pstats
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydicom.uid import generate_uid

from _common import DATA_DIR, print_table, summarize, write_results
from radvault.config import Settings, load_settings
from radvault.errors import RadVaultError
from radvault.imaging.deid import Deidentifier, DeidOptions
from radvault.imaging.preprocess import Preprocessor, settings_to_dict
from radvault.imaging.reading import (
    read_dicom_dataset,
    read_image_bytes,
    record_from_dataset,
    sniff_format,
)
from radvault.imaging.records import SourceFormat
from radvault.pipeline.ingest import Ingestor, encode_model_input
from radvault.vault.keys import InMemoryKeyProvider, KdfParams
from radvault.vault.sealing import open_sealed, seal
from radvault.vault.vault import Vault

INGEST_TARGET = 0.90
SEAL_TARGET = 0.80
PASSPHRASE = "benchmark passphrase, protects nothing"
# A fixed, public benchmark secret for the plain pipeline's pseudonyms.
SECRET = hashlib.sha256(b"radvault benchmark secret, not for real data").digest()
WARMUP = 4


@dataclass(frozen=True)
class Input:
    """One benchmark input and the hints the CLI would pass with it."""

    path: Path
    modality: str | None = None
    body_part: str | None = None
    corpus: str = "dicom"


@dataclass
class Run:
    """One pass of one pipeline over every input."""

    seconds: float
    cpu_seconds: float = 0.0  # all threads of this process (no I/O waits)
    stored: int = 0
    refused: int = 0
    duplicate: int = 0
    failures: list[str] = field(default_factory=list)
    corpus_seconds: dict[str, float] = field(default_factory=dict)
    corpus_images: dict[str, int] = field(default_factory=dict)

    def add(self, corpus: str, seconds: float, images: int) -> None:
        self.corpus_seconds[corpus] = self.corpus_seconds.get(corpus, 0.0) + seconds
        self.corpus_images[corpus] = self.corpus_images.get(corpus, 0) + images

    @property
    def images_per_s(self) -> float:
        return (self.stored + self.duplicate) / self.seconds

    @property
    def images_per_cpu_s(self) -> float:
        return (self.stored + self.duplicate) / self.cpu_seconds


# --------------------------------------------------------------------------- inputs


def dicom_inputs(root: Path) -> list[Input]:
    """Every DICOM file of the corpus except the deliberately broken ones."""
    return [Input(p) for p in sorted(root.rglob("*.dcm")) if "broken" not in p.parts]


def radbench_inputs(root: Path, count: int, seed: int) -> list[Input]:
    """A seeded sample of ``count`` radbench images spread evenly over the datasets."""
    by_dataset: dict[str, list[dict[str, str]]] = {}
    with (root / "manifest.csv").open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            by_dataset.setdefault(row["dataset"], []).append(row)
    rng = random.Random(seed)
    per = -(-count // max(1, len(by_dataset)))
    chosen: list[Input] = []
    for name in sorted(by_dataset):
        rows = by_dataset[name]
        for row in sorted(rng.sample(rows, min(per, len(rows))), key=lambda r: r["path"]):
            chosen.append(Input(root / row["path"], row["modality"], row["body_part"] or None,
                                "radbench"))
    return chosen[:count]


# --------------------------------------------------------------------------- the pipelines


class PlainPipeline:
    """The imaging pipeline writing plain files (what the vault is compared with)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.deid = Deidentifier(SECRET, DeidOptions.from_settings(settings))
        self.preprocess = Preprocessor(settings.preprocess)
        self.preprocess_dict = settings_to_dict(settings.preprocess)

    def payloads(self, item: Input) -> tuple[bytes, np.ndarray, str]:
        """The file to store, the model input and the stored file's suffix."""
        limits = self.settings.limits
        name = str(item.path)
        data = item.path.read_bytes()
        if sniff_format(data[:132]) is SourceFormat.DICOM:
            ds = self.deid(read_dicom_dataset(data, limits=limits, name=name),
                           in_place=True).dataset  # as ingest does
            for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
                if not str(ds.get(keyword, "") or ""):  # as ingest does: some files lack them
                    setattr(ds, keyword, generate_uid())
            record = record_from_dataset(ds, name, limits=limits)
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            stored, suffix = buffer.getvalue(), ".dcm"
        else:
            record = read_image_bytes(data, name, limits=limits, modality=item.modality,
                                      body_part=item.body_part)
            stored, suffix = data, item.path.suffix
        return stored, self.preprocess(record), suffix

    def run(self, inputs: Sequence[Input], out: Path, *, durable: bool = False) -> Run:
        """Process every input into ``out``; ``durable`` fsyncs each file and the folder."""
        out.mkdir(parents=True, exist_ok=True)
        started, cpu = time.perf_counter(), time.process_time()
        result = Run(0.0)
        for index, item in enumerate(inputs):
            item_started = time.perf_counter()
            try:
                stored, model_input, suffix = self.payloads(item)
            except RadVaultError as exc:
                result.refused += 1
                result.failures.append(f"{item.path.name}: {type(exc).__name__}")
                result.add(item.corpus, time.perf_counter() - item_started, 0)
                continue
            array = io.BytesIO()
            np.save(array, model_input)
            for name, data in ((f"{index:05d}{suffix}", stored),
                               (f"{index:05d}.npy", array.getbuffer())):
                with open(out / name, "wb") as handle:
                    handle.write(data)
                    if durable:
                        handle.flush()
                        os.fsync(handle.fileno())
            if durable:
                _fsync_dir(out)
            result.stored += 1
            result.add(item.corpus, time.perf_counter() - item_started, 1)
        result.seconds = time.perf_counter() - started
        result.cpu_seconds = time.process_time() - cpu
        return result


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def vault_settings(home: Path) -> Settings:
    """The benchmark's settings: defaults, burned-in images accepted (every file is timed)."""
    return load_settings(env={}, home=home, accept_burned_in=True)


def run_vault(inputs: Sequence[Input], home: Path) -> Run:
    """Ingest every input into a fresh vault (creating the vault is not timed)."""
    vault = Vault.init(vault_settings(home), PASSPHRASE, kdf=KdfParams.fast())
    ingestor = Ingestor(vault, actor="benchmark")
    result = Run(0.0)
    started, cpu = time.perf_counter(), time.process_time()
    try:
        # As `radvault ingest` does: ingest_paths per set of hints (it overlaps storing
        # one image with preparing the next).
        for (corpus, modality, body_part), group in itertools.groupby(
                inputs, key=lambda i: (i.corpus, i.modality, i.body_part)):
            group_started = time.perf_counter()
            outcomes = ingestor.ingest_paths([i.path for i in group], modality=modality,
                                             body_part=body_part)
            for outcome in outcomes:
                if outcome.status == "stored":
                    result.stored += 1
                elif outcome.status == "duplicate":
                    result.duplicate += 1
                else:
                    result.refused += 1
                    result.failures.append(f"{Path(outcome.name).name}: {outcome.error}")
            result.add(corpus, time.perf_counter() - group_started,
                       sum(o.status != "refused" for o in outcomes))
    finally:
        vault.close()
        result.seconds = time.perf_counter() - started
        result.cpu_seconds = time.process_time() - cpu
    return result


def bench_ingest(inputs: Sequence[Input], rounds: int, workdir: Path) -> dict[str, Any]:
    """Alternate plain and vault passes; return per-round numbers and medians."""
    plain = PlainPipeline(vault_settings(workdir / "unused"))
    plain.run(inputs[:WARMUP], workdir / "warm-plain")  # load decoder plugins
    run_vault(inputs[:WARMUP], workdir / "warm-vault")
    rounds_out: list[dict[str, Any]] = []
    pipelines: dict[str, Callable[[Path], Run]] = {
        "plain": lambda target: plain.run(inputs, target),
        "plain_fsync": lambda target: plain.run(inputs, target, durable=True),
        "vault": lambda target: run_vault(inputs, target),
    }
    for n in range(rounds):
        names = list(pipelines)
        order = names[n % len(names):] + names[:n % len(names)]  # rotate who goes first
        runs: dict[str, Run] = {}
        for which in order:
            target = workdir / f"{which}-{n}"
            runs[which] = pipelines[which](target)
            shutil.rmtree(target, ignore_errors=True)
        entry: dict[str, Any] = {"order": order}
        for which, run in runs.items():
            entry[which] = {"seconds": run.seconds, "cpu_seconds": run.cpu_seconds,
                            "stored": run.stored, "duplicate": run.duplicate,
                            "refused": run.refused, "images_per_s": run.images_per_s,
                            "images_per_cpu_s": run.images_per_cpu_s}
        entry["ratio"] = runs["vault"].images_per_s / runs["plain"].images_per_s
        entry["ratio_vs_plain_fsync"] = (runs["vault"].images_per_s
                                         / runs["plain_fsync"].images_per_s)
        entry["cpu_ratio"] = runs["vault"].images_per_cpu_s / runs["plain"].images_per_cpu_s
        entry["ratio_by_corpus"] = {
            corpus: (runs["vault"].corpus_images[corpus] / runs["vault"].corpus_seconds[corpus])
            / (runs["plain"].corpus_images[corpus] / runs["plain"].corpus_seconds[corpus])
            for corpus in runs["plain"].corpus_seconds
            if runs["plain"].corpus_images.get(corpus) and runs["vault"].corpus_images.get(corpus)
        }
        entry["failures"] = sorted({f for run in runs.values() for f in run.failures})
        rounds_out.append(entry)
        print(f"round {n + 1}/{rounds}: " + ", ".join(
            f"{w} {runs[w].images_per_s:.2f} img/s" for w in names)
            + f"; ratio {entry['ratio']:.3f}"
            + f" (vs fsync'd plain {entry['ratio_vs_plain_fsync']:.3f};"
            + f" CPU time {entry['cpu_ratio']:.3f})",
            flush=True)
    return {
        "rounds": rounds_out,
        **{f"{w}_images_per_s_median": statistics.median(r[w]["images_per_s"]
                                                         for r in rounds_out)
           for w in pipelines},
        "ratio_median": statistics.median(r["ratio"] for r in rounds_out),
        "ratio_vs_plain_fsync_median": statistics.median(r["ratio_vs_plain_fsync"]
                                                         for r in rounds_out),
        "cpu_ratio_median": statistics.median(r["cpu_ratio"] for r in rounds_out),
        "ratio_by_corpus_median": {
            corpus: statistics.median(r["ratio_by_corpus"][corpus] for r in rounds_out)
            for corpus in rounds_out[0]["ratio_by_corpus"]
        },
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


# --------------------------------------------------------------------------- seal / open


def sealed_payloads(inputs: Sequence[Input], count: int, seed: int) -> list[bytes]:
    """The plaintexts the vault seals for a seeded subset of the inputs."""
    plain = PlainPipeline(vault_settings(Path("unused")))
    rng = random.Random(seed)
    buffers: list[bytes] = []
    for item in rng.sample(list(inputs), min(count, len(inputs))):
        try:
            stored, model_input, _ = plain.payloads(item)
        except RadVaultError:
            continue
        buffers.append(stored)
        buffers.append(bytes(encode_model_input(model_input, plain.preprocess_dict)))
    return buffers


def bench_seal(buffers: Sequence[bytes], chunk: int, repeats: int) -> dict[str, Any]:
    """seal/open_sealed against raw chunked AES-GCM on the same buffers."""
    aes = AESGCM(AESGCM.generate_key(bit_length=256))
    provider = InMemoryKeyProvider()
    ids = [f"obench{i:06d}" for i in range(len(buffers))]
    total = sum(len(b) for b in buffers)

    def raw_encrypt() -> list[list[tuple[bytes, bytes]]]:
        out = []
        for buf in buffers:
            view = memoryview(buf)
            chunks = []
            for start in range(0, max(1, len(buf)), chunk):
                nonce = os.urandom(12)
                chunks.append((nonce, aes.encrypt(nonce, view[start:start + chunk], None)))
            out.append(chunks)
        return out

    def sha256_of(chunks: list[tuple[bytes, bytes]]) -> str:
        digest = hashlib.sha256()
        for nonce, ciphertext in chunks:
            digest.update(nonce)
            digest.update(ciphertext)
        return digest.hexdigest()

    def raw_encrypt_sha256() -> list[str]:
        return [sha256_of(chunks) for chunks in raw_encrypt()]

    encrypted = raw_encrypt()

    def raw_decrypt() -> list[list[bytes]]:
        return [[aes.decrypt(n, c, None) for n, c in chunks] for chunks in encrypted]

    def do_seal() -> list[Any]:
        return [seal(buf, object_id=oid, provider=provider, chunk_size=chunk)
                for buf, oid in zip(buffers, ids, strict=True)]

    sealed = do_seal()

    def do_open() -> list[bytearray]:
        return [open_sealed(s.blob, object_id=oid, wrapped_key=s.wrapped_key, provider=provider)
                for s, oid in zip(sealed, ids, strict=True)]

    def raw_sha256_decrypt() -> list[list[bytes]]:
        out = []
        for chunks in encrypted:
            sha256_of(chunks)
            out.append([aes.decrypt(n, c, None) for n, c in chunks])
        return out

    def verify_open() -> list[bytearray]:
        # What a vault read does per object: the blob's sha-256 against the catalog
        # row (Vault.open_object), then open_sealed.
        out = []
        for s, oid in zip(sealed, ids, strict=True):
            if hashlib.sha256(s.blob).hexdigest() != s.sealed_sha256:
                raise AssertionError("digest mismatch")
            out.append(open_sealed(s.blob, object_id=oid, wrapped_key=s.wrapped_key,
                                   provider=provider))
        return out

    assert [bytes(p) for p in do_open()] == list(buffers), "seal/open round trip failed"
    variants: dict[str, Callable[[], object]] = {
        "raw_encrypt": raw_encrypt, "raw_encrypt_sha256": raw_encrypt_sha256, "seal": do_seal,
        "raw_decrypt": raw_decrypt, "open": do_open,
        "raw_sha256_decrypt": raw_sha256_decrypt, "open_with_sha256": verify_open,
    }
    timings: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():
        fn()
    for _ in range(repeats):
        for name, fn in variants.items():
            started = time.perf_counter()
            result = fn()
            timings[name].append(time.perf_counter() - started)
            del result
    mb_s = {name: total / statistics.median(t) / 1e6 for name, t in timings.items()}
    return {
        "objects": len(buffers),
        "bytes": total,
        "mean_object_bytes": total / max(1, len(buffers)),
        "chunk_bytes": chunk,
        "mb_per_s_median": mb_s,
        "timings_s": {name: summarize(t) for name, t in timings.items()},
        "ratios": {
            "seal_vs_raw_encrypt": mb_s["seal"] / mb_s["raw_encrypt"],
            "open_vs_raw_decrypt": mb_s["open"] / mb_s["raw_decrypt"],
            "seal_vs_raw_encrypt_sha256": mb_s["seal"] / mb_s["raw_encrypt_sha256"],
            "open_with_sha256_vs_raw_decrypt": mb_s["open_with_sha256"] / mb_s["raw_decrypt"],
            "open_with_sha256_vs_raw_sha256_decrypt": (mb_s["open_with_sha256"]
                                                       / mb_s["raw_sha256_decrypt"]),
        },
    }


# --------------------------------------------------------------------------- profile


#: Where a vault ingest spends its time, by step (function names in the profile).
PROFILE_STEPS = {
    "imaging (read, deid, decode, preprocess)": ("ingest.py", "_prepare"),
    "storage, all of it": ("ingest.py", "_store_batch"),
    "seal both objects (AES-GCM + sha-256)": ("sealing.py", "seal"),
    "blob writes (temp, fsync, rename, fsync dir)": ("blobstore.py", "put_many"),
    "catalog transaction (rows, identity, audit, commit)": ("ingest.py", "_catalog_batch"),
    "identity record (open, merge, seal, store)": ("ingest.py", "_merge_identity"),
    "catalog rows (signed)": ("catalog.py", "add_instance_with_objects"),
    "audit entry": ("audit.py", "append"),
    "duplicate check": ("vault.py", "find_instance_by_source"),
    "fsync calls in this thread (others wait on the pool)": ("~", "<built-in method posix.fsync>"),
    "SQLite commits": ("~", "<method 'commit' of 'sqlite3.Connection' objects>"),
}


def profile_ingest(inputs: Sequence[Input], workdir: Path, top: int = 20) -> dict[str, Any]:
    """cProfile one vault ingest, one file at a time in one thread (so storage is seen too).

    Returns wall seconds per step (:data:`PROFILE_STEPS`) and the ``top``
    functions by own time.
    """
    vault = Vault.init(vault_settings(workdir / "profile"), PASSPHRASE, kdf=KdfParams.fast())
    ingestor = Ingestor(vault, actor="benchmark")
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    try:
        for item in inputs:
            ingestor.ingest_file(item.path, modality=item.modality, body_part=item.body_part)
    finally:
        profiler.disable()
        vault.close()
    total = time.perf_counter() - started
    shutil.rmtree(workdir / "profile", ignore_errors=True)
    stats: dict[Any, Any] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    steps: dict[str, float] = {}
    for label, (file_part, func) in PROFILE_STEPS.items():
        # max, not sum: functions of one name here nest (blobstore.put_many calls the
        # store's put_many), and cumulative time already includes the inner one.
        steps[label] = max((cumulative for (filename, _, name), (_, _, _, cumulative, _)
                            in stats.items() if name == func and filename.endswith(file_part)),
                           default=0.0)
    rows = [{"function": f"{Path(filename).name}:{line}({func})", "calls": calls,
             "own_s": own, "cumulative_s": cumulative}
            for (filename, line, func), (_, calls, own, cumulative, _) in stats.items()]
    rows.sort(key=lambda r: -r["own_s"])
    return {"images": len(inputs), "seconds": total, "steps_s": steps, "top": rows[:top]}


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the tables, write the JSON, and return the results."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA_DIR, help="the shared data folder")
    parser.add_argument("--rounds", type=int, default=3, help="ingest rounds (median)")
    parser.add_argument("--sample", type=int, default=200, help="radbench images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seal-objects", type=int, default=48,
                        help="inputs whose payloads the seal/open part uses")
    parser.add_argument("--repeats", type=int, default=5, help="seal/open timed runs")
    parser.add_argument("--profile", action="store_true", help="cProfile one vault pass")
    args = parser.parse_args(argv)

    dicom = dicom_inputs(args.data / "dicom")
    images = radbench_inputs(args.data / "radbench", args.sample, args.seed)
    inputs = dicom + images
    if not inputs:
        raise SystemExit(f"no inputs under {args.data}")
    workdir = Path(tempfile.mkdtemp(prefix="radvault-bench-"))
    try:
        ingest = bench_ingest(inputs, args.rounds, workdir)
        buffers = sealed_payloads(inputs, args.seal_objects, args.seed)
        sealing = bench_seal(buffers, vault_settings(workdir).chunk_size, args.repeats)
        profile = profile_ingest(inputs, workdir) if args.profile else None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    meets = {
        "ingest": ingest["ratio_median"] >= INGEST_TARGET,
        "seal": sealing["ratios"]["seal_vs_raw_encrypt"] >= SEAL_TARGET,
        "open": sealing["ratios"]["open_vs_raw_decrypt"] >= SEAL_TARGET,
    }
    print_table(
        f"ingest: {len(dicom)} DICOM + {len(images)} radbench inputs, "
        f"median of {args.rounds} rounds",
        ["pipeline", "images/s", "ratio vs plain"],
        [("plain files (read + deid + preprocess + write)",
          ingest["plain_images_per_s_median"], None),
         ("full vault (Ingestor)", ingest["vault_images_per_s_median"],
          ingest["ratio_median"]),
         ("for context: plain files, each fsync'd",
          ingest["plain_fsync_images_per_s_median"], None),
         ("for context: full vault vs fsync'd plain files", None,
          ingest["ratio_vs_plain_fsync_median"]),
         ("for context: images per CPU-second, vault vs plain", None,
          ingest["cpu_ratio_median"]),
         *((f"for context: {corpus} inputs only, vault vs plain", None, ratio)
           for corpus, ratio in ingest["ratio_by_corpus_median"].items())],
    )
    mb = sealing["mb_per_s_median"]
    ratios = sealing["ratios"]
    print_table(
        f"seal/open on {sealing['objects']} real payloads "
        f"({sealing['bytes'] / 1e6:.1f} MB, mean {sealing['mean_object_bytes'] / 1e3:.0f} kB)",
        ["variant", "MB/s", "ratio vs raw"],
        [("raw AESGCM.encrypt", mb["raw_encrypt"], None),
         ("raw encrypt + sha-256", mb["raw_encrypt_sha256"], None),
         ("seal (data key, header, sha-256)", mb["seal"], ratios["seal_vs_raw_encrypt"]),
         ("for context: seal vs raw encrypt + sha-256", None,
          ratios["seal_vs_raw_encrypt_sha256"]),
         ("raw AESGCM.decrypt", mb["raw_decrypt"], None),
         ("open_sealed (header, data key, AEAD; no sha-256)", mb["open"],
          ratios["open_vs_raw_decrypt"]),
         ("for context: raw sha-256 + decrypt", mb["raw_sha256_decrypt"], None),
         ("for context: sha-256 check + open_sealed (a vault read)", mb["open_with_sha256"],
          ratios["open_with_sha256_vs_raw_decrypt"]),
         ("for context: that read vs raw sha-256 + decrypt", None,
          ratios["open_with_sha256_vs_raw_sha256_decrypt"])],
    )
    print(f"targets: ingest >= {INGEST_TARGET:.2f}: {'met' if meets['ingest'] else 'MISSED'}; "
          f"seal >= {SEAL_TARGET:.2f}: {'met' if meets['seal'] else 'MISSED'} "
          f"(vs raw encrypt + sha-256: {ratios['seal_vs_raw_encrypt_sha256']:.2f}); "
          f"open >= {SEAL_TARGET:.2f}: {'met' if meets['open'] else 'MISSED'}")
    if profile:
        print_table(f"where a vault ingest spends its time: {profile['images']} inputs, "
                    f"{profile['seconds']:.1f} s, one thread, cProfile (wall s)",
                    ["step", "seconds", "share"],
                    [(label, seconds, seconds / profile["seconds"])
                     for label, seconds in profile["steps_s"].items()])
        print_table("vault ingest profile (top functions by own time)",
                    ["function", "calls", "own s", "cumulative s"],
                    [(r["function"], r["calls"], r["own_s"], r["cumulative_s"])
                     for r in profile["top"]])
    payload: dict[str, Any] = {
        "config": {"rounds": args.rounds, "radbench_sample": len(images),
                   "dicom_files": len(dicom), "seed": args.seed,
                   "accept_burned_in": True, "repeats": args.repeats},
        "ingest": ingest,
        "seal_open": sealing,
        "targets": {"ingest_ratio": INGEST_TARGET, "seal_open_ratio": SEAL_TARGET},
        "meets_target": meets,
    }
    if profile is not None:
        payload["profile"] = profile
    path = write_results("vault", payload)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])

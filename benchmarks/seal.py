"""Seal/open throughput of radvault.vault.sealing versus raw AES-GCM on the same buffers.

Raw baseline: ``AESGCM.encrypt`` / ``AESGCM.decrypt`` over the same plaintext in
the same chunk size, with a fresh random nonce per chunk, keeping every output
(what any chunked AES-GCM user pays). ``seal`` additionally draws and wraps a
data key, builds the self-describing blob and computes its SHA-256 (the digest
the catalog signs), so a second baseline, raw encrypt + SHA-256 of the
ciphertext, shows what the envelope format itself costs. Each measurement is
the median of ``--repeats`` runs after one warm-up; runs are interleaved so
machine noise hits every variant alike.

Usage::

    python benchmarks/seal.py [--size-mib 64] [--chunk-mib 1] [--repeats 5]

Prints a table and writes ``benchmarks/results/seal.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import cryptography
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from _common import print_table, summarize, write_results
from radvault.vault.keys import InMemoryKeyProvider
from radvault.vault.sealing import open_sealed, seal

TARGET_RATIO = 0.80


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=64, help="plaintext size (MiB)")
    parser.add_argument("--chunk-mib", type=float, default=1.0, help="chunk size (MiB)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, write the JSON, and return the results."""
    args = _parse(argv)
    size = args.size_mib << 20
    chunk = int(args.chunk_mib * (1 << 20))
    plaintext = os.urandom(size)
    source = memoryview(plaintext)
    offsets = range(0, size, chunk)

    aes = AESGCM(AESGCM.generate_key(bit_length=256))
    provider = InMemoryKeyProvider()

    def raw_encrypt() -> list[tuple[bytes, bytes]]:
        out = []
        for start in offsets:
            nonce = os.urandom(12)
            out.append((nonce, aes.encrypt(nonce, source[start:start + chunk], None)))
        return out

    def raw_encrypt_sha256() -> str:
        digest = hashlib.sha256()
        for nonce, ciphertext in raw_encrypt():
            digest.update(nonce)
            digest.update(ciphertext)
        return digest.hexdigest()

    raw_chunks = raw_encrypt()

    def raw_decrypt() -> list[bytes]:
        return [aes.decrypt(nonce, ciphertext, None) for nonce, ciphertext in raw_chunks]

    sealed = seal(plaintext, object_id="bench-0001", provider=provider, chunk_size=chunk)

    def do_seal() -> object:
        return seal(plaintext, object_id="bench-0001", provider=provider, chunk_size=chunk)

    def do_open() -> bytearray:
        return open_sealed(
            sealed.blob, object_id="bench-0001", wrapped_key=sealed.wrapped_key,
            provider=provider,
        )

    assert do_open() == plaintext, "seal/open round trip failed"
    assert b"".join(raw_decrypt()) == plaintext, "raw round trip failed"

    variants: dict[str, Callable[[], object]] = {
        "raw_encrypt": raw_encrypt,
        "raw_encrypt_sha256": raw_encrypt_sha256,
        "seal": do_seal,
        "raw_decrypt": raw_decrypt,
        "open": do_open,
    }
    timings: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():  # warm-up
        fn()
    for _ in range(args.repeats):
        for name, fn in variants.items():
            started = time.perf_counter()
            result = fn()
            timings[name].append(time.perf_counter() - started)
            del result

    mb_s = {name: size / statistics.median(t) / 1e6 for name, t in timings.items()}
    ratios = {
        "seal_vs_raw_encrypt": mb_s["seal"] / mb_s["raw_encrypt"],
        "open_vs_raw_decrypt": mb_s["open"] / mb_s["raw_decrypt"],
        "seal_vs_raw_encrypt_sha256": mb_s["seal"] / mb_s["raw_encrypt_sha256"],
    }
    meets = {
        "seal": ratios["seal_vs_raw_encrypt"] >= TARGET_RATIO,
        "open": ratios["open_vs_raw_decrypt"] >= TARGET_RATIO,
    }
    payload: dict[str, Any] = {
        "config": {"size_bytes": size, "chunk_bytes": chunk, "repeats": args.repeats,
                   "cryptography": cryptography.__version__},
        "mb_per_s_median": mb_s,
        "timings_s": {name: summarize(t) for name, t in timings.items()},
        "ratios": ratios,
        "target_ratio": TARGET_RATIO,
        "meets_target": meets,
    }

    labels = {
        "raw_encrypt": "raw AESGCM.encrypt",
        "raw_encrypt_sha256": "raw encrypt + sha-256",
        "seal": "seal (incl. sha-256 of blob)",
        "raw_decrypt": "raw AESGCM.decrypt",
        "open": "open_sealed",
    }
    ratio_of = {
        "seal": ratios["seal_vs_raw_encrypt"],
        "open": ratios["open_vs_raw_decrypt"],
    }
    print_table(
        f"seal/open vs raw AES-256-GCM: {args.size_mib} MiB in {chunk} B chunks, "
        f"median of {args.repeats}",
        ["variant", "MB/s", "ratio vs raw"],
        [(labels[name], mb_s[name], ratio_of.get(name)) for name in variants],
    )
    print(
        f"seal vs raw encrypt + sha-256: {ratios['seal_vs_raw_encrypt_sha256']:.2f}; "
        f"target >= {TARGET_RATIO:.2f} of raw: seal {'met' if meets['seal'] else 'MISSED'}, "
        f"open {'met' if meets['open'] else 'MISSED'}"
    )
    path = write_results("seal", payload)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])

"""Ed25519 signatures over canonical records; tampering raises IntegrityError."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from enum import StrEnum

import numpy as np
import pytest

from radvault.errors import IntegrityError
from radvault.vault.signing import Signer, Verifier, canonical_json, key_id_of

RECORD = {"object_id": "obj-7", "sealed_sha256": "ab" * 32, "sizes": [1, 2], "ok": True}


def test_a_signature_verifies_with_the_signers_public_key_only():
    signer = Signer.generate()
    message = canonical_json(RECORD)
    signature = signer.sign(message)
    assert len(signature) == 64
    verifier = Verifier(signer.public_key_bytes)
    verifier.verify(message, signature)
    assert verifier == signer.verifier()
    assert verifier.key_id == signer.key_id


def test_an_edited_record_does_not_verify_and_the_error_names_the_key_not_the_record():
    signer = Signer.generate()
    signature = signer.sign(canonical_json(RECORD))
    edited = canonical_json({**RECORD, "sealed_sha256": "cd" * 32})
    with pytest.raises(IntegrityError, match=signer.key_id) as caught:
        signer.verifier().verify(edited, signature)
    assert "cd" * 32 not in str(caught.value)


@pytest.mark.parametrize("damage", ["flip", "short", "empty"])
def test_a_damaged_signature_is_refused(damage):
    signer = Signer.generate()
    message = b"checkpoint 100"
    signature = bytearray(signer.sign(message))
    if damage == "flip":
        signature[10] ^= 0x01
    elif damage == "short":
        del signature[-1]
    else:
        signature = bytearray()
    with pytest.raises(IntegrityError):
        signer.verifier().verify(message, bytes(signature))


def test_another_keys_signature_is_refused():
    message = b"chain head"
    with pytest.raises(IntegrityError):
        Signer.generate().verifier().verify(message, Signer.generate().sign(message))


def test_key_id_is_the_short_sha256_of_the_public_key():
    signer = Signer.generate()
    expected = hashlib.sha256(signer.public_key_bytes).hexdigest()[:16]
    assert signer.key_id == expected == key_id_of(signer.public_key_bytes)
    assert len(signer.key_id) == 16


def test_a_seed_gives_the_same_key_every_time():
    seed = bytearray(range(32))
    first, second = Signer.from_seed(seed), Signer.from_seed(bytes(seed))
    assert first.public_key_bytes == second.public_key_bytes
    second.verifier().verify(b"m", first.sign(b"m"))
    with pytest.raises(ValueError, match="an Ed25519 seed is 32 bytes"):
        Signer.from_seed(b"short")


def test_verifier_refuses_a_malformed_public_key():
    with pytest.raises(ValueError, match="an Ed25519 public key is 32 bytes"):
        Verifier(b"\x01" * 31)


def test_reprs_show_key_ids_only():
    signer = Signer.generate()
    assert repr(signer) == f"Signer(key_id={signer.key_id!r})"
    assert signer.public_key_bytes.hex() not in repr(signer.verifier())


def test_canonical_json_sorts_keys_drops_spaces_and_uses_utf8():
    encoded = canonical_json({"b": 1, "a": {"y": [1, 2.5], "x": "Zürich"}})
    assert encoded == '{"a":{"x":"Zürich","y":[1,2.5]},"b":1}'.encode()


def test_canonical_json_is_independent_of_insertion_order():
    forward = {"a": 1, "b": 2, "c": {"d": 3, "e": 4}}
    backward = {"c": {"e": 4, "d": 3}, "b": 2, "a": 1}
    assert canonical_json(forward) == canonical_json(backward)


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ({"digest": b"\x00"}, TypeError, r"bytes at \$\.digest is not JSON"),
        ({1: "int key"}, TypeError, r"key at \$ is not a string"),
        ({"nested": [{"when": object()}]}, TypeError,
         r"object at \$\.nested\[0\]\.when is not JSON"),
        ({"score": float("nan")}, ValueError, r"non-finite number at \$\.score"),
        ({"score": float("inf")}, ValueError, r"non-finite number at \$\.score"),
    ],
    ids=["bytes", "int-key", "object", "nan", "inf"],
)
def test_canonical_json_refuses_what_it_cannot_encode_unambiguously(value, error, message):
    with pytest.raises(error, match=f"canonical_json: {message}"):
        canonical_json(value)


class Outcome(StrEnum):
    OK = "ok"


def _cycle() -> list:
    loop: list = []
    loop.append(loop)
    return loop


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"flag": True, "n": 3, "x": 0.5, "none": None, "t": ("a", 1)},
         b'{"flag":true,"n":3,"none":null,"t":["a",1],"x":0.5}'),
        ({"n": np.float64(0.25)}, b'{"n":0.25}'),  # float subclass: the full check accepts
        ({"level": Outcome.OK}, b'{"level":"ok"}'),  # str subclass
        (OrderedDict(b=1, a=2), b'{"a":2,"b":1}'),  # dict subclass
        ({"same": (shared := [1]), "again": shared}, b'{"again":[1],"same":[1]}'),
    ],
    ids=["plain", "numpy-float", "str-enum", "ordered-dict", "shared-list"],
)
def test_canonical_json_gives_the_same_bytes_on_its_fast_and_full_paths(value, expected):
    assert canonical_json(value) == expected


def test_canonical_json_refuses_a_cycle_instead_of_looping():
    with pytest.raises((RecursionError, ValueError)):
        canonical_json({"loop": _cycle()})


def test_canonical_json_names_where_a_bad_value_is():
    with pytest.raises(TypeError, match=r"\$\.a\.b\[1\]"):
        canonical_json({"a": {"b": [1, b"x"]}})

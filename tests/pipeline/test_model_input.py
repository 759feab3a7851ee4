"""The model-input layout: what ingest seals for the model, and what analysis reads back."""

from __future__ import annotations

import io
import json
import struct
import zipfile

import numpy as np
import pytest

from radvault.pipeline.model_input import MAGIC, decode_model_input, encode_model_input

SETTINGS = {"normalize": True, "size": 8}


def _array(dtype: type = np.float32) -> np.ndarray:
    return np.random.default_rng(0).random((3, 8, 8)).astype(dtype)


def test_a_model_input_round_trips_as_float32_with_its_settings() -> None:
    array = _array()
    decoded, settings = decode_model_input(encode_model_input(array, SETTINGS))
    assert decoded.dtype == np.float32 and np.array_equal(decoded, array)
    assert settings == SETTINGS


def _grey(dtype: type = np.float32) -> np.ndarray:
    channel = np.random.default_rng(1).random((1, 8, 8)).astype(dtype)
    return np.repeat(channel, 3, axis=0)


def _parts(data: bytearray) -> tuple[int, dict[str, object], bytes]:
    magic, version, header_len = struct.unpack_from("<4sB3xI", data)
    assert magic == MAGIC
    offset = 12 + header_len
    assert offset % 64 == 0
    return version, json.loads(bytes(data[12:offset])), bytes(data[offset:])


def test_the_layout_is_a_versioned_header_then_the_aligned_raw_array() -> None:
    array = _array()
    version, header, raw = _parts(encode_model_input(array, SETTINGS))
    assert version == 2
    assert header == {"dtype": "<f4", "shape": [3, 8, 8], "replicated": False,
                      "settings": SETTINGS}
    assert raw == array.astype("<f4").tobytes()


def test_a_greyscale_input_stores_its_one_channel_and_reads_back_three() -> None:
    array = _grey()
    data = encode_model_input(array, SETTINGS)
    _, header, raw = _parts(data)
    assert header["replicated"] is True and header["shape"] == [3, 8, 8]
    assert raw == array[0].astype("<f4").tobytes()  # a third of the bytes
    decoded, _ = decode_model_input(data)
    assert decoded.shape == (3, 8, 8) and np.array_equal(decoded, array)
    assert decoded.flags.writeable and decoded.flags.c_contiguous  # wipeable, ONNX-ready


def test_channels_equal_in_value_but_not_in_bits_are_all_stored() -> None:
    array = np.zeros((3, 8, 8), np.float32)
    array[1, 0, 0] = -0.0  # == 0.0, but replicating channel 0 would change its bits
    _, header, _ = _parts(encode_model_input(array, SETTINGS))
    assert header["replicated"] is False
    decoded, _ = decode_model_input(encode_model_input(array, SETTINGS))
    assert np.signbit(decoded[1, 0, 0])


def test_version_1_model_inputs_still_decode() -> None:
    array = _grey()
    v1 = json.dumps({"dtype": "<f4", "shape": [3, 8, 8], "settings": SETTINGS}).encode()
    v1 += b" " * (-(12 + len(v1)) % 64)
    old = bytearray(struct.pack("<4sB3xI", MAGIC, 1, len(v1)) + v1
                    + array.astype("<f4").tobytes())
    decoded, settings = decode_model_input(old)
    assert np.array_equal(decoded, array) and settings == SETTINGS
    replicated_v1 = _with_header(old, replicated=True)  # the flag means nothing in v1
    assert np.array_equal(decode_model_input(replicated_v1)[0], array)


def test_float64_arrays_are_stored_as_float32() -> None:
    array = _array(np.float64)
    decoded, _ = decode_model_input(encode_model_input(array, SETTINGS))
    assert decoded.dtype == np.float32
    assert np.array_equal(decoded, array.astype(np.float32))


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_npz_model_inputs_of_earlier_versions_still_decode(dtype: type) -> None:
    array = _array(dtype)
    buffer = io.BytesIO()
    np.savez(buffer, input=array,
             settings=np.frombuffer(json.dumps(SETTINGS).encode(), np.uint8))
    decoded, settings = decode_model_input(bytearray(buffer.getvalue()))
    assert decoded.dtype == np.float32 and np.array_equal(decoded, array.astype(np.float32))
    assert settings == SETTINGS


def _with_header(data: bytearray, **changes: object) -> bytearray:
    header_len = struct.unpack_from("<I", data, 8)[0]
    header = json.loads(bytes(data[12:12 + header_len]))
    header.update(changes)
    raw = json.dumps(header).encode()
    raw += b" " * (header_len - len(raw))
    assert len(raw) == header_len
    return bytearray(data[:12] + raw + data[12 + header_len:])


def _with_raw_header(data: bytearray, raw: bytes) -> bytearray:
    header_len = struct.unpack_from("<I", data, 8)[0]
    return bytearray(data[:12] + raw.ljust(header_len) + data[12 + header_len:])


def _broken() -> dict[str, bytearray]:
    good = encode_model_input(_array(), SETTINGS)
    newer = bytearray(good)
    newer[4] = 3
    version_0 = bytearray(good)
    version_0[4] = 0
    grey = encode_model_input(_grey(), SETTINGS)
    huge_header = bytearray(good)
    struct.pack_into("<I", huge_header, 8, len(good))
    return {
        "empty": bytearray(),
        "short": good[:7],
        "not ours": bytearray(b"GIF89a" + bytes(100)),
        "newer version": newer,
        "version 0": version_0,
        "replicated flag not a bool": _with_header(good, replicated="yes"),
        "header a list": _with_raw_header(good, b"[]"),
        "header a string": _with_raw_header(good, b'"x"'),
        "replicated into a huge array": _with_header(grey, shape=[2**31, 8, 8]),
        "replicated into five channels": _with_header(grey, shape=[5, 8, 8]),
        "replicated but all channels stored": _with_header(good, replicated=True),
        "one channel stored but not replicated": _with_header(grey, replicated=False),
        "header past the end": huge_header,
        "truncated": good[:-1],
        "extended": good + b"\0",
        "one pixel short": good[:-4],
        "2-d shape": _with_header(good, shape=[3, 64]),
        "negative shape": _with_header(good, shape=[3, -8, -8]),
        "shape of strings": _with_header(good, shape=["3", "8", "8"]),
        "unknown dtype": _with_header(good, dtype="<i8"),
        "settings not an object": _with_header(good, settings=[1]),
        "zip without members": bytearray(_empty_zip()),
    }


def _empty_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("other.txt", "x")
    return buffer.getvalue()


@pytest.mark.parametrize("name", sorted(_broken()))
def test_a_malformed_model_input_is_refused(name: str) -> None:
    with pytest.raises((ValueError, KeyError, zipfile.BadZipFile)):
        decode_model_input(_broken()[name])

"""The plaintext layout of a sealed model input: a preprocessed array and its settings.

Version 2 (written since session 6) is a fixed header and the raw array::

    b"RVMI" | version (1 byte, 2) | 3 zero bytes | header length (uint32, little-endian)
    | header: UTF-8 JSON {"dtype": "<f4", "shape": [3, S, S], "replicated": bool,
      "settings": {...}}, padded with spaces so the array starts on a 64-byte boundary
    | the array, C order, little-endian: all of ``shape``, or, when ``replicated``,
      its first channel only (the others are bit-for-bit copies of it)

A greyscale image is replicated to three channels by the preprocessing, so
storing one channel makes its object a third of the size: a third of the
sha-256, AES-GCM and disk work on every ingest and every analysis, losslessly.
Version 1 (session 5) is the same without ``replicated``; it and the npz
layout before it (``numpy.savez``) are still read.

Written by hand rather than with ``numpy.savez``: an npz costs a zip container,
a CRC and several copies per image, about 0.3 ms to write and 0.5 ms to read a
128 px input, and its reader hands back immutable ``bytes`` that cannot be
wiped. Here the array is copied once each way, straight between the caller's
array and a wipeable ``bytearray``.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile

import numpy as np

from radvault.vault.secure_memory import zeroize

__all__ = ["MAGIC", "decode_model_input", "encode_model_input"]

#: First bytes of a model input (versions 1 and 2).
MAGIC = b"RVMI"
_VERSION = 2
_PREFIX = struct.Struct("<4sB3xI")  # magic, version, reserved, header length
_ALIGN = 64
_DTYPES = {"<f4": np.dtype("<f4"), "<f2": np.dtype("<f2")}
_MAX_HEADER = 1 << 16
_MAX_CHANNELS = 4  # a replicated header must not make one stored channel into a huge array
_ZIP_MAGIC = b"PK\x03\x04"


def encode_model_input(array: np.ndarray, settings: dict[str, object]) -> bytearray:
    """Serialise a preprocessed array (as float32) and its preprocessing settings.

    The result is a fresh ``bytearray`` the caller seals and then wipes; for a
    C-contiguous float32 array (what ingest passes) no other copy of the pixels
    is made. Channels that are bit-for-bit equal
    (a greyscale image) are stored once. (float16, the precision training
    caches, was tried: it is lossy, and made ingest no faster.)
    """
    shape = [int(n) for n in array.shape]
    replicated = len(shape) == 3 and shape[0] > 1 and _channels_identical(array)
    stored = array[:1] if replicated else array
    header = json.dumps({"dtype": "<f4", "shape": shape, "replicated": replicated,
                         "settings": settings},
                        sort_keys=True, separators=(",", ":")).encode()
    start = _PREFIX.size + len(header)
    header += b" " * (-start % _ALIGN)
    offset = _PREFIX.size + len(header)
    out = bytearray(offset + 4 * int(stored.size))
    _PREFIX.pack_into(out, 0, MAGIC, _VERSION, len(header))
    out[_PREFIX.size:offset] = header
    np.frombuffer(out, dtype="<f4", offset=offset).reshape(stored.shape)[...] = stored
    return out


def _channels_identical(array: np.ndarray) -> bool:
    """True when every channel equals the first bit for bit, as stored (float32)."""
    bits = np.ascontiguousarray(array, dtype="<f4").view("<u4")
    return bool((bits[1:] == bits[0]).all())


def decode_model_input(data: bytearray) -> tuple[np.ndarray, dict[str, object]]:
    """Read a model input (version 2 or 1, or the npz of earlier versions) as float32.

    Returns a new float32 array (the caller wipes it when done) and the settings.

    Raises
    ------
    ValueError, KeyError, zipfile.BadZipFile
        When the bytes are neither layout, or the header is malformed (not an
        object, more than four channels, ...) or disagrees with the size.
    """
    view = memoryview(data)
    if bytes(view[:4]) == _ZIP_MAGIC:
        return _decode_npz(data)
    if len(view) < _PREFIX.size:
        raise ValueError("model input is shorter than its header")
    magic, version, header_len = _PREFIX.unpack_from(view, 0)
    if magic != MAGIC:
        raise ValueError("not a model input")
    if not 1 <= version <= _VERSION:
        raise ValueError(f"model input version {version} is not one this reader knows")
    offset = _PREFIX.size + header_len
    if header_len > _MAX_HEADER or offset > len(view):
        raise ValueError("model input header is truncated")
    header = json.loads(bytes(view[_PREFIX.size:offset]).decode())
    if not isinstance(header, dict):
        raise ValueError("model input header is malformed")
    dtype = _DTYPES.get(header.get("dtype"))
    shape = header.get("shape")
    replicated = header.get("replicated", False) if version >= 2 else False
    if (dtype is None or not isinstance(shape, list) or len(shape) != 3
            or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0
                       for n in shape)
            or shape[0] > _MAX_CHANNELS or not isinstance(replicated, bool)
            or not isinstance(header.get("settings"), dict)):
        raise ValueError("model input header is malformed")
    stored_shape = [1, *shape[1:]] if replicated else shape
    if len(view) - offset != dtype.itemsize * stored_shape[0] * shape[1] * shape[2]:
        raise ValueError("model input size does not match its header")
    stored = np.frombuffer(data, dtype=dtype, offset=offset).reshape(stored_shape)
    out = np.empty(shape, dtype=np.float32)
    out[...] = stored  # one copy; a replicated channel broadcasts to every channel
    return out, header["settings"]


def _decode_npz(data: bytearray) -> tuple[np.ndarray, dict[str, object]]:
    """The npz layout written before version 1: members ``input`` and ``settings``."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        raw = bytearray(archive.read("input.npy"))
        try:
            array = np.lib.format.read_array(io.BytesIO(raw), allow_pickle=False)
        finally:
            zeroize(raw)
        meta = np.lib.format.read_array(io.BytesIO(archive.read("settings.npy")),
                                        allow_pickle=False)
    settings = json.loads(meta.tobytes().decode())
    out = np.array(array, dtype=np.float32)
    if array.flags.writeable:  # the stored-precision copy
        array.fill(0)
    return out, settings

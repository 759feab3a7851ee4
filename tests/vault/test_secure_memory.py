"""Secrets live in bytearrays that are overwritten when done; mlock is best effort."""

from __future__ import annotations

import array

import pytest

from radvault.vault import secure_memory
from radvault.vault.secure_memory import (
    SecretBytes,
    mlock,
    munlock,
    random_secret,
    wiping,
    zeroize,
)


def test_zeroize_overwrites_a_bytearray_in_place():
    buf = bytearray(b"top secret key material")
    same = buf
    zeroize(buf)
    assert same is buf
    assert buf == bytearray(len(b"top secret key material"))


def test_zeroize_through_a_memoryview_touches_only_that_window():
    buf = bytearray(b"AAAABBBBCCCC")
    zeroize(memoryview(buf)[4:8])
    assert buf == bytearray(b"AAAA\x00\x00\x00\x00CCCC")


def test_zeroize_handles_typed_buffers_and_empty_ones():
    values = array.array("I", [0xDEADBEEF, 0xCAFEBABE])
    zeroize(memoryview(values))
    assert list(values) == [0, 0]
    zeroize(bytearray())  # nothing to do, no error


@pytest.mark.parametrize(
    ("buf", "message"),
    [(b"immutable", "must be writable"), (memoryview(b"read only"), "must be writable"),
     (memoryview(bytearray(b"abcdef"))[::2], "must be contiguous")],
    ids=["bytes", "readonly-view", "strided-view"],
)
def test_zeroize_refuses_buffers_it_cannot_wipe(buf, message):
    with pytest.raises(TypeError, match=f"a secret buffer {message}"):
        zeroize(buf)


def test_wiping_zeroises_after_the_block_even_when_it_raises():
    buf = bytearray(b"secret")
    with pytest.raises(RuntimeError), wiping(buf) as inside:
        assert inside is buf
        assert bytes(inside) == b"secret"
        raise RuntimeError("boom")
    assert buf == bytearray(6)


def test_secret_bytes_yields_the_buffer_and_wipes_it_on_exit():
    secret = SecretBytes(16)
    with secret as buf:
        buf[:] = b"0123456789abcdef"
        kept = buf
    assert kept == bytearray(16)
    assert len(secret) == 0
    with pytest.raises(ValueError, match="already wiped"):
        _ = secret.buffer
    secret.wipe()  # idempotent


def test_secret_bytes_pins_its_buffer_so_no_reallocation_leaves_a_copy():
    secret = SecretBytes.adopt(bytearray(b"key!"))
    with pytest.raises(BufferError):
        secret.buffer.extend(b"more")
    secret.wipe()


def test_secret_bytes_repr_never_shows_the_secret():
    secret = SecretBytes.adopt(bytearray(b"hunter2-hunter2"))
    assert "hunter2" not in repr(secret)
    assert "15 bytes" in repr(secret)
    secret.wipe()
    assert "wiped" in repr(secret)


def test_adopt_refuses_immutable_bytes():
    with pytest.raises(TypeError, match=r"SecretBytes\.adopt needs a bytearray"):
        SecretBytes.adopt(b"not wipeable")  # type: ignore[arg-type]


def test_random_secrets_are_fresh_and_of_the_requested_size():
    first, second = random_secret(32), random_secret(32)
    assert isinstance(first, bytearray)
    assert len(first) == 32
    assert first != second
    with SecretBytes.random(24) as buf:
        assert len(buf) == 24
    with pytest.raises(ValueError, match="random_secret needs a positive size"):
        random_secret(0)


def test_random_secret_falls_back_to_os_urandom_without_dev_urandom(monkeypatch):
    def no_device(*args, **kwargs):
        raise FileNotFoundError("/dev/urandom")

    monkeypatch.setattr(secure_memory, "open", no_device, raising=False)
    buf = random_secret(32)
    assert len(buf) == 32
    assert buf != bytearray(32)


def test_mlock_reports_a_boolean_and_munlock_follows():
    buf = bytearray(4096)
    locked = mlock(buf)
    assert isinstance(locked, bool)
    if not locked:
        pytest.skip("this machine refuses to lock memory (RLIMIT_MEMLOCK is 0)")
    assert munlock(buf) is True


class _RefusingLibc:
    """A libc whose mlock/munlock fail as under a zero RLIMIT_MEMLOCK."""

    @staticmethod
    def mlock(addr, size):
        return -1

    @staticmethod
    def munlock(addr, size):
        return -1


def test_refused_mlock_never_fails_the_caller(monkeypatch):
    monkeypatch.setattr(secure_memory, "_libc", lambda: _RefusingLibc())
    assert mlock(bytearray(64)) is False
    secret = SecretBytes(64)
    assert secret.locked is False
    with secret as buf:
        buf[:4] = b"abcd"
    assert buf == bytearray(64)


def test_no_libc_means_no_lock(monkeypatch):
    monkeypatch.setattr(secure_memory, "_libc", lambda: None)
    assert mlock(bytearray(8)) is False
    assert munlock(bytearray(8)) is False

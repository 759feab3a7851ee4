"""Keep secrets in mutable buffers and overwrite them when done.

Python's ``bytes`` and ``str`` are immutable: once a key or a pixel buffer lands
in one, it stays in freed memory until something else happens to reuse it. So
RadVault keeps data keys, unwrapped secrets and decrypted pixels in
``bytearray`` objects and wipes them with :func:`zeroize` as soon as they are no
longer needed, ideally through a ``with`` block (:class:`SecretBytes`,
:func:`wiping`) so that an exception cannot skip the wipe.

Locking pages in RAM (``mlock``) keeps a secret out of swap. It is best effort:
it needs POSIX ``mlock`` and a large enough ``RLIMIT_MEMLOCK``, and when the
system refuses, RadVault carries on unlocked (a debug log line says so), because
an unlockable machine must still be able to run the vault. Locking works on
whole pages, and locks do not nest: unlocking one buffer may unlock a page it
shares with another. Treat it as hardening, not as a guarantee.

What this module cannot wipe: copies made by the interpreter or by a library
(the key schedule inside OpenSSL, a ``bytes`` object a caller created). Keep
those few and short-lived.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

__all__ = ["SecretBytes", "mlock", "munlock", "random_secret", "wiping", "zeroize"]

_log = logging.getLogger(__name__)

_Buf = TypeVar("_Buf", bytearray, memoryview)


def _byte_view(buf: bytearray | memoryview) -> memoryview:
    view = memoryview(buf)
    if view.readonly:
        raise TypeError("a secret buffer must be writable (bytearray or writable memoryview)")
    if not view.c_contiguous:
        raise TypeError("a secret buffer must be contiguous")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def zeroize(buf: bytearray | memoryview) -> None:
    """Overwrite every byte of ``buf`` with zeros, in place.

    The write goes through ``ctypes.memset`` on the buffer's own memory, so it
    reaches the very bytes that held the secret (no slice copy is made).

    Parameters
    ----------
    buf : bytearray or memoryview
        A writable, contiguous buffer. Its length is unchanged.

    Raises
    ------
    TypeError
        If the buffer is read-only (``bytes``) or not contiguous.
    """
    view = _byte_view(buf)
    size = view.nbytes
    if size == 0:
        return
    window = (ctypes.c_char * size).from_buffer(view)
    try:
        ctypes.memset(ctypes.addressof(window), 0, size)
    finally:
        del window


def random_secret(size: int) -> bytearray:
    """Return ``size`` bytes from the operating system's CSPRNG, in a bytearray.

    On systems with ``/dev/urandom`` the bytes are read straight into the
    bytearray, so no immutable copy of the secret is ever made; elsewhere it
    falls back to :func:`os.urandom` (one short-lived ``bytes`` copy).

    Parameters
    ----------
    size : int
        Number of bytes, at least 1.

    Returns
    -------
    bytearray
        Fresh random bytes; the caller wipes them with :func:`zeroize`.

    Raises
    ------
    ValueError
        If ``size`` is not positive.
    """
    if size <= 0:
        raise ValueError("random_secret needs a positive size")
    out = bytearray(size)
    try:
        with open("/dev/urandom", "rb", buffering=0) as source:
            view = memoryview(out)
            filled = 0
            while filled < size:
                got = source.readinto(view[filled:])
                if not got:
                    raise OSError("short read from /dev/urandom")
                filled += got
            return out
    except OSError:
        out[:] = os.urandom(size)
        return out


def _load_libc() -> ctypes.CDLL | None:
    if sys.platform.startswith("win"):
        return None
    try:
        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name, use_errno=True)
        libc.mlock.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
        libc.mlock.restype = ctypes.c_int
        libc.munlock.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
        libc.munlock.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


_LIBC: ctypes.CDLL | None = None
_LIBC_LOADED = False


def _libc() -> ctypes.CDLL | None:
    global _LIBC, _LIBC_LOADED
    if not _LIBC_LOADED:
        _LIBC = _load_libc()
        _LIBC_LOADED = True
    return _LIBC


def _page_call(buf: bytearray | memoryview, name: str) -> bool:
    libc = _libc()
    view = _byte_view(buf)
    size = view.nbytes
    if libc is None or size == 0:
        return False
    window = (ctypes.c_char * size).from_buffer(view)
    try:
        result = getattr(libc, name)(ctypes.addressof(window), size)
    finally:
        del window
    if result != 0:
        _log.debug("%s of %d bytes refused (errno %d); continuing", name, size, ctypes.get_errno())
        return False
    return True


def mlock(buf: bytearray | memoryview) -> bool:
    """Try to lock the pages holding ``buf`` in RAM so they are never swapped out.

    Best effort: returns ``False`` instead of failing when the platform has no
    ``mlock`` or the system refuses (``RLIMIT_MEMLOCK``, missing privilege).
    Do not resize a bytearray while it is locked: a reallocation moves it.

    Parameters
    ----------
    buf : bytearray or memoryview
        A writable, contiguous buffer.

    Returns
    -------
    bool
        Whether the pages are now locked.

    Raises
    ------
    TypeError
        If the buffer is read-only or not contiguous.
    """
    return _page_call(buf, "mlock")


def munlock(buf: bytearray | memoryview) -> bool:
    """Undo :func:`mlock` for ``buf`` (best effort, see there).

    Parameters
    ----------
    buf : bytearray or memoryview
        The buffer that was locked.

    Returns
    -------
    bool
        Whether the system accepted the unlock.

    Raises
    ------
    TypeError
        If the buffer is read-only or not contiguous.
    """
    return _page_call(buf, "munlock")


@contextmanager
def wiping(buf: _Buf) -> Iterator[_Buf]:
    """Yield ``buf`` and zeroise it when the block ends, even on an exception.

    Parameters
    ----------
    buf : bytearray or memoryview
        A writable buffer holding a secret the block may use.

    Yields
    ------
    bytearray or memoryview
        The same buffer.

    Raises
    ------
    TypeError
        If the buffer is read-only or not contiguous (checked before the block runs).
    """
    _byte_view(buf)
    try:
        yield buf
    finally:
        zeroize(buf)


class SecretBytes:
    """A bytearray holding a secret: locked in RAM when possible, wiped on exit.

    ``with SecretBytes(32) as key:`` gives the bytearray itself; when the block
    ends it is zeroised and unlocked. While a :class:`SecretBytes` lives, its
    bytearray cannot be resized (it is pinned), so no stray copy is left behind
    by a reallocation.

    Parameters
    ----------
    size : int
        Length of the zero-filled buffer to allocate.
    lock : bool, default True
        Try :func:`mlock` on the buffer (best effort, see :attr:`locked`).

    Raises
    ------
    ValueError
        If ``size`` is negative.
    """

    __slots__ = ("_buf", "_locked", "_pin")

    def __init__(self, size: int, *, lock: bool = True) -> None:
        if size < 0:
            raise ValueError("SecretBytes size must not be negative")
        self._setup(bytearray(size), lock=lock)

    def _setup(self, buf: bytearray, *, lock: bool) -> None:
        self._buf: bytearray | None = buf
        # An exported view pins the bytearray: resizing it now raises BufferError.
        self._pin: memoryview | None = memoryview(buf)
        self._locked = bool(lock and len(buf) and mlock(buf))

    @classmethod
    def adopt(cls, buf: bytearray, *, lock: bool = True) -> SecretBytes:
        """Take charge of an existing bytearray (no copy); it is wiped on exit.

        Parameters
        ----------
        buf : bytearray
            The secret; the caller should drop other references to it.
        lock : bool, default True
            Try to lock it in RAM.

        Returns
        -------
        SecretBytes
            The guard around ``buf``.

        Raises
        ------
        TypeError
            If ``buf`` is not a bytearray.
        """
        if not isinstance(buf, bytearray):
            raise TypeError("SecretBytes.adopt needs a bytearray")
        self = cls.__new__(cls)
        self._setup(buf, lock=lock)
        return self

    @classmethod
    def random(cls, size: int, *, lock: bool = True) -> SecretBytes:
        """A fresh random secret of ``size`` bytes (see :func:`random_secret`).

        Parameters
        ----------
        size : int
            Number of random bytes.
        lock : bool, default True
            Try to lock it in RAM.

        Returns
        -------
        SecretBytes
            The new secret.

        Raises
        ------
        ValueError
            If ``size`` is not positive.
        """
        return cls.adopt(random_secret(size), lock=lock)

    @property
    def buffer(self) -> bytearray:
        """The live bytearray.

        Raises
        ------
        ValueError
            If the secret was already wiped.
        """
        if self._buf is None:
            raise ValueError("this secret was already wiped")
        return self._buf

    @property
    def locked(self) -> bool:
        """Whether the operating system agreed to lock the pages in RAM."""
        return self._locked

    def __len__(self) -> int:
        return 0 if self._buf is None else len(self._buf)

    def wipe(self) -> None:
        """Zeroise and unlock the buffer; safe to call more than once."""
        buf = self._buf
        if buf is None:
            return
        zeroize(buf)
        if self._locked:
            munlock(buf)
            self._locked = False
        if self._pin is not None:
            self._pin.release()
        self._pin = None
        self._buf = None

    def __enter__(self) -> bytearray:
        return self.buffer

    def __exit__(self, *exc_info: object) -> None:
        self.wipe()

    def __del__(self) -> None:
        # Last resort for a secret that was never wiped explicitly. Never raise
        # from here (e.g. at interpreter shutdown, when ctypes may be gone).
        if getattr(self, "_buf", None) is not None:
            with contextlib.suppress(Exception):
                self.wipe()

    def __repr__(self) -> str:
        state = "wiped" if self._buf is None else f"{len(self._buf)} bytes"
        return f"<SecretBytes {state}, locked={self._locked}>"

"""Crash-safe file replacement shared by the blob store and the key file.

``atomic_write`` writes to a temporary name in the target's own folder, flushes
it to disk, renames it over the target and flushes the folder, so after a crash
the target holds either the old bytes or the new bytes, never a mix, and no
half-written file ever appears under the real name. ``atomic_write_many`` does
the same for many files at once and pays the flushes once per batch: every
temporary file is written first, all are flushed concurrently (the file
system's journal merges concurrent flushes into a few commits), then renamed,
and each folder touched is flushed once. Temporary files are named
``.partial-*``: nothing else in a RadVault folder starts with a dot, so readers
skip them and cleanup can find them.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

__all__ = ["PARTIAL_PREFIX", "atomic_write", "atomic_write_many", "fsync_dir"]

PARTIAL_PREFIX = ".partial-"

#: The most flushes issued at once by :func:`atomic_write_many`.
MAX_PARALLEL_FSYNC = 16

_T = TypeVar("_T")


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename is durable only after this).

    Silently does nothing where folders cannot be opened (Windows).

    Parameters
    ----------
    folder : Path
        The folder whose entries changed.
    """
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(folder, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | bytearray | memoryview, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    Parameters
    ----------
    path : Path
        The target file; its folder must exist.
    data : bytes-like
        The new content.
    mode : int, default 0o600
        Permission bits of the new file (owner-only by default).

    Raises
    ------
    OSError
        If any step fails; the temporary file is removed and ``path`` is untouched.
    """
    folder = path.parent
    fd, tmp_name = tempfile.mkstemp(prefix=PARTIAL_PREFIX, dir=folder)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            if hasattr(os, "fchmod"):
                os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(folder)


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _flusher() -> ThreadPoolExecutor:
    """The shared pool that issues concurrent flushes (made on first use, remade after fork)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(MAX_PARALLEL_FSYNC, thread_name_prefix="radvault-fsync")
        return _pool


def _forget_pool_after_fork() -> None:
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()  # the parent's threads do not exist here


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def _fsync_all(fsync: Callable[[_T], None], items: Sequence[_T]) -> None:
    if len(items) == 1:
        fsync(items[0])
    elif items:
        list(_flusher().map(fsync, items))


def atomic_write_many(
    items: Sequence[tuple[Path, bytes | bytearray | memoryview]], *, mode: int = 0o600
) -> None:
    """Replace several files, each atomically, all durably, with one flush per folder.

    Each target ends up holding its old bytes or its new bytes, never a mix,
    exactly as with :func:`atomic_write`; when this returns, every new file
    and every rename is on disk. The flushes are what cost: here each file's
    flush runs concurrently with the others' (on a shared pool of at most
    :data:`MAX_PARALLEL_FSYNC` threads), and each folder is flushed once,
    after all its renames.

    Parameters
    ----------
    items : sequence of (Path, bytes-like)
        Targets (their folders must exist; each target at most once) and contents.
    mode : int, default 0o600
        Permission bits of the new files.

    Raises
    ------
    ValueError
        If a target appears twice (nothing is written).
    OSError
        If any step fails. Temporary files not yet renamed are removed; targets
        already replaced keep their complete new bytes, the others are untouched.
    """
    if len({path for path, _ in items}) != len(items):
        raise ValueError("atomic_write_many: each target may appear only once")
    pending: list[tuple[int, Path, Path]] = []  # (fd or -1 once closed, temp, target)
    try:
        for path, data in items:
            fd, tmp_name = tempfile.mkstemp(prefix=PARTIAL_PREFIX, dir=path.parent)
            pending.append((fd, Path(tmp_name), path))
            if hasattr(os, "fchmod"):
                os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        _fsync_all(os.fsync, [fd for fd, _, _ in pending])
        for index, (fd, tmp, target) in enumerate(pending):
            os.close(fd)
            pending[index] = (-1, tmp, target)
            os.replace(tmp, target)
            pending[index] = (-1, target, target)  # nothing left to clean up
    except BaseException:
        for fd, tmp, target in pending:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
            if tmp != target:
                with contextlib.suppress(OSError):
                    tmp.unlink()
        raise
    _fsync_all(fsync_dir, sorted({target.parent for _, _, target in pending}))

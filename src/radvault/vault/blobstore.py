"""Blob stores: where sealed objects are kept, by opaque key.

A blob store knows nothing of encryption or the catalog: it keeps bytes under
keys, with S3's semantics, so a later ``S3BlobStore`` can implement the same
:class:`BlobStore` protocol (docs/sealed-format.md, "Blob stores"):

* ``put`` is atomic and replaces: a reader sees the old bytes or the new
  bytes, never a part;
* ``get``/``size`` on a missing key raise :class:`~radvault.errors.ObjectNotFound`;
* ``delete`` of a missing key is not an error, so an interrupted deletion can
  simply be retried;
* ``keys`` lists complete objects only.

:class:`LocalFolderBlobStore` is the embedded default; :class:`InMemoryBlobStore`
is the test fake. Keys are validated against :data:`KEY_PATTERN` (letters,
digits, ``_ . -``; no separators), which rules out path traversal by
construction and fits an S3 key as is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from radvault.errors import ObjectNotFound, VaultError
from radvault.vault._atomic import PARTIAL_PREFIX, atomic_write, atomic_write_many, fsync_dir

__all__ = [
    "KEY_PATTERN",
    "BlobStore",
    "InMemoryBlobStore",
    "LocalFolderBlobStore",
    "put_many",
    "validate_key",
]

_log = logging.getLogger(__name__)

#: A blob key: 3..200 characters, first one alphanumeric, then letters, digits, ``_ . -``.
KEY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{2,199}")


def validate_key(key: str) -> str:
    """Check that ``key`` is a valid blob key and return it.

    Parameters
    ----------
    key : str
        The key to check.

    Returns
    -------
    str
        The same key.

    Raises
    ------
    VaultError
        If the key does not match :data:`KEY_PATTERN` or contains ``..``
        (anything that could name a path outside the store).
    """
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key) or ".." in key:
        shown = repr(key)[:80] if isinstance(key, str) else type(key).__name__
        raise VaultError(f"invalid blob key {shown}: expected {KEY_PATTERN.pattern}")
    return key


@runtime_checkable
class BlobStore(Protocol):
    """Where sealed objects are kept. Implementations must follow the semantics above."""

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically, replacing any previous value.

        Raises
        ------
        VaultError
            If the key is invalid or the write fails (nothing is left under ``key``
            but its previous value).
        """
        ...

    def get(self, key: str) -> bytes:
        """Return the bytes stored under ``key``.

        Raises
        ------
        ObjectNotFound
            If there is no such key.
        VaultError
            If the key is invalid or the read fails.
        """
        ...

    def delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error.

        Raises
        ------
        VaultError
            If the key is invalid or the removal fails.
        """
        ...

    def exists(self, key: str) -> bool:
        """Whether ``key`` holds a complete object.

        Raises
        ------
        VaultError
            If the key is invalid.
        """
        ...

    def keys(self) -> Iterator[str]:
        """Every stored key, in sorted order, complete objects only."""
        ...

    def size(self, key: str) -> int:
        """The length in bytes of the object under ``key``.

        Raises
        ------
        ObjectNotFound
            If there is no such key.
        VaultError
            If the key is invalid.
        """
        ...


def put_many(store: BlobStore, items: Sequence[tuple[str, bytes]]) -> None:
    """Store several blobs, each with :meth:`BlobStore.put`'s guarantees.

    Uses the store's own ``put_many`` when it has one (the local folder store
    flushes a whole batch at once), else calls ``put`` for each item. When it
    returns, every blob is stored; on an error some may be stored and the
    others untouched, as after that many single ``put`` calls.

    Raises
    ------
    VaultError
        If a key is invalid or a write fails.
    """
    batch = getattr(store, "put_many", None)
    if batch is not None:
        batch(items)
        return
    for key, data in items:
        store.put(key, data)


class InMemoryBlobStore:
    """A :class:`BlobStore` in a dict (tests and throwaway vaults)."""

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes) -> None:
        """See :meth:`BlobStore.put`."""
        validate_key(key)
        value = bytes(data)
        with self._lock:
            self._data[key] = value

    def get(self, key: str) -> bytes:
        """See :meth:`BlobStore.get`."""
        validate_key(key)
        with self._lock:
            try:
                return self._data[key]
            except KeyError:
                raise ObjectNotFound(f"no blob {key!r}") from None

    def delete(self, key: str) -> None:
        """See :meth:`BlobStore.delete`."""
        validate_key(key)
        with self._lock:
            self._data.pop(key, None)

    def exists(self, key: str) -> bool:
        """See :meth:`BlobStore.exists`."""
        validate_key(key)
        with self._lock:
            return key in self._data

    def keys(self) -> Iterator[str]:
        """See :meth:`BlobStore.keys`."""
        with self._lock:
            snapshot = sorted(self._data)
        return iter(snapshot)

    def size(self, key: str) -> int:
        """See :meth:`BlobStore.size`."""
        return len(self.get(key))


class LocalFolderBlobStore:
    """A :class:`BlobStore` in a local folder: ``ROOT/<first 2 chars>/<key>``.

    Writes go to a ``.partial-*`` temporary file in the target's own folder,
    are flushed (``fsync``), renamed over the target (``os.replace``), and the
    folder is flushed, so a crash at any point leaves either the previous
    object or the new one under the real name, and at worst a leftover
    temporary file, which :meth:`keys` ignores and :meth:`cleanup_partial`
    removes. The two-character fan-out keeps folders small.

    Parameters
    ----------
    root : Path
        The store's folder; created (mode 0700) if missing.

    Raises
    ------
    VaultError
        If ``root`` exists and is not a folder, or cannot be created.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self._root = Path(root)
        try:
            self._root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except FileExistsError:
            raise VaultError(f"blob store root is not a folder: {self._root}") from None
        except OSError as exc:
            raise VaultError(f"cannot create blob store {self._root}: {exc.strerror}") from None

    @property
    def root(self) -> Path:
        """The store's folder."""
        return self._root

    def path_of(self, key: str) -> Path:
        """The file that holds ``key`` (it need not exist).

        Raises
        ------
        VaultError
            If the key is invalid.
        """
        validate_key(key)
        return self._root / key[:2] / key

    def put(self, key: str, data: bytes) -> None:
        """See :meth:`BlobStore.put`."""
        path = self.path_of(key)
        try:
            if not path.parent.is_dir():
                path.parent.mkdir(exist_ok=True, mode=0o700)
                fsync_dir(self._root)  # make the new fan-out folder itself durable
            atomic_write(path, data, mode=0o600)
        except OSError as exc:
            raise VaultError(f"cannot store blob {key!r}: {exc.strerror or exc}") from None

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Store several blobs, each atomically, flushing once per batch.

        Same guarantees as :meth:`put` for every blob (a crash leaves each key
        with its old or its new bytes, never a mix), and all of them are on
        disk when this returns; the file flushes run concurrently and each
        fan-out folder is flushed once, which is what makes a batch cheaper
        than as many :meth:`put` calls.

        Raises
        ------
        VaultError
            If a key is invalid or repeated, or a write fails (keys not yet
            replaced keep their previous value).
        """
        paths = [(self.path_of(key), data) for key, data in items]
        if len({p for p, _ in paths}) != len(paths):
            raise VaultError("put_many: a blob key appears twice in one batch")
        try:
            for folder in sorted({p.parent for p, _ in paths}):
                if not folder.is_dir():
                    folder.mkdir(exist_ok=True, mode=0o700)
                    fsync_dir(self._root)  # make the new fan-out folder itself durable
            atomic_write_many(paths, mode=0o600)
        except OSError as exc:
            raise VaultError(f"cannot store {len(paths)} blobs: {exc.strerror or exc}") from None

    def get(self, key: str) -> bytes:
        """See :meth:`BlobStore.get`."""
        path = self.path_of(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(f"no blob {key!r}") from None
        except OSError as exc:
            raise VaultError(f"cannot read blob {key!r}: {exc.strerror or exc}") from None

    def delete(self, key: str) -> None:
        """See :meth:`BlobStore.delete`."""
        path = self.path_of(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise VaultError(f"cannot delete blob {key!r}: {exc.strerror or exc}") from None
        fsync_dir(path.parent)

    def exists(self, key: str) -> bool:
        """See :meth:`BlobStore.exists`."""
        return self.path_of(key).is_file()

    def size(self, key: str) -> int:
        """See :meth:`BlobStore.size`."""
        path = self.path_of(key)
        try:
            return path.stat().st_size
        except FileNotFoundError:
            raise ObjectNotFound(f"no blob {key!r}") from None

    def _folders(self) -> list[Path]:
        try:
            entries = sorted(self._root.iterdir())
        except FileNotFoundError:
            return []
        return [p for p in entries if p.is_dir() and len(p.name) == 2]

    def keys(self) -> Iterator[str]:
        """See :meth:`BlobStore.keys`. Temporary and foreign files are skipped."""
        for folder in self._folders():
            try:
                names = sorted(entry.name for entry in os.scandir(folder) if entry.is_file())
            except FileNotFoundError:
                continue
            for name in names:
                if KEY_PATTERN.fullmatch(name) and ".." not in name and name[:2] == folder.name:
                    yield name

    def cleanup_partial(self, *, min_age_s: float = 300.0) -> int:
        """Remove temporary files left by interrupted writes.

        Parameters
        ----------
        min_age_s : float, default 300
            Only remove files older than this, so a write in progress in another
            process is not disturbed. Pass 0 when no writer can be running.

        Returns
        -------
        int
            How many files were removed.
        """
        removed = 0
        cutoff = time.time() - min_age_s
        for folder in [self._root, *self._folders()]:
            for entry in folder.glob(PARTIAL_PREFIX + "*"):
                with contextlib.suppress(FileNotFoundError):
                    if entry.is_file() and entry.stat().st_mtime <= cutoff:
                        entry.unlink()
                        removed += 1
        if removed:
            _log.info("removed %d partial blob file(s) under %s", removed, self._root)
        return removed

    def __repr__(self) -> str:
        return f"LocalFolderBlobStore({str(self._root)!r})"

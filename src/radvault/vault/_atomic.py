"""Crash-safe file replacement shared by the blob store and the key file.

``atomic_write`` writes to a temporary name in the target's own folder, flushes
it to disk, renames it over the target and flushes the folder, so after a crash
the target holds either the old bytes or the new bytes, never a mix, and no
half-written file ever appears under the real name. Temporary files are named
``.partial-*``: nothing else in a RadVault folder starts with a dot, so readers
skip them and cleanup can find them.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["PARTIAL_PREFIX", "atomic_write", "fsync_dir"]

PARTIAL_PREFIX = ".partial-"


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

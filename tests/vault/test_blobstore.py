"""Blob stores keep bytes under validated keys; local writes are atomic and crash-safe."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from radvault.errors import ObjectNotFound, VaultError
from radvault.vault import _atomic
from radvault.vault.blobstore import (
    BlobStore,
    InMemoryBlobStore,
    LocalFolderBlobStore,
    put_many,
    validate_key,
)

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(params=["memory", "folder"])
def store(request, tmp_path) -> BlobStore:
    if request.param == "memory":
        return InMemoryBlobStore()
    return LocalFolderBlobStore(tmp_path / "blobs")


def test_both_stores_satisfy_the_protocol(store):
    assert isinstance(store, BlobStore)


def test_put_get_size_exists_delete(store):
    store.put("obj-0001", b"sealed bytes")
    assert store.exists("obj-0001")
    assert store.get("obj-0001") == b"sealed bytes"
    assert store.size("obj-0001") == 12
    store.delete("obj-0001")
    assert not store.exists("obj-0001")
    with pytest.raises(ObjectNotFound, match="obj-0001"):
        store.get("obj-0001")
    with pytest.raises(ObjectNotFound):
        store.size("obj-0001")


def test_put_replaces_and_accepts_any_bytes_like(store):
    store.put("obj-0001", b"old")
    store.put("obj-0001", bytearray(b"newer"))
    assert store.get("obj-0001") == b"newer"
    store.put("obj-0002", memoryview(b""))
    assert store.get("obj-0002") == b""


def test_deleting_a_missing_key_is_not_an_error(store):
    store.delete("never-stored")
    store.put("abc", b"x")
    store.delete("abc")
    store.delete("abc")
    assert not store.exists("abc")


def test_keys_lists_every_object_sorted(store):
    for key in ["zz-9", "aa-1", "ab-2", "Q7.sealed"]:
        store.put(key, key.encode())
    assert list(store.keys()) == ["Q7.sealed", "aa-1", "ab-2", "zz-9"]


@pytest.mark.parametrize(
    "key",
    ["../../etc/passwd", "ab/../../x", "a/b/c", "ab\\cd", "..", "...", "x..y", ".hidden",
     ".partial-abc", "ab", "", "a" * 201, "ab\x00cd", "abc ", "ab\ncd", "/abs/path", "ünï"],
)
def test_keys_that_could_escape_or_confuse_the_store_are_refused(store, key, tmp_path):
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for call in (
        lambda: store.put(key, b"x"),
        lambda: store.get(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
        lambda: store.size(key),
    ):
        with pytest.raises(VaultError, match="invalid blob key"):
            call()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_validate_key_returns_good_keys_unchanged():
    assert validate_key("0f3c-instance.v1") == "0f3c-instance.v1"
    with pytest.raises(VaultError):
        validate_key(123)  # type: ignore[arg-type]


def test_local_store_fans_out_by_the_first_two_characters_with_private_modes(tmp_path):
    store = LocalFolderBlobStore(tmp_path / "blobs")
    store.put("c0ffee-1", b"data")
    path = tmp_path / "blobs" / "c0" / "c0ffee-1"
    assert store.path_of("c0ffee-1") == path
    assert path.read_bytes() == b"data"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0


def test_local_store_root_must_be_a_folder(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(VaultError, match="not a folder"):
        LocalFolderBlobStore(tmp_path / "file")


def _partials(root: Path) -> list[Path]:
    return sorted(root.rglob(_atomic.PARTIAL_PREFIX + "*"))


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_a_failed_write_leaves_the_old_object_and_no_partial_file(tmp_path, monkeypatch, failing):
    store = LocalFolderBlobStore(tmp_path)
    store.put("obj-0001", b"version one")

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_atomic.os, failing, fail)
    with pytest.raises(VaultError, match="cannot store blob 'obj-0001'"):
        store.put("obj-0001", b"version two, never complete")
    with pytest.raises(VaultError):
        store.put("obj-0002", b"brand new")
    monkeypatch.undo()
    assert store.get("obj-0001") == b"version one"
    assert not store.exists("obj-0002")
    assert list(store.keys()) == ["obj-0001"]
    assert _partials(tmp_path) == []


def test_a_process_killed_mid_write_leaves_only_an_ignored_partial_file(tmp_path):
    # The child dies (os._exit: no cleanup, like kill -9) after the temp file is
    # written and flushed but before the rename.
    child = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(SRC)!r})
        from radvault.vault import _atomic
        from radvault.vault.blobstore import LocalFolderBlobStore
        store = LocalFolderBlobStore({str(tmp_path)!r})
        store.put("obj-0001", b"complete")
        _atomic.os.replace = lambda *a, **k: os._exit(9)
        store.put("obj-0002", b"half written")
        """
    )
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=60)
    assert result.returncode == 9, result.stderr.decode()

    store = LocalFolderBlobStore(tmp_path)
    leftovers = _partials(tmp_path)
    assert len(leftovers) == 1
    assert leftovers[0].read_bytes() == b"half written"
    assert list(store.keys()) == ["obj-0001"]
    assert not store.exists("obj-0002")

    assert store.cleanup_partial() == 0  # too recent: a live writer may own it
    assert store.cleanup_partial(min_age_s=0) == 1
    assert _partials(tmp_path) == []
    assert store.get("obj-0001") == b"complete"


def test_keys_ignores_foreign_files(tmp_path):
    store = LocalFolderBlobStore(tmp_path)
    store.put("ab-1", b"x")
    (tmp_path / "README").write_text("not a blob")
    (tmp_path / "ab" / "zz-misplaced").write_bytes(b"wrong folder")
    (tmp_path / "ab" / ".DS_Store").write_bytes(b"")
    (tmp_path / "ab" / "sub").mkdir()
    assert list(store.keys()) == ["ab-1"]


def test_delete_removes_the_file(tmp_path):
    store = LocalFolderBlobStore(tmp_path)
    store.put("ab-1", b"x")
    store.delete("ab-1")
    assert not (tmp_path / "ab" / "ab-1").exists()
    assert os.listdir(tmp_path / "ab") == []


# --------------------------------------------------------------------------- batches


def test_put_many_stores_every_blob_whole_and_leaves_no_temporary_file(store):
    items = [(f"obj-{n:04d}", bytes([n]) * (1000 + n)) for n in range(20)]
    store.put("obj-0003", b"old value")

    put_many(store, items)

    for key, data in items:
        assert store.get(key) == data
    assert list(store.keys()) == sorted(key for key, _ in items)
    if isinstance(store, LocalFolderBlobStore):
        assert not list(store.root.rglob(".partial-*"))
        for key, _ in items:
            assert stat.S_IMODE(store.path_of(key).stat().st_mode) == 0o600


def test_put_many_refuses_a_key_twice_and_writes_nothing(tmp_path):
    store = LocalFolderBlobStore(tmp_path / "blobs")
    with pytest.raises(VaultError, match="twice"):
        store.put_many([("obj-0001", b"a"), ("obj-0001", b"b")])
    assert not store.exists("obj-0001")


def test_put_many_refuses_an_invalid_key_before_writing(tmp_path):
    store = LocalFolderBlobStore(tmp_path / "blobs")
    with pytest.raises(VaultError, match="invalid blob key"):
        store.put_many([("obj-0001", b"a"), ("../escape", b"b")])
    assert list(store.keys()) == []


def test_atomic_write_many_failing_half_way_keeps_each_file_whole(tmp_path):
    done, blocked, never = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    never.write_bytes(b"previous")
    blocked.mkdir()  # os.replace cannot put a file over a folder

    with pytest.raises(OSError):
        _atomic.atomic_write_many([(done, b"new a"), (blocked, b"new b"), (never, b"new c")])

    assert done.read_bytes() == b"new a"  # replaced whole before the failure
    assert never.read_bytes() == b"previous"  # untouched after it
    assert not list(tmp_path.glob(".partial-*"))


def test_atomic_write_many_flushes_every_file_and_each_folder_once(tmp_path, monkeypatch):
    folders = [tmp_path / "x", tmp_path / "y"]
    for folder in folders:
        folder.mkdir()
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd")
                      else str(fd))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    items = [(folders[n % 2] / f"f{n}", b"data %d" % n) for n in range(6)]

    _atomic.atomic_write_many(items)

    assert len(synced) == 6 + 2
    if os.path.exists("/proc/self/fd"):
        assert sorted(s for s in synced if not s.rsplit("/", 1)[-1].startswith(".partial-")) \
            == sorted(str(f) for f in folders)
    for path, data in items:
        assert path.read_bytes() == data

"""Manifests: sha-256 of every file is checked and leaking splits are refused."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from radvault.analysis.manifest import load_manifest
from radvault.errors import DatasetError


def copy_dataset(src_manifest: Path, dest: Path) -> Path:
    shutil.copytree(src_manifest.parent, dest)
    return dest / "manifest.csv"


def rewrite(manifest: Path, change) -> None:
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    change(rows)
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_loads_and_lists_splits(toy_manifest):
    m = load_manifest(toy_manifest)
    assert m.splits == ("train", "val", "test")
    assert len(m.split("train")) == 60
    assert len(m.sha256) == 64
    assert m.rows[0].file.is_file()


def test_altered_file_is_refused(toy_manifest, tmp_path):
    manifest = copy_dataset(toy_manifest, tmp_path / "d")
    victim = next((tmp_path / "d" / "images" / "test").rglob("*.png"))
    victim.write_bytes(victim.read_bytes() + b"\0")
    with pytest.raises(DatasetError, match="1 file\\(s\\) whose sha-256 differs"):
        load_manifest(manifest)
    load_manifest(manifest, verify_sha256=False)  # explicit opt-out still loads


def test_missing_file_is_refused(toy_manifest, tmp_path):
    manifest = copy_dataset(toy_manifest, tmp_path / "d")
    next((tmp_path / "d" / "images" / "val").rglob("*.png")).unlink()
    with pytest.raises(DatasetError, match="1 file\\(s\\) missing"):
        load_manifest(manifest)


def test_test_row_sharing_a_sha256_with_train_is_refused(toy_manifest, tmp_path):
    manifest = copy_dataset(toy_manifest, tmp_path / "d")

    def leak(rows):
        test = next(r for r in rows if r["split"] == "test")
        train = next(r for r in rows if r["split"] == "train")
        test["path"], test["sha256"] = train["path"], train["sha256"]
    rewrite(manifest, leak)
    with pytest.raises(DatasetError, match="split 'test' share a sha-256 with split 'train'"):
        load_manifest(manifest)


def test_test_row_sharing_a_group_with_train_is_refused(toy_manifest, tmp_path):
    manifest = copy_dataset(toy_manifest, tmp_path / "d")

    def leak(rows):
        train_group = next(r for r in rows if r["split"] == "train")["group"]
        next(r for r in rows if r["split"] == "test")["group"] = train_group
    rewrite(manifest, leak)
    with pytest.raises(DatasetError, match="share a group") as info:
        load_manifest(manifest)
    assert "train-" not in str(info.value)  # group ids (possibly patient-derived) never shown


def test_any_split_name_works(toy_manifest, tmp_path):
    manifest = copy_dataset(toy_manifest, tmp_path / "d")
    rewrite(manifest, lambda rows: [r.update(split="holdout") for r in rows
                                    if r["split"] == "test"])
    m = load_manifest(manifest)
    assert len(m.split("holdout")) == 24
    with pytest.raises(DatasetError, match="no split 'test'"):
        m.split("test")


def test_missing_column_is_refused(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("path,split,label\na.png,train,x\n")
    with pytest.raises(DatasetError, match="lacks column\\(s\\) sha256"):
        load_manifest(path)


def test_radbench_manifest_passes_both_checks(radbench_manifest):
    m = load_manifest(radbench_manifest)
    assert len(m.rows) == 7042
    assert set(m.splits) == {"train", "val", "test"}


def test_leakage_is_checked_against_a_custom_named_training_split(toy_manifest, tmp_path):
    manifest = copy_dataset(toy_manifest, tmp_path / "d")
    names = {"train": "dev", "val": "tune", "test": "holdout"}

    def rename_and_leak(rows):
        for r in rows:
            r["split"] = names[r["split"]]
        held = next(r for r in rows if r["split"] == "holdout")
        dev = next(r for r in rows if r["split"] == "dev")
        held["path"], held["sha256"] = dev["path"], dev["sha256"]
    rewrite(manifest, rename_and_leak)
    with pytest.raises(DatasetError, match="split 'holdout' share a sha-256 with split 'dev'"):
        load_manifest(manifest, train_split="dev")


def test_manifest_without_a_group_column_loads_with_a_warning(toy_manifest, tmp_path, caplog):
    manifest = copy_dataset(toy_manifest, tmp_path / "d")
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[k for k in rows[0] if k != "group"],
                               extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with caplog.at_level("WARNING", logger="radvault.analysis.manifest"):
        m = load_manifest(manifest)
    assert len(m.rows) == 108 and all(r.group == "" for r in m.rows)
    [record] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert str(manifest) in record.getMessage() and "sha-256 only" in record.getMessage()
    assert "train-" not in record.getMessage()  # names the file, never a row's values
    caplog.clear()
    with caplog.at_level("WARNING", logger="radvault.analysis.manifest"):
        load_manifest(toy_manifest)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]

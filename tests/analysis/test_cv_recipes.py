"""tools/cv_recipes.py: recipes ranked by grouped cross-validation, never on the test split."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import cv_recipes  # noqa: E402  (tools/cv_recipes.py)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_folds_hold_every_class_keep_groups_apart_and_never_the_test_split(
        toy_manifest, toy_task_file, tmp_path):
    paths, _ = cv_recipes.fold_manifests(toy_manifest, str(toy_task_file), 4, tmp_path)
    pooled = {r["sha256"] for r in _rows(toy_manifest) if r["split"] in ("train", "val")}
    test = {r["sha256"] for r in _rows(toy_manifest) if r["split"] == "test"}
    held_out_once: list[str] = []
    for path in paths:
        rows = _rows(path)
        assert {r["sha256"] for r in rows} == pooled  # every pooled row, and no test row
        assert not test & {r["sha256"] for r in rows}
        groups = defaultdict(set)
        for r in rows:
            groups[r["split"]].add(r["group"])
        assert set(groups) == {"train", "val", "heldout"}
        assert not (groups["train"] & groups["val"] or groups["train"] & groups["heldout"]
                    or groups["val"] & groups["heldout"])
        for split in groups:
            assert {r["label"] for r in rows if r["split"] == split} == {"disc", "square",
                                                                          "bars"}
        held_out_once += [r["sha256"] for r in rows if r["split"] == "heldout"]
    assert sorted(held_out_once) == sorted(pooled)  # each pooled row is held out once


def test_a_class_with_fewer_groups_than_folds_is_refused(toy_manifest, toy_task_file,
                                                        tmp_path):
    rows = _rows(toy_manifest)
    for r in rows:  # every "bars" image of train+val in one of two series
        if r["label"] == "bars":
            r["group"] = f"bars-series-{r['split']}"
    lumped = tmp_path / "lumped.csv"
    base = toy_manifest.parent
    for r in rows:
        r["path"] = str(base / r["path"])
    with open(lumped, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(SystemExit, match="'bars' has 2 group"):
        cv_recipes.fold_manifests(lumped, str(toy_task_file), 3, tmp_path / "folds")


def test_every_recipe_runs_on_every_fold_and_is_compared_run_by_run(toy_manifest,
                                                                   toy_task_file, tmp_path):
    out = tmp_path / "cv"
    done = subprocess.run([
        sys.executable, str(REPO / "tools" / "cv_recipes.py"), "--manifest", str(toy_manifest),
        "--task", str(toy_task_file), "--folds", "3", "--seeds", "1", "--jobs", "2",
        "--out", str(out), "--reference", "enhanced",
        "--config", "plain=--no-enhance", "--config", "enhanced=",
        "--", "--size", "32", "--width", "0.125", "--epochs", "1", "--no-denoise",
        "--batch-size", "16", "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    cv = json.loads((out / "cv_summary.json").read_text())
    assert set(cv["ranking"]) == {"plain", "enhanced"}
    assert cv["paired_against"] == "enhanced"
    held = [set(groups) for groups in cv["fold_groups"]]  # each fold holds out its own series
    assert len(held) == 3 and all(held) and not (held[0] & held[1] or held[1] & held[2])
    for name in ("plain", "enhanced"):
        runs = cv["recipes"][name]["runs"]
        assert sorted(r["fold"] for r in runs) == [0, 1, 2]
        aucs = [r["heldout"]["auc_macro"] for r in runs]
        assert cv["recipes"][name]["heldout"]["auc_macro"]["mean"] == pytest.approx(
            sum(aucs) / 3)
    enhanced = {r["fold"]: r["heldout"]["auc_macro"] for r in cv["recipes"]["enhanced"]["runs"]}
    diffs = [r["heldout"]["auc_macro"] - enhanced[r["fold"]]
             for r in cv["recipes"]["plain"]["runs"]]
    paired = cv["recipes"]["plain"]["paired_vs_reference"]
    assert paired["n"] == 3 and paired["wins"] == sum(d > 0 for d in diffs)
    assert paired["mean"] == pytest.approx(sum(diffs) / 3)
    # each run scored its held-out fold, and its card names that split
    card = json.loads((out / "runs" / "plain_f0" / "seed1" / "model_card.json").read_text())
    assert card["training"]["splits"]["test"] == "heldout"
    assert "paired (plain - enhanced)" in done.stdout


def test_shared_options_may_not_name_the_data(toy_manifest, toy_task_file, tmp_path):
    done = subprocess.run([
        sys.executable, str(REPO / "tools" / "cv_recipes.py"), "--manifest", str(toy_manifest),
        "--task", str(toy_task_file), "--out", str(tmp_path), "--config", "a=",
        "--", "--test-split", "test"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "must not name" in done.stderr

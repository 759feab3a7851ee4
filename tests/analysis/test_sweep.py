"""tools/sweep.py: a grid of recipes over seeds, ranked on validation only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_sweep_trains_every_recipe_and_seed_and_ranks_on_validation(toy_manifest, toy_task_file,
                                                                    tmp_path):
    out = tmp_path / "sweep"
    done = subprocess.run([
        sys.executable, str(REPO / "tools" / "sweep.py"),
        "--out", str(out), "--jobs", "2", "--seeds", "1", "2",
        "--config", "broken=--lr -1",
        "--config", "plain=--no-enhance", "--config", "enhanced=",
        "--", "--manifest", str(toy_manifest), "--task", str(toy_task_file),
        "--size", "32", "--width", "0.125", "--epochs", "1", "--no-denoise",
        "--batch-size", "16", "--cache-dir", str(tmp_path / "cache"),
        "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1  # the broken recipe's runs failed, and the sweep says so
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["failed"]) == ["broken/seed1", "broken/seed2"]
    ranking = summary["ranking"][str(toy_task_file)]  # keyed by --task as given
    assert set(ranking) == {"plain", "enhanced"}  # failed recipes are not ranked
    for name in ("plain", "enhanced"):
        cfg = summary["configs"][name]
        assert cfg["finished"] == 2
        assert sorted(cfg["seeds_by_val_auc"]) == [1, 2]
        aucs = [r["val"]["auc_macro"] for r in cfg["runs"]]
        assert abs(cfg["val"]["auc_macro"]["mean"] - sum(aucs) / 2) < 1e-12
        card = json.loads((out / name / "seed1" / "model_card.json").read_text())
        assert card["preprocessing"]["enhance"] is (name == "enhanced")
    first, second = (summary["configs"][n]["val"]["auc_macro"]["mean"] for n in ranking)
    assert first >= second
    assert "broken/seed1 FAILED" in done.stdout
    # the broken recipe's images were still prepared, once, for the recipe that shares them
    assert "preparing a split failed" not in done.stdout
    assert done.stdout.splitlines()[-2].startswith(ranking[0])
    # one preprocessing cache per distinct setting and split, shared by the runs
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2 * 3


def test_runs_not_started_before_the_deadline_count_as_failed(toy_manifest, toy_task_file,
                                                              tmp_path):
    out = tmp_path / "sweep"
    done = subprocess.run([
        sys.executable, str(REPO / "tools" / "sweep.py"), "--out", str(out), "--jobs", "1",
        "--seeds", "1", "2", "--deadline", "0", "--config", "plain=--no-enhance",
        "--", "--manifest", str(toy_manifest), "--task", str(toy_task_file), "--size", "32",
        "--no-denoise", "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == ["plain/seed1 (not started)", "plain/seed2 (not started)"]
    assert summary["ranking"][str(toy_task_file)] == []


def test_a_recipe_without_a_name_is_refused(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "tools" / "sweep.py"), "--out",
                           str(tmp_path), "--config", "--size 64"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "expected NAME=ARGS" in done.stderr

"""ONNX Runtime's telemetry is off: loading a model writes no device id and no session file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOAD = """
import sys
import radvault.analysis.inference as inference
inference.onnx_session(open(sys.argv[1], 'rb').read())
import os; print(os.environ.get('ORT_DISABLE_TELEMETRY'))
"""


def test_loading_a_model_leaves_no_telemetry_files(trained, tmp_path: Path) -> None:
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(tmp), "XDG_CACHE_HOME": ""}
    env.pop("ORT_DISABLE_TELEMETRY", None)  # radvault sets it, not the caller
    run = subprocess.run([sys.executable, "-c", LOAD, str(trained.model_dir / "model.onnx")],
                         env=env, capture_output=True, text=True, timeout=120, check=True)
    assert run.stdout.strip() == "1"
    # without the opt-out, ONNX Runtime 1.32 writes ~/.cache/Microsoft/.../deviceid,
    # onnxruntime.db and $TMPDIR/.ses here
    assert [p for p in home.rglob("*") if p.is_file()] == []
    assert [p for p in tmp.rglob("*") if p.is_file()] == []


def test_importing_onnxruntime_first_is_warned_about(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    env.pop("ORT_DISABLE_TELEMETRY", None)
    run = subprocess.run([sys.executable, "-c", "import onnxruntime, radvault"], env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    assert "onnxruntime was imported before radvault" in run.stderr
    env["ORT_DISABLE_TELEMETRY"] = "1"  # the caller opted out itself: nothing to say
    run = subprocess.run([sys.executable, "-c", "import onnxruntime, radvault"], env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    assert run.stderr == ""

"""The public surface of radvault.jobs: a sorted, complete __all__, and no Celery import."""

from __future__ import annotations

import subprocess
import sys

import radvault.jobs as jobs


def test_all_is_sorted_and_names_only_what_exists() -> None:
    assert jobs.__all__ == sorted(jobs.__all__)
    assert all(hasattr(jobs, name) for name in jobs.__all__)
    public = {n for n in vars(jobs) if not n.startswith("_") and n not in {"annotations"}}
    modules = {n for n in public if type(getattr(jobs, n)).__name__ == "module"}
    assert public - modules == set(jobs.__all__)


def test_the_embedded_runner_does_not_import_celery() -> None:
    code = "import sys, radvault.jobs; print('celery' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

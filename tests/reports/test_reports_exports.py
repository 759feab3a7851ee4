"""radvault.reports hands on a small, sorted public surface (reports/__init__.py)."""

from __future__ import annotations

import importlib
import types

import radvault.reports as reports

MODULES = ("_fhir", "_html", "_model", "_pdf", "_sr")


def test_all_is_sorted_and_complete():
    # ruff's order (RUF022): constants, then classes, then functions, each alphabetical
    assert list(reports.__all__) == sorted(
        reports.__all__, key=lambda n: (not n.isupper(), not n[0].isupper(), n))
    assert len(set(reports.__all__)) == len(reports.__all__)
    public = {name for name, value in vars(reports).items()
              if not name.startswith("_") and not isinstance(value, types.ModuleType)
              and name != "annotations"}
    assert public == set(reports.__all__)


def test_every_private_module_export_is_handed_on():
    for name in MODULES:
        module = importlib.import_module(f"radvault.reports.{name}")
        for member in module.__all__:
            assert getattr(reports, member) is getattr(module, member), f"{name}.{member}"


def test_importing_does_not_load_the_heavy_renderers():
    """HTML-only callers need not pay for ReportLab, fhir.resources or highdicom."""
    import subprocess
    import sys

    code = ("import sys, radvault.reports; "
            "print(sorted(m for m in ('reportlab', 'fhir', 'highdicom') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]"

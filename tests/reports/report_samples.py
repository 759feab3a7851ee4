"""Sample values shared by the report tests (imported by name: no package here)."""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image

from radvault.reports import ReportInput

PSEUDONYM = "RV-0123456789abcdef"
EVIL = "<script>alert('x')</script>"
CLASSES = ("normal", "pneumonia", EVIL, "covid")
PROBS = (0.10, 0.62, 0.20, 0.08)
# The real patient: these values must never appear unless an Identity is passed.
REAL_NAME = "Zebedee^Quixote"
REAL_ID = "MRN-99887766"
REAL_BIRTH = date(1931, 7, 4)
IDENTITY_STRINGS = ("Zebedee", "Quixote", REAL_ID, "1931-07-04", "19310704")
CT_SMALL = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"


def make_png(size: int = 32) -> bytes:
    """A small RGB PNG standing in for a class-activation overlay."""
    rng = np.random.default_rng(7)
    buf = io.BytesIO()
    Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def with_(report: ReportInput, **changes: Any) -> ReportInput:
    """A copy of a report with some fields changed (checked again)."""
    return replace(report, **changes)

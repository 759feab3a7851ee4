"""File-to-folder use cases: the summary written beside the outputs never names an input."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom

from radvault.config import PreprocessSettings
from radvault.imaging.deid import Deidentifier, DeidOptions
from radvault.pipeline.batch_files import deidentify_to_folder, preprocess_to_folder

CT = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
SECRET = b"a-test-secret-that-is-long-enough-0123456789"
PATIENT_FILE = "Truncatello_Basilisa_MRN11122233.dcm"


def test_deid_summary_refers_to_inputs_by_ordinal_only(tmp_path: Path) -> None:
    bad = tmp_path / PATIENT_FILE
    bad.write_bytes(CT.read_bytes()[:-3000])
    summary = deidentify_to_folder([CT, bad, CT], tmp_path / "out",
                                   Deidentifier(SECRET, DeidOptions()))
    assert [(f.ordinal, f.path, f.error) for f in summary.failed] == [
        (2, str(bad), "CorruptImage")]
    assert [(d.ordinal, d.path) for d in summary.duplicates] == [(3, str(CT))]
    text = json.dumps(summary.as_dict())
    assert PATIENT_FILE not in text and str(tmp_path) not in text and "CT_small" not in text
    assert summary.as_dict()["failed"][0]["ordinal"] == 2
    assert summary.as_dict()["duplicates"] == [3]


def test_preprocess_summary_refers_to_inputs_by_ordinal_only(tmp_path: Path) -> None:
    bad = tmp_path / PATIENT_FILE
    bad.write_text("not an image")
    summary = preprocess_to_folder([bad, CT], tmp_path / "out",
                                   PreprocessSettings(size=32, denoise=False))
    assert [f.ordinal for f in summary.failed] == [1]
    assert PATIENT_FILE not in json.dumps(summary.as_dict())

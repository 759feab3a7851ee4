"""Header values kept in the clear (Modality, Body Part Examined) are checked terms only."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.data import get_testdata_file

from radvault.imaging.reading import read_image_bytes
from radvault.imaging.vocabulary import body_part_term, modality_term


@pytest.mark.parametrize(("raw", "kept"), [("CT", "CT"), (" mr ", "MR"), ("RTIMAGE", "RTIMAGE"),
                                           ("QUIBBLEWORTH", "OT"), ("", "OT"), (None, "OT")])
def test_a_modality_is_a_defined_term_or_other(raw, kept):
    assert modality_term(raw) == kept


@pytest.mark.parametrize(("raw", "kept"), [("CHEST", "CHEST"), ("head neck", "HEAD NECK"),
                                           ("QUIBBLEWORTH MRN55512345", ""),  # 24 characters
                                           ("Doe, John", ""), (None, "")])
def test_a_body_part_is_a_code_string_or_unknown(raw, kept):
    assert body_part_term(raw) == kept


def test_free_text_in_the_header_never_reaches_the_record():
    path = get_testdata_file("CT_small.dcm", download=False)
    if path is None:
        pytest.skip("pydicom's test data is not installed")
    ds = pydicom.dcmread(path)
    ds.Modality = "QUIBBLEWORTH"
    with pytest.warns(UserWarning, match="exceeds the maximum length"):  # as a careless device
        ds.BodyPartExamined = "QUIBBLEWORTH MRN55512345"
    buf = io.BytesIO()
    ds.save_as(buf)
    record = read_image_bytes(buf.getvalue(), "planted.dcm")
    assert (record.modality, record.body_part) == ("OT", "")

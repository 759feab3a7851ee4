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


@pytest.mark.parametrize(("raw", "kept"), [("CHEST", "CHEST"), ("headneck", "HEADNECK"),
                                           ("JOHN DOE", ""), ("MRN 55512345", ""),
                                           ("DOE_JOHN_1961", ""), ("MRN55512345", ""),
                                           ("QUIBBLEWORTH MRN55512345", ""),
                                           ("Doe, John", ""), (None, "")])
def test_a_body_part_is_one_word_of_letters_or_unknown(raw, kept):
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


def test_a_modality_outside_the_vocabulary_is_screened_for_burned_in_text_as_ot():
    from pydicom.dataset import Dataset

    from radvault.imaging.deid import assess_burned_in

    ds = Dataset()
    ds.Modality = "DOE JOHN"  # as the catalog reads it: OT, which may carry text
    risk = assess_burned_in(ds)
    assert risk.risk and "OT" in (risk.reason or "") and "DOE" not in (risk.reason or "")
    ds.Modality = "SC"  # no defined term, but Secondary Capture: still always at risk
    ds.BurnedInAnnotation = "NO"
    assert assess_burned_in(ds).risk


def test_hints_for_a_png_pass_the_same_vocabulary():
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, format="PNG")
    record = read_image_bytes(buf.getvalue(), "x.png", modality="us", body_part="breast")
    assert (record.modality, record.body_part) == ("US", "BREAST")
    record = read_image_bytes(buf.getvalue(), "x.png", modality="Doe John", body_part="MRN 123")
    assert (record.modality, record.body_part) == ("OT", "")

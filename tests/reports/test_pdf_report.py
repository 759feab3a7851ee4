"""The PDF report: parses, carries the same content, pseudonymous by default (reports._pdf)."""

from __future__ import annotations

import io
import re

import pytest
from report_samples import EVIL, IDENTITY_STRINGS, PSEUDONYM, with_

from radvault.reports import ReportInputError, render_pdf


def _reader(pdf: bytes):
    pypdf = pytest.importorskip("pypdf", reason="pypdf is needed to read the PDF back")
    return pypdf.PdfReader(io.BytesIO(pdf))


def _text(pdf: bytes) -> str:
    reader = _reader(pdf)
    text = "\n".join(page.extract_text() or "" for page in reader.pages)
    return re.sub(r"\s+", " ", text)


def test_is_a_pdf(report):
    pdf = render_pdf(report)
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    assert b"/Type /Page" in pdf or b"/Type/Page" in pdf


def test_carries_the_report_content(report):
    text = _text(render_pdf(report))
    assert "RESEARCH PROTOTYPE - NOT FOR CLINICAL USE" in text
    assert "Model prediction: pneumonia (probability 62.0 %)" in text
    assert "Refer to a radiologist: confidence 62.0 % under 80.0 %" in text
    for cls, p in (("normal", "10.0 %"), ("pneumonia", "62.0 %"), ("covid", "8.0 %")):
        assert cls in text and p in text
    assert "Awaiting radiologist sign-off" in text
    assert "chest_xray-0123456789ab" in text and "Accuracy" in text
    assert PSEUDONYM in text


def test_every_page_carries_the_notice(report):
    reader = _reader(render_pdf(report))
    assert len(reader.pages) >= 1
    for page in reader.pages:
        assert "Research prototype - not for clinical use" in page.extract_text()


def test_heatmap_is_embedded_as_an_image(report):
    with_map = _reader(render_pdf(report))
    without = _reader(render_pdf(with_(report, heatmap_png=None)))
    assert sum(len(p.images) for p in with_map.pages) == 1
    assert sum(len(p.images) for p in without.pages) == 0
    assert "No heatmap was rendered" in _text(render_pdf(with_(report, heatmap_png=None)))


def test_markup_in_values_is_printed_not_obeyed(report, overridden):
    text = _text(render_pdf(with_(report, sign_off=overridden)))
    assert EVIL in text
    assert "Consolidation <b>absent</b> & pattern fits covid" in text


def test_pseudonymous_by_default_and_banner_on_reidentified_copy(report, identity):
    plain = render_pdf(report)
    text = _text(plain)
    assert not any(s in text for s in IDENTITY_STRINGS)
    assert "RE-IDENTIFIED" not in text
    info = _reader(plain).metadata
    assert not any(s in str(dict(info)) for s in IDENTITY_STRINGS)

    reader = _reader(render_pdf(with_(report, identity=identity)))
    for page in reader.pages:
        assert "RE-IDENTIFIED COPY" in page.extract_text()
    text = _text(render_pdf(with_(report, identity=identity)))
    assert "Zebedee Quixote" in text and "MRN-99887766" in text and "1931-07-04" in text


def test_sign_off_is_shown(report, overridden):
    text = _text(render_pdf(with_(report, sign_off=overridden)))
    assert "Signed off by dr_grey" in text and "radiologist's finding covid" in text
    assert "Status: final" in text and "Awaiting radiologist sign-off" not in text


def test_same_input_same_bytes(report):
    assert render_pdf(report) == render_pdf(report)


def test_undecodable_heatmap_is_refused(report):
    broken = with_(report, heatmap_png=b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ReportInputError, match="heatmap"):
        render_pdf(broken)


def test_accented_names_and_line_breaks(report, overridden):
    from radvault.reports import Identity

    odd = type(overridden)(**{**overridden.__dict__, "comment": "naïve\nreading"})
    text = _text(render_pdf(with_(report, sign_off=odd,
                                  identity=Identity(name="Müller^Zoë", patient_id="X1"))))
    assert "Müller Zoë" in text and "naïve reading" in text

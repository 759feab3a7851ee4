"""The PDF report: the same content as the HTML page, laid out with ReportLab.

ReportLab (pure Python, BSD) builds the document in memory; nothing touches
disk. Every value goes through :func:`xml.sax.saxutils.escape` before it
reaches a ``Paragraph`` (whose text is a small markup language), so a class
named ``<b>`` is printed, not obeyed. Text is set in DejaVu Sans when the
system has it (Latin, Greek, Cyrillic...), else in Bitstream Vera, the
TrueType font ReportLab ships (Latin-1); either is embedded as a subset, so
names print and the text can be extracted (``pdftotext``). Characters the
font lacks (CJK, emoji) print as empty boxes. Output is byte-for-byte reproducible for the same
input (ReportLab's ``invariant`` mode); the time of rendering is printed on
the page instead of in the PDF's metadata.
"""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from radvault.reports import _text
from radvault.reports._model import (
    NOT_FOR_CLINICAL_USE,
    REIDENTIFIED_BANNER,
    ReportInput,
    ReportInputError,
)

__all__ = ["render_pdf"]

log = logging.getLogger(__name__)

_FONT = "RadVaultSans"
_FONT_BOLD = "RadVaultSans-Bold"
_RED = "#b00020"
_BAR_WIDTH = 150.0
_BAR_HEIGHT = 9.0
_HEATMAP_MAX_CM = 7.0
# DejaVu Sans (Latin, Greek, Cyrillic and more) where the system has it; else
# the Bitstream Vera that ships inside ReportLab (Latin-1 and a little more).
_DEJAVU_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu",
                "/usr/share/fonts/TTF", "/usr/local/share/fonts", "/Library/Fonts")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _font_files() -> tuple[str, str]:
    for folder in _DEJAVU_DIRS:
        regular, bold = Path(folder, "DejaVuSans.ttf"), Path(folder, "DejaVuSans-Bold.ttf")
        if regular.is_file() and bold.is_file():
            return str(regular), str(bold)
    return "Vera.ttf", "VeraBd.ttf"


def _register_fonts() -> None:
    """Register the report fonts under our names, once per process."""
    from reportlab.lib.fonts import addMapping
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    if _FONT in pdfmetrics.getRegisteredFontNames():
        return
    regular, bold = _font_files()
    pdfmetrics.registerFont(TTFont(_FONT, regular))
    pdfmetrics.registerFont(TTFont(_FONT_BOLD, bold))
    addMapping(_FONT, 0, 0, _FONT)
    addMapping(_FONT, 1, 0, _FONT_BOLD)
    addMapping(_FONT, 0, 1, _FONT)
    addMapping(_FONT, 1, 1, _FONT_BOLD)


def _styles() -> dict[str, Any]:
    from reportlab.lib import colors
    from reportlab.lib.enums import TA_CENTER
    from reportlab.lib.styles import ParagraphStyle

    base = ParagraphStyle("rv-body", fontName=_FONT, fontSize=9.5, leading=12.5)
    return {
        "body": base,
        "small": ParagraphStyle("rv-small", parent=base, fontSize=8, leading=10,
                                textColor=colors.HexColor("#444444")),
        "cell": ParagraphStyle("rv-cell", parent=base, fontSize=9, leading=11.5),
        "cellb": ParagraphStyle("rv-cellb", parent=base, fontName=_FONT_BOLD, fontSize=9,
                                leading=11.5),
        "title": ParagraphStyle("rv-title", parent=base, fontName=_FONT_BOLD, fontSize=16,
                                leading=20, spaceAfter=4),
        "h2": ParagraphStyle("rv-h2", parent=base, fontName=_FONT_BOLD, fontSize=12,
                             leading=15, spaceBefore=10, spaceAfter=4),
        "notice": ParagraphStyle("rv-notice", parent=base, fontName=_FONT_BOLD, fontSize=11,
                                 leading=14, alignment=TA_CENTER,
                                 textColor=colors.HexColor(_RED)),
        "reid": ParagraphStyle("rv-reid", parent=base, fontName=_FONT_BOLD, fontSize=12,
                               leading=15, alignment=TA_CENTER, textColor=colors.white),
    }


def _p(text: str, style: Any) -> Any:
    from reportlab.platypus import Paragraph

    return Paragraph(escape(_CONTROL.sub(" ", text)), style)


def _key_value_table(rows: list[tuple[str, str]], styles: dict[str, Any], width: float) -> Any:
    from reportlab.lib import colors
    from reportlab.platypus import Table, TableStyle

    data = [[_p(k, styles["cellb"]), _p(v, styles["cell"])] for k, v in rows]
    table = Table(data, colWidths=[0.32 * width, 0.68 * width], hAlign="LEFT")
    table.setStyle(TableStyle([
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("LINEBELOW", (0, 0), (-1, -1), 0.4, colors.HexColor("#cccccc")),
        ("TOPPADDING", (0, 0), (-1, -1), 2), ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
    ]))
    return table


def _bar(p: float, predicted: bool) -> Any:
    from reportlab.graphics.shapes import Drawing, Rect
    from reportlab.lib import colors

    drawing = Drawing(_BAR_WIDTH, _BAR_HEIGHT)
    drawing.add(Rect(0, 0, _BAR_WIDTH, _BAR_HEIGHT, fillColor=colors.HexColor("#e6e6e6"),
                     strokeColor=None))
    fill = colors.HexColor("#b35c00" if predicted else "#1f5fa8")
    if p > 0:
        drawing.add(Rect(0, 0, _BAR_WIDTH * p, _BAR_HEIGHT, fillColor=fill, strokeColor=None))
    return drawing


def _probability_table(report: ReportInput, styles: dict[str, Any], width: float) -> Any:
    from reportlab.lib import colors
    from reportlab.platypus import Table, TableStyle

    a = report.analysis
    data: list[list[Any]] = [[_p("Class", styles["cellb"]), _p("Probability", styles["cellb"]),
                              ""]]
    for cls, p in a.probabilities.items():
        style = styles["cellb"] if cls == a.predicted_class else styles["cell"]
        data.append([_p(cls, style), _p(_text.percent(p), style),
                     _bar(p, cls == a.predicted_class)])
    table = Table(data, colWidths=[width - _BAR_WIDTH - 120, 110, _BAR_WIDTH + 10],
                  hAlign="LEFT")
    table.setStyle(TableStyle([
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
        ("LINEBELOW", (0, 0), (-1, -1), 0.4, colors.HexColor("#cccccc")),
    ]))
    return table


def _boxed(flowable_rows: list[Any], *, border: str, background: str | None,
           width: float) -> Any:
    from reportlab.lib import colors
    from reportlab.platypus import Table, TableStyle

    table = Table([[row] for row in flowable_rows], colWidths=[width], hAlign="LEFT")
    commands: list[tuple[Any, ...]] = [("BOX", (0, 0), (-1, -1), 1.5, colors.HexColor(border)),
                                       ("TOPPADDING", (0, 0), (-1, -1), 4),
                                       ("BOTTOMPADDING", (0, 0), (-1, -1), 4)]
    if background:
        commands.append(("BACKGROUND", (0, 0), (-1, -1), colors.HexColor(background)))
    table.setStyle(TableStyle(commands))
    return table


def _heatmap(png: bytes) -> Any:
    from PIL import Image as PILImage
    from reportlab.lib.units import cm
    from reportlab.platypus import Image

    try:
        with PILImage.open(io.BytesIO(png)) as img:
            w, h = img.size
    except (OSError, ValueError):
        raise ReportInputError("heatmap_png cannot be decoded") from None
    scale = _HEATMAP_MAX_CM * cm / max(w, h)
    return Image(io.BytesIO(png), width=w * scale, height=h * scale, hAlign="LEFT")


def _section(title: str, body: list[Any], styles: dict[str, Any]) -> Any:
    """A heading kept on one page with its content."""
    from reportlab.platypus import KeepTogether

    return KeepTogether([_p(title, styles["h2"]), *body])


def _story(report: ReportInput, styles: dict[str, Any], width: float) -> list[Any]:
    from reportlab.platypus import Spacer

    story: list[Any] = []
    if report.identity is not None:
        story += [_boxed([_p(f"{REIDENTIFIED_BANNER}: contains the patient's identity. "
                             "Authorised, audited re-identification only; do not forward.",
                             styles["reid"])], border=_RED, background=_RED, width=width),
                  Spacer(1, 4)]
    story += [_boxed([_p(NOT_FOR_CLINICAL_USE.upper(), styles["notice"])], border=_RED,
                     background=None, width=width), Spacer(1, 8)]
    story.append(_p(f"Decision-support report: {report.analysis.task}", styles["title"]))
    story.append(_p(_text.status_text(report), styles["body"]))

    story.append(_section("Study", [_key_value_table(_text.study_rows(report), styles, width)],
                          styles))

    refer = report.analysis.refer
    story.append(_section("Prediction", [
        _p(_text.prediction_sentence(report), styles["cellb"]), Spacer(1, 4),
        _boxed([_p(_text.flag_sentence(report), styles["body"])],
               border="#c77700" if refer else "#2e7d32",
               background="#fff4e0" if refer else "#eaf5ea", width=width),
        Spacer(1, 6), _probability_table(report, styles, width)], styles))

    if report.heatmap_png is not None:
        explanation = [_heatmap(report.heatmap_png), Spacer(1, 3),
                       _p(_text.heatmap_caption(report), styles["small"])]
    else:
        explanation = [_p("No heatmap was rendered for this report.", styles["body"])]
    story.append(_section("Explanation", explanation, styles))

    sign_rows = [_p(_text.sign_off_sentence(report), styles["body"])]
    if report.sign_off is not None and report.sign_off.comment:
        sign_rows.append(_p(f"Comment: {report.sign_off.comment}", styles["body"]))
    story.append(_section("Radiologist sign-off", [
        _boxed(sign_rows, border="#2e7d32" if report.signed else "#555555", background=None,
               width=width)], styles))

    story.append(_section("Model card", [
        _key_value_table(_text.model_rows(report) + _text.metric_rows(report), styles, width)],
        styles))
    story.append(Spacer(1, 10))
    story.append(_p(f"{NOT_FOR_CLINICAL_USE}. The model's output supports, and does not "
                    "replace, a radiologist's reading. Probabilities are calibrated on the "
                    "model's validation data; they are not guarantees.", styles["small"]))
    return story


def render_pdf(report: ReportInput) -> bytes:
    """Render the report as a PDF document, in memory.

    Every page carries the "not for clinical use" notice in its footer and,
    for a re-identified copy, the "RE-IDENTIFIED COPY" banner in its header.

    Parameters
    ----------
    report : ReportInput

    Returns
    -------
    bytes
        The PDF (A4).

    Raises
    ------
    ReportInputError
        If the heatmap cannot be decoded as an image.
    """
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.units import cm
    from reportlab.platypus import SimpleDocTemplate

    _register_fonts()
    styles = _styles()
    buffer = io.BytesIO()
    doc = SimpleDocTemplate(
        buffer, pagesize=A4, leftMargin=1.8 * cm, rightMargin=1.8 * cm, topMargin=2.0 * cm,
        bottomMargin=2.0 * cm, title="RadVault decision-support report", author="RadVault",
        subject=NOT_FOR_CLINICAL_USE, creator="RadVault", invariant=True, lang="en",
    )
    width = doc.width
    reidentified = report.reidentified
    footer = f"{NOT_FOR_CLINICAL_USE} - study {report.study_id}"

    def decorate(canvas: Any, document: Any) -> None:
        canvas.saveState()
        page_w, page_h = A4
        if reidentified:
            canvas.setFillColor(colors.HexColor(_RED))
            canvas.rect(0, page_h - 1.2 * cm, page_w, 1.2 * cm, stroke=0, fill=1)
            canvas.setFillColor(colors.white)
            canvas.setFont(_FONT_BOLD, 12)
            canvas.drawCentredString(page_w / 2, page_h - 0.8 * cm, REIDENTIFIED_BANNER)
        canvas.setFillColor(colors.HexColor(_RED))
        canvas.setFont(_FONT_BOLD, 8)
        canvas.drawString(1.8 * cm, 1.0 * cm, footer)
        canvas.setFillColor(colors.black)
        canvas.setFont(_FONT, 8)
        canvas.drawRightString(page_w - 1.8 * cm, 1.0 * cm, f"page {document.page}")
        canvas.restoreState()

    doc.build(_story(report, styles, width), onFirstPage=decorate, onLaterPages=decorate)
    log.info("rendered PDF report for study %s%s", report.study_id,
             " (re-identified copy)" if reidentified else "")
    return buffer.getvalue()

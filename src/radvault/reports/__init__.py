"""Reports for an analysed study: HTML, PDF, FHIR R4 DiagnosticReport and DICOM SR.

A lower-layer package: plain data in (:class:`ReportInput`), bytes or objects
out; no storage, no HTTP, no vault. The clinical-service use case gathers the
input, checks the caller's rights, audits, and calls::

    report = ReportInput(study_id=..., instance_ids=(...), patient_pseudonym=...,
                         site=..., modality="CT", body_part="CHEST",
                         analysis=AnalysisSummary.from_result(result),
                         model=ModelSummary.from_card(model.card),
                         heatmap_png=png, sign_off=None)
    render_html(report)                # str, self-contained page
    render_pdf(report)                 # bytes
    render_fhir(report)                # dict, a validated FHIR R4 DiagnosticReport
    render_sr(report, [source_ds])     # highdicom ComprehensiveSR (a pydicom Dataset)

Every format prints probabilities through :func:`percent` (one decimal, never
rounded to certainty); the web pages use it too. Pseudonymous by default; an
:class:`Identity` is given only for an authorised, audited re-identified copy, which
every format then marks as such. See ``docs/reports.md``.
"""

from radvault.reports._fhir import render_fhir, render_fhir_json
from radvault.reports._html import render_html
from radvault.reports._model import (
    RADIOLOGIST_FINDINGS,
    AnalysisSummary,
    Identity,
    ModelSummary,
    ReportInput,
    ReportInputError,
    SignOff,
    SignOffDecision,
)
from radvault.reports._pdf import render_pdf
from radvault.reports._sr import render_sr
from radvault.reports._text import (
    image_check_in_words,
    percent,
    reason_in_words,
    relabel_note,
    source_in_words,
)

__all__ = [
    "RADIOLOGIST_FINDINGS",
    "AnalysisSummary",
    "Identity",
    "ModelSummary",
    "ReportInput",
    "ReportInputError",
    "SignOff",
    "SignOffDecision",
    "image_check_in_words",
    "percent",
    "reason_in_words",
    "relabel_note",
    "render_fhir",
    "render_fhir_json",
    "render_html",
    "render_pdf",
    "render_sr",
    "source_in_words",
]

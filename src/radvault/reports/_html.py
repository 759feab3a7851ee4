"""The HTML report: one self-contained, printable page.

Rendered with Jinja2 with autoescaping on, so every value (a class named
``<script>``, a radiologist's comment) is inert text. The page loads nothing:
its CSS is inline and the heatmap is a ``data:`` URI, so it can be saved,
mailed or printed as is, and it sends a Content-Security-Policy ``<meta>``
that forbids scripts and any network fetch.
"""

from __future__ import annotations

import base64
import logging

import jinja2

from radvault.reports import _text
from radvault.reports._model import NOT_FOR_CLINICAL_USE, REIDENTIFIED_BANNER, ReportInput

__all__ = ["render_html"]

log = logging.getLogger(__name__)

_TEMPLATE = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
      content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<meta name="robots" content="noindex">
<title>RadVault report - study {{ r.study_id }}</title>
<style>
  body { font-family: "Helvetica Neue", Arial, sans-serif; color: #111; margin: 2em auto;
         max-width: 56em; line-height: 1.4; }
  h1 { font-size: 1.5em; margin: 0.2em 0; }
  h2 { font-size: 1.15em; border-bottom: 1px solid #999; margin-top: 1.4em; }
  .notice { border: 3px solid #b00020; color: #b00020; font-weight: bold; padding: 0.5em;
            text-align: center; text-transform: uppercase; letter-spacing: 0.05em; }
  .reid { background: #b00020; color: #fff; font-weight: bold; font-size: 1.3em;
          padding: 0.5em; text-align: center; margin-bottom: 0.5em; }
  .flag { padding: 0.6em; border-left: 6px solid; margin: 0.8em 0; }
  .flag.refer { border-color: #c77700; background: #fff4e0; }
  .flag.ok { border-color: #2e7d32; background: #eaf5ea; }
  .signoff { padding: 0.6em; border: 1px dashed #555; }
  .signoff.final { border-style: solid; border-color: #2e7d32; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: 0.25em 0.5em; border-bottom: 1px solid #ddd;
           vertical-align: middle; }
  th { width: 30%; }
  table.probs th { width: auto; }
  tr.predicted td { font-weight: bold; }
  .bar { background: #e6e6e6; width: 16em; height: 0.9em; }
  .bar span { display: block; height: 100%; background: #1f5fa8; }
  tr.predicted .bar span { background: #b35c00; }
  img.heatmap { max-width: 100%; width: 24em; image-rendering: auto; border: 1px solid #999; }
  footer { margin-top: 2em; font-size: 0.85em; color: #444; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  @media print { body { margin: 0; max-width: none; } h2 { break-after: avoid; }
                 section { break-inside: avoid; } }
</style>
</head>
<body>
{% if r.identity %}
<div class="reid" role="alert">{{ reid_banner }}: contains the patient's identity.
Authorised, audited re-identification only; do not forward.</div>
{% endif %}
<div class="notice" role="note">{{ notice }}</div>
<header>
<h1>Decision-support report: {{ r.analysis.task }}</h1>
<p>{{ status_text }}</p>
</header>

<section id="study">
<h2>Study</h2>
<table>
{% for label, value in study_rows %}<tr><th>{{ label }}</th><td>{{ value }}</td></tr>
{% endfor %}</table>
</section>

<section id="prediction">
<h2>Prediction</h2>
<p><strong>{{ prediction }}</strong></p>
<div class="flag {{ 'refer' if r.analysis.refer else 'ok' }}">{{ flag }}</div>
<table class="probs">
<thead><tr><th>Class</th><th>Probability</th><th></th></tr></thead>
<tbody>
{% for cls, p in r.analysis.probabilities.items() %}{% set shown = percent(p) %}
<tr{% if cls == r.analysis.predicted_class %} class="predicted"{% endif %}>
<td>{{ cls }}</td><td>{{ shown }}</td>
<td><div class="bar" role="img" aria-label="{{ shown }}">
<span style="width: {{ "%.1f"|format(100 * p) }}%"></span></div></td></tr>
{% endfor %}</tbody>
</table>
</section>

<section id="heatmap">
<h2>Explanation</h2>
{% if heatmap_uri %}<figure>
<img class="heatmap" src="{{ heatmap_uri }}"
     alt="Class-activation heatmap for {{ r.analysis.predicted_class }}">
<figcaption>{{ heatmap_caption }}</figcaption>
</figure>{% else %}<p>No heatmap was rendered for this report.</p>{% endif %}
</section>

<section id="signoff">
<h2>Radiologist sign-off</h2>
<div class="signoff{{ ' final' if r.sign_off else '' }}">
<p>{{ sign_off }}</p>
{% if r.sign_off and r.sign_off.comment %}<p>Comment: {{ r.sign_off.comment }}</p>{% endif %}
</div>
</section>

<section id="model">
<h2>Model card</h2>
<table>
{% for label, value in model_rows %}<tr><th>{{ label }}</th><td>{{ value }}</td></tr>
{% endfor %}{% for label, value in metric_rows %}<tr><th>{{ label }}</th><td>{{ value }}</td></tr>
{% endfor %}</table>
</section>

<footer>
<p>{{ notice }}. The model's output supports, and does not replace, a radiologist's reading.
Probabilities are calibrated on the model's validation data; they are not guarantees.</p>
{% if r.identity %}<p><strong>{{ reid_banner }}</strong></p>{% endif %}
</footer>
</body>
</html>
"""

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined,
                          trim_blocks=False, lstrip_blocks=False)
_COMPILED = _ENV.from_string(_TEMPLATE)


def _status_text(report: ReportInput) -> str:
    return _text.status_text(report)


def render_html(report: ReportInput) -> str:
    """Render the report as one self-contained HTML page.

    Parameters
    ----------
    report : ReportInput

    Returns
    -------
    str
        The page (UTF-8 when encoded); no external resources, every value escaped.

    Raises
    ------
    jinja2.TemplateError
        Only on a programming error in the template: a :class:`ReportInput`
        checked its data when it was built.
    """
    heatmap_uri = None
    if report.heatmap_png is not None:
        heatmap_uri = "data:image/png;base64," + base64.b64encode(report.heatmap_png).decode()
    html = _COMPILED.render(
        r=report, notice=NOT_FOR_CLINICAL_USE, reid_banner=REIDENTIFIED_BANNER,
        status_text=_status_text(report), prediction=_text.prediction_sentence(report),
        flag=_text.flag_sentence(report), sign_off=_text.sign_off_sentence(report),
        study_rows=_text.study_rows(report), model_rows=_text.model_rows(report),
        metric_rows=_text.metric_rows(report), heatmap_uri=heatmap_uri,
        heatmap_caption=_text.heatmap_caption(report), percent=_text.percent,
    )
    log.info("rendered HTML report for study %s%s", report.study_id,
             " (re-identified copy)" if report.reidentified else "")
    return html

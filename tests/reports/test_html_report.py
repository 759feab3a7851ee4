"""The HTML report: complete, self-contained, escaped and pseudonymous (reports._html)."""

from __future__ import annotations

import base64
from html.parser import HTMLParser

from report_samples import CLASSES, EVIL, IDENTITY_STRINGS, PSEUDONYM, with_

from radvault.reports import render_html


class _Elements(HTMLParser):
    """Collects element names and every attribute value."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [(name, value or "") for name, value in attrs]


def _parse(html: str) -> _Elements:
    parser = _Elements()
    parser.feed(html)
    return parser


def test_page_shows_prediction_probabilities_flag_model_and_notice(report):
    html = render_html(report)
    assert "Model prediction: pneumonia (probability 62.0 %)" in html
    assert "Refer to a radiologist: confidence 62.0 % under 80.0 %" in html
    for p in ("10.0 %", "62.0 %", "20.0 %", "8.0 %"):
        assert p in html
    assert 'style="width: 62.0%"' in html  # the bar
    assert "chest_xray-0123456789ab" in html and "0.973" in html and "DX CHEST" in html
    assert "Research prototype - not for clinical use" in html
    assert "Awaiting radiologist sign-off" in html
    assert "Status: preliminary" in html
    assert PSEUDONYM in html and "2019-03-14" in html


def test_flag_not_set_says_so(report, analysis):
    calm = type(analysis)(model_id=analysis.model_id, task=analysis.task,
                          predicted_class="normal", probability=0.91,
                          probabilities=dict(zip(CLASSES, (0.91, 0.05, 0.02, 0.02), strict=True)),
                          refer=False, refer_threshold=0.8)
    html = render_html(with_(report, analysis=calm))
    assert "No referral flag: confidence 91.0 % at or above 80.0 %" in html
    assert "Refer to a radiologist:" not in html


def test_reasons_beyond_confidence_are_in_words(report, analysis):
    flagged = type(analysis)(**{**analysis.__dict__,
                                "reasons": ("low_confidence", "modality_not_trained")})
    html = render_html(with_(report, analysis=flagged, modality="CT"))
    assert "the model was not trained on CT images" in html


def test_heatmap_is_inline_and_nothing_is_fetched(report, heatmap_png):
    html = render_html(report)
    parsed = _parse(html)
    sources = [v for k, v in parsed.attrs if k in {"src", "href"}]
    assert sources and all(v.startswith("data:image/png;base64,") for v in sources)
    assert base64.b64decode(sources[0].split(",", 1)[1]) == heatmap_png
    assert "link" not in parsed.tags and "script" not in parsed.tags
    assert "http://" not in html and "https://" not in html
    assert "default-src 'none'" in html


def test_without_heatmap_says_so(report):
    html = render_html(with_(report, heatmap_png=None))
    assert "No heatmap was rendered" in html and "data:image" not in html


def test_a_heatmap_without_the_image_is_captioned_so(report):
    assert "overlaid on the model input" in render_html(report)
    alone = render_html(with_(report, heatmap_over_image=False))
    assert "shown alone: the image is not part of this report" in alone
    assert "overlaid on the model input" not in alone


def test_hostile_class_names_and_comments_stay_inert(report, overridden):
    html = render_html(with_(report, sign_off=overridden))
    parsed = _parse(html)
    assert "script" not in parsed.tags and "b" not in parsed.tags
    assert EVIL not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert "Consolidation &lt;b&gt;absent&lt;/b&gt; &amp; pattern fits covid" in html


def test_pseudonymous_by_default(report):
    html = render_html(report)
    assert not any(s in html for s in IDENTITY_STRINGS)
    assert "RE-IDENTIFIED" not in html


def test_reidentified_copy_has_the_banner_and_identity(report, identity):
    html = render_html(with_(report, identity=identity))
    assert "RE-IDENTIFIED COPY" in html
    assert html.index("RE-IDENTIFIED COPY") < html.index("not for clinical use")
    assert "Zebedee Quixote" in html and "MRN-99887766" in html and "1931-07-04" in html
    assert PSEUDONYM in html


def test_sign_off_is_shown(report, accepted, overridden):
    html = render_html(with_(report, sign_off=accepted))
    assert "Signed off by dr_grey at 2026-02-02T08:00:00+00:00: prediction accepted" in html
    assert "Comment: Agree." in html and "Status: final" in html
    assert "Awaiting radiologist sign-off" not in html
    html = render_html(with_(report, sign_off=overridden))
    assert "prediction overridden, radiologist&#39;s finding covid" in html


def test_a_report_of_one_image_of_several_says_so(report):
    # a study report covers one analysed image: the reader must not take it for the study
    html = render_html(with_(report, study_images=3))
    assert "This report covers 1 of the study&#39;s 3 images" in html
    assert "Coverage" not in render_html(with_(report, study_images=1))

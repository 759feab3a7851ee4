"""Every referral reason the models give is put in words by every report format."""

from radvault.analysis.inference import REFER_REASONS
from radvault.reports import _sr, _text


def test_every_reason_code_has_words_in_the_text_and_the_sr() -> None:
    assert set(REFER_REASONS) <= set(_sr._REASON_WORDS)
    codes = {v for k, v in vars(_text).items() if k.startswith("REASON_")}
    assert set(REFER_REASONS) <= codes

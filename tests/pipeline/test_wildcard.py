"""DICOM wild card matching: the PS3.4 rules, in bounded time whatever the pattern."""

from __future__ import annotations

import random
import re
import time

import pytest

from radvault.pipeline import wildcard
from radvault.pipeline.wildcard import wildcard_match


def regex_match(pattern: str, value: str) -> bool:
    """The translation QIDO-RS and C-FIND used before: ``*`` -> ``.*``, ``?`` -> ``.``."""
    parts = (".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.fullmatch("".join(parts), value, re.DOTALL) is not None


VALUES = ["RV-0123456789ABCDEF", "CHEST", "chest", "CT", "MR", "", "a*b?c", "A.B+C(D)",
          "1.2.840.10008.5.1.4", "Doe^Jane", "line\nbreak", "ÄÖÜ-ß"]
PATTERNS = ["*", "", "CHEST", "CH*", "*EST", "C?EST", "?", "??", "*?*", "C*T", "*A*B*",
            "RV-*", "RV-????*F", "*.*", "A.B+C(D)", "a*b?c", "a\\*b", "[CM]*", "(.*)",
            "Doe^*", "*\n*", "Ä*ß", "chest", "*Z"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_ordinary_patterns_match_as_the_regex_translation_did(pattern: str) -> None:
    for value in VALUES:
        assert wildcard_match(pattern, value) == regex_match(pattern, value), (pattern, value)


def test_random_patterns_match_as_the_regex_translation_did() -> None:
    rng = random.Random(20260412)
    alphabet = "ab*?"
    for _ in range(3000):
        pattern = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        value = "".join(rng.choice("ab") for _ in range(rng.randint(0, 10)))
        assert wildcard_match(pattern, value) == regex_match(pattern, value), (pattern, value)


def test_a_lone_star_is_universal_matching() -> None:
    for value in ("", "anything", "\n", "*"):
        assert wildcard_match("*", value)


def test_question_mark_is_exactly_one_character() -> None:
    assert wildcard_match("C?", "CT")
    assert not wildcard_match("C?", "C")
    assert not wildcard_match("C?", "CTX")


def test_matching_is_case_sensitive_unless_asked_otherwise() -> None:
    assert not wildcard_match("chest", "CHEST")
    assert wildcard_match("chest", "CHEST", case_sensitive=False)
    assert wildcard_match("c?E*", "ChEST", case_sensitive=False)
    assert not wildcard_match("c?E*", "ChX", case_sensitive=False)


@pytest.mark.parametrize("pattern", ["*" * 60 + "Z", "*1" * 30 + "Z", "*?" * 30 + "!",
                                     "*a" * 32, "a*" * 32 + "b"])
def test_pathological_patterns_take_at_most_pattern_times_value_steps(pattern: str) -> None:
    value = "RV-0123456789ABCDEF" * 50 + "a" * 200
    started = time.perf_counter()

    matched, steps = wildcard._match(pattern, value)

    assert matched == (pattern == "*a" * 32)
    assert steps <= (len(pattern) + 1) * (len(value) + 1)
    assert time.perf_counter() - started < 2.0  # the regex takes hours on these


def test_the_step_bound_holds_on_random_patterns() -> None:
    rng = random.Random(7)
    for _ in range(500):
        pattern = "".join(rng.choice("ab*?") for _ in range(rng.randint(1, 20)))
        value = "".join(rng.choice("ab") for _ in range(rng.randint(0, 60)))
        _, steps = wildcard._match(pattern, value)
        assert steps <= (len(pattern) + 1) * (len(value) + 1), (pattern, value)


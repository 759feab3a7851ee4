"""In CI a skipped test fails, so that a missing backend cannot leave the run green."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

TESTS = """
import pytest

def test_needs_a_missing_server():
    pytest.skip("the server is not reachable")

@pytest.mark.optional
def test_needs_a_gpu():
    pytest.skip("no CUDA GPU here")

@pytest.mark.skipif(True, reason="not on this platform")
def test_marked_skip():
    pass

@pytest.mark.xfail(reason="known bug")
def test_known_bug():
    assert False
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest("from _strict_skips import pytest_runtest_makereport\n")
    pytester.makeini("[pytest]\nmarkers = optional: may skip in CI\n")
    pytester.makepyfile(test_suite=TESTS)
    return pytester


def test_in_ci_a_skip_fails_unless_the_test_is_optional(suite, monkeypatch):
    monkeypatch.setenv("CI", "true")
    result = suite.runpytest("-p", "no:cacheprovider", "-rA")
    result.assert_outcomes(failed=1, errors=1, skipped=1, xfailed=1)  # setup: an error
    result.stdout.fnmatch_lines(["*(CI): the server is not reachable. Install it*",
                                 "*(CI): not on this platform. Install it*"])


def test_outside_ci_a_skip_is_a_skip(suite, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("RADVAULT_TEST_STRICT_SKIPS", raising=False)
    result = suite.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(skipped=3, xfailed=1)


def test_strict_skips_can_be_asked_for_outside_ci(suite, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("RADVAULT_TEST_STRICT_SKIPS", "1")
    suite.runpytest("-p", "no:cacheprovider").assert_outcomes(failed=1, errors=1, skipped=1,
                                                          xfailed=1)

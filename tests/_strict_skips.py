"""A skip is a failure in CI: the hook ``tests/conftest.py`` installs (see its docstring).

In a separate module so that ``test_strict_skips.py`` can install it in a pytest run of
its own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

__all__ = ["pytest_runtest_makereport", "strict_skips"]


def strict_skips() -> bool:
    """Whether a skip fails its test: ``CI=true`` or ``RADVAULT_TEST_STRICT_SKIPS=1``."""
    return (os.environ.get("CI", "").lower() == "true"
            or os.environ.get("RADVAULT_TEST_STRICT_SKIPS") == "1")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """In strict mode, report the skip of a test not marked ``optional`` as a failure."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if (report.skipped and not hasattr(report, "wasxfail") and strict_skips()
            and item.get_closest_marker("optional") is None):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        reason = str(reason).removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = (f"skipped where every test peer should be installed (CI): {reason}. "
                           "Install it, or mark the test @pytest.mark.optional if CI cannot "
                           "have it.")

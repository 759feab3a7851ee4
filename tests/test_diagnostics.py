"""PHI-safe stacks: types and file:line:function only, never messages, source lines or locals."""

from __future__ import annotations

import inspect
import logging
import re

import pytest

from radvault import _diagnostics
from radvault._diagnostics import describe_stack, log_unexpected, qualified_name
from radvault.errors import ConfigurationError, VaultError
from radvault.jobs import exponential_backoff

MRN = "MRN-4711-DOE"  # planted: must never reach a log record
LOGGER = "radvault.tests.diagnostics"


def _line() -> int:
    """The caller's current line number."""
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    return frame.f_back.f_lineno


def _caught(fn) -> BaseException:
    try:
        fn()
    except BaseException as exc:  # the test wants whatever it raised
        return exc
    raise AssertionError("nothing raised")


def _logged(caplog: pytest.LogCaptureFixture, exc: BaseException, what: str = "testing"
            ) -> logging.LogRecord:
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        log_unexpected(logging.getLogger(LOGGER), exc, what)
    [record] = [r for r in caplog.records if r.name == LOGGER]
    return record


def _everything(record: logging.LogRecord, caplog: pytest.LogCaptureFixture) -> str:
    """All the text a handler could write for the record."""
    return "\n".join([record.getMessage(), caplog.text, repr(record.args),
                      repr(record.exc_info), repr(record.exc_text), repr(record.stack_info)])


def test_neither_the_message_nor_locals_nor_source_lines_are_logged(caplog) -> None:
    lines: dict[str, int] = {}

    def read_header(header: dict[str, str]) -> None:
        patient_id = header["PatientID"]  # a local holding PHI
        lines["raise"] = _line() + 1
        raise ValueError(f"bad header for {patient_id}", patient_id)

    def ingest() -> None:
        name = f"scans/{MRN}.dcm"  # noqa: F841 - a local of an outer frame, with PHI
        lines["call"] = _line() + 1
        read_header({"PatientID": MRN})

    exc = _caught(ingest)
    exc.add_note(f"while reading {MRN}")
    record = _logged(caplog, exc, what="ingest of instance i-1")

    text = _everything(record, caplog)
    assert MRN not in text
    assert "bad header" not in text and "while reading" not in text
    assert "raise ValueError" not in text and "patient_id" not in text  # no source lines
    assert record.levelno == logging.ERROR
    assert record.exc_info is None and record.exc_text is None
    message = record.getMessage()
    assert message.startswith("ingest of instance i-1: unexpected ValueError\n")
    assert re.search(rf"test_diagnostics\.py:{lines['call']} in ingest\n", message)
    assert re.search(rf"test_diagnostics\.py:{lines['raise']} in read_header$", message)
    # outermost frame first, the one that raised last
    assert message.index(" in ingest") < message.index(" in read_header")


def test_the_exception_is_never_turned_into_text() -> None:
    class Tattletale(Exception):
        def __str__(self) -> str:
            raise AssertionError("str() was called")

        def __repr__(self) -> str:
            raise AssertionError("repr() was called")

    def fail() -> None:
        raise Tattletale(MRN)

    text = describe_stack(_caught(fail))
    assert text.splitlines()[0].endswith("Tattletale")
    assert MRN not in text


def test_package_files_are_shown_relative_to_the_package() -> None:
    text = describe_stack(_caught(lambda: exponential_backoff(base_s=-1)))
    assert text.splitlines()[0] == "radvault.errors.ConfigurationError"
    assert re.search(r"^  radvault/jobs/_runner\.py:\d+ in exponential_backoff$", text, re.M)
    assert str(_diagnostics._PACKAGE_ROOT) not in text


def test_library_files_are_shown_relative_to_their_root() -> None:
    def parse() -> None:
        int(MRN)  # a builtin: no frame of its own

    def load() -> None:
        import json

        json.loads("{" + MRN)

    assert MRN not in describe_stack(_caught(parse))
    text = describe_stack(_caught(load))
    assert text.splitlines()[0] == "json.decoder.JSONDecodeError"
    assert re.search(r"^  json/decoder\.py:\d+ in raw_decode$", text, re.M)
    assert MRN not in text


def test_explicit_and_implicit_chains_are_followed() -> None:
    def lookup() -> None:
        raise KeyError(MRN)

    def handle() -> None:
        try:
            lookup()
        except KeyError:
            raise RuntimeError(MRN)  # noqa: B904 - an implicit chain on purpose

    def wrap() -> None:
        try:
            handle()
        except RuntimeError as exc:
            raise VaultError(f"study of {MRN}") from exc

    text = describe_stack(_caught(wrap))
    assert MRN not in text
    headers = [line for line in text.splitlines() if not line.startswith("  ")]
    assert headers == [
        "radvault.errors.VaultError",
        "the direct cause of it: RuntimeError",
        "raised while handling: KeyError",
    ]
    sections = text.split("\nthe direct cause of it: ")
    assert " in wrap" in sections[0] and " in handle" not in sections[0]
    cause, context = sections[1].split("\nraised while handling: ")
    assert " in handle" in cause and " in lookup" in context


def test_a_suppressed_context_is_left_out() -> None:
    def fail() -> None:
        try:
            raise KeyError(MRN)
        except KeyError:
            raise ConfigurationError("no such setting") from None

    assert describe_stack(_caught(fail)).count("KeyError") == 0


def test_chains_are_bounded_and_cycles_cut() -> None:
    def chain(n: int) -> None:
        if n == 0:
            raise OSError(MRN)
        try:
            chain(n - 1)
        except OSError as exc:
            raise OSError(MRN) from exc

    text = describe_stack(_caught(lambda: chain(30)))
    assert text.count("OSError") == _diagnostics.MAX_EXCEPTIONS
    assert text.endswith("... further chained exceptions omitted")

    first, second = ValueError(MRN), TypeError(MRN)
    first.__context__, second.__context__ = second, first
    text = describe_stack(first)
    assert text.count("ValueError") == 1 and text.count("TypeError") == 1
    assert "(no traceback)" in text  # never raised: no frames to show


def test_deep_recursion_is_summarised() -> None:
    def down(n: int) -> None:
        if n == 0:
            raise RecursionError(MRN)
        down(n - 1)

    text = describe_stack(_caught(lambda: down(500)))
    lines = text.splitlines()
    assert len(lines) <= _diagnostics.MAX_FRAMES + 2
    assert any(re.fullmatch(r"  \[previous line repeated \d+ more times\]", x) for x in lines)


def test_long_stacks_keep_the_outermost_and_innermost_frames() -> None:
    def make(depth: int):
        namespace: dict[str, object] = {}
        for i in range(depth):  # distinct function names: nothing to fold
            callee = f"f{i + 1}" if i + 1 < depth else None
            body = f"    {callee}()\n" if callee else "    raise LookupError('x')\n"
            exec(f"def f{i}():\n{body}", namespace)  # a synthetic call chain
        return namespace["f0"]

    text = describe_stack(_caught(make(100)))
    lines = text.splitlines()
    assert len(lines) == 1 + _diagnostics.MAX_FRAMES + 1
    assert "more line(s) omitted" in text
    assert lines[-1].endswith(" in f99") and " in f0" in text


def test_exception_group_members_are_shown() -> None:
    def fail() -> None:
        raise ExceptionGroup(MRN, [ValueError(MRN), KeyError(MRN)])

    text = describe_stack(_caught(fail))
    assert text.splitlines()[0] == "ExceptionGroup"
    assert "member 1 of 2 of the group: ValueError" in text
    assert "member 2 of 2 of the group: KeyError" in text
    assert MRN not in text


def test_qualified_names() -> None:
    assert qualified_name(ValueError) == "ValueError"
    assert qualified_name(VaultError) == "radvault.errors.VaultError"


def test_nothing_is_computed_when_the_level_is_off(caplog, monkeypatch) -> None:
    def boom(exc: BaseException) -> str:
        raise AssertionError("described although nobody listens")

    monkeypatch.setattr(_diagnostics, "describe_stack", boom)
    with caplog.at_level(logging.CRITICAL, logger=LOGGER):
        log_unexpected(logging.getLogger(LOGGER), ValueError(MRN), "quiet")
    assert not caplog.records


def test_a_failing_description_still_logs_the_type(caplog, monkeypatch) -> None:
    def boom(exc: BaseException) -> str:
        raise RuntimeError("the description broke")

    monkeypatch.setattr(_diagnostics, "describe_stack", boom)
    record = _logged(caplog, KeyError(MRN), what="job j-1")
    assert record.getMessage() == "job j-1: unexpected KeyError\n  (stack unavailable)"

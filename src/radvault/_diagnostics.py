"""PHI-safe stack traces: where an unexpected exception came from, never what it said.

A normal traceback is the first thing anyone debugging a production failure
wants, and the one thing RadVault's logs could not carry: an exception's
message, the source lines shown with it, and (with ``capture_locals``) the
frames' local variables may quote patient data (a file name, a header value).
:func:`log_unexpected` logs the part that cannot: the qualified exception type
and, for each frame, ``file:line in function`` (files relative to the package
or library root), for the exception and the ``__cause__``/``__context__``
chain behind it (and the members of an exception group), bounded in length.

It never reads ``str(exc)``, ``exc.args``, notes, source lines or locals; the
frames come from the standard :class:`traceback.StackSummary` machinery with
``lookup_lines=False`` and ``capture_locals=False``. A record looks like::

    job 5f0c... attempt 1 (task analyse): unexpected AttributeError
      radvault/jobs/_runner.py:474 in _attempt
      radvault/analysis/tasks.py:88 in analyse
    the direct cause of it: KeyError
      radvault/analysis/tasks.py:80 in analyse

Frames run outermost first (the innermost, where the exception was raised,
last), as in a Python traceback; each chained exception follows the one it
led to.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import sys
import traceback
from pathlib import Path

__all__ = ["describe_stack", "log_unexpected", "qualified_name"]

#: At most this many exceptions (the first, its chain, group members) per record.
MAX_EXCEPTIONS = 8
#: At most this many frames per exception: the outermost few and the innermost rest.
MAX_FRAMES = 40
_OUTER_FRAMES = 10
_REPEAT_CUTOFF = 3

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # the folder holding radvault/


def qualified_name(exc_type: type[BaseException]) -> str:
    """``module.QualName`` of an exception class (just the name for builtins)."""
    module = getattr(exc_type, "__module__", None)
    name = getattr(exc_type, "__qualname__", None) or exc_type.__name__
    if not module or module == "builtins":
        return str(name)
    return f"{module}.{name}"


@functools.lru_cache(maxsize=1024)
def _short_path(filename: str) -> str:
    """``filename`` relative to the package root or the ``sys.path`` entry holding it.

    Pseudo-files (``<string>``, ``<frozen ...>``) and files under no known
    root are returned as given.
    """
    if not filename or filename.startswith("<"):
        return filename
    try:
        path = Path(filename).resolve()
    except (OSError, RuntimeError, ValueError):
        return filename
    roots = [_PACKAGE_ROOT]
    roots += [Path(p).resolve() for p in sys.path if p and os.path.isabs(p)]
    best: Path | None = None
    for root in roots:
        if path.is_relative_to(root) and (best is None or len(root.parts) > len(best.parts)):
            best = root
    return filename if best is None else path.relative_to(best).as_posix()


def _frame_lines(exc: BaseException) -> list[str]:
    """``file:line in function`` of each frame of ``exc``'s own traceback, bounded."""
    summary = traceback.StackSummary.extract(
        traceback.walk_tb(exc.__traceback__), lookup_lines=False, capture_locals=False
    )
    frames = (f"  {_short_path(f.filename)}:{f.lineno} in {f.name}" for f in summary)
    lines: list[str] = []
    for line, run in itertools.groupby(frames):  # deep recursion: shown as Python shows it
        times = sum(1 for _ in run)
        lines += [line] * min(times, _REPEAT_CUTOFF)
        if times > _REPEAT_CUTOFF:
            lines.append(f"  [previous line repeated {times - _REPEAT_CUTOFF} more times]")
    if len(lines) > MAX_FRAMES:
        inner = MAX_FRAMES - _OUTER_FRAMES
        omitted = len(lines) - MAX_FRAMES
        lines = [*lines[:_OUTER_FRAMES], f"  ... {omitted} more line(s) omitted ...",
                 *lines[-inner:]]
    if not lines:
        lines = ["  (no traceback)"]
    return lines


def _linked(exc: BaseException) -> list[tuple[str, BaseException]]:
    """The exceptions ``exc`` leads to, labelled, in the order a traceback shows them."""
    linked: list[tuple[str, BaseException]] = []
    if isinstance(exc, BaseExceptionGroup):
        count = len(exc.exceptions)
        linked += [(f"member {i} of {count} of the group", member)
                   for i, member in enumerate(exc.exceptions, 1)]
    if exc.__cause__ is not None:
        linked.append(("the direct cause of it", exc.__cause__))
    elif exc.__context__ is not None and not exc.__suppress_context__:
        linked.append(("raised while handling", exc.__context__))
    return linked


def describe_stack(exc: BaseException) -> str:
    """The PHI-free text of ``exc``'s stack: types and ``file:line in function`` only.

    The first line is the exception's qualified type; frames follow, one a
    line, outermost first. Then each linked exception (group members, then
    ``__cause__``, or ``__context__`` unless suppressed), labelled, with its
    own frames. At most :data:`MAX_EXCEPTIONS` exceptions and
    :data:`MAX_FRAMES` frames each; cycles are cut.

    Parameters
    ----------
    exc : BaseException
        The exception, normally caught (so that it has a traceback).

    Returns
    -------
    str
        Several lines, without a trailing newline; never the message, the
        arguments, notes, source lines or local variables.
    """
    out = [qualified_name(type(exc)), *_frame_lines(exc)]
    seen = {id(exc)}
    shown = 1
    pending = list(reversed(_linked(exc)))
    while pending:
        label, item = pending.pop()
        if id(item) in seen:
            continue
        if shown >= MAX_EXCEPTIONS:
            out.append("... further chained exceptions omitted")
            break
        seen.add(id(item))
        shown += 1
        out.append(f"{label}: {qualified_name(type(item))}")
        out += _frame_lines(item)
        pending += reversed(_linked(item))
    return "\n".join(out)


def log_unexpected(
    logger: logging.Logger, exc: BaseException, what: str, *, level: int = logging.ERROR
) -> None:
    """Log one record saying ``what`` failed, with ``exc``'s PHI-free stack.

    The record's message is ``"<what>: unexpected <type>"`` followed by the
    lines of :func:`describe_stack`; no ``exc_info`` is attached, so no
    handler can print the message or the source lines.

    Parameters
    ----------
    logger : logging.Logger
        Where to log (the caller's module logger).
    exc : BaseException
        The unexpected exception.
    what : str
        What was being done, with ids only (``"job 5f0c... attempt 2"``,
        ``"C-STORE from dicom:CT_NORTH"``): never values that could be PHI.
    level : int
        The record's level (default ``ERROR``).
    """
    if not logger.isEnabledFor(level):
        return
    try:
        stack = describe_stack(exc)
    except Exception:  # never let a diagnostic hide the failure it describes
        stack = f"{qualified_name(type(exc))}\n  (stack unavailable)"
    headline, _, frames = stack.partition("\n")
    logger.log(level, "%s: unexpected %s\n%s", what, headline, frames)

"""DICOM wild card matching (PS3.4 C.2.2.2.4) in linear space and bounded time.

``*`` matches any run of characters (the empty run too; a pattern that is a
lone ``*`` is universal matching), ``?`` matches exactly one character, and
every other character matches itself. QIDO-RS searches and C-FIND queries use
the same rules, so both faces call :func:`wildcard_match`.

Hand-written on purpose: the usual tools are unsafe on untrusted patterns.
Translating ``*`` into ``.*`` for :mod:`re` (or :func:`fnmatch.fnmatchcase`,
which does exactly that) backtracks exponentially on patterns such as
``************Z``, and no standard-library matcher offers a linear-time mode.
This is the classic two-pointer glob algorithm: on a mismatch it returns only
to the most recent ``*`` and lets it swallow one more character, so the work is
at most about ``(len(pattern) + 1) * (len(value) + 1)`` steps, whatever the
pattern.
"""

from __future__ import annotations

__all__ = ["wildcard_match"]


def wildcard_match(pattern: str, value: str, *, case_sensitive: bool = True) -> bool:
    """Whether ``value`` matches the DICOM wild card ``pattern`` as a whole.

    Parameters
    ----------
    pattern : str
        The query value: ``*`` for any run (possibly empty), ``?`` for one
        character, anything else literally. No escape character exists in DICOM.
    value : str
        The attribute value to test.
    case_sensitive : bool, default True
        DICOM matching is case sensitive; ``False`` compares characters with
        :meth:`str.casefold` (one character against one character, so ``?``
        keeps meaning one character of ``value``).

    Returns
    -------
    bool
        True when the whole of ``value`` matches the whole of ``pattern``.
    """
    return _match(pattern, value, case_sensitive)[0]


def _match(pattern: str, value: str, case_sensitive: bool = True) -> tuple[bool, int]:
    """The match and the number of loop steps taken (the bound is what the tests hold)."""
    if pattern == "*":  # universal matching
        return True, 0
    p = v = 0
    star = -1  # index in pattern of the last '*' seen
    resume = 0  # index in value that the last '*' has swallowed up to
    steps = 0
    n_pattern, n_value = len(pattern), len(value)
    while v < n_value:
        steps += 1
        if p < n_pattern and pattern[p] == "*":
            star, resume = p, v
            p += 1
        elif p < n_pattern and (pattern[p] == "?" or _same(pattern[p], value[v],
                                                          case_sensitive)):
            p += 1
            v += 1
        elif star >= 0:  # let the last '*' swallow one more character, retry after it
            resume += 1
            p, v = star + 1, resume
        else:
            return False, steps
    while p < n_pattern and pattern[p] == "*":  # trailing stars match the empty run
        steps += 1
        p += 1
    return p == n_pattern, steps


def _same(a: str, b: str, case_sensitive: bool) -> bool:
    return a == b or (not case_sensitive and a.casefold() == b.casefold())

"""PS3.15 Table E.1-1, loaded from the generated ``_ps315_table.json``.

The JSON is written by ``tools/generate_ps315_table.py`` from the standard's
table (edition recorded in the file) and never edited by hand. This module only
answers one question: given a tag and the selected options, which action of the
table applies to it?

Compound codes are resolved here for the IOD-agnostic case. The de-identifier
does not know which IOD, and so which attribute Type, an object follows; it only
meets attributes that are present. It therefore replaces a present attribute with
the weakest form that is valid whatever Type the table allows, never with
anything that carries the original value:

=========  =====  ==========================================================
table      here   why
=========  =====  ==========================================================
``Z/D``    ``D``  a dummy value is valid for Type 1 and Type 2
``X/Z``    ``Z``  a zero-length value is valid for Type 2 and Type 3
``X/D``    ``D``  a dummy value is valid for Type 1 and Type 3
``X/Z/D``  ``D``  a dummy value is valid for Types 1, 2 and 3
``X/Z/U*`` ``U``  the sequence is kept and the UIDs it holds are replaced
=========  =====  ==========================================================
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from radvault.errors import ConfigurationError

__all__ = ["Rule", "Table", "load_table"]

TABLE_PATH = Path(__file__).with_name("_ps315_table.json")

_COMPOUND = {"Z/D": "D", "X/Z": "Z", "X/D": "D", "X/Z/D": "D", "X/Z/U*": "U"}
_SIMPLE = frozenset("DZXKCU")


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of Table E.1-1 after the selected options were applied.

    Attributes
    ----------
    action : str
        One of ``D Z X K C U`` (compound codes already resolved).
    fallback : str
        The Basic Profile action (resolved), used when ``action`` is ``C`` but
        the value cannot be cleaned.
    """

    action: str
    fallback: str


class Table:
    """Table E.1-1 as a lookup from tag to :class:`Rule`.

    Parameters
    ----------
    document : dict
        The parsed ``_ps315_table.json``.
    columns : frozenset of str
        The option columns selected (e.g. ``{"rtn_pat_chars", "clean_desc"}``).

    Raises
    ------
    ConfigurationError
        If the document is not a Table E.1-1 this code understands.
    """

    def __init__(self, document: dict[str, Any], columns: frozenset[str]) -> None:
        try:
            self.edition: str = document["edition"]
            rows: dict[str, dict[str, str]] = document["rows"]
            known = set(document["columns"])
        except (KeyError, TypeError):
            raise ConfigurationError("the PS3.15 table file is malformed") from None
        if not re.fullmatch(r"\d{4}[a-z]", str(self.edition)) or not columns <= known:
            raise ConfigurationError("the PS3.15 table file is malformed")
        self._exact: dict[int, Rule] = {}
        self._masked: list[tuple[int, int, Rule]] = []
        self.private = Rule("X", "X")
        for key, cells in rows.items():
            rule = self._rule(cells, columns)
            if key == "private":
                self.private = rule
            elif "x" in key:
                mask = int("".join("0" if c == "x" else "F" for c in key), 16)
                value = int(key.replace("x", "0"), 16)
                self._masked.append((mask, value, rule))
            else:
                self._exact[int(key, 16)] = rule

    @staticmethod
    def _rule(cells: dict[str, str], columns: frozenset[str]) -> Rule:
        basic = _resolve(cells["basic"])
        chosen = {cells[c] for c in columns if c in cells}
        # Two selected options may disagree (e.g. a calibration date is K under
        # Retain Device Identity and C under Modified Dates): the stricter wins.
        if "C" in chosen:
            return Rule("C", basic)
        if "K" in chosen:
            return Rule("K", basic)
        return Rule(basic, basic)

    def lookup(self, tag: int) -> Rule | None:
        """The rule for ``tag``, or ``None`` when the table does not list it."""
        rule = self._exact.get(tag)
        if rule is not None:
            return rule
        for mask, value, masked_rule in self._masked:
            if tag & mask == value:
                return masked_rule
        return None


def _resolve(code: str) -> str:
    if code in _SIMPLE:
        return code
    try:
        return _COMPOUND[code]
    except KeyError:
        raise ConfigurationError(f"unknown PS3.15 action code {code!r}") from None


@cache
def _document() -> dict[str, Any]:
    try:
        return json.loads(TABLE_PATH.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ConfigurationError(f"cannot read the PS3.15 table {TABLE_PATH}") from None


@cache
def load_table(columns: frozenset[str]) -> Table:
    """The table with the given option columns applied (cached per combination).

    Raises
    ------
    ConfigurationError
        If the generated table file is missing or malformed.
    """
    return Table(_document(), columns)

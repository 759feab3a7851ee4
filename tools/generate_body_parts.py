#!/usr/bin/env python3
"""Generate ``src/radvault/imaging/_body_parts.py`` from DICOM PS3.16 Annex L.

PS3.3 C.7.3.1 defines the terms of Body Part Examined (0018,0015) by reference to
PS3.16 Annex L, "Correspondence of Anatomic Region Codes and Body Part Examined
Defined Terms". Every table of that annex (L-1 for people, L-2 and L-3 for
animals) has a "Body Part Examined" column; its non-empty cells, each once, are
the defined terms. RadVault keeps a Body Part Examined in the clear only when it
is one of them (``radvault.imaging.vocabulary``), so this script writes them into
a small Python module, with the edition and where they came from, rather than
anyone typing them by hand. A Python module, not JSON, so that it is packaged
with the code by ``packages.find`` and needs no package-data entry.

Two inputs are understood; pass exactly one.

``--docbook part16.xml`` (preferred)
    The standard itself: NEMA's DocBook source of PS3.16, published per edition at
    ``https://dicom.nema.org/medical/dicom/<edition>/source/docbook/part16/part16.xml``.
    The edition is read from the document's subtitle ("DICOM PS3.16 2026d - ...").
    Every table inside Annex L (``xml:id="chapter_L"``) with a "Body Part
    Examined" header is read; row and column spans are expanded, and a row that
    does not fill the header is an error rather than a silently dropped term.

``--terms FILE --edition EDITION --source TEXT``
    A list of the terms, one a line (``#`` starts a comment), taken from a faithful
    machine extraction of the same column. ``--source`` says which extraction.

The committed module was produced with ``--terms`` because NEMA's DocBook could
not be downloaded where it was generated. The list is the "BodyPartExamined"
entry of ``backend/app/rules/standard/ps3.3_iod.yaml`` in the public repository
yooonhyuk/clinical-rag-qa (commit 4725a7cd53e09ae5ade0b8c5121cdd9360b0e306),
which its ``scripts/build_iod_rules.py`` extracts from the Body Part Examined
column of Tables L-1, L-2 and L-3 of NEMA's part16.xml, PS3.16 2026d by the
document's subtitle (retrieved 2026-10-06, sha-256
293912fbc2acefe5d53dffa449070db488134da29aaa452e31d610d403888899). That extractor
does not expand row spans, so the list was checked before committing: every one
of the 317 terms of highdicom 0.28.2's transcription of Table L-1
(``highdicom/_standard/anatomic_regions.json``, the rows that carry a code) is in
it, and so is every term of an older hand transcription of the three tables (in
a GDCM-based anonymiser) but one, ``LEG`` (Table L-3, "Lower leg"), which David
Clunie's PixelMed anatomy table of 2026 lacks too: it gives ``LOWERLEG`` for
"Lower leg". Regenerating from the 2026d DocBook (``--docbook``) would confirm
the list beyond that cross-check.

Usage::

    python tools/generate_body_parts.py --docbook part16.xml
    python tools/generate_body_parts.py --terms annex_l_terms.txt --edition 2026d \\
        --source "..."
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path
from xml.etree import ElementTree

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "src" / "radvault" / "imaging" / "_body_parts.py"

#: A Body Part Examined term: Code String (PS3.5 6.2), upper case, at most 16 characters.
TERM = re.compile(r"[A-Z0-9_ ]{1,16}")
#: Fewer terms than this cannot be Annex L (2026d has 347).
MIN_TERMS = 100
_EDITION = re.compile(r"PS3\.16\s+(\d{4}[a-z])\b")
_XML_ID = "{http://www.w3.org/XML/1998/namespace}id"
_HEADER = "bodypartexamined"


class TableError(ValueError):
    """The input does not hold the Annex L terms this script understands."""


def check_term(term: str, where: str) -> str:
    """``term`` if it is a valid Code String of at most 16 characters.

    Raises
    ------
    TableError
        If it is not.
    """
    if not TERM.fullmatch(term) or term != term.strip():
        raise TableError(f"{where}: {term!r} is not a Body Part Examined term")
    return term


# --------------------------------------------------------------------------- DocBook
def _local(element: ElementTree.Element) -> str:
    return element.tag.rsplit("}", 1)[-1]


def _text(element: ElementTree.Element) -> str:
    return " ".join("".join(element.itertext()).split())


def _fill_carried(out: list[str], carried: dict[int, tuple[str, int]], column: int) -> int:
    """Append the cells that rows above span into, from ``column`` on; the next column."""
    while column in carried:
        text, left = carried[column]
        out.append(text)
        carried[column] = (text, left - 1)
        if left == 1:
            del carried[column]
        column += 1
    return column


def _grid(rows: Iterable[ElementTree.Element]) -> list[list[str]]:
    """The cells of ``rows`` as text, with ``rowspan``/``colspan`` (and ``morerows``) expanded."""
    grid: list[list[str]] = []
    carried: dict[int, tuple[str, int]] = {}  # column -> (text, rows still to fill)
    for row in rows:
        cells = [c for c in row if _local(c) in {"th", "td", "entry"}]
        out: list[str] = []
        column = 0
        for cell in cells:
            column = _fill_carried(out, carried, column)
            text = _text(cell)
            down = int(cell.get("rowspan") or 1) + int(cell.get("morerows") or 0)
            for _ in range(int(cell.get("colspan") or 1)):
                out.append(text)
                if down > 1:
                    carried[column] = (text, down - 1)
                column += 1
        _fill_carried(out, carried, column)
        grid.append(out)
    return grid


def _annex_l_tables(root: ElementTree.Element) -> list[ElementTree.Element]:
    annex = next((e for e in root.iter() if e.get(_XML_ID) == "chapter_L"), None)
    scope = annex if annex is not None else root
    tables = [e for e in scope.iter() if _local(e) == "table"]
    if annex is None:  # no chapter id: fall back on the tables' own ids
        tables = [t for t in tables if (t.get(_XML_ID) or "").startswith("table_L-")]
    return tables


def read_docbook(path: Path) -> tuple[str, list[str]]:
    """Read the Body Part Examined terms of Annex L and the edition from part16.xml.

    Raises
    ------
    TableError
        If the edition or no Annex L table with a Body Part Examined column is
        found, a row does not fill its table's header, or a cell is not a term.
    """
    # The operator supplies NEMA's own document to a developer tool; no untrusted input.
    root = ElementTree.parse(path).getroot()  # noqa: S314
    edition = None
    for element in root.iter():
        if _local(element) in {"subtitle", "title"}:
            match = _EDITION.search(_text(element))
            if match:
                edition = match.group(1)
                break
    if edition is None:
        raise TableError(f"{path}: no 'PS3.16 <edition>' title found")
    terms: list[str] = []
    read = 0
    for table in _annex_l_tables(root):
        head = next((e for e in table.iter() if _local(e) == "thead"), None)
        body = next((e for e in table.iter() if _local(e) == "tbody"), None)
        if head is None or body is None:
            continue
        header = _grid(e for e in head.iter() if _local(e) in {"tr", "row"})
        labels = [re.sub(r"\s", "", cell).lower() for cell in header[-1]] if header else []
        if _HEADER not in labels:
            continue
        read += 1
        column = labels.index(_HEADER)
        name = table.get(_XML_ID) or "an Annex L table"
        for cells in _grid(e for e in body.iter() if _local(e) in {"tr", "row"}):
            if len(cells) != len(labels):
                raise TableError(f"{path}: {name}: row {cells!r} does not fill the header")
            term = cells[column]
            if term and term not in terms:
                terms.append(check_term(term, f"{path}: {name}"))
    if not read:
        raise TableError(f"{path}: no Annex L table with a 'Body Part Examined' column")
    return edition, sorted(terms)


# --------------------------------------------------------------------------- term list
def read_terms(path: Path) -> list[str]:
    """Read a list of terms, one a line, ``#`` comments and blank lines ignored.

    Raises
    ------
    TableError
        If a line is not a term or a term repeats.
    """
    terms: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        term = line.split("#", 1)[0].strip()
        if not term:
            continue
        if term in terms:
            raise TableError(f"{path}:{number}: {term!r} repeats")
        terms.append(check_term(term, f"{path}:{number}"))
    return sorted(terms)


# --------------------------------------------------------------------------- output
def _literal(text: str) -> str:
    """A double-quoted Python string literal for ``text`` (JSON's escapes are Python's)."""
    return json.dumps(text)


def render_module(edition: str, source: str, terms: Iterable[str]) -> str:
    """The text of ``_body_parts.py``.

    Raises
    ------
    TableError
        If the edition is malformed, the source empty, a term invalid or
        repeated, or there are too few terms to be Annex L.
    """
    if not re.fullmatch(r"\d{4}[a-z]", edition):
        raise TableError(f"edition {edition!r} is not like 2026d")
    if not source.strip():
        raise TableError("the source is empty")
    ordered = sorted(terms)
    if len(set(ordered)) != len(ordered):
        raise TableError("a term repeats")
    for term in ordered:
        check_term(term, "render")
    if len(ordered) < MIN_TERMS:
        raise TableError(f"{len(ordered)} terms: too few to be PS3.16 Annex L")
    source_lines = textwrap.wrap(source, 88, break_long_words=False, break_on_hyphens=False)
    # a literal for each wrapped piece, keeping the space that separated it from the next
    source_literal = "\n".join(
        "    " + _literal(line + (" " if i < len(source_lines) - 1 else ""))
        for i, line in enumerate(source_lines)
    )
    body = "\n".join(f"    {_literal(term)}," for term in ordered)
    return (
        f'"""DICOM PS3.16 {edition} Annex L: the Body Part Examined (0018,0015) defined terms.\n'
        "\n"
        "Generated by ``tools/generate_body_parts.py``; do not edit by hand. The terms are\n"
        "the non-empty cells of the Body Part Examined column of every Annex L table\n"
        "(\"Correspondence of Anatomic Region Codes and Body Part Examined Defined Terms\",\n"
        "referenced by PS3.3 C.7.3.1), each once, sorted. ``SOURCE`` says where they\n"
        "were read.\n"
        '"""\n'
        "\n"
        "from typing import Final\n"
        "\n"
        '__all__ = ["EDITION", "SOURCE", "TERMS"]\n'
        "\n"
        "#: The edition of PS3.16 the terms are from.\n"
        f"EDITION: Final = {_literal(edition)}\n"
        "#: Where the terms were read.\n"
        "SOURCE: Final = (\n"
        f"{source_literal}\n"
        ")\n"
        f"#: The {len(ordered)} defined terms, sorted.\n"
        "TERMS: Final = (\n"
        f"{body}\n"
        ")\n"
    )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--docbook", type=Path, help="official PS3.16 DocBook XML (part16.xml)")
    group.add_argument("--terms", type=Path, help="the terms, one a line")
    parser.add_argument("--edition", help="edition of the --terms list (e.g. 2026d)")
    parser.add_argument("--source", help="where the --terms list was read")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    try:
        if args.docbook:
            edition, terms = read_docbook(args.docbook)
            if args.edition and args.edition != edition:
                raise TableError(f"--edition {args.edition} but the document is {edition}")
            digest = hashlib.sha256(args.docbook.read_bytes()).hexdigest()
            source = (f"NEMA DICOM PS3.16 {edition} DocBook source (part16.xml), Annex L, "
                      f"Body Part Examined column of every table, sha256 {digest}")
        else:
            if not (args.edition and args.source):
                parser.error("--terms needs --edition and --source")
            edition, terms, source = args.edition, read_terms(args.terms), args.source
        text = render_module(edition, source, terms)
    except (TableError, OSError, ElementTree.ParseError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {len(terms)} Body Part Examined terms of PS3.16 {edition} to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

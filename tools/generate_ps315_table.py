#!/usr/bin/env python3
"""Generate ``src/radvault/imaging/_ps315_table.json`` from DICOM PS3.15 Table E.1-1.

Table E.1-1 ("Application Level Confidentiality Profile Attributes") of DICOM
PS3.15 Annex E lists, for every attribute that may identify a person, the action
of the Basic Application Level Confidentiality Profile and the action of each
option (Retain UIDs, Retain Device Identity, Clean Descriptors, ...). RadVault's
de-identifier (``radvault.imaging.deid``) reads nothing else: this script turns
the table into a compact JSON file and records where it came from and which
edition of the standard it is.

Two inputs are understood; pass exactly one.

``--docbook part15.xml`` (preferred)
    The standard itself: the official DocBook source of PS3.15, published by NEMA
    per edition at ``https://dicom.nema.org/medical/dicom/<edition>/source/docbook/part15/part15.xml``.
    The edition is read from the document's subtitle ("DICOM PS3.15 2025b - ...").

``--idiscore-wheel idiscore-1.6.0-py2.py3-none-any.whl``
    The transcription of Table E.1-1 (Basic Profile plus all ten option columns)
    that the ``idiscore`` package ships on PyPI in ``idiscore/_public_dicom.py``,
    scraped by its authors from NEMA's "current" Table E.1-1 on 2025-06-24. Get it
    with ``pip download --no-deps idiscore==1.6.0 --python-version 3.12
    --only-binary=:all:``. The module is parsed with :mod:`ast`, never imported or
    executed, and the wheel must match the pinned sha-256 below. That file does not
    name the edition, so ``--edition`` is required.

The committed JSON was produced from the idiscore 1.6.0 wheel with
``--edition 2025b`` because the official DocBook could not be downloaded where it
was generated. Why 2025b: NEMA's "current" edition on 2025-06-24; the table holds
every row and option code of PS3.15 2025a unchanged (checked row by row against
a transcription of the 2025a DocBook table) plus the Gender Identity, Sex
Parameters for Clinical Use, Name to Use and Pronoun attributes that followed
2025a; pynetdicom 3.0.4 (August 2025) still targets 2025b. Regenerating from the
2025b DocBook (``--docbook``) would confirm the edition beyond inference.

Usage::

    python tools/generate_ps315_table.py --idiscore-wheel idiscore-1.6.0-py2.py3-none-any.whl \\
        --edition 2025b
    python tools/generate_ps315_table.py --docbook part15.xml

Output format (compact JSON): ``edition``, ``source``, ``columns`` (the option
columns in table order) and ``rows``: a mapping from the tag as eight hex digits
(upper case, ``x`` for the repeating-group nibbles, e.g. ``60xx3000``) or
``private`` to ``{column: action code}`` holding the non-empty cells, with
``basic`` always present. Action codes are copied as the standard spells them
(``D``, ``Z``, ``X``, ``K``, ``C``, ``U``, ``Z/D``, ``X/Z``, ``X/D``, ``X/Z/D``,
``X/Z/U*``); interpreting them is the de-identifier's job, not this script's.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import sys
import zipfile
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "src" / "radvault" / "imaging" / "_ps315_table.json"

#: The option columns of Table E.1-1, left to right, as the JSON names them.
COLUMNS = (
    "rtn_safe_private",
    "rtn_uids",
    "rtn_dev_id",
    "rtn_inst_id",
    "rtn_pat_chars",
    "rtn_long_full_dates",
    "rtn_long_modif_dates",
    "clean_desc",
    "clean_struct_cont",
    "clean_graph",
)
ACTIONS = frozenset({"D", "Z", "X", "K", "C", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"})

# DocBook header cell (normalised: lower case, no spaces or dots) -> JSON column.
_DOCBOOK_HEADERS = {
    "basicprof": "basic",
    "rtnsafeprivopt": "rtn_safe_private",
    "rtnuidsopt": "rtn_uids",
    "rtndevidopt": "rtn_dev_id",
    "rtninstidopt": "rtn_inst_id",
    "rtnpatcharsopt": "rtn_pat_chars",
    "rtnlongfulldatesopt": "rtn_long_full_dates",
    "rtnlongmodifdatesopt": "rtn_long_modif_dates",
    "cleandescopt": "clean_desc",
    "cleanstructcontopt": "clean_struct_cont",
    "cleangraphopt": "clean_graph",
}

# idiscore rule-set variable -> JSON column; idiscore action name -> table code.
_IDISCORE_SETS = {
    "basic_profile": "basic",
    "retain_safe_private": "rtn_safe_private",
    "retain_uid": "rtn_uids",
    "retain_device_id": "rtn_dev_id",
    "retain_institution_id": "rtn_inst_id",
    "retain_patient_characteristics": "rtn_pat_chars",
    "retain_full_dates": "rtn_long_full_dates",
    "retain_modified_dates": "rtn_long_modif_dates",
    "clean_descriptors": "clean_desc",
    "clean_structured_content": "clean_struct_cont",
    "clean_graphics": "clean_graph",
}
_IDISCORE_ACTIONS = {
    "DUMMY": "D",
    "EMPTY": "Z",
    "REMOVE": "X",
    "KEEP": "K",
    "CLEAN": "C",
    "UID": "U",
    "EMPTY_OR_DUMMY": "Z/D",
    "REMOVE_OR_EMPTY": "X/Z",
    "REPLACE_OR_DUMMY": "X/Z",  # idiscore's alias of X/Z
    "REMOVE_OR_DUMMY": "X/D",
    "REMOVE_OR_EMPTY_OR_DUMMY": "X/Z/D",
    "REMOVE_OR_EMPTY_OR_UID": "X/Z/U*",
}
IDISCORE_WHEEL = "idiscore-1.6.0-py2.py3-none-any.whl"
IDISCORE_SHA256 = "c2b8dbb252390ea3072ed3a069fd21c0814c40dd2a7f344d9ffe15e1e6afe14a"
IDISCORE_MODULE = "idiscore/_public_dicom.py"

_TAG = re.compile(r"^\(([0-9A-Fa-fx]{4}),\s*([0-9A-Fa-fx]{4})\)$")
_PRIVATE = re.compile(r"^\(gggg,\s*eeee\)\s+where\s+gggg\s+is\s+odd$", re.IGNORECASE)
_EDITION = re.compile(r"PS3\.15\s+(\d{4}[a-z])\b")


class TableError(ValueError):
    """The input does not hold a Table E.1-1 this script understands."""


def _tag_key(text: str) -> str:
    """Normalise ``(0008,0050)`` / ``0008,0050`` / ``00080050`` to ``00080050``."""
    compact = re.sub(r"[()\s,]", "", text)
    if not re.fullmatch(r"[0-9A-Fa-fx]{8}", compact):
        raise TableError(f"not a tag: {text!r}")
    return "".join(c.lower() if c in "xX" else c.upper() for c in compact)


def _check_action(code: str, where: str) -> str:
    code = code.strip()
    if code not in ACTIONS:
        raise TableError(f"{where}: unknown action code {code!r}")
    return code


# --------------------------------------------------------------------------- DocBook
def _text(element: ElementTree.Element) -> str:
    return " ".join("".join(element.itertext()).split())


def read_docbook(path: Path) -> tuple[str, dict[str, dict[str, str]]]:
    """Read Table E.1-1 and the edition from the official PS3.15 DocBook XML.

    Raises
    ------
    TableError
        If the table, its header or the edition cannot be found, or a cell holds
        an unknown tag or action code.
    """
    # The operator supplies NEMA's own document to a developer tool; no untrusted input.
    root = ElementTree.parse(path).getroot()  # noqa: S314
    edition = None
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] in {"subtitle", "title"}:
            match = _EDITION.search(_text(element))
            if match:
                edition = match.group(1)
                break
    if edition is None:
        raise TableError(f"{path}: no 'PS3.15 <edition>' title found")
    table = next(
        (e for e in root.iter()
         if e.tag.rsplit("}", 1)[-1] == "table"
         and e.get("{http://www.w3.org/XML/1998/namespace}id") == "table_E.1-1"),
        None,
    )
    if table is None:
        raise TableError(f"{path}: no table with xml:id 'table_E.1-1'")
    rows = [r for r in table.iter() if r.tag.rsplit("}", 1)[-1] == "tr"]
    if not rows:
        raise TableError(f"{path}: Table E.1-1 has no rows")
    header = [_text(c) for c in rows[0] if c.tag.rsplit("}", 1)[-1] in {"th", "td"}]
    columns: dict[int, str] = {}
    for index, label in enumerate(header):
        key = re.sub(r"[\s.]", "", label).lower()
        if key in _DOCBOOK_HEADERS:
            columns[index] = _DOCBOOK_HEADERS[key]
        elif key == "tag":
            columns[index] = "tag"
    if "basic" not in columns.values() or "tag" not in columns.values():
        raise TableError(f"{path}: unexpected Table E.1-1 header {header!r}")
    table_rows: dict[str, dict[str, str]] = {}
    for row in rows[1:]:
        cells = [_text(c) for c in row if c.tag.rsplit("}", 1)[-1] in {"th", "td"}]
        if len(cells) != len(header):
            raise TableError(f"{path}: row {cells!r} does not match the header")
        values = {columns[i]: cell for i, cell in enumerate(cells) if i in columns and cell}
        tag_text = values.pop("tag")
        if _PRIVATE.match(tag_text):
            key = "private"
        elif _TAG.match(tag_text):
            key = _tag_key(tag_text)
        else:
            raise TableError(f"{path}: unexpected tag cell {tag_text!r}")
        table_rows[key] = {col: _check_action(code, f"{key}/{col}") for col, code in values.items()}
        if "basic" not in table_rows[key]:
            raise TableError(f"{path}: {key} has no Basic Profile action")
    return edition, table_rows


# --------------------------------------------------------------------------- idiscore
def read_idiscore_wheel(path: Path, *, verify: bool = True) -> dict[str, dict[str, str]]:
    """Read Table E.1-1 from the idiscore wheel's ``_public_dicom.py`` (parsed, not run).

    Raises
    ------
    TableError
        If the wheel's digest differs from the pinned one (``verify``), or the
        module does not have the expected shape.
    """
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if verify and digest != IDISCORE_SHA256:
        raise TableError(f"{path}: sha-256 {digest} is not the pinned {IDISCORE_WHEEL}")
    with zipfile.ZipFile(path) as wheel:
        source = wheel.read(IDISCORE_MODULE).decode("utf-8")
    tree = ast.parse(source)
    table_rows: dict[str, dict[str, str]] = {}
    seen: set[str] = set()
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        column = _IDISCORE_SETS.get(node.targets[0].id)
        if column is None:
            continue
        seen.add(column)
        rules = next((k.value for k in node.value.keywords if k.arg == "rules"), None)
        if not isinstance(rules, ast.List):
            raise TableError(f"{IDISCORE_MODULE}: {node.targets[0].id} has no rules list")
        for rule in rules.elts:
            if not (isinstance(rule, ast.Tuple) and len(rule.elts) == 2):
                raise TableError(f"{IDISCORE_MODULE}: unexpected rule {ast.dump(rule)}")
            ident, action = rule.elts
            if not (isinstance(ident, ast.Call) and isinstance(ident.func, ast.Name)
                    and isinstance(action, ast.Attribute)):
                raise TableError(f"{IDISCORE_MODULE}: unexpected rule {ast.dump(rule)}")
            if ident.func.id == "PrivateTags":
                key = "private"
            elif ident.func.id in {"SingleTag", "RepeatingGroup"} and ident.args:
                key = _tag_key(ast.literal_eval(ident.args[0]))
            else:
                raise TableError(f"{IDISCORE_MODULE}: unexpected identifier {ast.dump(ident)}")
            try:
                code = _IDISCORE_ACTIONS[action.attr]
            except KeyError:
                raise TableError(f"{IDISCORE_MODULE}: unknown action {action.attr}") from None
            if column != "basic" and key not in table_rows:
                raise TableError(f"{IDISCORE_MODULE}: {key} is in {column} only, not in Basic")
            table_rows.setdefault(key, {})[column] = code
    missing = set(_IDISCORE_SETS.values()) - seen
    if missing:
        raise TableError(f"{IDISCORE_MODULE}: rule sets missing for {sorted(missing)}")
    return table_rows


# --------------------------------------------------------------------------- output
def build_document(edition: str, source: str, rows: dict[str, dict[str, str]]) -> dict[str, Any]:
    """The JSON document the de-identifier loads.

    Raises
    ------
    TableError
        If the edition is malformed or the table is implausibly small.
    """
    if not re.fullmatch(r"\d{4}[a-z]", edition):
        raise TableError(f"edition must look like 2025b, got {edition!r}")
    if len(rows) < 500 or "private" not in rows:
        raise TableError(f"only {len(rows)} rows: this is not a complete Table E.1-1")
    ordered = {
        key: {"basic": cells["basic"], **{c: cells[c] for c in COLUMNS if c in cells}}
        for key, cells in sorted(rows.items())
    }
    return {
        "standard": "DICOM PS3.15",
        "table": "E.1-1 Application Level Confidentiality Profile Attributes",
        "edition": edition,
        "source": source,
        "generator": "tools/generate_ps315_table.py",
        "columns": ["basic", *COLUMNS],
        "rows": ordered,
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--docbook", type=Path, help="official PS3.15 DocBook XML (part15.xml)")
    group.add_argument("--idiscore-wheel", type=Path, help=f"{IDISCORE_WHEEL} from PyPI")
    parser.add_argument("--edition", help="edition of the idiscore table (e.g. 2025b)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    try:
        if args.docbook:
            edition, rows = read_docbook(args.docbook)
            if args.edition and args.edition != edition:
                raise TableError(f"--edition {args.edition} but the document is {edition}")
            digest = hashlib.sha256(args.docbook.read_bytes()).hexdigest()
            source = (f"NEMA DICOM PS3.15 {edition} DocBook source (part15.xml), "
                      f"Table E.1-1, sha256 {digest}")
        else:
            if not args.edition:
                parser.error("--idiscore-wheel needs --edition")
            edition, rows = args.edition, read_idiscore_wheel(args.idiscore_wheel)
            source = (f"Table E.1-1 as transcribed in PyPI {IDISCORE_WHEEL} "
                      f"({IDISCORE_MODULE}, sha256 {IDISCORE_SHA256}), scraped from NEMA's "
                      "current PS3.15 on 2025-06-24; edition inferred, see the generator")
        document = build_document(edition, source, rows)
    except (TableError, OSError, zipfile.BadZipFile, KeyError, SyntaxError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    args.out.write_text(json.dumps(document, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {len(document['rows'])} rows of PS3.15 {edition} Table E.1-1 to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

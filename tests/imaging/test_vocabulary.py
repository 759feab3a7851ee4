"""Header values kept in the clear (Modality, Body Part Examined) are checked terms only."""

from __future__ import annotations

import csv
import importlib.resources
import importlib.util
import io
import json
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from radvault.errors import InvalidRequest
from radvault.imaging import _body_parts
from radvault.imaging.reading import read_image_bytes
from radvault.imaging.vocabulary import (
    BODY_PART_EDITION,
    BODY_PARTS,
    body_part_hint,
    body_part_term,
    modality_hint,
    modality_term,
)

REPO = Path(__file__).resolve().parents[2]
RADBENCH_MANIFEST = REPO / ".." / "shared" / "data" / "radbench" / "manifest.csv"


@pytest.mark.parametrize(("raw", "kept"), [("CT", "CT"), (" mr ", "MR"), ("RTIMAGE", "RTIMAGE"),
                                           ("QUIBBLEWORTH", "OT"), ("", "OT"), (None, "OT")])
def test_a_modality_is_a_defined_term_or_other(raw, kept):
    assert modality_term(raw) == kept


# --------------------------------------------------------------------------- Body Part Examined
@pytest.mark.parametrize("term", [
    "CHEST", "HEAD", "BRAIN", "BREAST", "KIDNEY", "LUNG", "SKULL", "ABDOMEN", "ABDOMENPELVIS",
    "CHESTABDOMEN", "CHESTABDPELVIS", "HEADNECK", "CSPINE", "TSPINE", "LSPINE", "WHOLEBODY",
    "EXTREMITY", "KNEE", "HAND", "JAW",
    "3RDVENTRICLE",  # digits are allowed in a term
    "ENDONASOPHARYNYX",  # the standard's own spelling, kept as it is
    "FETALARM",  # Table L-1, a row without a code
    "FOREFETLOCK",  # Table L-2, large animals
    "ARM",  # Table L-3
])
def test_a_defined_term_of_annex_l_is_kept(term):
    assert body_part_term(term) == term


@pytest.mark.parametrize("raw", [
    "SMITH", "DOE", "JOHNSON", "QUIBBLEWORTH",  # a surname typed as a body part
    "JOHN DOE", "Doe, John", "DOE_JOHN_1961", "MRN 55512345", "MRN55512345",
    "QUIBBLEWORTH MRN55512345", "CHEST ABDOMEN", "CHEST\\ABDOMEN", "CHESTS",
    "LEG",  # in Table L-3 of older editions ("Lower leg"), LOWERLEG in 2026d
    "", "   ", None,
])
def test_anything_else_reads_as_unknown(raw):
    assert body_part_term(raw) == ""


@pytest.mark.parametrize(("raw", "kept"), [(" chest ", "CHEST"), ("headneck", "HEADNECK"),
                                           ("tSpine", "TSPINE"), ("Chest\n", "CHEST"),
                                           ("smith", "")])
def test_case_and_surrounding_space_are_ignored(raw, kept):
    assert body_part_term(raw) == kept


def test_the_terms_are_the_generated_annex_l_table_shipped_in_the_package():
    shipped = importlib.resources.files("radvault.imaging").joinpath("_body_parts.py")
    assert shipped.is_file()  # a module, so packages.find ships it: no package-data entry
    assert frozenset(_body_parts.TERMS) == BODY_PARTS
    assert BODY_PART_EDITION == _body_parts.EDITION == "2026d"
    assert len(_body_parts.TERMS) == len(BODY_PARTS) == 347
    assert list(_body_parts.TERMS) == sorted(BODY_PARTS)
    assert all(_generator().TERM.fullmatch(term) for term in BODY_PARTS)
    assert "PS3.16" in _body_parts.SOURCE and "L-1" in _body_parts.SOURCE


def test_the_table_is_exactly_what_the_generator_writes():
    """Never edited by hand: rendering its own data again gives the same file."""
    module = _generator()
    text = module.render_module(_body_parts.EDITION, _body_parts.SOURCE, _body_parts.TERMS)
    assert text == Path(_body_parts.__file__).read_text(encoding="utf-8")


def test_every_coded_term_of_highdicoms_table_l1_is_a_defined_term():
    """highdicom transcribes the rows of Table L-1 that carry a code; none may be missing."""
    resource = importlib.resources.files("highdicom").joinpath("_standard/anatomic_regions.json")
    if not resource.is_file():
        pytest.skip("this highdicom has no anatomic_regions.json")
    highdicom_terms = set(json.loads(resource.read_text(encoding="utf-8")))
    assert len(highdicom_terms) > 300
    assert highdicom_terms <= BODY_PARTS


def test_body_parts_that_route_to_models_are_defined_terms():
    """The model registry routes by (modality, body part): these must survive the check.

    Shipped model cards, the packaged samples' hints and radbench's body_part column
    (when the shared data are present) all name CHEST, BRAIN, BREAST or KIDNEY.
    """
    from radvault.samples import list_samples

    used = {pair["body_part"] for card in (REPO / "models").glob("**/model_card.json")
            for pair in json.loads(card.read_text(encoding="utf-8"))["trained_on"]}
    used |= {s.body_part for s in list_samples() if s.body_part}
    if RADBENCH_MANIFEST.is_file():
        with RADBENCH_MANIFEST.open(newline="") as fh:
            used |= {row["body_part"] for row in csv.DictReader(fh) if row["body_part"]}
    assert {"CHEST", "BRAIN", "BREAST", "KIDNEY"} <= used
    assert {part: body_part_term(part) for part in used} == {part: part for part in used}


# --------------------------------------------------------------------------- callers
def _ct_small() -> pydicom.Dataset:
    path = get_testdata_file("CT_small.dcm", download=False)
    if path is None:
        pytest.skip("pydicom's test data is not installed")
    return pydicom.dcmread(path)


def _to_bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def test_free_text_in_the_header_never_reaches_the_record():
    ds = _ct_small()
    ds.Modality = "QUIBBLEWORTH"
    with pytest.warns(UserWarning, match="exceeds the maximum length"):  # as a careless device
        ds.BodyPartExamined = "QUIBBLEWORTH MRN55512345"
    record = read_image_bytes(_to_bytes(ds), "planted.dcm")
    assert (record.modality, record.body_part) == ("OT", "")


def test_a_surname_in_body_part_examined_never_reaches_the_record():
    ds = _ct_small()
    ds.BodyPartExamined = "SMITH"
    assert read_image_bytes(_to_bytes(ds), "surname.dcm").body_part == ""
    ds.BodyPartExamined = "ABDOMENPELVIS"
    assert read_image_bytes(_to_bytes(ds), "term.dcm").body_part == "ABDOMENPELVIS"


def test_a_modality_outside_the_vocabulary_is_screened_for_burned_in_text_as_ot():
    from pydicom.dataset import Dataset

    from radvault.imaging.deid import assess_burned_in

    ds = Dataset()
    ds.Modality = "DOE JOHN"  # as the catalog reads it: OT, which may carry text
    risk = assess_burned_in(ds)
    assert risk.risk and "OT" in (risk.reason or "") and "DOE" not in (risk.reason or "")
    ds.Modality = "SC"  # no defined term, but Secondary Capture: still always at risk
    ds.BurnedInAnnotation = "NO"
    assert assess_burned_in(ds).risk


def test_hints_for_a_png_pass_the_same_vocabulary():
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, format="PNG")
    record = read_image_bytes(buf.getvalue(), "x.png", modality="us", body_part="breast")
    assert (record.modality, record.body_part) == ("US", "BREAST")
    record = read_image_bytes(buf.getvalue(), "x.png", modality="Doe John", body_part="MRN 123")
    assert (record.modality, record.body_part) == ("OT", "")
    record = read_image_bytes(buf.getvalue(), "x.png", body_part="Smith")
    assert record.body_part == ""


def test_ingest_hints_fill_a_missing_body_part_only_with_a_defined_term():
    from radvault.pipeline.ingest import _fill_gaps

    ds = _ct_small()
    if "BodyPartExamined" in ds:
        del ds.BodyPartExamined
    record = read_image_bytes(_to_bytes(ds), "no-part.dcm")
    assert record.body_part == ""
    assert _fill_gaps(record, None, "Smith").body_part == ""
    assert _fill_gaps(record, None, " knee ").body_part == "KNEE"


# --------------------------------------------------------------------------- the generator
def _generator():
    spec = importlib.util.spec_from_file_location(
        "generate_body_parts", REPO / "tools" / "generate_body_parts.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _docbook(tables: str) -> str:
    return (
        '<book xmlns="http://docbook.org/ns/docbook" '
        'xmlns:xml="http://www.w3.org/XML/1998/namespace">'
        "<subtitle>DICOM PS3.16 2031c - Content Mapping Resource</subtitle>"
        '<chapter xml:id="chapter_K"><table xml:id="table_K-1"><thead><tr>'
        "<th><para>Body Part Examined</para></th></tr></thead>"
        "<tbody><tr><td><para>NOTANNEXL</para></td></tr></tbody></table></chapter>"
        f'<chapter xml:id="chapter_L">{tables}</chapter></book>'
    )


def _table(name: str, header: list[str], rows: list[str]) -> str:
    head = "".join(f"<th><para>{h}</para></th>" for h in header)
    return (f'<table xml:id="{name}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def test_generator_reads_every_annex_l_tables_body_part_column(tmp_path):
    l1 = _table("table_L-1", ["Coding Scheme Designator", "Code Value", "Code Meaning",
                              "Body Part Examined"], [
        "<tr><td>SCT</td><td>43799004</td><td>Chest</td><td><para>CHEST</para></td></tr>",
        "<tr><td>SCT</td><td>53505006</td><td>Anus</td><td/></tr>",  # no term: skipped
        "<tr><td/><td/><td>Fetal arm</td><td>FETALARM</td></tr>",
        # a Coding Scheme cell spanning two rows must not shift the second row's columns
        '<tr><td rowspan="2">SCT</td><td>69536005</td><td>Head</td><td>HEAD</td></tr>',
        "<tr><td>12738006</td><td>Brain</td><td>BRAIN</td></tr>",
    ])
    l2 = _table("table_L-2", ["Code Meaning", "Body Part Examined", "Notes"], [
        "<tr><td>Chest</td><td>CHEST</td><td/></tr>",  # repeated: kept once
        "<tr><td>Fetlock of forelimb</td><td>FOREFETLOCK</td><td/></tr>",
    ])
    source = tmp_path / "part16.xml"
    source.write_text(_docbook(l1 + l2), encoding="utf-8")
    edition, terms = _generator().read_docbook(source)
    assert edition == "2031c"
    assert terms == ["BRAIN", "CHEST", "FETALARM", "FOREFETLOCK", "HEAD"]


def test_generator_refuses_a_row_that_does_not_fill_the_header_or_a_bad_term(tmp_path):
    module = _generator()
    header = ["Code Meaning", "Body Part Examined"]
    source = tmp_path / "part16.xml"
    source.write_text(_docbook(_table("table_L-1", header, ["<tr><td>CHEST</td></tr>"])),
                      encoding="utf-8")
    with pytest.raises(module.TableError, match="does not fill"):
        module.read_docbook(source)
    source.write_text(_docbook(_table("table_L-1", header, [
        "<tr><td>Chest</td><td>Chest wall, left</td></tr>"])), encoding="utf-8")
    with pytest.raises(module.TableError, match="not a Body Part Examined term"):
        module.read_docbook(source)
    source.write_text(_docbook(""), encoding="utf-8")
    with pytest.raises(module.TableError, match="no Annex L table"):
        module.read_docbook(source)


def test_generator_reads_a_term_list_and_refuses_too_short_a_table(tmp_path):
    module = _generator()
    listing = tmp_path / "terms.txt"
    listing.write_text("# Annex L\nCHEST\n\nHEAD  # Table L-1\n", encoding="utf-8")
    assert module.read_terms(listing) == ["CHEST", "HEAD"]
    listing.write_text("CHEST\nCHEST\n", encoding="utf-8")
    with pytest.raises(module.TableError, match="repeats"):
        module.read_terms(listing)
    with pytest.raises(module.TableError, match="too few"):
        module.render_module("2026d", "test", ["CHEST", "HEAD"])
    with pytest.raises(module.TableError):
        module.render_module("2026", "test", _body_parts.TERMS)


@pytest.mark.parametrize(("typed", "term"), [(" dx ", "DX"), ("ot", "OT"), ("", None),
                                             ("   ", None), (None, None)])
def test_a_typed_modality_hint_is_a_defined_term_or_none(typed, term):
    assert modality_hint(typed) == term


@pytest.mark.parametrize(("typed", "term"), [("chest ", "CHEST"), ("Brain", "BRAIN"),
                                             ("", None), (None, None)])
def test_a_typed_body_part_hint_is_a_defined_term_or_none(typed, term):
    assert body_part_hint(typed) == term


@pytest.mark.parametrize(("check", "typed", "field"), [
    (modality_hint, "XX", "modality"), (modality_hint, "Doe Jane", "--modality"),
    (body_part_hint, "Doe_Jane", "body_part"), (body_part_hint, "MRN55512345", "--body-part"),
])
def test_a_typed_hint_that_is_no_defined_term_is_refused_naming_the_field_only(
        check, typed, field):
    # Unlike a header value (normalised silently), a hint a person typed is refused: a typo
    # would otherwise become OT or an unknown body part, a different study.
    with pytest.raises(InvalidRequest) as caught:
        check(typed, field=field)
    message = str(caught.value)
    assert message.startswith(f"{field} is not a DICOM ") and "defined term" in message
    assert typed not in message and typed.upper() not in message

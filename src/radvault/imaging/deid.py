"""De-identification of DICOM datasets (DICOM PS3.15 Annex E).

RadVault applies the Basic Application Level Confidentiality Profile of PS3.15
Annex E to every DICOM object it ingests, driven by Table E.1-1 of the edition
named in :data:`PROFILE_EDITION` (generated into ``_ps315_table.json`` by
``tools/generate_ps315_table.py``; see ``docs/deidentification.md``). Four options
can be selected through :class:`DeidOptions`: Retain Longitudinal Temporal
Information with Modified Dates, Retain Patient Characteristics, Retain Device
Identity and Clean Descriptors. Retain UIDs is deliberately not offered.

Identifiers become keyed pseudonyms: HMAC-SHA256 under the vault's secret, so the
same patient, UID or AE title always maps to the same replacement inside a vault
and to unrelated ones in another. The values the profile took out are handed back
in :attr:`DeidResult.removed` so that a later stage can seal them; they are never
logged. Pixel data is not touched: images whose pixels may show burned-in text are
refused unless the options accept them (:class:`~radvault.errors.BurnedInAnnotationRefused`).
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass, fields
from os import PathLike
from typing import TYPE_CHECKING, Any

from pydicom import Dataset
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement, empty_value_for_VR
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.valuerep import PersonName

from radvault.errors import BurnedInAnnotationRefused, ConfigurationError, DeidentificationError
from radvault.imaging._deid_table import Rule, Table, load_table
from radvault.imaging._deid_values import (
    clean_text,
    date_shift_days,
    dummy_value,
    pseudonym,
    pseudonymous_ae,
    replacement_uid,
    shift_da,
    shift_dt,
)
from radvault.imaging.reading import values_unvalidated
from radvault.imaging.vocabulary import modality_term

if TYPE_CHECKING:
    from radvault.config import Settings

__all__ = [
    "BURNED_IN_MODALITIES",
    "PROFILE_EDITION",
    "BurnedInAssessment",
    "DeidOptions",
    "DeidResult",
    "Deidentifier",
    "assess_burned_in",
    "patient_key",
    "pseudonym_for",
    "replacement_uid",
]

logger = logging.getLogger(__name__)

#: The edition of DICOM PS3.15 whose Table E.1-1 drives the profile.
PROFILE_EDITION = "2025b"

#: Shortest accepted de-identification secret, in bytes (256 bits).
MIN_SECRET_BYTES = 32

#: Modalities whose pixels routinely carry burned-in text: ``always`` whatever
#: Burned In Annotation says, ``undeclared`` when Burned In Annotation is absent.
BURNED_IN_MODALITIES: dict[str, frozenset[str]] = {
    "always": frozenset({"US", "SC"}),
    "undeclared": frozenset({"XA", "ES", "OT"}),
}
_SECONDARY_CAPTURE_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.7",
    "1.2.840.10008.5.1.4.1.1.7.1",
    "1.2.840.10008.5.1.4.1.1.7.2",
    "1.2.840.10008.5.1.4.1.1.7.3",
    "1.2.840.10008.5.1.4.1.1.7.4",
})

# CID 7050 "De-identification Method" codes (PS3.16), coding scheme DCM.
_BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
_OPTION_CODES = {
    "retain_dates_shifted": (
        "113107", "Retain Longitudinal Temporal Information Modified Dates Option"
    ),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
}
_OPTION_COLUMNS = {
    "retain_dates_shifted": "rtn_long_modif_dates",
    "retain_patient_characteristics": "rtn_pat_chars",
    "retain_device_identity": "rtn_dev_id",
    "clean_descriptors": "clean_desc",
}

_PATIENT_NAME = 0x00100010
_PATIENT_ID = 0x00100020
# File Meta elements that name sending/receiving systems or carry private data.
_FILE_META_REMOVED = (0x00020016, 0x00020017, 0x00020018, 0x00020100, 0x00020102)
_TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "CS"})
# Unlisted text cleaned everywhere (long free text) and, inside the items of a
# sequence that is itself cleaned (a descriptor under Clean Descriptors), all
# text that can hold words.
_FREE_TEXT_VRS = frozenset({"LT", "ST", "UT"})
# Text the table does not list in the Patient (0010), Visit (0038) and contact (0074)
# groups is emptied: Patient's Birth Date in Alternative Calendar (0010,0033), Contact
# Display Name (0074,100C) and Contact URI (0074,100A) are LO/UR and name the patient.
_IDENTITY_GROUPS = frozenset({0x0010, 0x0038, 0x0074})
_IDENTITY_TEXT_VRS = frozenset({"LO", "SH", "UC", "UR", "LT", "ST", "UT", "PN"})
_DESCRIPTOR_TEXT_VRS = frozenset({"LO", "SH", "UC", "LT", "ST", "UT"})
# Code Sequence Macro (PS3.3 Table 8.8-1) attributes that hold codes, not words:
# Code Value, Coding Scheme Designator, Coding Scheme Version, Long Code Value.
# The allowlist would drop valid codes such as "R-1002B" or "99LOCAL".
_CODE_TAGS = frozenset({0x00080100, 0x00080102, 0x00080103, 0x00080119})


@dataclass(frozen=True)
class DeidOptions:
    """Which PS3.15 options the profile applies (all off except Clean Descriptors).

    Parameters
    ----------
    retain_dates_shifted : bool
        Retain Longitudinal Temporal Information with Modified Dates: dates and
        date-times are moved by a per-patient number of days (intervals kept)
        instead of being removed; times of day are kept.
    retain_patient_characteristics : bool
        Retain Patient Characteristics: sex, age, size, weight, ... are kept.
    retain_device_identity : bool
        Retain Device Identity: serial numbers, station and device ids are kept;
        AE titles become consistent pseudonymous AE titles.
    clean_descriptors : bool
        Clean Descriptors: free-text descriptors (study and series description,
        protocol name, comments, ...) keep only the words of a vocabulary of
        imaging terms and short numbers; without it they are removed.
    keep_private_tags : bool
        Keep private (odd-group) attributes. Off by default: the Basic Profile
        removes them, and this is not the standard's Retain Safe Private option
        (nothing checks that what is kept is safe).
    accept_burned_in : bool
        De-identify objects whose pixels may show burned-in text instead of
        refusing them. The profile never cleans pixels.

    Raises
    ------
    ConfigurationError
        If an option is not a bool.
    """

    retain_dates_shifted: bool = False
    retain_patient_characteristics: bool = False
    retain_device_identity: bool = False
    clean_descriptors: bool = True
    keep_private_tags: bool = False
    accept_burned_in: bool = False

    def __post_init__(self) -> None:
        for option in fields(self):
            if not isinstance(getattr(self, option.name), bool):
                raise ConfigurationError(f"de-identification option {option.name} must be a bool")

    @classmethod
    def from_settings(cls, settings: Settings) -> DeidOptions:
        """The options configured in :class:`radvault.config.Settings`."""
        return cls(**{option.name: getattr(settings, option.name) for option in fields(cls)})

    @property
    def columns(self) -> frozenset[str]:
        """The Table E.1-1 option columns these options select."""
        return frozenset(col for name, col in _OPTION_COLUMNS.items() if getattr(self, name))

    def method_codes(self) -> list[tuple[str, str]]:
        """CID 7050 (code value, code meaning) pairs: the profile, then each option."""
        chosen = [code for name, code in _OPTION_CODES.items() if getattr(self, name)]
        return [_BASIC_PROFILE_CODE, *chosen]


@dataclass(frozen=True, eq=False)
class DeidResult:
    """What :class:`Deidentifier` returns.

    Attributes
    ----------
    dataset : pydicom.Dataset
        The de-identified dataset: a copy (the input is not modified), or the input
        itself when called with ``in_place=True``.
    pseudonym : str
        The patient's pseudonym, now its PatientID and PatientName.
    removed : dict of str to str
        The identifying values the profile removed or replaced at the top level of
        the dataset, keyed by DICOM keyword (``PatientName``, ``PatientBirthDate``,
        ``AccessionNumber``, ``StudyInstanceUID``, ...), as text. Binary values,
        sequences and private attributes are not included. PHI: seal it, never log it.
    burned_in_risk : bool
        True when the pixels may show burned-in identifying text.
    burned_in_reason : str or None
        Why, when ``burned_in_risk``.
    date_shift_days : int or None
        The shift applied to dates (negative days) under Retain Longitudinal
        Temporal Information with Modified Dates; ``None`` without that option.
    """

    dataset: Dataset
    pseudonym: str
    removed: dict[str, str]
    burned_in_risk: bool
    burned_in_reason: str | None
    date_shift_days: int | None


@dataclass(frozen=True)
class BurnedInAssessment:
    """Whether an object's pixels may show burned-in text, and why."""

    risk: bool
    reason: str | None = None


def assess_burned_in(ds: Dataset) -> BurnedInAssessment:
    """Judge whether ``ds``'s pixels may carry burned-in identifying text.

    At risk: Burned In Annotation (0028,0301) is ``YES``; or the modality is one
    of ``BURNED_IN_MODALITIES["always"]`` (ultrasound, secondary capture) or the
    SOP Class is a Secondary Capture class, whatever Burned In Annotation says
    (such devices write text into pixels and often mislabel it); or the modality
    is one of ``BURNED_IN_MODALITIES["undeclared"]`` (XA, ES, OT) and Burned In
    Annotation is absent.
    """
    declared = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    raw = str(ds.get("Modality", "") or "").strip().upper()
    # "SC" is no defined term but names Secondary Capture, so it is judged as written;
    # anything else outside the vocabulary is judged (and named) as OT, like the catalog
    modality = raw if raw in BURNED_IN_MODALITIES["always"] else modality_term(raw)
    sop_class = str(ds.get("SOPClassUID", "") or "").strip()
    if declared == "YES":
        return BurnedInAssessment(True, "BurnedInAnnotation is YES")
    if modality in BURNED_IN_MODALITIES["always"]:
        return BurnedInAssessment(True, f"modality {modality} routinely has burned-in text")
    if sop_class in _SECONDARY_CAPTURE_CLASSES:
        return BurnedInAssessment(True, "Secondary Capture images routinely have burned-in text")
    if not declared and modality in BURNED_IN_MODALITIES["undeclared"]:
        return BurnedInAssessment(
            True, f"modality {modality} without BurnedInAnnotation may have burned-in text"
        )
    return BurnedInAssessment(False)


def _check_secret(secret: bytes) -> bytes:
    if not isinstance(secret, bytes | bytearray):
        raise ConfigurationError("the de-identification secret must be bytes")
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigurationError(
            f"the de-identification secret must be at least {MIN_SECRET_BYTES} bytes"
        )
    return bytes(secret)


def pseudonym_for(secret: bytes, patient_key: str) -> str:
    """The pseudonym of a patient: ``RV-`` and 16 hex digits of a keyed HMAC-SHA256.

    Parameters
    ----------
    secret : bytes
        The vault's de-identification secret (at least 32 bytes).
    patient_key : str
        What identifies the patient (see :func:`patient_key`).

    Raises
    ------
    ConfigurationError
        If the secret is not bytes or is shorter than 32 bytes.
    """
    return pseudonym(_check_secret(secret), patient_key)


def patient_key(ds: Dataset) -> str:
    """The identity a pseudonym is derived from.

    Patient ID with its Issuer when a Patient ID is present; otherwise Patient's
    Name with Birth Date; otherwise the Study Instance UID (each study then stands
    for its own unknown patient).
    """
    patient_id = str(ds.get("PatientID", "") or "").strip()
    if patient_id:
        issuer = str(ds.get("IssuerOfPatientID", "") or "").strip()
        return f"id\x1f{patient_id}\x1f{issuer}"
    name = str(ds.get("PatientName", "") or "").strip()
    if name:
        return f"name\x1f{name}\x1f{str(ds.get('PatientBirthDate', '') or '').strip()}"
    return f"study\x1f{str(ds.get('StudyInstanceUID', '') or '').strip()}"


class Deidentifier:
    """Apply the PS3.15 Basic Application Level Confidentiality Profile.

    Configured once, applied to many datasets; each call returns a new dataset and
    leaves its input untouched.

    Parameters
    ----------
    secret : bytes
        The vault's de-identification secret, at least 32 bytes. Pseudonyms, UIDs
        and date shifts are HMAC-SHA256 of the original values under it.
    options : DeidOptions, optional
        The profile options; defaults to :class:`DeidOptions` ``()``.

    Raises
    ------
    ConfigurationError
        If the secret is too short, or the generated Table E.1-1 is missing,
        malformed or of another edition than :data:`PROFILE_EDITION`.
    """

    def __init__(self, secret: bytes, options: DeidOptions | None = None) -> None:
        self._secret = _check_secret(secret)
        self.options = options if options is not None else DeidOptions()
        if not isinstance(self.options, DeidOptions):
            raise ConfigurationError("options must be DeidOptions")
        self._table: Table = load_table(self.options.columns)
        if self._table.edition != PROFILE_EDITION:
            raise ConfigurationError(
                f"the PS3.15 table is edition {self._table.edition}, expected {PROFILE_EDITION}"
            )

    def __repr__(self) -> str:  # never show the secret
        return f"Deidentifier(options={self.options!r})"

    def __call__(self, ds: Dataset, *, in_place: bool = False) -> DeidResult:
        """De-identify ``ds``.

        By default ``ds`` is left as it was and the result holds a copy; with
        ``in_place=True`` (for a caller that owns a freshly read dataset and
        keeps no other reference to it) ``ds`` itself is de-identified and
        returned, which spares the copy: about a third of the time for a
        typical image.

        Raises
        ------
        BurnedInAnnotationRefused
            If the pixels may carry burned-in text and the options do not accept it.
        DeidentificationError
            If the dataset cannot be processed (e.g. an element cannot be decoded).
        TypeError
            If ``ds`` is not a pydicom Dataset.
        """
        if not isinstance(ds, Dataset):
            raise TypeError("Deidentifier expects a pydicom Dataset")
        source = _source_name(ds)
        burned_in = assess_burned_in(ds)
        if burned_in.risk and not self.options.accept_burned_in:
            raise BurnedInAnnotationRefused(source, f"{burned_in.reason}; refused by policy (the "
                                            "vault's setting accept_burned_in admits such "
                                            "images)")
        try:
            return self._deidentify(ds if in_place else _copy(ds), burned_in)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            logger.warning("de-identification failed: %s", type(exc).__name__)
            raise DeidentificationError(  # no file name: messages never carry PHI
                f"the confidentiality profile could not be applied ({type(exc).__name__})"
            ) from None

    def _deidentify(self, out: Dataset, burned_in: BurnedInAssessment) -> DeidResult:
        """De-identify ``out`` itself (the caller copied it if the input must stay)."""
        key = patient_key(out)
        patient = pseudonym(self._secret, key)
        shift = date_shift_days(self._secret, key) if self.options.retain_dates_shifted else None
        walk = _Walk(self._secret, self._table, self.options, patient, shift)
        walk.dataset(out, top=True)
        self._stamp(out, patient, shift)
        walk.file_meta(out)
        if getattr(out, "preamble", None) is not None:
            out.preamble = b"\x00" * 128  # a preamble may hold another format's header
        if hasattr(out, "filename"):
            out.filename = None  # the file name may itself be identifying
        logger.debug("de-identified one dataset: %d values removed", len(walk.removed))
        return DeidResult(
            dataset=out,
            pseudonym=patient,
            removed=walk.removed,
            burned_in_risk=burned_in.risk,
            burned_in_reason=burned_in.reason,
            date_shift_days=shift,
        )

    def _stamp(self, out: Dataset, patient: str, shift: int | None) -> None:
        """Record the pseudonym and how the object was de-identified (PS3.15 E.1.1)."""
        out.PatientID = patient
        out.PatientName = patient
        out.PatientIdentityRemoved = "YES"
        out.LongitudinalTemporalInformationModified = "MODIFIED" if shift is not None else "REMOVED"
        codes = self.options.method_codes()
        method = [f"DICOM PS3.15 {PROFILE_EDITION} Annex E Table E.1-1", *(m for _, m in codes)]
        if self.options.keep_private_tags:
            method.append("Private attributes retained unchecked")
        out.DeidentificationMethod = method
        items = []
        for value, meaning in codes:
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            items.append(item)
        out.DeidentificationMethodCodeSequence = Sequence(items)


def _source_name(ds: Dataset) -> str:
    name = getattr(ds, "filename", None)
    return str(name) if isinstance(name, str | PathLike) else "<dataset>"


def _is_overlay_or_curve(tag: BaseTag) -> bool:
    group = tag.group
    return (0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF) and group % 2 == 0


class _Walk:
    """One pass of the profile over a dataset, its sequences and its File Meta."""

    def __init__(
        self, secret: bytes, table: Table, options: DeidOptions, patient: str, shift: int | None,
    ) -> None:
        self.secret = secret
        self.table = table
        self.options = options
        self.patient = patient
        self.shift = shift
        self.removed: dict[str, str] = {}

    # ----------------------------------------------------------------- traversal
    def dataset(self, ds: Dataset, *, top: bool = False, descriptor: bool = False) -> None:
        """Apply the profile to every element of ``ds``.

        ``top`` is true for the object itself (its removed values are recorded);
        ``descriptor`` is true inside the items of a sequence the profile cleans
        (``C``), whose unlisted text is then cleaned too (see :meth:`unlisted`).
        """
        for tag in list(ds.keys()):
            tag = BaseTag(tag)
            if tag.is_private:
                if self.options.keep_private_tags:
                    elem = ds[tag]
                    if elem.VR == "SQ":
                        self.items(elem, descriptor)
                else:
                    del ds[tag]
                continue
            if tag.element == 0 and tag.group != 0x0002:
                del ds[tag]  # group lengths: obsolete, and wrong once values change
                continue
            elem = ds[tag]
            if tag in (_PATIENT_ID, _PATIENT_NAME):
                self.record(elem, top)
                elem.value = self.patient
                continue
            if _is_overlay_or_curve(tag):
                # Table E.1-1: Curve Data (50xx,xxxx) X; Overlay Data (60xx,3000) and
                # Overlay Comments (60xx,4000) X. Without Clean Graphics the overlay
                # plane has no data left, so the whole group goes (Overlay Plane Module
                # is optional; a plane without data would not be valid).
                if self.table.lookup(int(tag)) is not None:
                    self.record(elem, top)
                del ds[tag]
                continue
            rule = self.table.lookup(int(tag))
            if rule is None:
                self.unlisted(ds, elem, top, descriptor)
            else:
                self.apply(ds, elem, rule, top, descriptor)

    def items(self, elem: DataElement, descriptor: bool = False) -> None:
        for item in elem.value or ():
            self.dataset(item, descriptor=descriptor)

    # ----------------------------------------------------------------- actions
    def apply(
        self, ds: Dataset, elem: DataElement, rule: Rule, top: bool, descriptor: bool = False,
    ) -> None:
        action, vr = rule.action, elem.VR
        if action == "C":
            cleaned = self.clean(elem)
            if cleaned is _SEQUENCE:
                # A cleaned sequence is a descriptor: what its items say is cleaned
                # too, including text Table E.1-1 does not list (Code Meaning, ...).
                self.items(elem, descriptor=True)
                return
            if cleaned is _UNCHANGED:
                return
            if cleaned is not None:
                self.set(elem, cleaned, top)
                return
            action = rule.fallback
        if action == "K":
            if vr == "SQ":
                self.items(elem, descriptor)
        elif action == "X":
            self.record(elem, top)
            del ds[elem.tag]
        elif action == "Z":
            if vr == "SQ":
                elem.value = Sequence()
            elif not elem.is_empty:
                self.record(elem, top)
                elem.value = empty_value_for_VR(vr)
        elif vr == "SQ":  # D and U on a sequence: keep it, de-identify its items
            self.items(elem, descriptor)
        elif action == "U" and vr == "UI":
            if not elem.is_empty:
                self.set(elem, _map(elem.value, lambda uid: replacement_uid(self.secret, uid)), top)
        else:  # D, or U on an element that is not a UID
            self.set(elem, self.dummy(elem), top)

    def clean(self, elem: DataElement) -> Any:
        """The cleaned value (C); ``_SEQUENCE`` for a sequence, ``_UNCHANGED`` when the
        value is already clean, ``None`` when C cannot apply."""
        vr = elem.VR
        if vr == "SQ":
            return _SEQUENCE
        if elem.is_empty:
            return None
        if vr in ("DA", "DT"):
            if self.shift is None:
                return None
            shifter = shift_da if vr == "DA" else shift_dt
            moved = [shifter(str(v), self.shift) for v in _values(elem.value)]
            return None if any(m is None for m in moved) else _unwrap(moved)
        if vr == "TM":
            # Dates move by whole days, so times of day keep every interval.
            return _UNCHANGED if self.shift is not None else None
        if vr == "AE":
            return _map(elem.value, lambda ae: pseudonymous_ae(self.secret, str(ae)))
        if vr in _TEXT_VRS:
            cleaned = [clean_text(str(v)) for v in _values(elem.value)]
            if vr == "CS":
                cleaned = [re.sub(r"[^A-Z0-9 _]", "", c.upper()).strip() for c in cleaned]
            if not all(cleaned):
                return None
            return _unwrap(cleaned)
        return None

    def dummy(self, elem: DataElement) -> Any:
        if elem.VR == "UI":
            text = str(elem.value or "") or "dummy"
            return replacement_uid(self.secret, text)
        return dummy_value(elem.VR)

    def unlisted(
        self, ds: Dataset, elem: DataElement, top: bool, descriptor: bool = False,
    ) -> None:
        """Defence in depth for attributes Table E.1-1 does not list.

        Sequences are searched; text of the Patient, Visit and contact groups (0010,
        0038, 0074) is emptied; dates and date-times are shifted (or emptied);
        person names become a dummy; long free text (LT, ST, UT) is cleaned. Inside
        the items of a cleaned sequence (``descriptor``), short text (LO, SH, UC,
        e.g. a Code Meaning) is cleaned as well, except the code attributes of the
        Code Sequence Macro (Code Value, Coding Scheme Designator, ...). Cleaned
        text keeps only allowlisted words and may be left empty.
        """
        vr = elem.VR
        if vr == "SQ":
            self.items(elem, descriptor)
            return
        if elem.is_empty:
            return
        if elem.tag.group in _IDENTITY_GROUPS and vr in _IDENTITY_TEXT_VRS:
            self.set(elem, empty_value_for_VR(vr), top)
            return
        if vr in ("DA", "DT"):
            moved = self.clean(elem)
            if moved is None or moved is _UNCHANGED:
                self.record(elem, top)
                elem.value = empty_value_for_VR(vr)
            else:
                self.set(elem, moved, top)
        elif vr == "PN":
            self.set(elem, dummy_value("PN"), top)
        elif vr in _FREE_TEXT_VRS or (
            descriptor and vr in _DESCRIPTOR_TEXT_VRS and int(elem.tag) not in _CODE_TAGS
        ):
            self.set(elem, _unwrap([clean_text(str(v)) for v in _values(elem.value)]), top)

    # ----------------------------------------------------------------- bookkeeping
    def set(self, elem: DataElement, value: Any, top: bool) -> None:
        if _text(elem.value) != _text(value):
            self.record(elem, top)
        elem.value = value

    def record(self, elem: DataElement, top: bool) -> None:
        if not top:
            return
        text = _text(elem.value)
        if text is None:
            return
        tag = elem.tag
        keyword = keyword_for_tag(tag) or f"{tag.group:04X}{tag.element:04X}"
        if _is_overlay_or_curve(tag):
            keyword = f"{keyword}_{tag.group:04X}"
        self.removed[keyword] = text

    def file_meta(self, out: Dataset) -> None:
        """Drop the identifying file meta elements and point the meta at the new SOP UID.

        Without value validation: the elements are decoded here for the first time,
        and pydicom's warning and log record about an invalid one would quote it.
        """
        meta = getattr(out, "file_meta", None)
        if meta is None:
            return
        with values_unvalidated():
            self._file_meta(out, meta)

    def _file_meta(self, out: Dataset, meta: Dataset) -> None:
        for tag in _FILE_META_REMOVED:
            if tag in meta:
                self.record(meta[tag], True)
                del meta[tag]
        if "SOPInstanceUID" in out:
            meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
        elif "MediaStorageSOPInstanceUID" in meta:
            meta.MediaStorageSOPInstanceUID = replacement_uid(
                self.secret, str(meta.MediaStorageSOPInstanceUID)
            )


_SEQUENCE = object()
_UNCHANGED = object()


def _copy(ds: Dataset) -> Dataset:
    """A deep copy of ``ds`` that shares its immutable values.

    Values are never modified in place here (only replaced), so sharing them is
    safe, and it spares pydicom re-validating every value of the input, which
    would warn again about invalid values already reported when the file was read.
    Elements not yet decoded are copied as they are, without decoding them.
    """
    memo: dict[int, Any] = {}

    def share(dataset: Dataset) -> None:
        for tag in dataset.keys():  # noqa: SIM118 (iterating a Dataset decodes elements)
            elem = dataset.get_item(tag)
            if not isinstance(elem, DataElement):
                continue  # still raw: a tuple of bytes, copied without decoding
            value = elem.value
            if isinstance(value, Sequence):
                for item in value:
                    share(item)
            elif isinstance(value, MultiValue):
                memo.update((id(v), v) for v in value)
            elif value is not None:
                memo[id(value)] = value

    share(ds)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        share(meta)
    return copy.deepcopy(ds, memo)


def _values(value: Any) -> list[Any]:
    if isinstance(value, MultiValue | list | tuple):
        return list(value)
    return [value]


def _unwrap(values: list[Any]) -> Any:
    return values[0] if len(values) == 1 else values


def _map(value: Any, function: Any) -> Any:
    return _unwrap([function(str(v)) for v in _values(value)])


def _text(value: Any) -> str | None:
    """A value as text for :attr:`DeidResult.removed`; ``None`` if empty or binary."""
    if value is None or isinstance(value, bytes | bytearray | Sequence):
        return None
    if isinstance(value, MultiValue | list | tuple):
        parts = [_text(v) for v in value]
        return "\\".join(p or "" for p in parts) or None
    if isinstance(value, PersonName):
        value = str(value)
    text = str(value)
    return text or None

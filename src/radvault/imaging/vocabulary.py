"""The header values RadVault keeps in the clear: Modality and Body Part Examined, checked.

The catalog stores a study's modality and body part unencrypted (they choose the
model and filter the worklist), and ingest audit entries name the modality. A
header may hold anything, though: a technologist's free text, a patient's name or
record number typed into the wrong field. So only values of the vocabulary the
standard defines are kept, and the hints an operator gives at upload pass the same
check: a Modality that is not one of PS3.3's defined terms (C.7.3.1.1.1, current
and retired) reads as ``OT``, and a Body Part Examined that is not one of the
defined terms of PS3.16 Annex L ("Correspondence of Anatomic Region Codes and Body
Part Examined Defined Terms", to which PS3.3 C.7.3.1 refers: ``CHEST``,
``HEADNECK``, ``CSPINE``, ...) reads as unknown (``""``). A surname or record number
typed there (``SMITH``, ``MRN55512345``) is thus never kept; only a name that is
itself an anatomic term (``HEAD``, ``WING``) could be, and it would read as that
term. Both comparisons ignore surrounding spaces and case (values are upper-cased,
as Code Strings are).

Header values are normalised silently (devices write all sorts), but a hint a
person types (an upload form's ``modality`` and ``body_part``, ``radvault ingest
--modality``) is refused when it is not a defined term: :func:`modality_hint` and
:func:`body_part_hint` raise instead of turning a typo into ``OT`` or an unknown
body part. Their message names the field, never the value (it may be a name).

The Modality terms are written out here by hand; the Body Part Examined terms are
generated into :mod:`radvault.imaging._body_parts` by ``tools/generate_body_parts.py``,
which records the edition (:data:`BODY_PART_EDITION`) and the source. Neither
pydicom nor highdicom ships either list: highdicom's copy of Annex L keeps only the
rows of Table L-1 that carry a code, so it lacks the animal tables and the
uncoded terms (``FETALARM``, ...).
"""

from __future__ import annotations

from typing import Final

from radvault.errors import InvalidRequest
from radvault.imaging import _body_parts

__all__ = ["BODY_PARTS", "BODY_PART_EDITION", "MODALITIES", "body_part_hint", "body_part_term",
           "modality_hint", "modality_term", "model_pair"]

#: PS3.3 C.7.3.1.1.1 Modality defined terms, current and retired.
MODALITIES: Final = frozenset({
    "ANN", "AR", "ASMT", "AU", "BDUS", "BI", "BMD", "CFM", "CR", "CT", "CTPROTOCOL", "DMS",
    "DG", "DOC", "DX", "ECG", "EEG", "EMG", "EOG", "EPS", "ES", "FID", "GM", "HC", "HD",
    "IO", "IOL", "IVOCT", "IVUS", "KER", "KO", "LEN", "LS", "MG", "MR", "M3D", "NM", "OAM",
    "OCT", "OP", "OPM", "OPT", "OPTBSV", "OPTENF", "OPV", "OSS", "OT", "PA", "PLAN", "POS",
    "PR", "PT", "PX", "REG", "RESP", "RF", "RG", "RTDOSE", "RTIMAGE", "RTINTENT", "RTPLAN",
    "RTRAD", "RTRECORD", "RTSEGANN", "RTSTRUCT", "RWV", "SEG", "SM", "SMR", "SR", "SRF",
    "STAIN", "TEXTUREMAP", "TG", "US", "VA", "XA", "XAPROTOCOL", "XC",
    # retired
    "AS", "CD", "CF", "CP", "CS", "DD", "DF", "DM", "DS", "EC", "FA", "FS", "LP", "MA",
    "MS", "OPR", "ST", "VF",
})

#: PS3.16 Annex L Body Part Examined defined terms (every table), from the generated table.
BODY_PARTS: Final = frozenset(_body_parts.TERMS)
#: The PS3.16 edition :data:`BODY_PARTS` was taken from.
BODY_PART_EDITION: Final = _body_parts.EDITION


#: Modalities a model treats as another: CR (computed radiography) makes the same
#: projection radiographs as DX (digital radiography). No body part is aliased: MR HEAD
#: was tried as MR BRAIN and not kept, since HEAD also covers orbits, sinuses, face and
#: inner ears, which the brain model would then answer unflagged.
_MODALITY_ALIASES: Final = {"CR": "DX"}


def model_pair(modality: str | None, body_part: str | None) -> tuple[str, str]:
    """The (modality, body part) a model is chosen and checked by for this declaration.

    Upper case, ``""`` for unknown, with CR taken as DX, so that a CR chest film reaches
    the chest model (and is not referred as not trained on). The stored study keeps
    what was declared.

    Examples
    --------
    >>> model_pair("cr", "CHEST"), model_pair("MR", "HEAD")
    (('DX', 'CHEST'), ('MR', 'HEAD'))
    """
    m = (modality or "").strip().upper()
    b = (body_part or "").strip().upper()
    return _MODALITY_ALIASES.get(m, m), b


def modality_term(value: str | None) -> str:
    """``value`` as a Modality defined term (upper case), or ``"OT"`` if it is none."""
    term = (value or "").strip().upper()
    return term if term in MODALITIES else "OT"


def body_part_term(value: str | None) -> str:
    """``value`` as a Body Part Examined defined term (upper case), or ``""`` (unknown)."""
    term = (value or "").strip().upper()
    return term if term in BODY_PARTS else ""


def modality_hint(value: str | None, *, field: str = "modality") -> str | None:
    """A Modality a person typed, as a defined term (upper case); refused if it is none.

    Parameters
    ----------
    value : str or None
        The hint as typed; case and surrounding spaces do not matter. ``None``
        or blank: no hint.
    field : str
        How the refusal names the field (``"modality"``, ``"--modality"``).

    Returns
    -------
    str or None
        The defined term, or ``None`` for no hint.

    Raises
    ------
    InvalidRequest
        If it is not a PS3.3 Modality defined term; the message names ``field``,
        never the value.
    """
    return _typed_term(value, MODALITIES, f"{field} is not a DICOM Modality defined term "
                       "(PS3.3 C.7.3.1.1.1), such as CT, MR, DX, CR, US, MG or OT")


def body_part_hint(value: str | None, *, field: str = "body part") -> str | None:
    """A Body Part Examined a person typed, as a defined term (upper case); refused if it
    is none.

    Parameters
    ----------
    value : str or None
        The hint as typed; case and surrounding spaces do not matter. ``None``
        or blank: no hint.
    field : str
        How the refusal names the field (``"body part"``, ``"--body-part"``).

    Returns
    -------
    str or None
        The defined term, or ``None`` for no hint.

    Raises
    ------
    InvalidRequest
        If it is not a PS3.16 Annex L Body Part Examined defined term; the message
        names ``field``, never the value.
    """
    return _typed_term(value, BODY_PARTS, f"{field} is not a DICOM Body Part Examined "
                       "defined term (PS3.16 Annex L), such as CHEST, HEAD, BRAIN, ABDOMEN or "
                       "KNEE")


def _typed_term(value: str | None, terms: frozenset[str], refusal: str) -> str | None:
    """A typed hint as the defined term it names, ``None`` when blank; else refused with
    ``refusal`` (which names the field, never the value)."""
    term = (value or "").strip().upper()
    if not term:
        return None
    if term not in terms:
        raise InvalidRequest(refusal)
    return term

"""The header values RadVault keeps in the clear: Modality and Body Part Examined, checked.

The catalog stores a study's modality and body part unencrypted (they choose the
model and filter the worklist), and ingest audit entries name the modality. A
header may hold anything, though: a technologist's free text, a patient's name or
record number typed into the wrong field. So only values of the vocabulary the
standard defines are kept: a Modality that is not one of PS3.3's defined terms
(C.7.3.1.1.1, current and retired) reads as ``OT``, and a Body Part Examined that
is not one word of at most 16 letters reads as unknown. The defined terms of Body
Part Examined (PS3.16 Annex L: ``CHEST``, ``HEADNECK``, ``CSPINE``, ...) are all such
words, while a name or record number typed there has a space or digits
(``JOHN DOE``, ``MRN 55512345``); a single surname would still pass (a residual
risk: the full Annex L list would close it). Written out by hand: neither pydicom
nor highdicom ships the defined-term list of Modality or of Body Part Examined.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["MODALITIES", "body_part_term", "modality_term"]

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

_BODY_PART_WORD: Final = re.compile(r"[A-Z]{1,16}")


def modality_term(value: str | None) -> str:
    """``value`` as a Modality defined term (upper case), or ``"OT"`` if it is none."""
    term = (value or "").strip().upper()
    return term if term in MODALITIES else "OT"


def body_part_term(value: str | None) -> str:
    """``value`` as one upper-case word of at most 16 letters, or ``""`` (unknown)."""
    term = (value or "").strip().upper()
    return term if _BODY_PART_WORD.fullmatch(term) else ""

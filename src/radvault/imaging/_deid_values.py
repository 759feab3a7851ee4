"""Replacement values for de-identification: keyed pseudonyms, UIDs, dummies,
shifted dates and cleaned descriptors.

Everything derived from an identifying value uses HMAC-SHA256 under the vault's
de-identification secret, each use under its own label, so that the same input
gives the same output inside one vault and unrelated output in another, and
nothing can be reversed or recomputed without the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import date, timedelta

__all__ = [
    "DATE_SHIFT_MAX_DAYS",
    "clean_text",
    "date_shift_days",
    "dummy_value",
    "keyed_digest",
    "pseudonym",
    "pseudonymous_ae",
    "replacement_uid",
    "shift_da",
    "shift_dt",
]

#: Dates move back by 1 to this many days (per patient), never by zero.
DATE_SHIFT_MAX_DAYS = 3650

DUMMY_TEXT = "ANONYMIZED"

# A dummy for every VR the table can meet; all valid for their VR.
_DUMMIES: dict[str, object] = {
    "AE": DUMMY_TEXT,
    "AS": "000Y",
    "CS": DUMMY_TEXT,
    "DA": "19000101",
    "DS": "0",
    "DT": "19000101000000",
    "IS": "0",
    "LO": DUMMY_TEXT,
    "LT": DUMMY_TEXT,
    "PN": DUMMY_TEXT,
    "SH": DUMMY_TEXT,
    "ST": DUMMY_TEXT,
    "TM": "000000",
    "UC": DUMMY_TEXT,
    "UR": "urn:radvault:anonymized",
    "UT": DUMMY_TEXT,
    "FL": 0.0,
    "FD": 0.0,
    "SL": 0,
    "SS": 0,
    "SV": 0,
    "UL": 0,
    "US": 0,
    "UV": 0,
}
_BINARY_DUMMY = b"\x00" * 8  # valid length for OB, OW, OD, OF, OL, OV and UN


def keyed_digest(secret: bytes, label: str, value: str) -> bytes:
    """HMAC-SHA256 of ``value`` under ``secret``, domain-separated by ``label``."""
    message = label.encode("ascii") + b"\x00" + value.encode("utf-8", "surrogateescape")
    return hmac.new(secret, message, hashlib.sha256).digest()


def pseudonym(secret: bytes, patient_key: str) -> str:
    """``RV-`` and 16 upper-case hex digits: a valid LO, SH and PN value."""
    return "RV-" + keyed_digest(secret, "patient", patient_key)[:8].hex().upper()


def replacement_uid(secret: bytes, uid: str) -> str:
    """A ``2.25`` UID from 128 bits of HMAC of ``uid`` (laid out as a UUID version 8)."""
    raw = bytearray(keyed_digest(secret, "uid", uid.strip().rstrip("\x00"))[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80  # version 8: custom
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return f"2.25.{int.from_bytes(raw, 'big')}"


def pseudonymous_ae(secret: bytes, ae_title: str) -> str:
    """A consistent, meaningless AE title (16 characters) standing for ``ae_title``."""
    return "RV" + keyed_digest(secret, "ae", ae_title.strip())[:7].hex().upper()


def date_shift_days(secret: bytes, patient_key: str) -> int:
    """The per-patient date shift: minus 1 to minus :data:`DATE_SHIFT_MAX_DAYS` days."""
    number = int.from_bytes(keyed_digest(secret, "date-shift", patient_key)[:8], "big")
    return -(1 + number % DATE_SHIFT_MAX_DAYS)


def dummy_value(vr: str) -> object:
    """A non-empty value valid for ``vr`` and free of identifying content."""
    return _DUMMIES.get(vr, _BINARY_DUMMY)


def _shift_date(text: str, days: int) -> str | None:
    digits = text.replace(".", "") if len(text) == 10 else text  # ACR-NEMA YYYY.MM.DD
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        moved = date(int(digits[:4]), int(digits[4:6]), int(digits[6:])) + timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return f"{moved.year:04d}{moved.month:02d}{moved.day:02d}"


def shift_da(text: str, days: int) -> str | None:
    """Shift a DA value by ``days``; ``None`` when it is not a full date."""
    return _shift_date(text.strip(), days)


def shift_dt(text: str, days: int) -> str | None:
    """Shift the date part of a DT value by ``days``, keeping time and UTC offset.

    Returns ``None`` when the value has less than a full date (a year alone cannot
    be shifted by days without leaking or inventing precision).
    """
    text = text.strip()
    moved = _shift_date(text[:8], days)
    return None if moved is None else moved + text[8:]


# ----------------------------------------------------------------------- cleaning
# "Clean" keeps a descriptor's words only when they are known not to identify
# anyone: this vocabulary of imaging terms (modalities, anatomy, orientation,
# sequences, contrast, reconstruction, clinical generics) plus short numbers with
# an optional unit. Every other word (names, identifiers, dates, free prose) is
# dropped. An allowlist cannot leak a word it does not know; a denylist could.
_WORDS = """
    CT MR MRI US XA XR CR DX MG NM PT PET SPECT RF OT SEG SR ES PX IO ECG RTSTRUCT
    RTDOSE RTPLAN DOSE PLAN STRUCTURE STRUCTURES ULTRASOUND XRAY RADIOGRAPH
    FLUORO FLUOROSCOPY ANGIO ANGIOGRAPHY ANGIOGRAM MAMMO MAMMOGRAPHY TOMOSYNTHESIS
    HEAD BRAIN NECK CHEST THORAX LUNG LUNGS HEART CARDIAC ABDOMEN ABD PELVIS SPINE
    CERVICAL THORACIC LUMBAR SACRUM SACRAL COCCYX SKULL FACE FACIAL ORBIT ORBITS
    SINUS SINUSES TEMPORAL IAC PITUITARY SELLA CAROTID CAROTIDS CIRCLE WILLIS
    AORTA AORTIC CORONARY CORONARIES PULMONARY VESSEL VESSELS ARTERY ARTERIES VEIN
    VEINS VENOUS ARTERIAL PORTAL LIVER HEPATIC KIDNEY KIDNEYS RENAL ADRENAL
    PANCREAS SPLEEN GALLBLADDER BILIARY BLADDER PROSTATE UTERUS OVARY OVARIES
    BREAST BREASTS AXILLA THYROID EXTREMITY EXTREMITIES UPPER LOWER ARM FOREARM
    LEG THIGH KNEE KNEES HIP HIPS SHOULDER SHOULDERS ELBOW WRIST HAND HANDS FINGER
    ANKLE FOOT FEET TOE FEMUR TIBIA FIBULA HUMERUS RADIUS ULNA CLAVICLE RIB RIBS
    STERNUM JOINT JOINTS BONE BONES SOFT TISSUE TISSUES MUSCLE FAT WATER BOWEL
    COLON STOMACH ESOPHAGUS MEDIASTINUM TRACHEA WHOLE BODY WB ENTIRE FETUS FETAL
    OBSTETRIC PELVIC TRANSVAGINAL TRANSABDOMINAL ECHO ECHOCARDIOGRAM DOPPLER
    AX AXIAL SAG SAGITTAL COR CORONAL OBL OBLIQUE TRA TRANS TRANSVERSE LEFT RIGHT
    LT RT BILAT BILATERAL AP PA LAT LATERAL LL RL LAO RAO CC MLO PRONE SUPINE
    DECUBITUS ERECT UPRIGHT STANDING SITTING FRONTAL VIEW VIEWS PROJECTION
    T1 T2 T1W T2W T2STAR PD PDW FLAIR STIR DIR DWI DTI ADC TRACE SWI SWAN GRE
    SPGR FSPGR MPRAGE MP2RAGE SE TSE FSE HASTE SSFSE EPI BOLD FMRI TOF MRA MRV
    CTA CTV PC PCA FIESTA TRUFI BFFE SSFP CISS SPACE CUBE VIBE LAVA THRIVE DIXON
    FS FATSAT SPIR SPAIR MT MTC ASL PERFUSION DSC DCE SPECTROSCOPY MRS
    SVS CSI CINE TAGGING LGE LATE LOCALIZER LOCALISER LOC SCOUT SURVEY TOPOGRAM
    PLANNING CALIBRATION REFERENCE REF ASSET SENSE GRAPPA IPAT NAV NAVIGATOR
    CONTRAST WITH WITHOUT W WO NON PRE POST GD GAD GADO GADOLINIUM IODINE IV ORAL
    RECTAL PHASE PHASES DELAYED EQUILIBRIUM NEPHROGRAPHIC EARLY LATE NATIVE
    ENHANCED UNENHANCED DUAL SINGLE MULTI ENERGY SPECTRAL MONO MONOENERGETIC KEV
    VNC DIFFUSION WEIGHTED WEIGHTING DIFF B0 B1000 BVALUE
    RECON RECONSTRUCTION RECONSTRUCTED REFORMAT REFORMATS MPR MIP MINIP VR 3D 2D 4D
    VOLUME VOLUMETRIC SLICE SLICES THIN THICK STANDARD SHARP SMOOTH SOFT DETAIL
    KERNEL FILTER ITERATIVE FBP HIGH LOW RES RESOLUTION HR WINDOW
    MEDIASTINAL SUBTRACTION SUBTRACTED DERIVED ORIGINAL PRIMARY
    SECONDARY MAP MAPS FUSED FUSION ATTENUATION CORRECTED AC NAC CORRECTION
    MOTION DYNAMIC STATIC GATED UNGATED BREATH HOLD FREE BREATHING EXPIRATION
    INSPIRATION RUN SERIES STUDY EXAM EXAMINATION IMAGE IMAGES SCAN SCANS
    ROUTINE PROTOCOL SCREENING DIAGNOSTIC FOLLOW UP STAGING BIOPSY GUIDED
    INTERVENTION LIMITED COMPLETE COMPARISON CONTROL TEST PHANTOM QA QC SEGMENTATION
    ANNOTATION MASK LABEL LABELS REGION ROI LESION LESIONS NODULE NODULES MASS
    TUMOR TUMOUR STROKE TRAUMA PAIN FRACTURE INFECTION PNEUMONIA EMBOLISM
    HEMORRHAGE HAEMORRHAGE ISCHEMIA INFARCT NORMAL ABNORMAL UNKNOWN NONE NA
    ALLERGY ALLERGIES ALLERGIC LATEX PENICILLIN SHELLFISH NKDA NKA MEDICATION
    PREMEDICATION STEROID STEROIDS ANTIHISTAMINE SEDATION SEDATED ANESTHESIA
    CLAUSTROPHOBIA CLAUSTROPHOBIC WHEELCHAIR STRETCHER PREGNANT NOT
    AND OR OF THE A AN TO FOR IN ON AT BY NO YES ONLY PER VIA
"""
_VOCABULARY = frozenset(_WORDS.split())
_SHORT_NUMBER = re.compile(
    r"\d{1,3}(?:\.\d{1,3})?(?:MM|CM|M|T|MS|S|SEC|KV|KVP|MA|MAS|MGY|DEG|HZ|KHZ|MHZ|X|%)?",
)
_SPLIT = re.compile(r"[^0-9A-Za-z.%]+")
_WITHOUT = re.compile(r"\bw/o\b", re.IGNORECASE)  # "w/o": without, not "w" and "o"
_WITH = re.compile(r"\bw/(?![A-Za-z0-9])", re.IGNORECASE)


def _allowed(token: str) -> bool:
    word = token.upper().strip(".")
    return bool(word) and (word in _VOCABULARY or _SHORT_NUMBER.fullmatch(word) is not None)


def clean_text(text: str) -> str:
    """Keep only the known, non-identifying words of a descriptor.

    >>> clean_text("AX T1 POST-GD Jane_Doe 20240102 #12345")
    'AX T1 POST GD'
    """
    text = _WITHOUT.sub(" WITHOUT ", text)
    text = _WITH.sub(" WITH ", text)
    return " ".join(t.strip(".") for t in _SPLIT.split(text) if _allowed(t))

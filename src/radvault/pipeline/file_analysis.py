"""Analyse use case for a file outside the vault: read it, classify it, optionally explain it.

``radvault analyze FILE`` answers for an image a user holds (a DICOM file, a PNG or a
JPEG) without ingesting it: nothing is stored, sealed or audited, because nothing of
the vault is touched. The model comes from ``--model`` or, by the image's modality and
body part, from the shipped registry, exactly as for a vault study; the image goes
through the model card's preprocessing (one code path with training), and the image
check of the model's registry (``models/image_check`` for the shipped models) refers it
if it looks like another trained source than it is declared as.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

from radvault.analysis.explain import gradcam_overlay
from radvault.analysis.export import ModelKeyring
from radvault.analysis.image_check import ImageCheck
from radvault.analysis.inference import Prediction, load_model
from radvault.analysis.registry import ModelRegistry
from radvault.errors import ConfigurationError
from radvault.imaging.preprocess import display_array
from radvault.imaging.reading import read_image
from radvault.imaging.records import SourceFormat
from radvault.imaging.vocabulary import body_part_hint, modality_hint

__all__ = ["FileAnalysis", "analyse_file"]


@dataclass(frozen=True)
class FileAnalysis:
    """What the model said about one file, and its heatmap when one was asked for."""

    prediction: Prediction
    heatmap_png: bytes | None = None
    #: What the image was taken to be (header, else the hints; "" when unknown).
    modality: str = ""
    body_part: str = ""


def analyse_file(path: str | PathLike[str], *, model_dir: str | PathLike[str] | None = None,
                 modality: str | None = None, body_part: str | None = None,
                 keys_dir: str | PathLike[str] | None = None, refer_threshold: float = 0.80,
                 heatmap: bool = False) -> FileAnalysis:
    """Classify one image file with a verified model.

    Parameters
    ----------
    path : path-like
        A DICOM, PNG or JPEG file.
    model_dir : path-like, optional
        The model folder; by default the registry's model for the image's modality
        and body part (the radbench6 model when none is more specific).
    modality, body_part : str, optional
        What a PNG or JPEG shows (they carry no header): DICOM defined terms, any case.
        For a DICOM file the header decides; an option that contradicts it is refused,
        or the wrong model would answer without a referral.
    keys_dir : path-like, optional
        Trusted model-signing keys (default: those shipped beside the models).
    refer_threshold : float
        Below this top probability the answer is flagged "refer to a radiologist".
    heatmap : bool
        Also draw the Grad-CAM heatmap over the image as a person views it.

    Returns
    -------
    FileAnalysis
        The prediction (calibrated probabilities, referral and its reasons) and the
        heatmap PNG when asked for. An image whose modality or body part is unknown
        (neither header nor option gives a defined term) is referred
        (``modality_not_trained``, ``body_part_unknown``), as in the vault.

    Raises
    ------
    InvalidRequest
        If ``modality`` or ``body_part`` is not a DICOM defined term (the message
        names the field, never the value).
    ImageInputError
        If the file cannot be read as an image.
    ConfigurationError
        If ``modality`` or ``body_part`` contradicts a DICOM header.
    ModelIntegrityError
        If the model's (or the image check's) signature, card or ONNX file does not
        verify.
    """
    # hints a caller typed must be defined terms, as at ingest (the faces refuse them
    # first, naming their own option); a surname typed as a body part is never used
    modality, body_part = modality_hint(modality), body_part_hint(body_part)
    header = read_image(path)
    if header.source_format is SourceFormat.DICOM:
        for option, given, found in (("--modality", modality, header.modality),
                                     ("--body-part", body_part, header.body_part)):
            # "OT" is what a file without a Modality reads as: the header says nothing then.
            if option == "--modality" and found and found.upper() == "OT":
                continue
            if given and found and given.upper() != found.upper():
                raise ConfigurationError(f"{option} {given} contradicts the DICOM header "
                                         f"({found}); it is for PNG/JPEG files")
    overrides = {k: v for k, v in (("modality", modality), ("body_part", body_part)) if v}
    record = dataclasses.replace(header, **overrides) if overrides else header
    if model_dir is None:
        registry = ModelRegistry(keys_dir=keys_dir)
        model_dir = registry.select(record.modality, record.body_part)
        keyring = registry.keyring
    else:  # the image check of the model's own registry (folder), as in vault analysis
        keyring = ModelKeyring.from_dir(keys_dir) if keys_dir is not None else None
        registry = ModelRegistry(Path(model_dir).resolve().parent, keys_dir=keys_dir)
    loaded = load_model(model_dir, keyring=keyring, refer_threshold=refer_threshold)
    check_dir = registry.image_check_path()
    check = (ImageCheck(load_model(check_dir, keyring=registry.keyring))
             if check_dir is not None else None)
    x = loaded.preprocess(record)
    # strings, "" when unknown: an image without a body part is referred, never unchecked
    prediction = loaded.predict(x[None], modality=record.modality or "",
                                body_part=record.body_part or "", image_check=check)[0]
    png = gradcam_overlay(display_array(record), loaded.cam(x[None])) if heatmap else None
    return FileAnalysis(prediction=prediction, heatmap_png=png,
                        modality=record.modality or "", body_part=record.body_part or "")

"""Serving: load a verified model folder and predict with ONNX Runtime.

Importing this module does not import torch: serving needs only numpy and
onnxruntime. :func:`load_model` checks, before anything runs, that the ONNX
file and the card match the signature (and the card's own ONNX digest), so an
altered model is refused with :class:`~radvault.errors.ModelIntegrityError`.

Each :class:`Prediction` carries the calibrated probability of every class and
a decision-support flag, ``refer``, set ("refer to a radiologist") when the top
probability is under the threshold (default ``Settings.refer_threshold``,
0.80), when the image's modality/body part is not one the model was trained on
or is not known, when the predicted class was never trained on an image of
the image's modality (cards that record ``class_trained_on``), when the image check
(:mod:`radvault.analysis.image_check`) takes the image for another trained source than
it was declared as, or always when the
model has no class for a normal image (it can only name a disease). The reasons are
the ``REASON_*`` codes below; :func:`refer_reasons` applies them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from radvault.analysis.calibration import softmax
from radvault.analysis.export import (
    CARD_FILE,
    CARD_FORMAT,
    ONNX_FILE,
    SIGNATURE_FILE,
    ModelKeyring,
    Verifier,
    keys_dir_near,
    signing_message,
)
from radvault.config import PreprocessSettings, Settings
from radvault.errors import IntegrityError, ModelError, ModelIntegrityError
from radvault.imaging.records import ImageRecord
from radvault.imaging.vocabulary import model_pair

if TYPE_CHECKING:
    from radvault.analysis.image_check import ImageCheck

__all__ = ["NORMAL_CLASS_NAMES", "REFER_REASONS", "LoadedModel", "ModelCard", "Prediction",
           "load_model", "onnx_logits", "onnx_session", "refer_reasons", "trusted_keys_dir"]

log = logging.getLogger(__name__)

#: The top probability is under the refer threshold.
REASON_LOW_CONFIDENCE = "low_confidence"
#: The image's modality is not among the card's ``trained_on`` pairs (an unknown
#: modality, ``OT`` or empty, counts as not trained on).
REASON_MODALITY = "modality_not_trained"
#: The image's body part is known but not trained on for its modality.
REASON_BODY_PART = "body_part_not_trained"
#: The image's body part is unknown (``""``: none recorded, or not a DICOM defined term)
#: and the card names the body parts it was trained on for the image's modality.
REASON_BODY_PART_UNKNOWN = "body_part_unknown"
#: The predicted class was never trained on an image of the image's modality (per the
#: card's ``class_trained_on``), e.g. a CT-only class predicted for an MR image.
REASON_CLASS_MODALITY = "class_not_trained_for_modality"
#: The predicted class was trained on the image's modality, but never on its body part
#: (a known one the model has seen for that modality: e.g. kidney_stone on a chest CT).
REASON_CLASS_BODY_PART = "class_not_trained_for_body_part"
#: The release maintainer marked the model as failing on held-out data.
REASON_NOT_VALIDATED = "model_not_validated"
#: The model has no class for a normal image (:attr:`ModelCard.normal_classes` is
#: empty): it names one of its diseases for every image, a normal one too.
REASON_NO_NORMAL_CLASS = "no_normal_class"
#: The image check takes the image, confidently, for another trained source (modality
#: and body part) than the one it was declared as: a brain MR sent as ``DX CHEST``.
REASON_IMAGE_UNLIKE_DECLARED = "image_unlike_declared"
#: Every reason :func:`refer_reasons` can give, in the order it gives them.
REFER_REASONS = (REASON_NOT_VALIDATED, REASON_NO_NORMAL_CLASS, REASON_IMAGE_UNLIKE_DECLARED,
                 REASON_LOW_CONFIDENCE, REASON_MODALITY, REASON_BODY_PART_UNKNOWN, REASON_BODY_PART,
                 REASON_CLASS_MODALITY, REASON_CLASS_BODY_PART)
#: Class names read as "no disease" in a card whose task definition marks no class
#: ``"normal"`` (every card written before session 10): the shipped specialists'
#: ``normal``, ``notumor`` and BreastMNIST's ``normal_or_benign``.
NORMAL_CLASS_NAMES = frozenset({"normal", "notumor", "no_tumor", "normal_or_benign",
                                "no_finding", "healthy"})


@dataclass(frozen=True)
class ModelCard:
    """The parsed model card; ``raw`` keeps every field as written.

    Raises
    ------
    ModelError
        If required fields are missing or inconsistent.
    """

    model_id: str
    task: str
    classes: tuple[str, ...]
    size: int
    preprocessing: Mapping[str, Any]
    temperature: float
    trained_on: tuple[tuple[str, str], ...]
    onnx_sha256: str
    raw: Mapping[str, Any] = field(repr=False)
    class_bias: tuple[float, ...] | None = None  # bias-corrected temperature scaling
    #: Per class, the (modality, body part) pairs of its training rows; ``None`` when
    #: the card does not record them (cards written before ``class_trained_on``).
    class_trained_on: Mapping[str, tuple[tuple[str, str], ...]] | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCard:
        """Parse and check a card dict.

        Raises
        ------
        ModelError
            If a field is missing or malformed.
        """
        if data.get("format") != CARD_FORMAT:
            raise ModelError(f"unknown model card format {data.get('format')!r}")
        try:
            classes = tuple(str(c) for c in data["classes"])
            size = int(data["input"]["size"])
            temperature = float(data.get("temperature", 1.0))
            bias = data.get("class_bias")
            class_bias = None if bias is None else tuple(float(b) for b in bias)
            trained_on = _pairs(data.get("trained_on", []))
            per_class = data.get("class_trained_on")
            class_trained_on = (None if per_class is None else
                                {str(c): _pairs(pairs) for c, pairs in per_class.items()})
            card = cls(model_id=str(data["model_id"]), task=str(data["task"]), classes=classes,
                       size=size, preprocessing=dict(data["preprocessing"]),
                       temperature=temperature, trained_on=trained_on,
                       onnx_sha256=str(data["onnx_sha256"]), raw=dict(data),
                       class_bias=class_bias, class_trained_on=class_trained_on)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"malformed model card ({type(exc).__name__}: {exc})") from None
        if len(classes) < 2 or not temperature > 0 or size < 8:
            raise ModelError("model card has fewer than two classes, a bad temperature or size")
        if class_bias is not None and (len(class_bias) != len(classes)
                                       or not np.all(np.isfinite(class_bias))):
            raise ModelError("model card's class_bias needs one finite value per class")
        if class_trained_on is not None and (
                set(class_trained_on) != set(classes)
                or not {p for ps in class_trained_on.values() for p in ps} <= set(trained_on)):
            raise ModelError("model card's class_trained_on needs every class, and only pairs "
                             "of its trained_on")
        return card

    @property
    def preprocess_settings(self) -> PreprocessSettings:
        """The preprocessing the model was trained with (apply exactly this).

        Raises
        ------
        ConfigurationError
            If the stored settings are invalid.
        """
        from radvault.imaging.preprocess import settings_from_dict

        return settings_from_dict(self.preprocessing)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities seen in training."""
        return tuple(sorted({m for m, _ in self.trained_on}))

    @property
    def normal_classes(self) -> tuple[str, ...]:
        """The classes that mean "no disease" (empty: the model cannot call an image normal).

        The task definition's ``"normal": true`` marks when any class of it carries the
        key; otherwise (cards written before session 10) the classes whose name is one
        of :data:`NORMAL_CLASS_NAMES`.
        """
        definition = self.raw.get("task_definition")
        marked = [c for c in (definition or {}).get("classes", ())
                  if isinstance(c, Mapping) and "normal" in c]
        if marked:
            return tuple(str(c["name"]) for c in marked
                         if c.get("normal") is True and str(c["name"]) in self.classes)
        return tuple(c for c in self.classes
                     if c.lower().rsplit("/", 1)[-1] in NORMAL_CLASS_NAMES)


def _pairs(items: Any) -> tuple[tuple[str, str], ...]:
    """``[{"modality": ..., "body_part": ...}, ...]`` as upper-case (modality, body part) pairs."""
    return tuple((str(p["modality"]).upper(), str(p.get("body_part", "")).upper())
                 for p in items)


@dataclass(frozen=True)
class Prediction:
    """One image's result.

    Attributes
    ----------
    label : str
        Predicted class (arg-max).
    index : int
    probability : float
        Calibrated probability of the predicted class.
    probabilities : dict of str to float
        Calibrated probability of every class.
    refer : bool
        Decision-support flag: "refer to a radiologist".
    reasons : tuple of str
        Why ``refer`` is set (:data:`REFER_REASONS`: ``model_not_validated``,
        ``no_normal_class``, ``image_unlike_declared``, ``low_confidence``,
        ``modality_not_trained``,
        ``body_part_unknown``, ``body_part_not_trained``,
        ``class_not_trained_for_modality``, ``class_not_trained_for_body_part``);
        empty when it is not.
    model_id : str
    image_check : dict, optional
        What the image check took the image for (``model_id``, ``looks_like``,
        ``probability``, ``threshold``, ``unlike_declared``, ``matches_declared``);
        ``None`` when no check ran.
    """

    label: str
    index: int
    probability: float
    probabilities: Mapping[str, float]
    refer: bool
    reasons: tuple[str, ...]
    model_id: str
    image_check: Mapping[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = {"label": self.label, "index": self.index, "probability": self.probability,
               "probabilities": dict(self.probabilities), "refer": self.refer,
               "reasons": list(self.reasons), "model_id": self.model_id}
        if self.image_check is not None:
            out["image_check"] = dict(self.image_check)
        return out


def onnx_session(model: bytes | str | PathLike[str], threads: int | None = None) -> Any:
    """An ONNX Runtime CPU inference session.

    Raises
    ------
    ModelError
        If ONNX Runtime cannot load the model.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    # Idle worker threads sleep instead of spinning: inference here always shares the
    # cores with Python work (back-verification, storage, the web server), which spinning
    # threads starve. Measured (benchmarks/inference.py --threads 2): batched vault
    # analysis 236 instead of 199 images/s; ONNX Runtime alone unchanged within noise.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    src = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own unrelated exception types
        raise ModelError(f"ONNX Runtime cannot load the model ({type(exc).__name__})") from None


def onnx_logits(model: bytes, images: np.ndarray, threads: int | None = None,
                batch: int = 128) -> np.ndarray:
    """Raw logits (float64) of an ONNX classifier on preprocessed images, in batches."""
    session = onnx_session(model, threads)
    out = [session.run(["logits"], {"image": np.ascontiguousarray(images[i:i + batch],
                                                                   dtype=np.float32)})[0]
           for i in range(0, len(images), batch)]
    return np.concatenate(out).astype(np.float64)


def refer_reasons(top_probability: float, threshold: float, card: ModelCard,
                  modality: str | None, body_part: str | None,
                  label: str | None = None, *,
                  unlike_declared: bool = False) -> tuple[str, ...]:
    """Why an image should go to a radiologist (empty: no reason).

    Parameters
    ----------
    top_probability, threshold : float
        ``low_confidence`` when the first is under the second.
    card : ModelCard
        ``release.refer_always`` gives ``model_not_validated``, no normal class
        ``no_normal_class``; ``trained_on`` and ``class_trained_on`` are what the
        image is checked against.
    modality, body_part : str or None
        What the image is, as the vault keeps it: a DICOM defined term, or ``""``
        when unknown (``OT`` also counts as an unknown modality). ``None`` means the
        caller has no such information *by design* and skips that check: a model
        benchmark on bare arrays. Serving (vault analysis, file analysis,
        :meth:`LoadedModel.predict_records`) always passes strings, so an unknown
        body part is referred (``body_part_unknown``) and never passes unchecked.
    label : str, optional
        The predicted class, checked against ``class_trained_on`` when the card has it.
    unlike_declared : bool
        The image check took the image for another source than it was declared as
        (``image_unlike_declared``).

    Returns
    -------
    tuple of str
        In the order of :data:`REFER_REASONS`. When the card lists no ``trained_on``
        pairs (it does not say what the model was trained on), only the first three
        reasons can be given.
    """
    reasons = []
    if (card.raw.get("release") or {}).get("refer_always"):
        # The release maintainer marked the model as failing on held-out data: every
        # answer goes to a radiologist, however confident it looks.
        reasons.append(REASON_NOT_VALIDATED)
    if not card.normal_classes:
        # Its answer is "which of these diseases", never "none": a normal image, or one
        # of a disease it does not know, still gets one of them, often confidently.
        reasons.append(REASON_NO_NORMAL_CLASS)
    if unlike_declared:
        reasons.append(REASON_IMAGE_UNLIKE_DECLARED)
    if top_probability < threshold:
        reasons.append(REASON_LOW_CONFIDENCE)
    if modality is None or not card.trained_on:
        return tuple(reasons)
    # compared as models are chosen: CR as DX (vocabulary.model_pair)
    m, b = model_pair(modality.strip() or "OT", body_part)
    trained = {model_pair(*p) for p in card.trained_on}
    parts = {tb for tm, tb in trained if tm == m}
    if not parts:
        reasons.append(REASON_MODALITY)
        return tuple(reasons)  # the model knows nothing of this modality: that says it all
    if body_part is not None and b not in parts:
        # "" (unknown) only passes when the model was trained on such images
        reasons.append(REASON_BODY_PART_UNKNOWN if not b else REASON_BODY_PART)
    per_class = card.class_trained_on
    if label is None or per_class is None:
        return tuple(reasons)
    pairs = {model_pair(*p) for p in per_class.get(label, ())}
    if m not in {mod for mod, _ in pairs}:
        reasons.append(REASON_CLASS_MODALITY)
    elif body_part is not None and b in parts and (m, b) not in pairs:
        # a body part the model knows for this modality, but not for this class
        reasons.append(REASON_CLASS_BODY_PART)
    return tuple(reasons)


class LoadedModel:
    """A verified model ready to predict. Build with :func:`load_model`."""

    def __init__(self, path: Path, card: ModelCard, session: Any, *,
                 refer_threshold: float) -> None:
        self.path = path
        self.card = card
        self.session = session
        self.refer_threshold = refer_threshold
        self._cam_weight: np.ndarray | None = None
        self._preprocessor: Any = None

    def __repr__(self) -> str:
        return f"LoadedModel({self.card.model_id!r}, classes={list(self.card.classes)})"

    @property
    def model_id(self) -> str:
        """The card's model id."""
        return self.card.model_id

    def _check_batch(self, batch: np.ndarray) -> np.ndarray:
        x = np.asarray(batch)
        if x.ndim == 3:
            x = x[None]
        s = self.card.size
        if x.ndim != 4 or x.shape[1:] != (3, s, s):
            raise ModelError(f"expected a batch of shape (N, 3, {s}, {s}), got {x.shape}")
        return np.ascontiguousarray(x, dtype=np.float32)

    def run(self, batch: np.ndarray, *, chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Raw outputs: ``(logits (N, K), features (N, C, h, w))``.

        Raises
        ------
        ModelError
            If the batch has the wrong shape or inference fails.
        """
        x = self._check_batch(batch)
        logits, feats = [], []
        for i in range(0, len(x), chunk):
            try:
                lg, ft = self.session.run(["logits", "features"], {"image": x[i:i + chunk]})
            except Exception as exc:  # onnxruntime error types are not a stable API
                raise ModelError(f"inference failed ({type(exc).__name__})") from None
            logits.append(lg)
            feats.append(ft)
        return np.concatenate(logits), np.concatenate(feats)

    def logits(self, batch: np.ndarray, *, chunk: int = 64) -> np.ndarray:
        """Uncalibrated logits ``(N, K)``.

        Raises
        ------
        ModelError
            If the batch has the wrong shape or inference fails.
        """
        x = self._check_batch(batch)
        out = []
        for i in range(0, len(x), chunk):
            try:
                out.append(self.session.run(["logits"], {"image": x[i:i + chunk]})[0])
            except Exception as exc:  # onnxruntime error types are not a stable API
                raise ModelError(f"inference failed ({type(exc).__name__})") from None
        return np.concatenate(out)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities ``(N, K)`` (softmax of logits / T).

        Raises
        ------
        ModelError
            If the batch has the wrong shape or inference fails.
        """
        return softmax(self.logits(batch), self.card.temperature, self.card.class_bias)

    def predict(self, batch: np.ndarray, *, modality: str | Sequence[str] | None = None,
                body_part: str | Sequence[str] | None = None,
                threshold: float | None = None,
                image_check: ImageCheck | None = None) -> list[Prediction]:
        """Predict a batch of preprocessed images.

        Parameters
        ----------
        batch : numpy.ndarray
            ``(N, 3, S, S)`` (or one ``(3, S, S)``) float32 in ``[0, 1]``, made by
            the card's preprocessing.
        modality, body_part : str or sequence of str, optional
            What the images are (one value for all, or one per image): DICOM defined
            terms, ``""`` when unknown, which is referred (see :func:`refer_reasons`).
            ``None`` skips the check: only for callers that have no such
            information by design (a benchmark of the model alone); serving
            always passes strings.
        threshold : float, optional
            Refer when the top probability is below it; default the model's.
        image_check : ImageCheck, optional
            Also ask the image check what each image looks like, and refer one that
            looks like another trained source than ``modality`` and ``body_part``
            declare.

        Returns
        -------
        list of Prediction

        Raises
        ------
        ModelError
            If the batch has the wrong shape or inference fails.
        """
        probs = self.probabilities(batch)
        n = len(probs)
        mods = _per_image(modality, n)
        parts = _per_image(body_part, n)
        thr = self.refer_threshold if threshold is None else float(threshold)
        guesses = None
        if image_check is not None:
            # an image declared as nothing (None, "") is not checked: nothing to contradict
            images = np.asarray(batch)
            try:
                guesses = image_check.guess(images if images.ndim == 4 else images[None],
                                            [m or "" for m in mods], [b or "" for b in parts])
            finally:
                if images is not batch:  # a copy of a list's pixels: wiped like the rest
                    images.fill(0)
        out = []
        for i, p in enumerate(probs):
            k = int(p.argmax())
            guess = guesses[i] if guesses is not None else None
            reasons = refer_reasons(float(p[k]), thr, self.card, mods[i], parts[i],
                                    self.card.classes[k],
                                    unlike_declared=guess is not None and guess.unlike_declared)
            out.append(Prediction(
                label=self.card.classes[k], index=k, probability=float(p[k]),
                probabilities={c: float(v) for c, v in zip(self.card.classes, p, strict=True)},
                refer=bool(reasons), reasons=reasons, model_id=self.card.model_id,
                image_check=(None if guess is None or image_check is None
                             else guess.as_dict(image_check.model_id))))
        return out

    def preprocess(self, record: ImageRecord, frame: int | None = None) -> np.ndarray:
        """Preprocess an image record exactly as the model was trained (card settings).

        Returns
        -------
        numpy.ndarray
            ``(3, S, S)`` float32 in ``[0, 1]``.

        Raises
        ------
        ConfigurationError
            If the card's preprocessing settings are invalid.
        """
        from radvault.imaging.preprocess import Preprocessor

        if self._preprocessor is None:
            self._preprocessor = Preprocessor(self.card.preprocess_settings)
        return self._preprocessor(record, frame)

    def predict_records(self, records: Sequence[ImageRecord], *,
                        threshold: float | None = None,
                        image_check: ImageCheck | None = None) -> list[Prediction]:
        """Preprocess and predict image records, checking each one's modality and body part.

        Raises
        ------
        ModelError
            If inference fails.
        """
        if not records:
            return []
        batch = np.stack([self.preprocess(r) for r in records])
        return self.predict(batch, modality=[r.modality for r in records],
                            body_part=[r.body_part for r in records], threshold=threshold,
                            image_check=image_check)

    def cam(self, image: np.ndarray, class_index: int | None = None) -> np.ndarray:
        """Class activation map for one image, ``(S, S)`` in ``[0, 1]``, without torch.

        Uses the ONNX ``features`` output and the linear layer's weights kept
        in the card; for this architecture (global average pooling then one
        linear layer) it equals Grad-CAM. ``class_index`` defaults to the
        predicted class.

        Raises
        ------
        ModelError
            If the card holds no CAM weights or the image has the wrong shape.
        """
        from radvault.analysis.explain import cam_from_features

        if self._cam_weight is None:
            try:
                self._cam_weight = np.asarray(self.card.raw["cam"]["weight"], dtype=np.float32)
            except (KeyError, TypeError, ValueError):
                raise ModelError("model card holds no class activation weights") from None
        logits, feats = self.run(image)
        if class_index is None:  # the predicted class: calibration biases can change it
            k = int(softmax(logits[:1], self.card.temperature, self.card.class_bias)[0].argmax())
        else:
            k = int(class_index)
        return cam_from_features(feats[0], self._cam_weight, k, self.card.size)


def _per_image(value: str | Sequence[str] | None, n: int) -> list[str | None]:
    if value is None or isinstance(value, str):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ModelError(f"expected {n} modality/body part values, got {len(values)}")
    return values


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def verify_model_dir(path: str | PathLike[str], verifier: Verifier | None = None, *,
                     keyring: ModelKeyring | None = None,
                     require_signature: bool = True) -> dict[str, Any]:
    """Check a model folder's files against its signature; return the card dict.

    Parameters
    ----------
    path : path
        The model folder.
    verifier : Verifier, optional
        Checks the signature (e.g. the vault's). Without one, the key named in
        ``signature.json`` is looked up in ``keyring``, by default in
        :func:`trusted_keys_dir` (the registry's ``models/keys``).
    require_signature : bool
        Refuse a folder without ``signature.json`` (default).

    Raises
    ------
    ModelIntegrityError
        If a file's digest differs from the signed one, the signature does not
        verify, the key is untrusted, or the signature is missing.
    ModelError
        If files are missing or unreadable.
    """
    folder = Path(path)
    onnx_path, card_path, sig_path = folder / ONNX_FILE, folder / CARD_FILE, folder / SIGNATURE_FILE
    for p in (onnx_path, card_path):
        if not p.is_file():
            raise ModelError(f"{folder}: not a model folder (missing {p.name})")
    try:
        card_bytes = card_path.read_bytes()
        onnx_sha = _sha256(onnx_path)
    except OSError as exc:
        raise ModelError(f"{folder}: cannot read model ({exc.strerror})") from None
    card_sha = hashlib.sha256(card_bytes).hexdigest()
    if sig_path.is_file():
        try:
            sig = json.loads(sig_path.read_text(encoding="utf-8"))
            signature = base64.b64decode(sig["signature"], validate=True)
            key_id = str(sig["key_id"])
        except (OSError, ValueError, KeyError, TypeError, binascii.Error):
            raise ModelIntegrityError(f"{folder}: unreadable signature file") from None
        if sig.get("onnx_sha256") != onnx_sha:
            raise ModelIntegrityError(f"{folder}: {ONNX_FILE} does not match its signature")
        if sig.get("card_sha256") != card_sha:
            raise ModelIntegrityError(f"{folder}: {CARD_FILE} does not match its signature")
        if verifier is None and keyring is not None:
            verifier = keyring.verifier(key_id)
        elif verifier is None:
            keys_dir = trusted_keys_dir(folder)
            try:
                verifier = ModelKeyring.from_dir(keys_dir).verifier(key_id)
            except ModelIntegrityError as exc:
                raise ModelIntegrityError(f"{folder}: {exc} (looked in {keys_dir}; name a "
                                          "folder of trusted keys with --keys)") from None
        elif getattr(verifier, "key_id", key_id) != key_id:
            raise ModelIntegrityError(f"{folder}: signed by another key than the verifier's")
        try:
            verifier.verify(signing_message(onnx_sha, card_sha), signature)
        except IntegrityError as exc:
            raise ModelIntegrityError(f"{folder}: model signature does not verify") from exc
    elif require_signature:
        raise ModelIntegrityError(f"{folder}: model is not signed")
    try:
        card = json.loads(card_bytes)
    except ValueError:
        raise ModelIntegrityError(f"{folder}: model card is not JSON") from None
    if not isinstance(card, dict) or card.get("onnx_sha256") != onnx_sha:
        raise ModelIntegrityError(f"{folder}: {ONNX_FILE} does not match the model card")
    return card


def trusted_keys_dir(model_dir: str | PathLike[str]) -> Path:
    """Where a model folder's trusted public keys are by default: the nearest ``keys``
    folder beside it or one level up (``models/<task>`` and ``models/medmnist/<set>`` both
    find ``models/keys``); ``<model_dir>/../keys`` if there is neither."""
    return keys_dir_near(Path(model_dir).parent)


def load_model(path: str | PathLike[str], verifier: Verifier | None = None, *,
               keyring: ModelKeyring | None = None, require_signature: bool = True,
               refer_threshold: float | None = None, threads: int | None = None) -> LoadedModel:
    """Verify and load a model folder for inference.

    Parameters
    ----------
    path : path
        A model folder written by :func:`~radvault.analysis.export.write_model`.
    verifier : Verifier, optional
        See :func:`verify_model_dir`.
    keyring : ModelKeyring, optional
        Trusted keys when no verifier is given (default: :func:`trusted_keys_dir`).
    require_signature : bool
        Refuse unsigned folders (default).
    refer_threshold : float, optional
        Default ``Settings().refer_threshold`` (0.80).
    threads : int, optional
        ONNX Runtime intra-op threads.

    Returns
    -------
    LoadedModel

    Raises
    ------
    ModelIntegrityError
        If the ONNX file or card was altered, or the signature is bad or missing.
    ModelError
        If the folder is incomplete or the model cannot be loaded.
    """
    folder = Path(path)
    card_dict = verify_model_dir(folder, verifier, keyring=keyring,
                                 require_signature=require_signature)
    card = ModelCard.from_dict(card_dict)
    try:
        onnx_bytes = (folder / ONNX_FILE).read_bytes()
    except OSError as exc:
        raise ModelError(f"{folder}: cannot read model ({exc.strerror})") from None
    if hashlib.sha256(onnx_bytes).hexdigest() != card.onnx_sha256:  # changed since the check
        raise ModelIntegrityError(f"{folder}: {ONNX_FILE} changed while loading")
    threshold = Settings().refer_threshold if refer_threshold is None else float(refer_threshold)
    if not 0.0 < threshold <= 1.0:
        raise ModelError("refer threshold must be within (0, 1]")
    log.info("loaded model %s", card.model_id)
    return LoadedModel(folder, card, onnx_session(onnx_bytes, threads),
                       refer_threshold=threshold)

"""The image check: does an image look like the modality and body part it was declared as?

Every other referral reason trusts what an image is declared to be (its DICOM header,
or the hint a user typed for a PNG). A brain MR uploaded as ``DX CHEST`` went to the
chest model, which answered "normal 94.2 %" with no flag (session 10's user test).
The image check is a second, small model (task ``image_source``: which of the trained
sources an image looks like, e.g. chest X-ray, brain MR, lung CT) that runs on the
diagnostic model's own input (whatever that model's preprocessing: plain, or enhanced
and denoised), area-resized to its own size (64 px at quarter width for the shipped
one, about a sixteenth of a 128 px half-width model's work). When it takes the image,
with at least its card's threshold, for a source whose (modality, body part) is not the
declared one, the answer is referred: ``image_unlike_declared``.

It knows its trained sources only: an image of none of them (a knee radiograph) is
taken for one of them, and referred only if that one is not what was declared. A
declared pair the check was never trained on is not checked (the diagnostic model's
own reasons already refer such an image: ``body_part_not_trained`` and the like).

The check is a model folder like any other (ONNX file, card, signature), found in the
registry as ``image_check``; its card carries ``image_check.threshold``, chosen on the
validation split (docs/models.md says how), which :func:`set_image_check_threshold`
records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from typing import Any

import cv2
import numpy as np

from radvault.analysis.export import Signer, update_card
from radvault.analysis.inference import LoadedModel
from radvault.errors import ModelError
from radvault.imaging.vocabulary import model_pair

__all__ = ["IMAGE_CHECK_MODEL", "ImageCheck", "SourceGuess", "set_image_check_threshold"]

#: Folder name of the image check in a model registry.
IMAGE_CHECK_MODEL = "image_check"


@dataclass(frozen=True)
class SourceGuess:
    """What the image check takes one image for.

    Attributes
    ----------
    source : str
        The check's class, e.g. ``brain_mri``.
    probability : float
        Its calibrated probability.
    pairs : tuple of (str, str)
        The (modality, body part) pairs that source was trained on.
    unlike_declared : bool
        The image is referred: ``probability`` reaches the threshold, the declared
        pair is one the check knows, and it is not among ``pairs``.
    matches_declared : bool or None
        Whether the declared pair is among ``pairs`` (at any probability); ``None``
        when the check does not know the declared pair.
    """

    source: str
    probability: float
    pairs: tuple[tuple[str, str], ...]
    unlike_declared: bool
    #: The check's threshold: a guess under it is not sure enough to refer.
    threshold: float = 1.0
    matches_declared: bool | None = None

    def as_dict(self, model_id: str) -> dict[str, Any]:
        """JSON-ready form, as stored with a result (no pixel, no identifier)."""
        return {"model_id": model_id, "looks_like": self.source,
                "looks_like_pair": list(self.pairs[0]) if self.pairs else None,
                "probability": self.probability, "threshold": self.threshold,
                "unlike_declared": self.unlike_declared,
                "matches_declared": self.matches_declared}


class ImageCheck:
    """A verified image-check model (:func:`~radvault.analysis.inference.load_model`).

    Parameters
    ----------
    model : LoadedModel
        The check's model folder, loaded and verified.
    threshold : float, optional
        Instead of the card's: only for measuring a candidate whose threshold is not
        chosen yet (``benchmarks/image_check.py``).

    Raises
    ------
    ModelError
        If the card has no ``image_check.threshold`` or no ``class_trained_on`` (it
        is not an image check, or its threshold was never chosen).
    """

    def __init__(self, model: LoadedModel, *, threshold: float | None = None) -> None:
        card = model.card
        if threshold is None:
            threshold = (card.raw.get("image_check") or {}).get("threshold")
        if not isinstance(threshold, int | float) or isinstance(threshold, bool) or not (
                0.0 < float(threshold) <= 1.0):
            raise ModelError(f"{model.path.name}: not an image check (its card has no "
                             "image_check.threshold in (0, 1])")
        if card.class_trained_on is None:
            raise ModelError(f"{model.path.name}: not an image check (its card has no "
                             "class_trained_on)")
        self.model = model
        self.threshold = float(threshold)
        self.size = int(card.preprocessing.get("size", 0))
        self._pairs = {c: tuple(card.class_trained_on.get(c, ())) for c in card.classes}
        # compared as models are chosen: CR as DX
        self._matching = {c: {model_pair(*p) for p in ps} for c, ps in self._pairs.items()}
        self._known = {p for ps in self._matching.values() for p in ps}

    @property
    def sources(self) -> dict[str, tuple[tuple[str, str], ...]]:
        """Each source the check knows, with the (modality, body part) pairs it was trained on."""
        return dict(self._pairs)

    @property
    def model_id(self) -> str:
        """The check's model id, stored with every result it checked."""
        return self.model.model_id

    def __repr__(self) -> str:
        return f"ImageCheck({self.model_id!r}, threshold={self.threshold})"

    def fit_input(self, batch: np.ndarray) -> np.ndarray:
        """A diagnostic model's input batch ``(N, 3, S, S)`` area-resized to the check's size.

        Area resampling averages whole blocks of pixels (128 -> 64 is the mean of each
        2 x 2 block), so the check sees the diagnostic model's input at its own size,
        whatever that model's size. The result is a new array; the caller wipes it.
        """
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ModelError(f"image check: expected (N, 3, S, S), got {batch.shape}")
        n, _, h, w = batch.shape
        if (h, w) == (self.size, self.size):
            return np.array(batch, dtype=np.float32)
        out = np.empty((n, 3, self.size, self.size), dtype=np.float32)
        small = np.empty((self.size, self.size, 3), dtype=np.float32)
        hwc = np.empty((h, w, 3), dtype=np.float32)
        try:  # two scratch buffers, both wiped: every one of them holds image pixels
            for i in range(n):
                hwc[...] = batch[i].transpose(1, 2, 0)
                cv2.resize(hwc, (self.size, self.size), dst=small,
                           interpolation=cv2.INTER_AREA)
                out[i] = small.transpose(2, 0, 1)
        finally:
            hwc.fill(0)
            small.fill(0)
        return out

    def guess(self, batch: np.ndarray, modality: Sequence[str], body_part: Sequence[str]
              ) -> list[SourceGuess]:
        """What each image of a diagnostic model's input batch looks like.

        Parameters
        ----------
        batch : numpy.ndarray
            ``(N, 3, S, S)``, the diagnostic model's own input (any ``S``).
        modality, body_part : sequence of str
            What each image was declared as (DICOM defined terms, ``""`` unknown).

        Raises
        ------
        ModelError
            If inference fails.
        """
        small = self.fit_input(np.asarray(batch))
        try:
            probs = self.model.probabilities(small)
        finally:
            small.fill(0)
        out = []
        for p, mod, part in zip(probs, modality, body_part, strict=True):
            k = int(p.argmax())
            source = self.model.card.classes[k]
            declared = model_pair(mod, part)
            pairs = self._pairs[source]
            matching = self._matching[source]
            unlike = (float(p[k]) >= self.threshold and declared in self._known
                      and declared not in matching)
            out.append(SourceGuess(source=source, probability=float(p[k]), pairs=pairs,
                                   unlike_declared=unlike, threshold=self.threshold,
                                   matches_declared=(declared in matching
                                                     if declared in self._known else None)))
        return out


def set_image_check_threshold(model_dir: str | PathLike[str], threshold: float, *,
                              evidence: dict[str, Any], signer: Signer) -> dict[str, Any]:
    """Record the image check's threshold (and how it was chosen) in its card; sign again.

    The ONNX file and the model id do not change.

    Raises
    ------
    ModelError
        If the folder is not a model, or the threshold is not in (0, 1].
    """
    if not 0.0 < float(threshold) <= 1.0:
        raise ModelError(f"image check threshold must be in (0, 1], not {threshold}")
    return update_card(model_dir, {"image_check": {"threshold": float(threshold),
                                                   "chosen_by": dict(evidence)}},
                       signer=signer)

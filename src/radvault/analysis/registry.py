"""Choose a model folder by modality and body part.

A registry is a folder of model folders (``models/`` in the repository)::

    models/
      keys/<key id>.pub       trusted model signing keys
      radbench6/              the default: six classes across modalities
      chest_xray/ ...         specialists, one per dataset

:meth:`ModelRegistry.select` prefers a *specialist*, a model trained on that
one modality and body part only, and otherwise falls back to the default
model (``radbench6``). Selection reads only the cards; loading the chosen
folder (:func:`~radvault.analysis.inference.load_model`) verifies it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from radvault.analysis.export import CARD_FILE, ModelKeyring, keys_dir_near
from radvault.analysis.image_check import IMAGE_CHECK_MODEL
from radvault.errors import ModelError
from radvault.imaging.vocabulary import model_pair

__all__ = ["DEFAULT_MODEL", "ModelEntry", "ModelRegistry", "default_models_dir"]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "radbench6"


def default_models_dir() -> Path:
    """``models/`` of the source checkout this package runs from."""
    return Path(__file__).resolve().parents[3] / "models"


@dataclass(frozen=True)
class ModelEntry:
    """One model folder as listed by the registry (card not yet verified)."""

    name: str
    path: Path
    task: str
    classes: tuple[str, ...]
    trained_on: tuple[tuple[str, str], ...]
    model_id: str = ""

    @property
    def is_specialist(self) -> bool:
        """Trained on a single modality/body part pair."""
        return len(set(self.trained_on)) == 1


class ModelRegistry:
    """The model folders under one root.

    Parameters
    ----------
    root : path
        Folder holding model folders (and ``keys/``).
    default : str
        Name of the fallback model folder.
    keys_dir : path, optional
        Folder of trusted model public keys (default: ``root/keys``).

    Raises
    ------
    ModelError
        If ``root`` is not a folder.
    """

    def __init__(self, root: str | PathLike[str] | None = None, *,
                 default: str = DEFAULT_MODEL,
                 keys_dir: str | PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_models_dir()
        if not self.root.is_dir():
            raise ModelError(f"{self.root}: no such model folder")
        self.default = default
        self.keys_dir = Path(keys_dir) if keys_dir is not None else None

    @property
    def keyring(self) -> ModelKeyring:
        """Trusted keys: ``keys_dir`` if given, else ``root/keys`` (or, for a nested root
        such as ``models/medmnist``, ``models/keys``)."""
        return ModelKeyring.from_dir(self.keys_dir if self.keys_dir is not None
                                     else keys_dir_near(self.root))

    def entries(self) -> list[ModelEntry]:
        """Every diagnostic model folder with a readable card, sorted by name (the image
        check is not one: :meth:`image_check_path`)."""
        out = []
        for card_path in sorted(self.root.glob(f"*/{CARD_FILE}")):
            if card_path.parent.name == IMAGE_CHECK_MODEL:
                continue
            try:
                card: dict[str, Any] = json.loads(card_path.read_text(encoding="utf-8"))
                out.append(ModelEntry(
                    name=card_path.parent.name, path=card_path.parent, task=str(card["task"]),
                    classes=tuple(card["classes"]),
                    trained_on=tuple((str(p["modality"]).upper(),
                                      str(p.get("body_part", "")).upper())
                                     for p in card.get("trained_on", [])),
                    model_id=str(card.get("model_id", ""))))
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("skipping an unreadable model card in %s", card_path.parent.name)
        return out

    def get(self, name: str) -> ModelEntry:
        """The model folder called ``name``, or whose card's model id is ``name``.

        A result names the model id that made it (``chest_xray-0eb703d244bc``); asking
        for that id again gets that model while it is the one installed.

        Raises
        ------
        ModelError
            If there is none.
        """
        entries = self.entries()
        for e in entries:
            if e.name == name:
                return e
        for e in entries:
            if name and e.model_id == name:
                return e
        raise ModelError(f"no model {name!r} in {self.root}")

    def image_check_path(self) -> Path | None:
        """The image check's folder (:data:`~radvault.analysis.image_check.IMAGE_CHECK_MODEL`)
        under the root, or ``None`` when this registry has none."""
        path = self.root / IMAGE_CHECK_MODEL
        return path if (path / CARD_FILE).is_file() else None

    def select(self, modality: str | None = None, body_part: str | None = None) -> Path:
        """The model folder for an image of this modality and body part.

        A specialist trained on exactly this (modality, body part) wins; when
        several match, the first by name. Otherwise the default model.

        Raises
        ------
        ModelError
            If nothing matches and there is no default model.
        """
        pair = model_pair(modality, body_part)  # CR as DX
        if pair[0]:
            for e in self.entries():
                if e.is_specialist and model_pair(*e.trained_on[0]) == pair:
                    return e.path
        return self.get(self.default).path

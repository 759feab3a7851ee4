"""Analyse use case: open a sealed study image in memory, classify it, store the result.

Algorithm 1 of the paper, after retrieval: D = Decrypt(E) in volatile memory ->
F = M_DL(D) -> S = softmax(F / T) -> decision support. The sealed model input
made at ingest is used when its preprocessing equals the model's; otherwise the
sealed image is decrypted and preprocessed in memory with the model card's
settings (one code path with training). Buffers are overwritten when done and
no plaintext pixel ever reaches disk; heatmaps are recomputed on request, never stored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from radvault.analysis.explain import gradcam_overlay
from radvault.analysis.inference import LoadedModel, load_model
from radvault.analysis.registry import ModelRegistry
from radvault.errors import ModelError, RadVaultError
from radvault.pipeline.retrieve import open_image, open_model_input
from radvault.vault.audit import Action, Outcome
from radvault.vault.vault import Vault

__all__ = ["Analyser", "AnalysisResult"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnalysisResult:
    """One stored analysis of one instance (pseudonymous)."""

    result_id: str
    instance_id: str
    study_id: str
    model_id: str
    task: str
    predicted_class: str
    probability: float
    probabilities: dict[str, float]
    refer: bool
    reasons: tuple[str, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    def as_payload(self) -> dict[str, Any]:
        """The JSON stored in the catalog."""
        return {
            "summary": {"prediction": self.predicted_class,
                        "probability": round(self.probability, 4), "refer": self.refer},
            "task": self.task, "predicted_class": self.predicted_class,
            "probability": self.probability, "probabilities": self.probabilities,
            "refer": self.refer, "reasons": list(self.reasons), **self.extra,
        }


def _from_record(record: Any, study_id: str) -> AnalysisResult:
    """Rebuild an :class:`AnalysisResult` from a stored result row."""
    p = record.payload
    return AnalysisResult(
        result_id=record.result_id, instance_id=record.instance_id, study_id=study_id,
        model_id=record.model_id, task=p.get("task", ""), predicted_class=p["predicted_class"],
        probability=float(p["probability"]), probabilities=dict(p["probabilities"]),
        refer=bool(p["refer"]), reasons=tuple(p.get("reasons", ())),
        extra={k: v for k, v in p.items() if k in ("input", "refer_threshold")},
    )


class Analyser:
    """Runs models from a registry on vault instances.

    Parameters
    ----------
    vault : Vault
        The open vault.
    registry : ModelRegistry
        Where models are chosen by modality and body part.
    actor : str
        Who asked, for the audit trail.
    """

    def __init__(self, vault: Vault, registry: ModelRegistry, *, actor: str = "system") -> None:
        self.vault = vault
        self.registry = registry
        self.actor = actor
        self._models: dict[Path, LoadedModel] = {}
        self._paths: dict[tuple[str | None, str | None, str | None], Path] = {}

    @classmethod
    def default(cls, vault: Vault, *, actor: str = "system",
                models_dir: Path | None = None) -> Analyser:
        """An analyser over the shipped models (or ``models_dir``).

        Raises
        ------
        ModelError
            If there is no model folder.
        """
        return cls(vault, ModelRegistry(models_dir), actor=actor)

    def model_for(self, modality: str | None, body_part: str | None,
                  name: str | None = None) -> LoadedModel:
        """Load (once) and return the model for this modality and body part, or by name."""
        key = (name, modality, body_part)
        path = self._paths.get(key)
        if path is None:  # reading every model card is slow: resolve each key once
            path = self.registry.get(name).path if name else self.registry.select(
                modality, body_part)
            self._paths[key] = path
        if path not in self._models:
            model = load_model(path, keyring=self.registry.keyring,
                               refer_threshold=self.vault.settings.refer_threshold)
            self.vault.audit.append(self.actor, Action.MODEL_LOAD, Outcome.OK,
                                    details={"model_id": model.model_id})
            self._models[path] = model
        return self._models[path]

    def _model_input(self, model: LoadedModel, instance_id: str) -> tuple[np.ndarray, str]:
        sealed = open_model_input(self.vault, instance_id, actor=self.actor)
        if dict(sealed.settings) == dict(model.card.preprocessing):
            return sealed.array, "sealed_model_input"
        sealed.array.fill(0)
        record = open_image(self.vault, instance_id, actor=self.actor)
        try:
            return model.preprocess(record), "sealed_image_preprocessed_in_memory"
        finally:
            if record.pixels.flags.writeable:
                record.pixels.fill(0)

    def analyse_instance(self, instance_id: str, *, model_name: str | None = None,
                         result_id: str | None = None) -> AnalysisResult:
        """Classify one instance, store the result and audit it.

        ``result_id`` (e.g. the job id) makes a re-run of the same request find
        its earlier result instead of storing a second one.

        Raises
        ------
        ObjectNotFound, IntegrityError, ModelError
            Unknown instance, failed back-verification, or no usable model.
        """
        instance = self.vault.catalog.get_instance(instance_id)
        study = self.vault.catalog.get_study(instance.study_id)
        if result_id is not None:
            for earlier in self.vault.catalog.results_of_instance(instance_id):
                if earlier.result_id == result_id:
                    return _from_record(earlier, study.study_id)
        try:
            model = self.model_for(study.modality, study.body_part, model_name)
            array, source = self._model_input(model, instance_id)
            try:
                prediction = model.predict(array[None], modality=study.modality or None,
                                           body_part=study.body_part or None)[0]
            finally:
                array.fill(0)
        except RadVaultError as exc:
            self.vault.audit.append(self.actor, Action.ANALYSE, Outcome.ERROR,
                                    object_ids=[instance.study_id, instance_id],
                                    details={"error": type(exc).__name__})
            raise
        result = AnalysisResult(
            result_id="", instance_id=instance_id, study_id=instance.study_id,
            model_id=prediction.model_id, task=model.card.task,
            predicted_class=prediction.label, probability=prediction.probability,
            probabilities=dict(prediction.probabilities), refer=prediction.refer,
            reasons=tuple(prediction.reasons),
            extra={"input": source, "refer_threshold": model.refer_threshold},
        )
        # The result and its audit entry commit together: one transaction, one fsync.
        with self.vault.audit.appending() as chain, self.vault.catalog.writing() as writer:
            stored = writer.add_result(instance_id, result.model_id, result.as_payload(),
                                       result_id=result_id)
            chain.append(
                writer.connection, self.actor, Action.ANALYSE, Outcome.OK,
                object_ids=[instance.study_id, instance_id, stored.result_id],
                details={"model_id": result.model_id, "refer": result.refer},
            )
        log.info("analysed instance %s with %s", instance_id, result.model_id)
        return AnalysisResult(**{**result.__dict__, "result_id": stored.result_id})

    def heatmap_png(self, instance_id: str, *, model_name: str | None = None) -> bytes:
        """Class-activation overlay (PNG bytes) for the predicted class, computed in memory.

        Raises
        ------
        ModelError
            If the model carries no activation weights.
        """
        instance = self.vault.catalog.get_instance(instance_id)
        study = self.vault.catalog.get_study(instance.study_id)
        model = self.model_for(study.modality, study.body_part, model_name)
        array, _ = self._model_input(model, instance_id)
        try:
            heatmap = model.cam(array[None])
            png = gradcam_overlay(array, heatmap)
        except ModelError:
            raise
        finally:
            array.fill(0)
        self.vault.audit.append(self.actor, Action.READ, Outcome.OK,
                                object_ids=[instance.study_id, instance_id],
                                details={"what": "heatmap"})
        return png

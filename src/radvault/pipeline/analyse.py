"""Analyse use case: open a sealed study image in memory, classify it, store the result.

Algorithm 1 of the paper, after retrieval: D = Decrypt(E) in volatile memory ->
F = M_DL(D) -> S = softmax(F / T) -> decision support. The sealed model input
made at ingest is used when its preprocessing equals the model's; otherwise the
sealed image is decrypted and preprocessed in memory with the model card's
settings (one code path with training). The registry's image check, when it has one,
looks at the same input and refers an image that looks like another trained source
than its study declares. Buffers are overwritten when done and
no plaintext pixel ever reaches disk; heatmaps are recomputed on request, never stored.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import numpy as np

from radvault.analysis.explain import gradcam_overlay, heatmap_only_png
from radvault.analysis.image_check import ImageCheck
from radvault.analysis.inference import LoadedModel, load_model
from radvault.analysis.registry import ModelRegistry
from radvault.errors import ModelIntegrityError, RadVaultError
from radvault.imaging.preprocess import display_array
from radvault.pipeline.ingest import MODEL_INPUT_KIND
from radvault.pipeline.retrieve import (
    open_image,
    open_model_input,
    open_model_input_object,
)
from radvault.vault.audit import Action, EntryDraft, Outcome
from radvault.vault.catalog import ObjectRecord
from radvault.vault.vault import Vault

__all__ = ["Analyser", "AnalysisResult", "BatchAnalysis", "HeatmapBase"]

#: What a heatmap is drawn over: the model input, the image as viewed, or nothing.
HeatmapBase = Literal["model_input", "image", "nothing"]

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


#: Images in a batch analysis's first chunk: nothing overlaps its opening and verifying,
#: so a small one gets ONNX Runtime started sooner.
FIRST_CHUNK = 8


def _batched(items: Iterable[str], size: int, first: int | None = None
             ) -> Iterable[list[str]]:
    """Successive lists of at most ``size`` items, the first of at most ``first``.

    (itertools.batched is Python 3.12+.)
    """
    iterator = iter(items)
    if first is not None and (chunk := list(islice(iterator, min(first, size)))):
        yield chunk
    while chunk := list(islice(iterator, size)):
        yield chunk


@dataclass(frozen=True)
class BatchAnalysis:
    """What :meth:`Analyser.analyse_many` did: stored results, and instances it refused."""

    results: list[AnalysisResult]
    failures: list[tuple[str, RadVaultError]]  # (instance id, why: its message holds no PHI)


@dataclass
class _Prepared:
    """One instance ready for inference: its verified model input in memory."""

    instance_id: str
    study_id: str
    modality: str  # as the catalog keeps it; "" when it has none
    body_part: str  # "" when unknown: referred, never left unchecked
    model: LoadedModel
    array: np.ndarray
    source: str


def _from_record(record: Any, study_id: str) -> AnalysisResult:
    """Rebuild an :class:`AnalysisResult` from a stored result row."""
    p = record.payload
    return AnalysisResult(
        result_id=record.result_id, instance_id=record.instance_id, study_id=study_id,
        model_id=record.model_id, task=p.get("task", ""), predicted_class=p["predicted_class"],
        probability=float(p["probability"]), probabilities=dict(p["probabilities"]),
        refer=bool(p["refer"]), reasons=tuple(p.get("reasons", ())),
        extra={k: v for k, v in p.items()
               if k in ("input", "refer_threshold", "image_check", "recorded_as")},
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
        self._check: ImageCheck | None = None
        self._check_looked_up = False
        self._check_lock = threading.Lock()

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
            self._models[path] = self._load(path)
        return self._models[path]

    def image_check(self) -> ImageCheck | None:
        """The registry's image check, loaded (verified, audited) once; ``None`` if it has none.

        Raises
        ------
        ModelIntegrityError, ModelError
            If the check's folder fails verification or is not an image check: a
            tampered check fails every analysis rather than letting images through
            unchecked.
        """
        with self._check_lock:  # a service's threads share one analyser: load it once
            if not self._check_looked_up:
                path = self.registry.image_check_path()
                self._check = ImageCheck(self._load(path)) if path is not None else None
                self._check_looked_up = True
        return self._check

    def _load(self, path: Path) -> LoadedModel:
        """Load and verify a model folder; a failed verification is audited as tampering."""
        try:
            model = load_model(path, keyring=self.registry.keyring,
                               refer_threshold=self.vault.settings.refer_threshold)
        except ModelIntegrityError as exc:
            # audited as tampering, like a sealed object that fails its check; the
            # reason (altered file, unsigned, untrusted key, ...) without the folder
            reason = str(exc).removeprefix(f"{path}: ")[:160]
            self.vault.audit.append(self.actor, Action.INTEGRITY_FAILURE, Outcome.REFUSED,
                                    details={"error": "model failed verification",
                                             "reason": reason,
                                             "model_folder": Path(path).name})
            raise
        self.vault.audit.append(self.actor, Action.MODEL_LOAD, Outcome.OK,
                                details={"model_id": model.model_id})
        return model

    def _model_input(self, model: LoadedModel, instance_id: str,
                     obj: ObjectRecord | None = None) -> tuple[np.ndarray, str]:
        """The model's input for an instance: the sealed one (``obj``, when its row is
        already read), or the image preprocessed again in memory if settings differ."""
        sealed = (open_model_input(self.vault, instance_id, actor=self.actor) if obj is None
                  else open_model_input_object(self.vault, obj, actor=self.actor))
        if dict(sealed.settings) == dict(model.card.preprocessing):
            return sealed.array, "sealed_model_input"
        sealed.array.fill(0)
        record = open_image(self.vault, instance_id, actor=self.actor)
        try:
            return model.preprocess(record), "sealed_image_preprocessed_in_memory"
        finally:
            if record.pixels.flags.writeable:
                record.pixels.fill(0)

    def instances_of(self, target: str) -> list[str]:
        """The instances a target names: every instance of a study, or the one instance.

        Parameters
        ----------
        target : str
            A study id or an instance id.

        Returns
        -------
        list of str
            Instance ids, in the catalog's order.

        Raises
        ------
        ObjectNotFound
            If the target is neither a study with instances nor an instance.
        """
        catalog = self.vault.catalog
        instances = [i.instance_id for i in catalog.instances_of_study(target)]
        return instances or [catalog.get_instance(target).instance_id]

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
        if result_id is not None:
            instance = self.vault.catalog.get_instance(instance_id)
            for earlier in self.vault.results_of_instance(instance_id, actor=self.actor):
                if earlier.result_id == result_id:
                    return _from_record(earlier, instance.study_id)
        self.image_check()  # verified before any image is opened (a failure is audited)
        opened, refused = self._prepare_chunk([instance_id], model_name)  # one catalog read
        if refused:
            raise refused[0][1]  # audited where it was raised
        prepared = opened[0]
        batch = prepared.array[None]
        try:
            results = self._infer([prepared], batch)
        except RadVaultError as exc:
            self._audit_failure(prepared.instance_id, prepared.study_id, exc)
            raise
        finally:
            batch.fill(0)
        return self._store(results, result_ids=[result_id])[0]

    def analyse_many(self, instance_ids: Iterable[str], *, model_name: str | None = None,
                     batch_size: int = 32,
                     progress: Callable[[int], None] | None = None) -> BatchAnalysis:
        """Classify many instances: one inference call and one commit per batch.

        Each instance is back-verified and audited exactly as by
        :meth:`analyse_instance`; a batch shares the model call (images of one
        model go through ONNX Runtime together) and one transaction for its
        results and audit entries. While ONNX Runtime runs a batch (it releases
        the GIL), one worker thread stores the previous batch and opens and
        verifies the next, so the checks cost little wall time on a second
        core. The first batch holds at most :data:`FIRST_CHUNK` images, as
        nothing overlaps its checks. An instance that fails (unknown, tampered,
        no model) is audited, reported in ``failures`` and skipped; the rest are
        stored. ``progress`` is called with the number of instances finished
        after each batch.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.image_check()  # verified before any image is opened (a failure is audited)
        results: list[AnalysisResult] = []
        failures: list[tuple[str, RadVaultError]] = []
        chunks = iter(_batched(instance_ids, batch_size, first=FIRST_CHUNK))
        stores: list[tuple[Future[list[AnalysisResult]], int]] = []

        def settle(wait_all: bool) -> None:
            while stores and (wait_all or stores[0][0].done()):
                future, n = stores.pop(0)
                results.extend(future.result())
                if progress is not None:
                    progress(n)

        with ThreadPoolExecutor(1, thread_name_prefix="radvault-analyse") as worker:
            chunk = next(chunks, None)
            pending = worker.submit(self._prepare_batches, chunk, model_name) if chunk else None
            finished: tuple[list[AnalysisResult], int] | None = None
            try:
                while pending is not None:
                    batches, n, refused = pending.result()
                    failures.extend(refused)
                    if finished is not None:
                        stores.append((worker.submit(self._store, finished[0]), finished[1]))
                    chunk = next(chunks, None)
                    pending = (worker.submit(self._prepare_batches, chunk, model_name)
                               if chunk else None)
                    finished = self._infer_batches(batches, failures), n
                    settle(wait_all=False)
                if finished is not None:
                    stores.append((worker.submit(self._store, finished[0]), finished[1]))
                settle(wait_all=True)
            finally:
                if pending is not None:  # an error stopped the loop: wipe what was opened
                    leftover = [] if pending.exception() else pending.result()[0]
                    for _, batch in leftover:
                        batch.fill(0)
        return BatchAnalysis(results, failures)

    def _prepare_batches(self, chunk: Sequence[str], model_name: str | None
                         ) -> tuple[list[tuple[list[_Prepared], np.ndarray]], int,
                                    list[tuple[str, RadVaultError]]]:
        """Open, verify and stack a chunk (one input batch per model), on the worker.

        Stacking here keeps the copy off the inference thread, which then only
        waits for ONNX Runtime; returns the batches, the chunk's size and the refusals.
        """
        prepared, refused = self._prepare_chunk(chunk, model_name)
        return self._stack_by_model(prepared), len(chunk), refused

    def _prepare_chunk(self, chunk: Sequence[str], model_name: str | None
                       ) -> tuple[list[_Prepared], list[tuple[str, RadVaultError]]]:
        """Open and verify a batch's inputs; refused instances are listed, not raised.

        The batch's catalog rows come in one query; an instance whose model
        input row is not there takes the one-at-a-time path, which says why.
        """
        prepared: list[_Prepared] = []
        refused: list[tuple[str, RadVaultError]] = []
        objects = self.vault.catalog.objects_of_instances(chunk, kinds=(MODEL_INPUT_KIND,))
        try:
            for instance_id in chunk:
                obj = next((o for o in objects.get(instance_id, ()) if o.study_id is not None),
                           None)
                try:
                    if obj is None:
                        prepared.append(self._prepare(instance_id, model_name))
                    else:
                        prepared.append(self._prepare_object(obj, model_name))
                except RadVaultError as exc:
                    refused.append((instance_id, exc))
        except BaseException:  # anything unforeseen: wipe what this chunk opened, then raise
            for p in prepared:
                p.array.fill(0)
            raise
        return prepared, refused

    def _prepare_object(self, obj: ObjectRecord, model_name: str | None) -> _Prepared:
        """Like :meth:`_prepare`, from the instance's model-input row already read."""
        study_id = obj.study_id or ""
        try:
            model = self.model_for(obj.modality, obj.body_part, model_name)
            array, source = self._model_input(model, obj.instance_id, obj)
        except RadVaultError as exc:
            self._audit_failure(obj.instance_id, study_id, exc)
            raise
        return _Prepared(obj.instance_id, study_id, obj.modality or "", obj.body_part or "",
                         model, array, source)

    def _prepare(self, instance_id: str, model_name: str | None) -> _Prepared:
        """Choose the model and open the instance's verified model input (audits failures)."""
        instance = self.vault.catalog.get_instance(instance_id)
        try:
            study = self.vault.catalog.get_study(instance.study_id)
            model = self.model_for(study.modality, study.body_part, model_name)
            array, source = self._model_input(model, instance_id)
        except RadVaultError as exc:
            self._audit_failure(instance_id, instance.study_id, exc)
            raise
        return _Prepared(instance_id, instance.study_id, study.modality or "",
                         study.body_part or "", model, array, source)

    def _audit_failure(self, instance_id: str, study_id: str, exc: RadVaultError) -> None:
        self.vault.audit.append(self.actor, Action.ANALYSE, Outcome.ERROR,
                                object_ids=[study_id, instance_id],
                                details={"error": type(exc).__name__})

    @staticmethod
    def _stack_by_model(prepared: Sequence[_Prepared]
                        ) -> list[tuple[list[_Prepared], np.ndarray]]:
        """One input batch per model; each instance's own array is zeroed once copied
        (and every batch already stacked, if stacking a later one fails)."""
        groups: dict[int, list[_Prepared]] = {}
        for p in prepared:
            groups.setdefault(id(p.model), []).append(p)
        stacked: list[tuple[list[_Prepared], np.ndarray]] = []
        try:
            for group in groups.values():
                stacked.append((group, np.stack([p.array for p in group])))
        except BaseException:
            for _, batch in stacked:
                batch.fill(0)
            raise
        finally:
            for p in prepared:
                p.array.fill(0)
        return stacked

    def _infer_batches(self, batches: Sequence[tuple[list[_Prepared], np.ndarray]],
                       failures: list[tuple[str, RadVaultError]]) -> list[AnalysisResult]:
        """Run each model on its batch (zeroed after); a model that fails fails its group."""
        done: list[AnalysisResult] = []
        try:
            for group, batch in batches:
                try:
                    done.extend(self._infer(group, batch))
                except RadVaultError as exc:
                    for p in group:
                        self._audit_failure(p.instance_id, p.study_id, exc)
                        failures.append((p.instance_id, exc))
        finally:
            for _, batch in batches:
                batch.fill(0)
        return done

    def _infer(self, group: Sequence[_Prepared], batch: np.ndarray) -> list[AnalysisResult]:
        """Run one model on a stacked batch of a group's inputs.

        Each image's modality and body part go to the referral check as strings, ``""``
        when the catalog has none: the vault always knows what it knows, so an image
        without a body part is referred (``body_part_unknown``), never left unchecked.
        """
        model = group[0].model
        predictions = model.predict(batch, modality=[p.modality for p in group],
                                    body_part=[p.body_part for p in group],
                                    image_check=self.image_check())
        return [
            AnalysisResult(
                result_id="", instance_id=p.instance_id, study_id=p.study_id,
                model_id=pred.model_id, task=model.card.task, predicted_class=pred.label,
                probability=pred.probability, probabilities=dict(pred.probabilities),
                refer=pred.refer, reasons=tuple(pred.reasons),
                # what the study was recorded as when analysed (a relabel may follow)
                extra={"input": p.source, "refer_threshold": model.refer_threshold,
                       "recorded_as": [p.modality, p.body_part],
                       **({} if pred.image_check is None
                          else {"image_check": dict(pred.image_check)})},
            )
            for p, pred in zip(group, predictions, strict=True)
        ]

    def _store(self, results: Sequence[AnalysisResult],
               result_ids: Sequence[str | None] | None = None) -> list[AnalysisResult]:
        """Store results with their audit entries: one transaction, one fsync."""
        if not results:
            return []
        if result_ids is None:
            result_ids = [None] * len(results)
        with self.vault.audit.appending() as chain, self.vault.catalog.writing() as writer:
            records = writer.add_results([
                (r.instance_id, r.model_id, r.as_payload(), result_id)
                for r, result_id in zip(results, result_ids, strict=True)],
                signer=self.vault.signer)
            chain.append_many(writer.connection, [
                EntryDraft(self.actor, Action.ANALYSE, Outcome.OK,
                           object_ids=[r.study_id, r.instance_id, record.result_id],
                           details={"model_id": r.model_id, "refer": r.refer})
                for r, record in zip(results, records, strict=True)])
        stored_results = [AnalysisResult(**{**r.__dict__, "result_id": record.result_id})
                          for r, record in zip(results, records, strict=True)]
        for result in stored_results:
            log.info("analysed instance %s with %s", result.instance_id, result.model_id)
        return stored_results

    def heatmap_png(self, instance_id: str, *, model_name: str | None = None,
                    under: HeatmapBase = "model_input", max_size: int = 1024) -> bytes:
        """Class-activation heatmap (PNG bytes) for the predicted class, computed in memory.

        ``under`` says what is drawn beneath it: the model input (small, contrast-enhanced),
        the stored ``image`` as a person views it, at its own size (at most ``max_size``
        px; opened and audited as a read), or ``nothing`` (the heatmap alone, at the model
        input's size). The first two only for callers allowed to see the image.

        Raises
        ------
        ModelError
            If the model carries no activation weights.
        ValueError
            If ``under`` is none of the three.
        """
        if under not in ("model_input", "image", "nothing"):
            raise ValueError(f"under must be model_input, image or nothing, not {under!r}")
        instance = self.vault.catalog.get_instance(instance_id)
        study = self.vault.catalog.get_study(instance.study_id)
        model = self.model_for(study.modality, study.body_part, model_name)
        array, _ = self._model_input(model, instance_id)
        try:
            heatmap = model.cam(array[None])
            if under == "model_input":
                png = gradcam_overlay(array, heatmap)
            elif under == "nothing":
                png = heatmap_only_png(heatmap, size=array.shape[-1])
        finally:
            array.fill(0)
        if under == "image":
            record = open_image(self.vault, instance_id, actor=self.actor)
            try:
                base = display_array(record, max_size=max_size)  # the model input's letterbox
                try:
                    png = gradcam_overlay(base, heatmap)
                finally:
                    base.fill(0)
            finally:
                if record.pixels.flags.writeable:
                    record.pixels.fill(0)
        self.vault.audit.append(self.actor, Action.READ, Outcome.OK,
                                object_ids=[instance.study_id, instance_id],
                                details={"what": "heatmap", "under": under})
        return png

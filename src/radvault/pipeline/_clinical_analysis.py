"""Analysis use cases (private: use :mod:`radvault.pipeline.clinical`).

Radiologists queue analyses of their granted studies (idempotent jobs in the
job runner), follow the jobs, and read the stored results with their sign-offs
and the class-activation overlays. The job's body (:meth:`_run_analysis`,
called by :func:`~radvault.pipeline.clinical.analyse_task`) re-checks the
requester's grant before it opens anything, and records which result each job
stored so that a re-run stores no second one.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import IntegrityError as SQLIntegrityError

from radvault.access.policy import ROLE_ACTIONS, Action, Resource
from radvault.access.principal import Principal
from radvault.errors import (
    AccessDenied,
    ConfigurationError,
    IntegrityError,
    ModelError,
    ObjectNotFound,
    ObjectShredded,
    UnknownModel,
)
from radvault.jobs import Job, JobStatus, current_job
from radvault.pipeline._clinical_base import (
    JOB_ID_RE,
    InvalidRequest,
    JobView,
    ResultView,
    ServiceCore,
    SignOffView,
)
from radvault.pipeline._clinical_tables import (
    AnalysisRunRow,
)
from radvault.vault.audit import Outcome
from radvault.vault.catalog import ResultRecord, StudyRecord, canonical_json

__all__ = ["ANALYSE_TASK", "AnalysisCases"]

ANALYSE_TASK = "clinical.analyse"
"""The job task that analyses the instances of one study."""

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class AnalysisCases(ServiceCore):
    """Analysis use cases: queue, follow, read results and heatmaps."""

    if TYPE_CHECKING:  # provided by ClinicalService, which this mixin is a base of

        def _signoffs(self, instance_id: str) -> list[SignOffView]: ...

    # ------------------------------------------------------------------ analysis

    def start_analysis(self, principal: Principal, study_id: str, *,
                       instance_id: str | None = None, model: str | None = None,
                       after: str | None = None, fresh: bool = False) -> JobView:
        """Queue the analysis of a study (or one of its instances); idempotent.

        Asking again for the same instances, model and ``after``, while the study is
        recorded as the same modality and body part, returns the same job, whatever its
        state, unless it failed: then a new job is started.

        Parameters
        ----------
        principal : Principal
            A radiologist granted the study.
        study_id : str
            The study.
        instance_id : str, optional
            One instance; default every instance of the study.
        model : str, optional
            A model folder name of the service's model registry; default the
            registry's choice per image. Checked here, before anything is queued
            (and again when the job runs: a model may disappear meanwhile).
        after : str, optional
            "Analyse again, after this": the newest result id the caller has seen (the
            page's "Analyse again"), so that a finished analysis is done once more, while
            the same request sent twice (a double click) still gets one job. It must be
            a result id of the images asked for.
        fresh : bool
            A new job whatever was asked before (after a relabel: the record changed).

        Returns
        -------
        JobView
            The job (``pending`` at first).

        Raises
        ------
        AccessDenied
            If not granted (audited).
        ObjectNotFound
            If the instance is not in the study.
        InvalidRequest
            If the study has no images or the model name is malformed (audited).
        ObjectShredded
            If the study was shredded (audited; nothing is queued).
        UnknownModel
            If the registry holds no model of that name (audited; nothing queued).
        ModelError
            If the model registry itself is unusable.
        """
        if instance_id is not None:
            study, inst = self._instance(principal, Action.ANALYSE, study_id, instance_id)
            instance_ids = [inst.instance_id]
        else:
            study = self._study(principal, Action.ANALYSE, study_id)
            instance_ids = [i.instance_id for i in self.vault.catalog.instances_of_study(
                study.study_id)]
        if study.shredded_at is not None:  # nothing of it can be opened: refused now,
            # not as a job that fails later
            self.vault.audit.append(principal.username, "analysis.request", Outcome.REFUSED,
                                    object_ids=[study.study_id], details={"reason": "shredded"})
            raise ObjectShredded(f"study {study.study_id} was shredded")
        if not instance_ids:
            raise InvalidRequest("the study has no images to analyse")
        if model is not None:
            self._check_model(principal, study.study_id, model)
        payload = {"study_id": study.study_id, "instance_ids": sorted(instance_ids),
                   "model": model}
        # the job is the same while the request and the study's record are: a relabel
        # (another modality or body part) makes the same request a new analysis
        material: dict[str, Any] = {**payload,
                                    "recorded_as": [study.modality, study.body_part]}
        # and an image whose newest result was made under another record (relabelled
        # there and back) is analysed again: the old job of this record is not its answer
        now = [study.modality or "", study.body_part or ""]
        results = [self.vault.catalog.results_of_instance(i) for i in instance_ids]
        stale = sorted(rows[-1].result_id for rows in results
                       if rows and isinstance(rows[-1].payload.get("recorded_as"), list)
                       and [v or "" for v in rows[-1].payload["recorded_as"][:2]] != now)
        if stale:
            material["stale"] = stale
        if after is not None:
            seen = {r.result_id for rows in results for r in rows}
            if not isinstance(after, str) or after not in seen:
                raise InvalidRequest("'after' must name a result of the images asked for")
            material["after"] = after
        if fresh:
            material["fresh"] = secrets.token_hex(16)
        key = "clinical.analyse:" + hashlib.sha256(canonical_json(material)).hexdigest()[:48]
        runner = self._runner()
        job = runner.submit(ANALYSE_TASK, payload, idempotency_key=key,
                            actor=principal.username)
        for _ in range(20):  # a failed job is not the final word: chain a fresh one
            if job.status is not JobStatus.FAILED:
                break
            job = runner.submit(ANALYSE_TASK, payload, idempotency_key=f"{key}:{job.job_id}",
                                actor=principal.username)
        self.vault.audit.append(principal.username, "analysis.request", Outcome.OK,
                                object_ids=[study.study_id, *payload["instance_ids"]][:64],
                                details={"job_id": job.job_id, "model": model})
        return _job_view(job)

    def _check_model(self, principal: Principal, study_id: str, model: str) -> None:
        """Refuse (audited) a model name the service's registry does not hold.

        The trail names the model only by its keyed digest: the name is text the
        caller typed.
        """
        if not isinstance(model, str) or not _MODEL_NAME.fullmatch(model):
            error: InvalidRequest = InvalidRequest("invalid model name")
            reason = "malformed model name"
        else:
            registry = self._analyser(principal.username).registry
            try:
                registry.get(model)
                return
            except ModelError:
                pass
            names = [e.name for e in registry.entries()]
            listed = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            error = UnknownModel(
                f"unknown model: choose one of {listed}, or leave model out to let the "
                "registry choose" if names else "unknown model: the model registry is empty")
            reason = "unknown model"
        self.vault.audit.append(principal.username, "analysis.request", Outcome.REFUSED,
                                object_ids=[study_id],
                                details={"reason": reason,
                                         "model_hmac": self.vault.audit_digest(str(model))})
        raise error

    def job(self, principal: Principal, job_id: str) -> JobView:
        """An analysis job's state, for a caller granted its study.

        Raises
        ------
        ObjectNotFound
            If there is no such analysis job (audited as a refused look-up).
        AccessDenied
            If the caller is not granted the job's study (audited).
        """
        if not isinstance(job_id, str) or not JOB_ID_RE.fullmatch(job_id):
            raise self._not_found(principal, Action.VIEW_RESULT, "job", str(job_id))  # digest
        try:
            job = self._runner().get(job_id)
        except ObjectNotFound:
            job = None
        if job is None or job.task != ANALYSE_TASK:
            raise self._not_found(principal, Action.VIEW_RESULT, "job", job_id)
        self._study(principal, Action.VIEW_RESULT, str(job.payload.get("study_id")))
        return _job_view(job)

    def results(self, principal: Principal, study_id: str,
                instance_id: str) -> list[ResultView]:
        """Every stored analysis of one instance, oldest first, with sign-offs.

        Raises
        ------
        AccessDenied
            If not granted (audited).
        ObjectNotFound
            If the instance is not in the study.
        """
        study, inst = self._instance(principal, Action.VIEW_RESULT, study_id, instance_id)
        records = self.vault.results_of_instance(inst.instance_id, actor=principal.username)
        signoffs = {s.result_id: s for s in self._signoffs(inst.instance_id)}
        views = [_result_view(study.study_id, r, signoffs.get(r.result_id)) for r in records]
        self.vault.audit.append(principal.username, "result.read", Outcome.OK,
                                object_ids=[study.study_id, inst.instance_id],
                                details={"results": len(views)})
        return views

    def latest_result(self, principal: Principal, study_id: str,
                      instance_id: str) -> ResultView:
        """The newest analysis of one instance.

        Raises
        ------
        AccessDenied
            If not granted (audited).
        ObjectNotFound
            If the instance is not in the study or was never analysed.
        """
        views = self.results(principal, study_id, instance_id)
        if not views:
            raise ObjectNotFound(f"instance {instance_id} has not been analysed")
        return views[-1]

    def lead_instance(self, principal: Principal, study_id: str) -> str | None:
        """The image a study is summarised by: its first flagged analysed image, else its
        newest analysed one (the worklist, the study page and the default report agree);
        ``None`` when nothing is analysed.

        Raises
        ------
        AccessDenied
            If not granted (audited).
        """
        study = self._study(principal, Action.VIEW_RESULT, study_id)
        lead = self._lead_of(self.vault.catalog.instances_of_study(study.study_id))
        return lead.instance_id if lead is not None else None

    def relabel_study(self, principal: Principal, study_id: str, *, modality: str,
                      body_part: str | None) -> StudyRecord:
        """Correct what a study was recorded as (a radiologist who may analyse it; audited).

        For an image the image check takes for another kind than recorded: the catalog's
        modality and body part change (its objects' rows signed again); analyse it again
        for the right model's answer. Earlier results and sign-offs stay.

        Raises
        ------
        AccessDenied
            If not granted (audited).
        InvalidRequest
            If a value is not a DICOM defined term (audited).
        ObjectShredded
            If the study is shredded (audited).
        """
        from radvault.pipeline.maintenance import relabel_study

        study = self._study(principal, Action.ANALYSE, study_id)
        relabel_study(self.vault, study.study_id, modality=modality, body_part=body_part,
                      actor=principal.username)
        return self.vault.catalog.get_study(study.study_id)

    def heatmap(self, principal: Principal, study_id: str, instance_id: str) -> bytes:
        """The class-activation overlay of an analysed instance (PNG, computed in memory).

        Raises
        ------
        AccessDenied
            If not granted (audited).
        ObjectNotFound
            If the instance is not in the study or was never analysed.
        ModelError
            If no model can compute it.
        """
        study, inst = self._instance(principal, Action.VIEW_RESULT, study_id, instance_id)
        if not self.vault.catalog.results_of_instance(inst.instance_id):
            raise ObjectNotFound(f"instance {inst.instance_id} has not been analysed")
        # Over the image at the size the image page shows it, for whoever may view the image
        # (that view is authorised and audited); for a physician, who may see results but
        # not images, the heatmap alone, with nothing of the image under it.
        resource = Resource.study(study.study_id, study.site)
        over_image = self.policy.allowed(principal, Action.VIEW_IMAGE, resource)
        if over_image:
            self.policy.authorize(principal, Action.VIEW_IMAGE, resource)
        return self._analyser(principal.username).heatmap_png(
            inst.instance_id, under="image" if over_image else "nothing",
            max_size=min(1024, self.settings.render_max_size))  # as the image page's largest

    # ------------------------------------------------------------------ analysis task

    def _run_analysis(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The body of :func:`~radvault.pipeline.clinical.analyse_task` (see there)."""
        info = current_job()
        if info is None:
            raise ConfigurationError("the analysis task runs inside a job only")
        study_id = str(payload.get("study_id", ""))
        instance_ids = [str(i) for i in payload.get("instance_ids", [])]
        model = payload.get("model")
        principal = self._principal_of(info.actor, info.job_id)
        study = self._study(principal, Action.ANALYSE, study_id)
        analyser = self._analyser(info.actor)
        for instance_id in instance_ids:
            inst = self.vault.catalog.get_instance(instance_id)
            if inst.study_id != study.study_id:
                raise ObjectNotFound(f"study {study.study_id} has no instance {instance_id}")
        # What an earlier run of this job stored is kept (a resumed job redoes only what is
        # missing); the rest go in batches: one model call and one commit per batch. A
        # failed instance fails the job once the others are stored and recorded.
        runs = {i: self._run_of(info.job_id, i) for i in instance_ids}
        pending = [i for i, done in runs.items() if done is None]
        if pending:
            batch = analyser.analyse_many(pending, model_name=model)
            for result in batch.results:
                runs[result.instance_id] = self._record_run(info.job_id, result.instance_id,
                                                            result.result_id)
            if batch.failures:
                raise batch.failures[0][1]
        out = []
        for instance_id in instance_ids:
            done = runs[instance_id]
            record = next((r for r in self.vault.results_of_instance(
                instance_id, actor=principal.username) if r.result_id == done), None)
            if record is None:
                raise IntegrityError(f"result {done} of job {info.job_id} is missing")
            out.append({"instance_id": instance_id, "result_id": record.result_id,
                        "model_id": record.model_id,
                        "predicted_class": record.payload.get("predicted_class"),
                        "probability": record.payload.get("probability"),
                        "refer": record.payload.get("refer")})
        return {"study_id": study.study_id, "results": out}

    def _principal_of(self, username: str, job_id: str) -> Principal:
        """The current principal of an account (for a job run on its behalf); a requester
        removed or locked by an admin since is refused, and the refusal audited."""
        user = self.accounts.find_user(username)
        if user is None or (user.is_locked(datetime.now(UTC)) and user.locked_by_admin):
            self.vault.audit.append(username, "access_denied", Outcome.REFUSED,
                                    object_ids=[job_id],
                                    details={"action": Action.ANALYSE.value,
                                             "reason": "the job's requester is not active"})
            raise AccessDenied("the job's requester is no longer an active user")
        scopes = frozenset(a.value for a in ROLE_ACTIONS[user.role])
        return Principal(user.username, user.role, user.site, scopes)

    def _run_of(self, job_id: str, instance_id: str) -> str | None:
        with self._read.begin() as session:
            row = session.get(AnalysisRunRow, (job_id, instance_id))
            return None if row is None else row.result_id

    def _record_run(self, job_id: str, instance_id: str, result_id: str) -> str:
        try:
            with self._write.begin() as session:
                session.add(AnalysisRunRow(job_id=job_id, instance_id=instance_id,
                                           result_id=result_id, created_at=datetime.now(UTC)))
            return result_id
        except SQLIntegrityError:  # a concurrent re-run recorded first: keep its result
            existing = self._run_of(job_id, instance_id)
            assert existing is not None
            return existing


# --------------------------------------------------------------------------- helpers


def _result_view(study_id: str, record: ResultRecord, signoff: SignOffView | None) -> ResultView:
    p = record.payload
    return ResultView(
        result_id=record.result_id, study_id=study_id, instance_id=record.instance_id,
        model_id=record.model_id, created_at=record.created_at, task=str(p.get("task", "")),
        predicted_class=str(p.get("predicted_class", "")),
        probability=float(p.get("probability", 0.0)),
        probabilities={str(k): float(v) for k, v in dict(p.get("probabilities", {})).items()},
        refer=bool(p.get("refer", False)), reasons=tuple(str(r) for r in p.get("reasons", [])),
        refer_threshold=(float(p["refer_threshold"]) if p.get("refer_threshold") is not None
                         else None),
        signoff=signoff, image_check=_image_check_of(p),
        recorded_as=(tuple(str(v or "") for v in p["recorded_as"][:2])  # type: ignore[arg-type]
                     if isinstance(p.get("recorded_as"), list)
                     and len(p["recorded_as"]) >= 2 else None))


def _image_check_of(payload: dict[str, Any]) -> dict[str, Any] | None:
    """The stored image check, as plain typed values (``None`` when the result has none)."""
    check = payload.get("image_check")
    if not isinstance(check, dict):
        return None
    return {"model_id": str(check.get("model_id", "")),
            "looks_like": str(check.get("looks_like", "")),
            "probability": float(check.get("probability", 0.0)),
            "threshold": (float(check["threshold"]) if check.get("threshold") is not None
                          else None),
            "unlike_declared": bool(check.get("unlike_declared", False)),
            "matches_declared": (bool(check["matches_declared"])
                                 if check.get("matches_declared") is not None else None),
            "looks_like_pair": ([str(v) for v in check["looks_like_pair"]][:2]
                                if isinstance(check.get("looks_like_pair"), list) else None)}


def _job_view(job: Job) -> JobView:
    result = job.result or {}
    return JobView(
        job_id=job.job_id, status=job.status.value,
        study_id=str(job.payload.get("study_id", "")),
        instance_ids=tuple(str(i) for i in job.payload.get("instance_ids", [])),
        model=job.payload.get("model"), attempts=job.attempts, created_at=job.created_at,
        finished_at=job.finished_at,
        error=job.error.split(":", 1)[0] if job.error and job.status is JobStatus.FAILED
        else None,
        results=tuple(dict(r) for r in result.get("results", [])))

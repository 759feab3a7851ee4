"""Clinical pages: the worklist, a study, its image and heatmap, analysis, sign-off, reports.

Every page calls the clinical service with the signed-in principal, so what a
role may see and do, and what is audited, is exactly what the API allows:

* ``GET /web/`` the worklist: granted studies, flagged-and-unread first, then
  unread, then the rest, newest first within each;
* ``GET /web/studies/{id}`` a study: the rendered image (zoom; window/level for
  CT and MR), the heatmap toggle, class probabilities, the decision-support
  flag, the sign-off form and report downloads;
* ``GET .../instances/{iid}/image.png`` and ``.../heatmap.png`` the pictures;
* ``POST /web/studies/{id}/analyses`` starts an analysis; ``GET /web/jobs/{job}``
  follows it and returns to the study when it ends;
* ``POST .../instances/{iid}/signoff`` a radiologist's decision;
* ``GET /web/studies/{id}/report?format=html|pdf|fhir|sr`` a download.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Query, Request, Response

from radvault.api.shared import InstanceId, JobId, StudyId, file_response, get_service
from radvault.errors import IntegrityError, InvalidRequest, ObjectNotFound, SignOffConflict
from radvault.pipeline.clinical import (
    ClinicalService,
    ImageView,
    ReportFormat,
    ResultView,
    lead_image,
)
from radvault.reports import (
    RADIOLOGIST_FINDINGS,
    image_check_in_words,
    reason_in_words,
    relabel_note,
)
from radvault.vault.catalog import StudyRecord
from radvault.web._core import (
    WEB_PREFIX,
    CurrentUser,
    FormUser,
    WebRoute,
    WebUser,
    render,
    see_other,
    web_state,
)

__all__ = ["WorklistRow", "router"]

router = APIRouter(prefix=WEB_PREFIX, route_class=WebRoute, include_in_schema=False)

Service = Annotated[ClinicalService, Depends(get_service)]

_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
_SUMMARY_IMAGES = 16
_ZOOMS = {"fit": 1024, "1": 512, "2": 1024, "4": 2048}
_ZOOM_LABELS = (("fit", "Fit"), ("1", "100%"), ("2", "200%"), ("4", "400%"))
#: (name, centre, width) in Hounsfield units.
_CT_PRESETS = (("Soft tissue", 40, 400), ("Lung", -600, 1500), ("Bone", 400, 1800),
               ("Brain", 40, 80))
_DONE = {"signed": "Sign-off saved and signed.", "analysed": "Analysis finished.",
         "conflict": "Not signed: this image was signed off or analysed again since your "
                     "page was shown. Review what it shows now, and sign again if you must.",
         "relabel_refused": "Not corrected: give a DICOM modality (such as DX, CT, MR, US) "
                            "and body part (such as CHEST, BRAIN), or leave the body part "
                            "empty."}


@dataclass(frozen=True)
class WorklistRow:
    """One study of the worklist, summarised from its latest results."""

    study: StudyRecord
    analysed: int
    refer: bool
    signed: bool
    prediction: str | None
    probability: float | None
    tampered: bool = False
    #: Why the lead answer is referred, in the reports' words (its first reason).
    reason: str | None = None
    #: The lead image (:func:`~radvault.pipeline.clinical.lead_image`) and its place in
    #: the study (1-based), so the row says which image it shows and links to it.
    lead_instance: str | None = None
    lead_position: int | None = None

    @property
    def rank(self) -> int:
        """0: flagged and unread (or a result that failed its check); 1: unread (awaiting
        analysis or sign-off); 2: signed off."""
        if self.signed and not self.tampered:
            return 2
        return 0 if self.refer or self.tampered else 1

    @property
    def state(self) -> str:
        """The study's reading status in words."""
        if self.tampered:
            return "Integrity failure"
        if self.analysed == 0:
            return "Not analysed"
        return "Signed off" if self.signed else "Awaiting sign-off"


def _summarise(service: ClinicalService, user: WebUser, study: StudyRecord) -> WorklistRow:
    detail = service.study(user.principal, study.study_id)
    analysed = [v for v in detail.instances if v.latest_result_id is not None]
    results: list[ResultView] = []
    tampered = False
    for view in analysed[:_SUMMARY_IMAGES]:
        try:
            results.append(service.latest_result(user.principal, study.study_id,
                                                 view.instance.instance_id))
        except ObjectNotFound:  # shredded since the study was read
            continue
        except IntegrityError:  # audited by the vault; the other studies still list
            tampered = True
    # the lead image by the service's rule over every analysed image (the study page and
    # the default report open the same one), read and verified here like the others
    lead_id = service.lead_instance(user.principal, study.study_id) if analysed else None
    lead = next((r for r in results if r.instance_id == lead_id), None)
    read = {v.instance.instance_id for v in analysed[:_SUMMARY_IMAGES]}
    if lead is None and lead_id is not None and lead_id not in read:
        try:
            lead = service.latest_result(user.principal, study.study_id, lead_id)
            results.append(lead)  # flagged beyond the first images read: it counts too
        except ObjectNotFound:
            lead = None
        except IntegrityError:
            tampered = True
    if lead is None:  # the lead failed its check: the rule over the results that passed
        lead = lead_image(results, refer=lambda r: r.refer, created=lambda r: r.created_at)
    prediction, probability = ((lead.predicted_class, lead.probability) if lead
                               else (None, None))
    reason = None
    stale = False
    if lead is not None and _stale(lead, study):  # relabelled since: its answer (and its
        stale = True                               # sign-off) is for the old record
        then = " ".join(v for v in _recorded_as(lead, study) if v) or "nothing"
        reason = f"analysed as {then} before a relabel: analyse it again"
    elif lead is not None and lead.signoff is not None:  # the radiologist's word comes first
        final = lead.signoff.final_label
        prediction, probability = f"{RADIOLOGIST_FINDINGS.get(final, final)} (signed)", None
    elif lead is not None and lead.reasons:  # why it is flagged, so the list can be triaged
        modality, body_part = _recorded_as(lead, study)  # as when it was analysed
        reason = reason_in_words(lead.reasons[0], predicted_class=lead.predicted_class,
                                 probability=lead.probability,
                                 refer_threshold=lead.refer_threshold,
                                 modality=modality, body_part=body_part,
                                 looks_like=(lead.image_check or {}).get("looks_like"))
    elif lead is not None and lead.image_check and (
            lead.image_check.get("matches_declared") is False):
        # not referred, but the image check doubts the record: say so where triage happens
        modality, body_part = _recorded_as(lead, study)
        reason = "image check: " + image_check_in_words(
            lead.image_check, modality=modality, body_part=body_part).split(";")[0]
    order = [v.instance.instance_id for v in detail.instances]
    return WorklistRow(
        study=study, analysed=len(analysed), refer=any(r.refer for r in results),
        signed=(bool(results) and not stale
                and all(r.signoff is not None for r in results)),
        prediction=prediction, probability=probability, tampered=tampered, reason=reason,
        lead_instance=lead.instance_id if lead else None,
        lead_position=(order.index(lead.instance_id) + 1
                       if lead and lead.instance_id in order else None))


@router.get("/")
def worklist(request: Request, service: Service, user: CurrentUser) -> Response:
    """The studies the user may see: flagged and unread first."""
    size = web_state(request).settings.worklist_size
    studies = service.list_studies(user.principal, limit=size)
    rows = [_summarise(service, user, s) for s in studies]
    rows.sort(key=lambda r: r.rank)  # stable: newest first within each rank
    return render(request, "worklist.html", {"title": "Worklist", "rows": rows,
                                             "limit": size, "full": len(studies) >= size})


def _number(value: str | None, name: str, low: float, high: float) -> float | None:
    """A query value typed into the viewer form: empty means not given."""
    if value is None or not value.strip():
        return None
    try:
        number = float(value)
    except ValueError:
        raise InvalidRequest(f"{name} must be a number") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise InvalidRequest(f"{name} must be within {low:g}..{high:g}")
    return number


def _study_url(study_id: str, **params: object) -> str:
    query = {k: v for k, v in params.items() if v not in (None, "", False)}
    return f"{WEB_PREFIX}/studies/{study_id}" + (f"?{urlencode(query)}" if query else "")


@router.get("/studies/{study_id}")
def study_page(
    request: Request, service: Service, user: CurrentUser, study_id: StudyId,
    instance: Annotated[str | None, Query(pattern=_ID)] = None,
    wc: Annotated[str | None, Query(max_length=24)] = None,
    ww: Annotated[str | None, Query(max_length=24)] = None,
    frame: Annotated[str | None, Query(max_length=8)] = None,
    zoom: Annotated[Literal["fit", "1", "2", "4"], Query()] = "fit",
    heatmap: Annotated[bool, Query()] = False,
    done: Annotated[str | None, Query(max_length=16)] = None,
) -> Response:
    """A study: image viewer, results, decision support, sign-off and reports."""
    detail = service.study(user.principal, study_id)
    if not detail.instances:
        raise ObjectNotFound(f"study {study_id} holds no images")
    chosen: ImageView = detail.instances[0]
    if instance is None and user.may("view_result"):  # the lead image, as on the worklist
        lead = service.lead_instance(user.principal, study_id)
        chosen = next((v for v in detail.instances if v.instance.instance_id == lead), chosen)
    if instance is not None:
        found = [v for v in detail.instances if v.instance.instance_id == instance]
        if not found:
            raise ObjectNotFound(f"study {study_id} has no instance {instance}")
        chosen = found[0]
    record = chosen.instance
    window_c = _number(wc, "window centre", -1e6, 1e6)
    window_w = _number(ww, "window width", 1, 1e6)
    notice = None
    if (window_c is None) != (window_w is None):
        notice = "Give both the window centre and the width; the image's own window is shown."
        window_c = window_w = None
    frame_no = _number(frame, "frame", 0, max(0, record.frames - 1))
    results: list[ResultView] = []
    if chosen.results and user.may("view_result"):
        results = service.results(user.principal, study_id, record.instance_id)
    latest = results[-1] if results else None
    base = f"{WEB_PREFIX}/studies/{study_id}/instances/{record.instance_id}"
    image_query = {"wc": window_c, "ww": window_w,
                   "frame": int(frame_no) if frame_no is not None else None,
                   "size": _ZOOMS[zoom]}
    # links keep the image shown, also when it was chosen as the lead image (a newer
    # analysis must not switch the image under a click)
    view = {"instance": record.instance_id if instance or len(detail.instances) > 1 else None,
            "wc": wc or None,
            "ww": ww or None, "frame": frame or None, "zoom": zoom if zoom != "fit" else None}
    modality = (detail.study.modality or "").upper()
    context = {
        "title": f"Study {study_id}",
        "detail": detail, "chosen": chosen, "record": record, "latest": latest,
        "history": results[:-1],
        "probabilities": sorted((latest.probabilities.items() if latest else []),
                                key=lambda kv: -kv[1]),
        "image_url": base + "/image.png?" + urlencode(
            {k: v for k, v in image_query.items() if v is not None}),
        "heatmap_url": base + "/heatmap.png" if latest else None,
        "heatmap": heatmap and latest is not None,
        "heatmap_on_url": _study_url(study_id, **view, heatmap=1),
        "heatmap_off_url": _study_url(study_id, **view),
        "zoom": zoom, "zooms": [(key, label, _study_url(study_id, **{**view, "zoom": key}))
                                for key, label in _ZOOM_LABELS],
        "windowing": modality in {"CT", "MR"}, "wc": wc or "", "ww": ww or "",
        "frame": frame or "",
        "presets": [(name, _study_url(study_id, **{**view, "wc": c, "ww": w}))
                    for name, c, w in _CT_PRESETS] if modality == "CT" else [],
        "instance_links": [(v, _study_url(study_id, instance=v.instance.instance_id))
                           for v in detail.instances[:200]],
        "report_formats": _report_formats(record.source_format),
        "report_instance": record.instance_id if latest else None,
        "notice": notice, "done": _DONE.get(done or ""),
        # the referral reasons in the reports' own words, and what a radiologist may sign
        # besides the model's classes (radbench6 has no "normal" class)
        "reason_texts": _reason_texts(latest, detail.study) if latest else [],
        # what the image check took the image for, shown beside every answer it checked
        "image_check_text": _image_check_text(latest, detail.study) if latest else None,
        # when the check doubts the record: what to record the study as instead
        "relabel_to": (_relabel_to(latest, detail.study)
                       if latest and user.may("analyse") else None),
        "findings": list(RADIOLOGIST_FINDINGS.items()),
        "finding_words": RADIOLOGIST_FINDINGS,
    }
    return render(request, "study.html", context)


def _reason_texts(result: ResultView, study: StudyRecord) -> list[str]:
    """The referral reasons in the reports' words, for what the study was recorded as
    when analysed."""
    modality, body_part = _recorded_as(result, study)
    return [reason_in_words(r, predicted_class=result.predicted_class,
                            probability=result.probability,
                            refer_threshold=result.refer_threshold, modality=modality,
                            body_part=body_part,
                            looks_like=(result.image_check or {}).get("looks_like"))
            for r in result.reasons]


def _recorded_as(result: ResultView, study: StudyRecord) -> tuple[str, str]:
    """What the study was recorded as when ``result`` was made (older results: now)."""
    return result.recorded_as or (study.modality or "", study.body_part or "")


def _stale(result: ResultView, study: StudyRecord) -> bool:
    """The study was relabelled after this result: it answers for the old record."""
    return bool(relabel_note(result.recorded_as, study.modality, study.body_part))


def _image_check_text(result: ResultView, study: StudyRecord) -> str | None:
    """What the image check saw, in the words the command line uses too."""
    if not result.image_check:
        return None
    modality, body_part = _recorded_as(result, study)
    text = image_check_in_words(result.image_check, modality=modality, body_part=body_part)
    if note := relabel_note(result.recorded_as, study.modality, study.body_part):
        text += f" ({note})"
    return text


def _relabel_to(result: ResultView, study: StudyRecord) -> tuple[str, str] | None:
    """The image check's kind of image, when it doubts the study's current record (a
    form offers it); nothing for a result made under an older record."""
    check = result.image_check or {}
    pair = check.get("looks_like_pair")
    # only a doubt sure enough to refer: a guess under the threshold is a warning, never
    # a one-click correction (a CT taken for an ultrasound at 58 % must not become one)
    doubts = bool(check.get("unlike_declared"))
    if not doubts or _stale(result, study) or not isinstance(pair, list) or len(pair) != 2:
        return None
    if (str(pair[0]), str(pair[1])) == (study.modality or "", study.body_part or ""):
        return None
    return str(pair[0]), str(pair[1])


def _report_formats(source_format: str) -> list[tuple[str, str]]:
    formats = [("html", "HTML"), ("pdf", "PDF"), ("fhir", "FHIR R4 (JSON)")]
    if source_format == "dicom":
        formats.append(("sr", "DICOM SR"))
    return formats


@router.get("/studies/{study_id}/instances/{instance_id}/image.png")
def image(service: Service, user: CurrentUser, study_id: StudyId, instance_id: InstanceId,
          wc: Annotated[float | None, Query(ge=-1e6, le=1e6)] = None,
          ww: Annotated[float | None, Query(ge=1, le=1e6)] = None,
          frame: Annotated[int | None, Query(ge=0, le=100_000)] = None,
          size: Annotated[int, Query(ge=64, le=4096)] = 1024) -> Response:
    """The de-identified image, rendered in memory (radiologists)."""
    png = service.render_image(user.principal, study_id, instance_id, frame=frame,
                               window_center=wc, window_width=ww, max_size=size)
    return Response(png, media_type="image/png")


@router.get("/studies/{study_id}/instances/{instance_id}/heatmap.png")
def heatmap_image(service: Service, user: CurrentUser, study_id: StudyId,
                  instance_id: InstanceId) -> Response:
    """The class-activation overlay of the latest analysis."""
    return Response(service.heatmap(user.principal, study_id, instance_id),
                    media_type="image/png")


@router.post("/studies/{study_id}/analyses")
def start_analysis(service: Service, user: FormUser, study_id: StudyId,
                   instance_id: Annotated[str, Form(max_length=128)] = "",
                   after: Annotated[str, Form(max_length=128)] = "") -> Response:
    """Queue an analysis of the study (or one image) and follow its job."""
    # "Analyse again" names the newest result the page showed: a fresh analysis, once
    job = service.start_analysis(user.principal, study_id, instance_id=instance_id or None,
                                 after=after or None)
    return see_other(f"{WEB_PREFIX}/jobs/{job.job_id}")


@router.post("/studies/{study_id}/relabel")
def relabel(service: Service, user: FormUser, study_id: StudyId,
            modality: Annotated[str, Form(max_length=4096)] = "",
            body_part: Annotated[str, Form(max_length=4096)] = "") -> Response:
    """Correct what the study was recorded as, then analyse it again (both audited)."""
    try:
        study = service.relabel_study(user.principal, study_id, modality=modality,
                                      body_part=body_part or None)
    except InvalidRequest:  # audited by the service; the page says what was wrong
        return see_other(_study_url(study_id, done="relabel_refused"))
    # analysed anew as what it is now recorded as (never a job made under an older record)
    job = service.start_analysis(user.principal, study.study_id, fresh=True)
    return see_other(f"{WEB_PREFIX}/jobs/{job.job_id}")


@router.get("/jobs/{job_id}")
def job_page(request: Request, service: Service, user: CurrentUser, job_id: JobId) -> Response:
    """An analysis in progress; back to the study when it has finished."""
    job = service.job(user.principal, job_id)
    if job.status == "succeeded":
        first = job.instance_ids[0] if job.instance_ids else None
        return see_other(_study_url(job.study_id, instance=first, done="analysed"))
    return render(request, "job.html", {"title": "Analysis", "job": job,
                                        "study_url": _study_url(job.study_id),
                                        "polling": job.status in ("pending", "running")})


@router.post("/studies/{study_id}/instances/{instance_id}/signoff")
def sign_off(service: Service, user: FormUser, study_id: StudyId, instance_id: InstanceId,
             decision: Annotated[Literal["accepted", "overridden"], Form()],
             label: Annotated[str, Form(max_length=64)] = "",
             comment: Annotated[str, Form(max_length=4000)] = "",
             result_id: Annotated[str, Form(max_length=128)] = "",
             amends: Annotated[str, Form(max_length=32)] = "") -> Response:
    """A radiologist accepts or overrides the prediction (signed, audited).

    A page older than what it signs (analysed again, or signed by someone else since it
    was shown) goes back to the study, which then shows the current state.
    """
    if not result_id:  # the form always names the analysis shown: a post without it is
        # no sign-off of anything reviewed (the API refuses it too), and is audited
        service.vault.audit.append(user.principal.username, "report.sign", "refused",
                                   object_ids=[study_id, instance_id],
                                   details={"reason": "no analysis named"})
        return see_other(_study_url(study_id, instance=instance_id, done="conflict"))
    try:
        service.sign_off(user.principal, study_id, instance_id, decision=decision,
                         label=(label or None) if decision == "overridden" else None,
                         comment=comment.strip(), result_id=result_id,
                         amends=amends or None)
    except SignOffConflict:  # audited by the service
        return see_other(_study_url(study_id, instance=instance_id, done="conflict"))
    return see_other(_study_url(study_id, instance=instance_id, done="signed"))


@router.get("/studies/{study_id}/report")
def report(service: Service, user: CurrentUser, study_id: StudyId,
           format: Annotated[ReportFormat, Query()] = ReportFormat.HTML,
           instance: Annotated[str | None, Query(pattern=_ID)] = None) -> Response:
    """The pseudonymous report as a download."""
    return file_response(service.report(user.principal, study_id, format,
                                        instance_id=instance))

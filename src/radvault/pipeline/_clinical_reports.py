"""Sign-off, reports and re-identification (private: use :mod:`radvault.pipeline.clinical`).

A radiologist's sign-off is stored signed by the vault key with its comment
sealed under the identity key; reports are rendered by :mod:`radvault.reports`
from plain data gathered here; re-identification opens the sealed identity
record only after the request (its reason sealed) is stored and audited.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import select, text

from radvault.access.policy import Action, Resource
from radvault.access.principal import Principal
from radvault.errors import (
    IntegrityError,
    ModelError,
    ObjectNotFound,
    SignOffConflict,
)
from radvault.pipeline._clinical_base import (
    COMMENT_MAX,
    MEDIA_TYPES,
    REASON_MAX,
    SIGNOFF_TYPE,
    InvalidRequest,
    Reidentification,
    ReportFile,
    ReportFormat,
    ServiceCore,
    SignOffView,
)
from radvault.pipeline._clinical_tables import (
    ReidentificationRow,
    SignOffRow,
)
from radvault.pipeline.analyse import Analyser
from radvault.pipeline.ingest import DICOM_KIND
from radvault.vault.audit import Outcome
from radvault.vault.catalog import StudyRecord, canonical_json
from radvault.vault.secure_memory import zeroize

__all__ = ["ReportCases"]

logger = logging.getLogger(__name__)


class ReportCases(ServiceCore):
    """Sign-off, report and re-identification use cases."""

    def sign_off(self, principal: Principal, study_id: str, instance_id: str, *,
                 decision: str, label: str | None = None, comment: str = "",
                 result_id: str | None = None, amends: str | None = None) -> SignOffView:
        """A radiologist accepts or overrides the latest analysis of an image.

        A sign-off never lands silently where it was not meant: one for an analysis a
        newer one has superseded is refused, one that would replace a sign-off of the
        same analysis must name it in ``amends`` (the report then says it amends it;
        the check and the insert are one transaction, so two radiologists signing at
        once cannot both win), and the same sign-off sent twice (a double click) is
        stored once.

        Parameters
        ----------
        principal : Principal
            A radiologist granted the study.
        study_id, instance_id : str
            The image.
        decision : {"accepted", "overridden"}
            What the radiologist did with the prediction.
        label : str, optional
            The radiologist's class; required to override: another class of the
            model, or a finding of :data:`~radvault.reports.RADIOLOGIST_FINDINGS`
            (``no_finding``, ``not_assessable``), since a model may have no class
            for what the radiologist sees (radbench6 has no "normal").
        comment : str
            Free text (sealed at rest; at most 4000 characters).
        result_id : str, optional
            The result the radiologist reviewed; default the latest. It must be the
            latest.
        amends : str, optional
            The id of the sign-off this one replaces: the analysis's current one, which
            the radiologist saw (someone else's, or their own).

        Returns
        -------
        SignOffView
            The stored sign-off.

        Raises
        ------
        AccessDenied
            If not allowed (audited).
        ObjectNotFound
            If the image was never analysed or the result is not its own.
        InvalidRequest
            If the decision, label or comment is invalid.
        SignOffConflict
            If the result is superseded, or its current sign-off is not the one
            ``amends`` names (audited).
        """
        study, inst = self._instance(principal, Action.SIGN_REPORT, study_id, instance_id)
        results = self.vault.results_of_instance(inst.instance_id, actor=principal.username)
        chosen = [r for r in results if result_id is None or r.result_id == result_id]
        if not chosen:
            raise ObjectNotFound(f"instance {inst.instance_id} has no such analysis")
        result = chosen[-1]
        ids = [study.study_id, inst.instance_id, result.result_id]
        if result.result_id != results[-1].result_id:
            raise self._signoff_conflict(
                principal, ids, "superseded", "a newer analysis of this image exists: "
                "review it and sign that one")
        current = next((s for s in reversed(self._signoffs(inst.instance_id))
                        if s.result_id == result.result_id), None)
        predicted = str(result.payload.get("predicted_class", ""))
        classes = list(dict(result.payload.get("probabilities", {})))
        if decision not in {"accepted", "overridden"}:
            raise InvalidRequest("decision must be 'accepted' or 'overridden'")
        if decision == "overridden":
            from radvault.reports import RADIOLOGIST_FINDINGS

            if label is None or label == predicted or (
                    label not in classes and label not in RADIOLOGIST_FINDINGS):
                raise InvalidRequest("an override needs a label: another class of the model, "
                                     f"or one of {', '.join(RADIOLOGIST_FINDINGS)}")
            final = label
        else:
            if label is not None and label != predicted:
                raise InvalidRequest("an accepted prediction keeps the predicted label")
            final = predicted
        if not isinstance(comment, str):
            raise InvalidRequest(f"comment must be text of at most {COMMENT_MAX} characters")
        comment = comment.strip()  # as the page sends it: the API and the page sign alike
        if len(comment) > COMMENT_MAX:
            raise InvalidRequest(f"comment must be text of at most {COMMENT_MAX} characters")
        if current is not None and (
                current.signed_by, current.decision, current.final_label, current.comment
        ) == (principal.username, decision, final, comment):
            # the same sign-off again (a double submit): stored once, audited as asked
            self.vault.audit.append(principal.username, "report.sign", Outcome.OK,
                                    object_ids=ids, details={
                                        "signoff_id": current.signoff_id, "decision": decision,
                                        "comment": bool(comment), "repeated": True})
            return current
        if (current.signoff_id if current else None) != amends:
            raise self._signoff_conflict(
                principal, ids, "already signed" if current else "nothing to amend",
                f"this analysis was signed off by {current.signed_by} at "
                f"{current.signed_at:%Y-%m-%d %H:%M} UTC: review that sign-off, and amend "
                "it (naming it) if you must" if current else
                "this analysis has no sign-off to amend")
        signoff_id = secrets.token_hex(16)
        now = datetime.now(UTC)
        sealed = None
        if comment:
            plain = bytearray(comment.encode("utf-8"))
            try:
                sealed = self.vault.keys.seal_identity(plain, context=_comment_context(signoff_id))
            finally:
                zeroize(plain)
        row = SignOffRow(signoff_id=signoff_id, study_id=study.study_id,
                         instance_id=inst.instance_id, result_id=result.result_id,
                         decision=decision, predicted_label=predicted, final_label=final,
                         sealed_comment=sealed, signed_by=principal.username, signed_at=now,
                         signature=b"", signer_key_id=self.vault.signer.key_id)
        row.signature = self.vault.signer.sign(_signoff_message(row))
        with self._write.begin() as session:
            # compare and set: the sign-off checked above must still be the current one
            # (SQLite's write lock is taken at BEGIN; PostgreSQL locks the image's row)
            if self.vault.catalog.dialect_name == "postgresql":
                session.execute(text("SELECT 1 FROM instances WHERE instance_id = :i FOR UPDATE"),
                                {"i": inst.instance_id})
            now_current = session.scalar(
                select(SignOffRow.signoff_id).where(SignOffRow.result_id == result.result_id)
                .order_by(SignOffRow.signed_at.desc()).limit(1))
            raced = now_current != (current.signoff_id if current else None)
            if not raced:
                session.add(row)
        if raced:
            raise self._signoff_conflict(principal, ids, "signed meanwhile",
                                         "another sign-off of this analysis was stored a "
                                         "moment ago: review it, and amend it if you must")
        self.vault.audit.append(principal.username, "report.sign", Outcome.OK,
                                object_ids=[study.study_id, inst.instance_id, result.result_id],
                                details={"signoff_id": signoff_id, "decision": decision,
                                         "comment": bool(comment),
                                         **({"amends": current.signoff_id} if current else {})})
        return self._signoff_view(row)

    def _signoff_conflict(self, principal: Principal, object_ids: list[str], reason: str,
                          message: str) -> SignOffConflict:
        """Audit a refused sign-off; the error to raise."""
        self.vault.audit.append(principal.username, "report.sign", Outcome.REFUSED,
                                object_ids=object_ids, details={"reason": reason})
        return SignOffConflict(message)

    def _latest_signoff_row(self, instance_id: str) -> SignOffRow | None:
        with self._read.begin() as session:
            return session.scalar(select(SignOffRow)
                                  .where(SignOffRow.instance_id == instance_id)
                                  .order_by(SignOffRow.signed_at.desc()).limit(1))

    def _signoffs(self, instance_id: str) -> list[SignOffView]:
        """Verified sign-offs of an instance, the newest per result last."""
        with self._read.begin() as session:
            rows = session.scalars(select(SignOffRow)
                                   .where(SignOffRow.instance_id == instance_id)
                                   .order_by(SignOffRow.signed_at)).all()
        return [self._signoff_view(r) for r in rows]

    def _signoff_view(self, row: SignOffRow) -> SignOffView:
        try:
            self.vault.verifier.verify(_signoff_message(row), row.signature)
        except IntegrityError:
            self.vault.audit.append("system", "integrity_failure", Outcome.REFUSED,
                                    object_ids=[row.study_id, row.instance_id],
                                    details={"what": "signoff", "signoff_id": row.signoff_id})
            raise IntegrityError(f"sign-off {row.signoff_id}: signature does not verify") from None
        comment = ""
        if row.sealed_comment:
            plain = self.vault.keys.open_identity(row.sealed_comment,
                                                  context=_comment_context(row.signoff_id))
            try:
                comment = bytes(plain).decode("utf-8")
            finally:
                zeroize(plain)
        return SignOffView(row.signoff_id, row.study_id, row.instance_id, row.result_id,
                           row.decision, row.predicted_label, row.final_label, comment,
                           row.signed_by, row.signed_at)

    def report(self, principal: Principal, study_id: str, fmt: ReportFormat | str, *,
               instance_id: str | None = None) -> ReportFile:
        """A pseudonymous report of a study's latest analysis (or of one instance's).

        Parameters
        ----------
        principal : Principal
            A radiologist or physician granted the study.
        study_id : str
            The study.
        fmt : ReportFormat or str
            ``html``, ``pdf``, ``fhir`` (R4 DiagnosticReport bundle) or ``sr``
            (DICOM Structured Report).
        instance_id : str, optional
            Which analysed instance; default the study's lead image (its first flagged
            analysed image, else its newest analysed one), as on the worklist.

        Returns
        -------
        ReportFile
            The bytes, media type and a file name of pseudonymous ids.

        Raises
        ------
        AccessDenied
            If not granted (audited).
        ObjectNotFound
            If nothing in the study was analysed.
        InvalidRequest
            If the format is unknown.
        """
        fmt = _report_format(fmt)
        study = self._study(principal, Action.DOWNLOAD_REPORT, study_id)
        data = self._report_input(principal, study, instance_id)
        out = self._render(fmt, data, study, principal.username)
        self.vault.audit.append(principal.username, "report", Outcome.OK,
                                object_ids=[study.study_id, *data.instance_ids],
                                details={"format": fmt.value, "signed": data.signed,
                                         "reidentified": False})
        return out

    def _report_input(self, principal: Principal, study: StudyRecord,
                      instance_id: str | None, identity: Any = None) -> Any:
        from radvault.reports import (
            AnalysisSummary,
            ModelSummary,
            ReportInput,
            SignOff,
        )

        instances = self.vault.catalog.instances_of_study(study.study_id)
        study_images = len(instances)
        if instance_id is not None:
            instance_id = self._check_id(principal, Action.DOWNLOAD_REPORT, instance_id,
                                         "instance")
            instances = [i for i in instances if i.instance_id == instance_id]
            if not instances:
                raise ObjectNotFound(f"study {study.study_id} has no instance {instance_id}")
        lead = self._lead_of(instances)
        if lead is None:
            raise ObjectNotFound(f"study {study.study_id} has not been analysed")
        inst = lead
        result = self.vault.results_of_instance(inst.instance_id,
                                                actor=principal.username)[-1]
        analyser = self._analyser(principal.username)
        card = _card_of(analyser, study, result.model_id)
        analysis = AnalysisSummary.from_payload(result.payload, model_id=result.model_id,
                                                result_id=result.result_id)
        # The model-input overlay for whoever may view the image; the heatmap alone for
        # anyone else (a physician downloads reports but may not view images).
        may_view = self.policy.allowed(principal, Action.VIEW_IMAGE,
                                       Resource.study(study.study_id, study.site))
        heatmap = None
        try:
            heatmap = analyser.heatmap_png(
                inst.instance_id, under="model_input" if may_view else "nothing")
        except ModelError:
            logger.info("no heatmap for a report: the model cannot compute one")
        of_result = [s for s in self._signoffs(inst.instance_id)
                     if s.result_id == result.result_id]
        sign = None
        if of_result:
            signoff = of_result[-1]
            sign = SignOff(radiologist=signoff.signed_by, decision=signoff.decision,
                           signed_at=signoff.signed_at, comment=signoff.comment,
                           radiologist_class=(signoff.final_label
                                              if signoff.decision == "overridden" else None),
                           amends=of_result[-2].signed_by if len(of_result) > 1 else None)
        return ReportInput(
            study_id=study.study_id, instance_ids=(inst.instance_id,),
            patient_pseudonym=study.patient_pseudonym, site=study.site,
            modality=study.modality or "", body_part=study.body_part or "",
            analysis=analysis, model=ModelSummary.from_card(card), heatmap_png=heatmap,
            heatmap_over_image=may_view,
            sign_off=sign, identity=identity, study_images=study_images)

    def _render(self, fmt: ReportFormat, data: Any, study: StudyRecord,
                actor: str) -> ReportFile:
        from radvault import reports

        media_type, ext = MEDIA_TYPES[fmt]
        if fmt is ReportFormat.HTML:
            content = reports.render_html(data).encode("utf-8")
        elif fmt is ReportFormat.PDF:
            content = reports.render_pdf(data)
        elif fmt is ReportFormat.FHIR:
            content = reports.render_fhir_json(data).encode("utf-8")
        else:
            content = self._render_sr(data, actor)
        stem = "report-reidentified" if data.identity is not None else "report"
        return ReportFile(content, media_type, f"{stem}-{study.study_id}.{ext}",
                          reidentified=data.identity is not None)

    def _render_sr(self, data: Any, actor: str) -> bytes:
        from radvault import reports

        obj = next((o for o in self.vault.catalog.objects_of_instance(data.instance_ids[0])
                    if o.kind == DICOM_KIND), None)
        if obj is None:
            raise InvalidRequest("a DICOM SR needs a DICOM source; this image came as PNG/JPEG")
        plain = self.vault.open_object(obj, actor=actor)
        try:
            import pydicom

            source = pydicom.dcmread(io.BytesIO(bytes(plain)), stop_before_pixels=True)
        finally:
            zeroize(plain)
        sr = reports.render_sr(data, [source])
        buffer = io.BytesIO()
        sr.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    def reidentify(self, principal: Principal, study_id: str, reason: str) -> Reidentification:
        """Reveal who a study's patient is, for a stated reason (audited, reason sealed).

        Parameters
        ----------
        principal : Principal
            A physician granted the study.
        study_id : str
            The study.
        reason : str
            Why (at least ``min_reason_length`` characters, at most 1000). It
            is sealed and stored; the audit trail records only its length.

        Returns
        -------
        Reidentification
            The patient's name, id and birth date as the source recorded them.

        Raises
        ------
        AccessDenied
            If the caller may not, or gave no adequate reason (audited).
        ObjectNotFound
            If the study holds no identity (e.g. PNG/JPEG uploads).
        """
        study, identity, request_id = self._open_identity(principal, study_id, reason, "view")
        return Reidentification(request_id, study.study_id, _first(identity, "PatientName"),
                                _first(identity, "PatientID"),
                                _first(identity, "PatientBirthDate"))

    def reidentified_report(self, principal: Principal, study_id: str, reason: str,
                            fmt: ReportFormat | str = ReportFormat.HTML, *,
                            instance_id: str | None = None) -> ReportFile:
        """The report with the patient's real identity, for a stated reason (audited).

        Parameters
        ----------
        principal : Principal
            A physician granted the study.
        study_id : str
            The study.
        reason : str
            Why (sealed and stored; the audit trail records its length).
        fmt : ReportFormat or str
            ``html`` or ``pdf``.
        instance_id : str, optional
            Which analysed instance.

        Returns
        -------
        ReportFile
            The re-identified copy (marked as such in the document).

        Raises
        ------
        AccessDenied
            If the caller may not, or gave no adequate reason (audited).
        ObjectNotFound
            If the study holds no identity or was never analysed.
        InvalidRequest
            If the format is not html or pdf.
        """
        from radvault.reports import Identity

        fmt = _report_format(fmt)
        if fmt not in (ReportFormat.HTML, ReportFormat.PDF):
            raise InvalidRequest("a re-identified copy is rendered as html or pdf only")
        # The report must exist before the identity is opened: no reveal for nothing.
        study = self._study(principal, Action.DOWNLOAD_REPORT, study_id)
        data = self._report_input(principal, study, instance_id)
        study, identity, request_id = self._open_identity(principal, study.study_id, reason,
                                                          "report")
        name = _first(identity, "PatientName") or "(not recorded)"
        patient_id = _first(identity, "PatientID") or "(not recorded)"
        person = Identity(name=name, patient_id=patient_id,
                          birth_date=_dicom_date(_first(identity, "PatientBirthDate")))
        data = replace(data, identity=person)
        out = self._render(fmt, data, study, principal.username)
        self.vault.audit.append(principal.username, "report", Outcome.OK,
                                object_ids=[study.study_id, *data.instance_ids],
                                details={"format": fmt.value, "signed": data.signed,
                                         "reidentified": True, "request_id": request_id})
        return out

    def _open_identity(self, principal: Principal, study_id: str, reason: str,
                       purpose: str) -> tuple[StudyRecord, dict[str, list[str]], str]:
        if not isinstance(reason, str) or len(reason) > REASON_MAX:
            raise InvalidRequest(f"the reason must be text of at most {REASON_MAX} characters")
        study = self._study(principal, Action.REIDENTIFY, study_id, reason=reason)
        patient = self.vault.catalog.get_patient(study.patient_pseudonym)
        request_id = secrets.token_hex(16)
        ids = [study.study_id, patient.pseudonym]
        if not patient.identity_blob:
            self.vault.audit.append(principal.username, "reidentify", Outcome.ERROR,
                                    object_ids=ids,
                                    details={"reason_length": len(reason.strip()),
                                             "found": False, "purpose": purpose})
            raise ObjectNotFound(f"study {study.study_id} holds no identity to reveal")
        plain_reason = bytearray(reason.encode("utf-8"))
        try:
            sealed = self.vault.keys.seal_identity(plain_reason,
                                                   context=_reason_context(request_id))
        finally:
            zeroize(plain_reason)
        with self._write.begin() as session:
            session.add(ReidentificationRow(request_id=request_id, study_id=study.study_id,
                                            requested_by=principal.username,
                                            requested_at=datetime.now(UTC), purpose=purpose,
                                            sealed_reason=sealed))
        # Audited before the identity is opened: no reveal without its record.
        self.vault.audit.append(principal.username, "reidentify", Outcome.OK, object_ids=ids,
                                details={"reason_length": len(reason.strip()),
                                         "request_id": request_id, "purpose": purpose})
        plain = self.vault.keys.open_identity(patient.identity_blob,
                                              context=patient.pseudonym.encode())
        try:
            identity = json.loads(bytes(plain))
        finally:
            zeroize(plain)
        return study, identity, request_id


# --------------------------------------------------------------------------- helpers


def _report_format(fmt: ReportFormat | str) -> ReportFormat:
    try:
        return ReportFormat(fmt)
    except ValueError:
        raise InvalidRequest("format must be one of html, pdf, fhir, sr") from None


def _comment_context(signoff_id: str) -> bytes:
    return b"radvault.signoff-comment:" + signoff_id.encode("ascii")


def _reason_context(request_id: str) -> bytes:
    return b"radvault.reidentify-reason:" + request_id.encode("ascii")


def _signoff_message(row: SignOffRow) -> bytes:
    return canonical_json({
        "type": SIGNOFF_TYPE, "signoff_id": row.signoff_id, "study_id": row.study_id,
        "instance_id": row.instance_id, "result_id": row.result_id, "decision": row.decision,
        "predicted_label": row.predicted_label, "final_label": row.final_label,
        "comment_sha256": hashlib.sha256(row.sealed_comment or b"").hexdigest(),
        "signed_by": row.signed_by,
        "signed_at": row.signed_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    })


def _first(identity: Mapping[str, Any], key: str) -> str | None:
    values = identity.get(key)
    if isinstance(values, list) and values:
        return str(values[0])
    if isinstance(values, str) and values:
        return values
    return None


def _dicom_date(value: str | None) -> date | None:
    if not value or not re.fullmatch(r"\d{8}", value):
        return None
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return None


def _card_of(analyser: Analyser, study: StudyRecord, model_id: str) -> Any:
    """The card of the model that made ``model_id`` (the registry's choice, else by id)."""
    model = analyser.model_for(study.modality, study.body_part)
    if model.model_id == model_id:
        return model.card
    for entry in analyser.registry.entries():
        candidate = analyser.model_for(None, None, entry.name)
        if candidate.model_id == model_id:
            return candidate.card
    raise ModelError(f"the model {model_id} that made this result is no longer installed")

"""Upload, study browsing and image rendering (private: use :mod:`radvault.pipeline.clinical`).

Technologists upload images into their own site (checked before any byte is
read, and again against the study the image would join); radiologists and
physicians list and open the studies the policy lets them see; radiologists
render a granted image as a PNG, decrypted and rendered in memory only.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, NoReturn

import numpy as np

from radvault.access.policy import Action
from radvault.access.principal import Principal
from radvault.errors import (
    BurnedInAnnotationRefused,
    CorruptImage,
    DeidentificationError,
    ImageInputError,
    ImageTooLarge,
    MissingPixelData,
    NotAnImage,
    ObjectNotFound,
    RadVaultError,
    UnsupportedTransferSyntax,
)
from radvault.imaging.preprocess import display_array, to_png_bytes
from radvault.imaging.vocabulary import body_part_hint, modality_hint
from radvault.pipeline._clinical_base import (
    FILE_NAME_MAX,
    ImageView,
    InvalidRequest,
    ServiceCore,
    StudyDetail,
    UploadResult,
)
from radvault.pipeline.ingest import Ingestor
from radvault.pipeline.retrieve import open_image
from radvault.vault.audit import Outcome
from radvault.vault.catalog import StudyRecord
from radvault.vault.vault import Vault

if TYPE_CHECKING:
    from radvault.pipeline._clinical_tables import SignOffRow

__all__ = ["StudyCases"]


class StudyCases(ServiceCore):
    """Upload, study browsing and image rendering use cases."""

    if TYPE_CHECKING:  # provided by ClinicalService, which this mixin is a base of

        def _latest_signoff_row(self, instance_id: str) -> SignOffRow | None: ...

    # ------------------------------------------------------------------ upload

    def upload(self, principal: Principal, data: bytes, name: str, *,
               modality: str | None = None, body_part: str | None = None) -> UploadResult:
        """Ingest one uploaded image into the caller's site.

        Parameters
        ----------
        principal : Principal
            A technologist of the destination site.
        data : bytes
            The file's bytes (DICOM, PNG or JPEG).
        name : str
            The file name as uploaded (a bare name; only for messages).
        modality, body_part : str, optional
            Hints for PNG/JPEG files (and for what a DICOM header leaves unsaid):
            DICOM defined terms (PS3.3 Modality, PS3.16 Annex L Body Part
            Examined), in any case, surrounding spaces ignored.

        Returns
        -------
        UploadResult
            ``stored``, or ``duplicate`` when the same file is already in
            this site.

        Raises
        ------
        AccessDenied
            If the caller may not upload, their site is not registered, or the
            image belongs to a study of another site (audited).
        ImageInputError
            If the file is not a readable image, too large, or refused by the
            de-identification policy (audited by the ingest use case).
        InvalidRequest
            If the name is malformed or a hint is not a DICOM defined term
            (audited by type only: the refusal names the field, never the value).
        """
        site = self._authorize_upload(principal)
        name = self._check_upload_name(principal, name)
        try:
            modality = modality_hint(modality, field="modality")
            body_part = body_part_hint(body_part, field="body_part")
        except InvalidRequest as exc:
            self.reject_upload(principal, exc)
        if len(data) > self.vault.settings.limits.max_file_bytes:
            self.reject_upload(principal, ImageTooLarge(
                name, f"over the cap of {self.vault.settings.limits.max_file_bytes} bytes"))
        self._check_not_other_site(principal, data)
        ingestor = Ingestor(self.vault, actor=principal.username, site=site)
        outcome = ingestor.ingest_bytes(data, name, modality=modality, body_part=body_part)
        if outcome.status == "refused":
            raise _ingest_error(name, outcome.error, outcome.reason)
        assert outcome.study_id is not None and outcome.instance_id is not None
        study = self.vault.catalog.get_study(outcome.study_id)
        if study.site != site:  # a race with another site's identical upload
            raise self._refuse(principal, Action.UPLOAD,
                               "the image belongs to a study of another site",
                               [f"site:{site}"])
        return UploadResult(outcome.status, outcome.study_id, outcome.instance_id,
                            outcome.modality or study.modality)

    def authorize_upload(self, principal: Principal) -> None:
        """Check that the caller may upload to their site, before any byte is read.

        Raises
        ------
        AccessDenied
            If not, or if their site is not registered (audited).
        """
        self._authorize_upload(principal)

    def reject_upload(self, principal: Principal, error: RadVaultError) -> NoReturn:
        """Audit an upload the face refused before it reached ingest (size, form, name).

        Parameters
        ----------
        principal : Principal
            Who uploaded.
        error : RadVaultError
            Why it was refused.

        Raises
        ------
        RadVaultError
            ``error``, always, after it was audited.
        """
        self.vault.audit.append(principal.username, "ingest_refused", Outcome.REFUSED,
                                object_ids=[f"site:{principal.site}"] if principal.site else [],
                                details={"error": type(error).__name__})
        raise error

    def _check_upload_name(self, principal: Principal, name: str) -> str:
        bad = (not isinstance(name, str) or not name or len(name) > FILE_NAME_MAX
               or any(c in name for c in "/\\\x00") or name in {".", ".."}
               or name.startswith("..") or not name.isprintable())
        if bad:
            self.reject_upload(principal, InvalidRequest(
                "invalid file name: give a bare file name without folders"))
        return name

    def _check_not_other_site(self, principal: Principal, data: bytes) -> None:
        """Refuse (audited) an image that is, or would join, a study of another site."""
        existing = self.vault.find_instance_by_source(data)
        study_id = existing.study_id if existing is not None else _dicom_study_id(
            self.vault, data)
        if study_id is None:
            return
        try:
            study = self.vault.catalog.get_study(study_id)
        except ObjectNotFound:
            return
        if study.site != principal.site:
            raise self._refuse(principal, Action.UPLOAD,
                               "the image belongs to a study of another site",
                               [f"site:{principal.site}"])

    # ------------------------------------------------------------------ studies

    def list_studies(self, principal: Principal, *, limit: int = 50, offset: int = 0,
                     modality: str | None = None, body_part: str | None = None,
                     site: str | None = None, status: str | None = None) -> list[StudyRecord]:
        """The studies the caller may see, newest first, optionally filtered.

        Only studies of granted sites and individually granted studies are
        ever read (:meth:`Policy.visible_study_filter`).

        Parameters
        ----------
        principal : Principal
            A radiologist or physician.
        limit, offset : int
            The page (``limit`` 1..500).
        modality, body_part, site, status : str, optional
            Exact (case-insensitive) filters.

        Returns
        -------
        list of StudyRecord
            The page.

        Raises
        ------
        AccessDenied
            If the caller's role may not view studies (audited).
        InvalidRequest
            If the page is out of range.
        """
        self._require_role(principal, Action.VIEW_STUDY)
        if not 1 <= limit <= 500 or offset < 0:
            raise InvalidRequest("limit must be within 1..500 and offset not negative")
        scope = self.policy.visible_study_filter(principal)

        def wanted(s: StudyRecord) -> bool:
            return ((modality is None or (s.modality or "").upper() == modality.upper())
                    and (body_part is None or (s.body_part or "").upper() == body_part.upper())
                    and (status is None or s.status == status))

        page: list[StudyRecord] = []
        seen = 0
        for study in self._studies_in_scope(scope, site=site):
            if not wanted(study):
                continue
            if seen >= offset:
                page.append(study)
                if len(page) >= limit:
                    break
            seen += 1
        return page

    def study(self, principal: Principal, study_id: str) -> StudyDetail:
        """One study and its instances.

        Raises
        ------
        AccessDenied
            If the caller is not granted the study, or it does not exist (audited).
        ObjectNotFound
            If the id is malformed.
        """
        study = self._study(principal, Action.VIEW_STUDY, study_id)
        views = []
        for inst in self.vault.catalog.instances_of_study(study.study_id):
            results = self.vault.catalog.results_of_instance(inst.instance_id)
            views.append(ImageView(inst, len(results),
                                   results[-1].result_id if results else None,
                                   self._latest_signoff_row(inst.instance_id) is not None))
        self.vault.audit.append(principal.username, "study.read", Outcome.OK,
                                object_ids=[study.study_id])
        return StudyDetail(study, tuple(views))

    # ------------------------------------------------------------------ images

    def render_image(self, principal: Principal, study_id: str, instance_id: str, *,
                     frame: int | None = None, window_center: float | None = None,
                     window_width: float | None = None, max_size: int = 1024) -> bytes:
        """The de-identified image as a PNG, decrypted and rendered in memory only.

        Parameters
        ----------
        principal : Principal
            A radiologist granted the study.
        study_id, instance_id : str
            The image.
        frame : int, optional
            Which frame (default the middle one).
        window_center, window_width : float, optional
            A VOI window in the pixels' units (Hounsfield units for CT); both
            or neither. Without one, the image's own window, else min-max.
        max_size : int
            Longest side of the PNG (64..``render_max_size``); the image is
            fitted into a square of this side.

        Returns
        -------
        bytes
            An 8-bit PNG.

        Raises
        ------
        AccessDenied
            If not granted (audited).
        ObjectNotFound
            If the instance is not in the study.
        InvalidRequest
            If the frame, window or size is out of range.
        IntegrityError
            If the stored image fails back-verification (audited).
        """
        _, instance = self._instance(principal, Action.VIEW_IMAGE, study_id, instance_id)
        if (window_center is None) != (window_width is None):
            raise InvalidRequest("give both window_center and window_width, or neither")
        if window_width is not None and not (np.isfinite(window_width) and window_width >= 1):
            raise InvalidRequest("window_width must be a number of at least 1")
        if window_center is not None and not np.isfinite(window_center):
            raise InvalidRequest("window_center must be a finite number")
        if not 64 <= max_size <= self.settings.render_max_size:
            raise InvalidRequest(f"max_size must be within 64..{self.settings.render_max_size}")
        if frame is not None and not 0 <= frame < instance.frames:
            raise InvalidRequest(f"frame must be within 0..{instance.frames - 1}")
        record = open_image(self.vault, instance.instance_id, actor=principal.username)
        try:
            window: tuple[float, float] | None = None
            if window_center is not None and window_width is not None:
                window = (float(window_center), float(window_width))
            array = display_array(record, frame=frame, window=window, max_size=max_size)
            try:
                return to_png_bytes(array)
            finally:
                array.fill(0)
        finally:
            if record.pixels.flags.writeable:
                record.pixels.fill(0)


# --------------------------------------------------------------------------- helpers


_INGEST_ERRORS: dict[str, type[ImageInputError]] = {
    cls.__name__: cls for cls in (NotAnImage, CorruptImage, UnsupportedTransferSyntax,
                                  MissingPixelData, ImageTooLarge, BurnedInAnnotationRefused)
}


def _ingest_error(name: str, error: str | None, reason: str | None) -> RadVaultError:
    """Turn a refused ingest outcome back into its error (already audited by ingest)."""
    if error == "DeidentificationError":
        return DeidentificationError("the image could not be de-identified safely")  # no name
    cls = _INGEST_ERRORS.get(error or "", ImageInputError)
    return cls(name, reason or "refused")


def _dicom_study_id(vault: Vault, data: bytes) -> str | None:
    """The study id a DICOM file would get at ingest (``None`` when it is not DICOM)."""
    if len(data) < 132 or data[128:132] != b"DICM":
        return None
    import pydicom
    from pydicom.errors import InvalidDicomError

    from radvault.imaging.deid import replacement_uid

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True,
                             specific_tags=["StudyInstanceUID"])
        uid = str(ds.get("StudyInstanceUID", "") or "")
    except (InvalidDicomError, ValueError, TypeError, KeyError, OSError, EOFError):
        return None
    if not uid:
        return None
    return replacement_uid(vault.keys.deid_secret(), uid)

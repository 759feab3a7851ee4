"""DICOMweb use cases: STOW-RS, QIDO-RS, WADO-RS (private: use :mod:`radvault.pipeline.clinical`).

The same rules as every other clinical use case: the authenticated principal
comes first, the policy is asked before anything is touched (with the study's
site as the catalog records it), and every refusal is audited.

* **Store** (technologists, into their own site): each DICOM part of a
  STOW-RS request gets the checks of :meth:`ClinicalService.upload` (a PS3.10
  file, the size cap, not another site's study), then the accepted parts are
  ingested together (:meth:`Ingestor.ingest_many`, group commit): each one
  de-identified, preprocessed, sealed, cataloged, audited, and refused
  (burned-in risk, corrupt...) exactly like an upload. One refused part never
  stops the others: each gets its own outcome.
* **Search** (radiologists and physicians, their granted studies only):
  answers come from the catalog, never from stored datasets, so they can only
  hold what the catalog holds, all of it de-identified or pseudonymous (the
  same rule as C-FIND, :mod:`radvault.dicom._query`). A filter on an attribute
  RadVault does not disclose matches nothing, so no query can probe hidden
  values.
* **Retrieve** (radiologists, granted studies): the sealed de-identified DICOM
  is opened in memory (:meth:`Vault.open_object` checks the signed row, the
  blob digest and the AEAD tags), its pixels are decoded and checked against
  the digest recorded at ingest (back-verification), and the read is audited.
  Metadata is the same dataset in the DICOM JSON model without its bulk data;
  rendered images go through :meth:`ClinicalService.render_image`.

RadVault's ids are the de-identified UIDs, so a DICOMweb URL names a study,
series or instance by the pseudonymous id the rest of the API uses.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from radvault.access.policy import Action
from radvault.access.principal import Principal
from radvault.errors import (
    ImageInputError,
    IntegrityError,
    ObjectNotFound,
)
from radvault.imaging.reading import read_dicom_dataset, record_from_dataset
from radvault.pipeline._clinical_base import InvalidRequest
from radvault.pipeline._dicomweb_query import QIDO_LEVELS, DicomWebQueryCases, SearchResult
from radvault.pipeline._dicomweb_store import (
    COERCION_WARNING,
    FAILURE_REASONS,
    PROCESSING_FAILURE,
    DicomWebStoreCases,
    StoreItem,
    StoreResult,
)
from radvault.pipeline.ingest import DICOM_KIND
from radvault.vault.audit import Action as AuditAction
from radvault.vault.audit import Outcome
from radvault.vault.catalog import InstanceRecord
from radvault.vault.secure_memory import zeroize

__all__ = [
    "COERCION_WARNING",
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "FAILURE_REASONS",
    "PROCESSING_FAILURE",
    "QIDO_LEVELS",
    "DicomPart",
    "DicomWebCases",
    "NotAcceptable",
    "SearchResult",
    "StoreItem",
    "StoreResult",
]


EXPLICIT_VR_LITTLE_ENDIAN = str(ExplicitVRLittleEndian)
"""The transfer syntax a WADO-RS answer defaults to (PS3.18 8.7.3.5.2)."""

_BULK_THRESHOLD = 1024
_BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_PIXEL_KEYWORDS = frozenset({"PixelData", "FloatPixelData", "DoubleFloatPixelData"})


class NotAcceptable(InvalidRequest):
    """No representation the caller accepts can be made (HTTP 406 at the face)."""


# --------------------------------------------------------------------------- answers


@dataclass(frozen=True)
class DicomPart:
    """One retrieved instance: a de-identified PS3.10 file in a given transfer syntax."""

    instance_id: str
    transfer_syntax: str
    data: bytes = field(repr=False)


# --------------------------------------------------------------------------- the mixin


class DicomWebCases(DicomWebStoreCases, DicomWebQueryCases):
    """DICOMweb use cases: store, search, retrieve, metadata, rendered.

    Store (STOW-RS) is :class:`~radvault.pipeline._dicomweb_store.DicomWebStoreCases`,
    search (QIDO-RS) :class:`~radvault.pipeline._dicomweb_query.DicomWebQueryCases`;
    retrieval (WADO-RS) is here.
    """

    if TYPE_CHECKING:  # provided by ClinicalService, which this mixin is a base of

        def render_image(self, principal: Principal, study_id: str, instance_id: str, *,
                         frame: int | None = None, window_center: float | None = None,
                         window_width: float | None = None, max_size: int = 1024) -> bytes: ...

    # ------------------------------------------------------------------ WADO-RS

    def dicomweb_retrieve(self, principal: Principal, study_id: str,
                          series_id: str | None = None, instance_id: str | None = None, *,
                          transfer_syntaxes: Sequence[str] = (EXPLICIT_VR_LITTLE_ENDIAN,)
                          ) -> Iterator[DicomPart]:
        """The de-identified DICOM instances of a study, series or one instance.

        Every check happens, and the first instance is opened, before this
        returns; the others are opened one at a time as the iterator is
        consumed (so a large study is never held in memory at once). Each is
        decrypted in memory, back-verified and audited (``read``).

        Parameters
        ----------
        principal : Principal
            A radiologist granted the study.
        study_id : str
            The study.
        series_id, instance_id : str, optional
            Narrow to one series, or one instance.
        transfer_syntaxes : sequence of str
            What the caller accepts, in order of preference: transfer syntax
            UIDs or ``*`` (as stored). Stored files are sent as stored when
            accepted, else converted to Explicit VR Little Endian when that
            is accepted.

        Returns
        -------
        iterator of DicomPart
            The instances, in the order they were stored.

        Raises
        ------
        AccessDenied
            If not granted (audited).
        ObjectNotFound
            If the series or instance is not in the study, or nothing in it
            was stored as DICOM (PNG/JPEG uploads have only ``/rendered``).
        NotAcceptable
            If no accepted transfer syntax can be produced.
        IntegrityError
            If a stored object fails back-verification (audited).
        """
        instances = self._dicom_targets(principal, Action.VIEW_IMAGE, study_id, series_id,
                                        instance_id)
        accepted = tuple(transfer_syntaxes)
        first = self._open_part(principal, instances[0], accepted)

        def parts() -> Iterator[DicomPart]:
            yield first
            for inst in instances[1:]:
                yield self._open_part(principal, inst, accepted)

        return parts()

    def dicomweb_metadata(self, principal: Principal, study_id: str,
                          series_id: str | None = None,
                          instance_id: str | None = None) -> list[dict[str, Any]]:
        """The de-identified datasets, in the DICOM JSON model, without bulk data.

        Pixel data and every other binary value over 1 KiB are left out (the
        instance itself carries them); each instance is back-verified and the
        read audited, as for :meth:`dicomweb_retrieve`.

        Parameters
        ----------
        principal : Principal
            A radiologist granted the study.
        study_id : str
            The study.
        series_id, instance_id : str, optional
            Narrow to one series, or one instance.

        Returns
        -------
        list of dict
            One DICOM JSON object per instance.

        Raises
        ------
        AccessDenied
            If not granted (audited).
        ObjectNotFound
            As for :meth:`dicomweb_retrieve`.
        IntegrityError
            If a stored object fails back-verification (audited).
        """
        instances = self._dicom_targets(principal, Action.VIEW_IMAGE, study_id, series_id,
                                        instance_id)
        out = []
        for inst in instances:
            plain, ds = self._open_verified(principal, inst, what="metadata")
            zeroize(plain)
            _drop_bulk(ds)
            out.append(ds.to_json_dict())
        return out

    def dicomweb_rendered(self, principal: Principal, study_id: str, series_id: str,
                          instance_id: str, *, media_type: str = "image/png",
                          window: tuple[float, float] | None = None,
                          viewport: int | None = None, quality: int | None = None) -> bytes:
        """One instance rendered as PNG or JPEG (in memory; :meth:`render_image`).

        Parameters
        ----------
        principal : Principal
            A radiologist granted the study.
        study_id, series_id, instance_id : str
            The instance.
        media_type : {"image/png", "image/jpeg"}
            The image format.
        window : tuple of float, optional
            ``(center, width)`` of a linear VOI window; default the image's own.
        viewport : int, optional
            The longest side of the image.
        quality : int, optional
            JPEG quality 1..100 (default 90).

        Returns
        -------
        bytes
            The image.

        Raises
        ------
        AccessDenied
            If not granted (audited).
        ObjectNotFound
            If the instance is not in that series of the study.
        NotAcceptable
            If the media type is neither PNG nor JPEG.
        InvalidRequest
            If the window, viewport or quality is out of range.
        IntegrityError
            If the stored image fails back-verification (audited).
        """
        if media_type not in ("image/png", "image/jpeg"):
            raise NotAcceptable("rendered images are image/png or image/jpeg")
        if quality is not None and not 1 <= quality <= 100:
            raise InvalidRequest("quality must be within 1..100")
        self._dicom_targets(principal, Action.VIEW_IMAGE, study_id, series_id, instance_id,
                            dicom_only=False)
        png = self.render_image(
            principal, study_id, instance_id,
            window_center=window[0] if window else None,
            window_width=window[1] if window else None,
            max_size=viewport if viewport is not None else 1024)
        if media_type == "image/png":
            return png
        with Image.open(io.BytesIO(png)) as image:
            out = io.BytesIO()
            image.convert("RGB").save(out, format="JPEG", quality=quality or 90)
        return out.getvalue()

    # ------------------------------------------------------------------ WADO helpers

    def _dicom_targets(self, principal: Principal, action: Action, study_id: str,
                       series_id: str | None, instance_id: str | None, *,
                       dicom_only: bool = True) -> list[InstanceRecord]:
        """The authorised instances a WADO-RS URL names (404 when it names nothing)."""
        if instance_id is not None:
            study, inst = self._instance(principal, action, study_id, instance_id)
            instances = [inst]
        else:
            study = self._study(principal, action, study_id)
            instances = self.vault.catalog.instances_of_study(study.study_id)
        if series_id is not None:
            series_id = self._check_id(principal, action, series_id, "series")
            instances = [i for i in instances if i.series_id == series_id]
            if not instances:
                what = f"instance {instance_id}" if instance_id else f"series {series_id}"
                raise ObjectNotFound(f"study {study.study_id} has no {what} in that series")
        if dicom_only:
            instances = [i for i in instances if i.source_format == "dicom"]
            if not instances:
                raise ObjectNotFound("nothing there was stored as DICOM (PNG and JPEG "
                                     "uploads are available as /rendered only)")
        if not instances:
            raise ObjectNotFound(f"study {study.study_id} has no instances")
        return instances

    def _open_verified(self, principal: Principal, inst: InstanceRecord, *,
                       what: str) -> tuple[bytearray, Dataset]:
        """Open, parse and back-verify one stored DICOM; audit the read.

        The caller owns (and wipes) the returned plaintext.
        """
        actor = principal.username
        obj = next((o for o in self.vault.catalog.objects_of_instance(inst.instance_id)
                    if o.kind == DICOM_KIND), None)
        if obj is None:
            self.vault.audit.append(actor, AuditAction.INTEGRITY_FAILURE, Outcome.REFUSED,
                                    object_ids=[inst.instance_id],
                                    details={"error": "object row missing", "kind": DICOM_KIND})
            raise IntegrityError(f"instance {inst.instance_id}: its DICOM object is missing")
        plain = self.vault.open_object(obj, actor=actor)
        try:
            name = f"object {obj.object_id}"
            limits = self.vault.settings.limits
            ds = read_dicom_dataset(bytes(plain), limits=limits, name=name)
            record = record_from_dataset(ds, name, limits=limits)
            try:
                # The keyed digest, or the plain sha-256 of a row written before
                # digests were keyed (Vault.pixel_digest_matches says why that holds).
                matches = self.vault.pixel_digest_matches(inst.pixel_sha256,
                                                          record.pixel_message())
            finally:
                if record.pixels.flags.writeable:
                    record.pixels.fill(0)
            if not matches:
                self.vault.audit.append(actor, AuditAction.INTEGRITY_FAILURE, Outcome.REFUSED,
                                        object_ids=[inst.instance_id, obj.object_id],
                                        details={"error": "pixel digest mismatch"})
                raise IntegrityError(f"instance {inst.instance_id}: pixels do not match the "
                                     "digest recorded at ingest")
        except ImageInputError:
            zeroize(plain)
            self.vault.audit.append(actor, AuditAction.INTEGRITY_FAILURE, Outcome.REFUSED,
                                    object_ids=[inst.instance_id, obj.object_id],
                                    details={"error": "stored DICOM unreadable"})
            raise IntegrityError(f"instance {inst.instance_id}: the stored DICOM is "
                                 "unreadable") from None
        except BaseException:
            zeroize(plain)
            raise
        self.vault.audit.append(actor, AuditAction.READ, Outcome.OK,
                                object_ids=[inst.instance_id],
                                details={"via": "dicomweb", "what": what})
        return plain, ds

    def _open_part(self, principal: Principal, inst: InstanceRecord,
                   accepted: tuple[str, ...]) -> DicomPart:
        plain, ds = self._open_verified(principal, inst, what="instance")
        try:
            stored = str(ds.file_meta.TransferSyntaxUID)
            if "*" in accepted or stored in accepted:
                return DicomPart(inst.instance_id, stored, bytes(plain))
            if EXPLICIT_VR_LITTLE_ENDIAN in accepted:
                return DicomPart(inst.instance_id, EXPLICIT_VR_LITTLE_ENDIAN,
                                 _to_explicit_little(ds))
            raise NotAcceptable(f"instance {inst.instance_id} is stored as {stored}; "
                                f"it can be sent as that or as {EXPLICIT_VR_LITTLE_ENDIAN}")
        finally:
            zeroize(plain)


# --------------------------------------------------------------------------- helpers


def _drop_bulk(ds: Dataset) -> None:
    """Remove pixel data and large binary values, in sequences too (in place)."""
    for elem in list(ds):
        if elem.VR == "SQ":
            for item in elem.value or []:
                _drop_bulk(item)
        elif elem.keyword in _PIXEL_KEYWORDS or (
                elem.VR in _BULK_VRS and elem.value is not None
                and len(elem.value) > _BULK_THRESHOLD):
            del ds[elem.tag]


def _to_explicit_little(ds: Dataset) -> bytes:
    """The dataset re-encoded as Explicit VR Little Endian, pixels decompressed.

    Raises
    ------
    NotAcceptable
        If pydicom cannot convert it (a big endian file, a missing decoder).
    """
    try:
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress()
        else:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
    except (ValueError, NotImplementedError, RuntimeError, AttributeError) as exc:
        raise NotAcceptable(f"this instance cannot be converted to {EXPLICIT_VR_LITTLE_ENDIAN}; "
                            "accept its stored transfer syntax (transfer-syntax=*)") from exc
    return buffer.getvalue()

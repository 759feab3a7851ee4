"""Import studies from an existing PACS: DICOM C-GET or C-MOVE, or DICOMweb (QIDO/WADO).

Every instance goes through the same ingest use case as any other input,
in memory: de-identified, preprocessed, sealed, signed, cataloged and
audited into the site the caller names.

- **C-GET** (default): one association to the PACS; the PACS sends the
  instances back on it (RadVault takes the storage SCP role for the storage
  SOP classes it accepts). Nothing needs configuring on the PACS side beyond
  allowing RadVault's AE to retrieve.
- **C-MOVE**: the PACS opens its own association back to RadVault's AE
  title, so the PACS must know that AE title with the host and port RadVault
  listens on during the pull (``listen_host``/``listen_port``). The listener
  accepts only the PACS's AE title from the PACS's host.
- **DICOMweb**: QIDO-RS to find the study's instances and WADO-RS to fetch
  them, with the ``dicomweb-client`` package.

Studies to pull are named by Study Instance UID; with none named, every study
the PACS lists (C-FIND / QIDO-RS at study level) is pulled, up to a limit.
"""

from __future__ import annotations

import io
import logging
import ssl
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.transport import AssociationSocket

from radvault.dicom._logs import redact_library_logs
from radvault.dicom._storage import (
    STORAGE_SOP_CLASSES,
    StoreReceiver,
    actor_for,
    check_in_memory_receive,
    retrieve_contexts,
    set_nodelay_on_event,
)
from radvault.dicom.nodes import DicomNode, NodeRegistry, check_ae_title
from radvault.dicom.scp import DicomServer
from radvault.errors import ConfigurationError, PullError, RadVaultError
from radvault.pipeline.ingest import Ingestor, IngestOutcome
from radvault.pipeline.sites import require_site
from radvault.vault.audit import Outcome
from radvault.vault.vault import Vault

__all__ = ["PULL_ACTION", "PullError", "PullReport", "pull_dicomweb", "pull_dimse"]

log = logging.getLogger(__name__)

PULL_ACTION = "pull"
"""Audit action of one pull, with its method and counts."""
METHODS = ("get", "move")
_DEFAULT_LIMIT = 1000


@dataclass
class PullReport:
    """What one pull did.

    ``outcomes`` holds one :class:`IngestOutcome` per instance received;
    ``failed`` counts instances the PACS reported it could not send, and
    ``problems`` says, without PHI, what went wrong per study.
    """

    method: str
    studies: list[str] = field(default_factory=list)
    outcomes: list[IngestOutcome] = field(default_factory=list)
    failed: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Instances per ingest status (``stored``, ``duplicate``, ``refused``)."""
        seen = Counter(o.status for o in self.outcomes)
        return {s: seen[s] for s in ("stored", "duplicate", "refused")}

    @property
    def ok(self) -> bool:
        """True when every instance arrived and none was refused or failed."""
        return not self.problems and self.failed == 0 and self.counts["refused"] == 0


def _audit_pull(vault: Vault, actor: str, report: PullReport, source: str) -> None:
    counts = report.counts
    vault.audit.append(
        actor, PULL_ACTION, Outcome.OK if report.ok else Outcome.ERROR,
        object_ids=sorted({o.study_id for o in report.outcomes if o.study_id})[:1000],
        details={"method": report.method, "source": source[:128],
                 "studies": len(report.studies), "failed": report.failed,
                 "problems": len(report.problems), **counts},
    )


# --------------------------------------------------------------------------- DIMSE


class _ClientSocket(AssociationSocket):
    """pynetdicom's client socket, closed even when the connection never came up.

    pynetdicom 3.0 skips ``close()`` when ``shutdown()`` fails on a socket that
    never connected, leaking one file descriptor per unreachable peer.
    """

    def _shutdown_socket(self) -> None:
        sock = self.socket
        super()._shutdown_socket()
        if sock is not None:
            sock.close()


class _ClientAE(AE):
    """An AE whose association sockets are :class:`_ClientSocket`."""

    def _create_socket(self, assoc: Any, address: Any, tls_args: Any) -> AssociationSocket:
        sock = _ClientSocket(assoc, address=address)
        sock.tls_args = tls_args
        return sock


@dataclass(frozen=True)
class _Peer:
    node: DicomNode
    port: int
    tls: ssl.SSLContext | None


def _study_identifier(level: str, study_uid: str = "") -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    ds.StudyInstanceUID = study_uid
    return ds


def _associate(ae: AE, peer: _Peer, handlers: list[Any], **kwargs: Any) -> Any:
    tls_args = (peer.tls, peer.node.host) if peer.tls is not None else None
    assoc = ae.associate(peer.node.host, peer.port, ae_title=peer.node.ae_title,
                         evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay_on_event), *handlers],
                         tls_args=tls_args, **kwargs)
    if not assoc.is_established:
        raise PullError(f"{peer.node.ae_title} at {peer.node.host}:{peer.port} "
                        "refused or did not answer the association")
    return assoc


def _remote_studies(ae_title: str, peer: _Peer, limit: int) -> list[str]:
    """Study Instance UIDs the PACS lists at STUDY level (C-FIND), at most ``limit``."""
    ae = _ClientAE(ae_title=ae_title)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = _associate(ae, peer, [])
    uids: list[str] = []
    try:
        responses = assoc.send_c_find(_study_identifier("STUDY"),
                                      StudyRootQueryRetrieveInformationModelFind)
        for status, identifier in responses:
            code = getattr(status, "Status", None)
            if code in (0xFF00, 0xFF01) and identifier is not None:
                uid = str(identifier.get("StudyInstanceUID", "") or "")
                if uid and len(uids) < limit:
                    uids.append(uid)
            elif code is None or code not in (0x0000,):
                raise PullError(f"{peer.node.ae_title}: C-FIND failed "
                                f"(status 0x{code or 0:04X})")
    finally:
        assoc.release()
    return uids


def _final_status(responses: Iterable[tuple[Dataset, Any]]) -> Dataset:
    final = Dataset()
    for status, _identifier in responses:
        if status is not None and "Status" in status:
            final = status
    return final


def _check_final(final: Dataset, peer: _Peer, report: PullReport, hint: str = "") -> None:
    """Count the failed sub-operations and record a problem unless the retrieve succeeded.

    ``hint`` (what may have gone wrong) follows the problem of a failed retrieve.
    """
    code = final.get("Status")
    report.failed += int(final.get("NumberOfFailedSuboperations", 0) or 0)
    if code is None:
        report.problems.append(f"{peer.node.ae_title}: no final response for a study "
                               "(timeout or abort)")
    elif code not in (0x0000, 0xB000):
        report.problems.append(f"{peer.node.ae_title}: retrieve ended with status "
                               f"0x{int(code):04X}" + (f" ({hint})" if hint else ""))
    # the PACS's own study UID is an original identifier: never logged
    log.info("retrieve of a study from %s ended with status %s", peer.node.ae_title,
             "none" if code is None else f"0x{int(code):04X}")


def _pull_get(vault: Vault, ae_title: str, peer: _Peer, study_uids: list[str], site: str,
              report: PullReport, on_outcome: Callable[[IngestOutcome], None]) -> None:
    ae = _ClientAE(ae_title=ae_title)
    ae.maximum_pdu_size = 1024 * 1024
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for uid, syntaxes in retrieve_contexts():  # compressed ones too, each on its own
        ae.add_requested_context(uid, syntaxes)
    roles = [build_role(uid, scp_role=True) for uid in STORAGE_SOP_CLASSES]
    receiver = StoreReceiver(vault, actor_for(peer.node.ae_title), site, threading.Lock(),
                             on_outcome=on_outcome)
    assoc = _associate(ae, peer, [(evt.EVT_C_STORE, receiver)], ext_neg=roles)
    try:
        for study_uid in study_uids:
            responses = assoc.send_c_get(_study_identifier("STUDY", study_uid),
                                         StudyRootQueryRetrieveInformationModelGet)
            _check_final(_final_status(responses), peer, report)
    finally:
        if assoc.is_established:
            assoc.release()


def _pull_move(vault: Vault, ae_title: str, peer: _Peer, study_uids: list[str], site: str,
               report: PullReport, on_outcome: Callable[[IngestOutcome], None],
               listen_host: str, listen_port: int) -> None:
    # The PACS calls us back: only it, from its host, into the chosen site.
    listener = DicomServer(vault, NodeRegistry([DicomNode(peer.node.ae_title, peer.node.host,
                                                          site)]),
                           ae_title=ae_title, host=listen_host, port=listen_port,
                           on_outcome=on_outcome)
    ae = _ClientAE(ae_title=ae_title)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    hint = (f"the PACS may not know RadVault's move destination: AE title {ae_title} "
            f"at {listen_host}:{listen_port}")
    with listener:
        assoc = _associate(ae, peer, [])
        try:
            for study_uid in study_uids:
                responses = assoc.send_c_move(_study_identifier("STUDY", study_uid), ae_title,
                                              StudyRootQueryRetrieveInformationModelMove)
                _check_final(_final_status(responses), peer, report, hint)
        finally:
            if assoc.is_established:
                assoc.release()


def pull_dimse(
    vault: Vault,
    *,
    peer_ae: str,
    host: str,
    port: int,
    site: str,
    actor: str,
    study_uids: Iterable[str] = (),
    method: str = "get",
    ae_title: str = "RADVAULT",
    listen_host: str = "127.0.0.1",
    listen_port: int = 11113,
    tls: ssl.SSLContext | None = None,
    limit: int = _DEFAULT_LIMIT,
    on_outcome: Callable[[IngestOutcome], None] | None = None,
) -> PullReport:
    """Pull studies from a PACS by C-GET or C-MOVE into the vault (audited).

    Parameters
    ----------
    vault : Vault
        The open vault.
    peer_ae, host, port : str, str, int
        The PACS: its AE title, host and DICOM port.
    site : str
        The site the pulled studies belong to.
    actor : str
        Who asked for the pull (audited as the pull's actor; each instance is
        audited as received from the PACS's AE title).
    study_uids : iterable of str
        The studies to pull; none means every study the PACS lists (C-FIND), up to ``limit``.
    method : {"get", "move"}
        C-GET (one association) or C-MOVE (the PACS connects back to
        ``ae_title`` at ``listen_host:listen_port``, which it must know).
    ae_title : str
        RadVault's AE title (calling AE, and C-MOVE destination).
    tls : ssl.SSLContext, optional
        DICOM TLS towards the PACS (see :func:`radvault.dicom.tls.client_context`).
    on_outcome : callable, optional
        Called with every instance's :class:`IngestOutcome` as it is ingested.

    Raises
    ------
    ConfigurationError
        When an argument is invalid, ``site`` is not registered, or (C-MOVE) the
        listen address cannot be bound.
    PullError
        When the PACS cannot be reached or refuses the association or the query.
        Either way once the pull has begun, it is audited as an error first.
    """
    check_in_memory_receive()
    redact_library_logs()
    if method not in METHODS:
        raise ConfigurationError(f"pull method must be one of {', '.join(METHODS)}")
    if not 1 <= port <= 65535:
        raise ConfigurationError("the PACS port must be within 1..65535")
    ae_title = check_ae_title(ae_title)
    peer = _Peer(DicomNode(peer_ae, host, site), port, tls)
    require_site(vault, site)  # before the PACS is asked for anything
    report = PullReport(method=method)

    def record(outcome: IngestOutcome) -> None:
        report.outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    uids = list(study_uids) or _remote_studies(ae_title, peer, limit)
    report.studies = uids
    try:
        if method == "get":
            _pull_get(vault, ae_title, peer, uids, site, report, record)
        else:
            _pull_move(vault, ae_title, peer, uids, site, report, record,
                       listen_host, listen_port)
    except RadVaultError as exc:  # the pull stopped: audited as an error, then raised
        report.problems.append(f"the pull stopped ({type(exc).__name__})")
        raise
    finally:
        _audit_pull(vault, actor, report, f"dicom:{peer.node.ae_title}@{host}:{port}")
    return report


# --------------------------------------------------------------------------- DICOMweb


def _dataset_bytes(ds: Dataset) -> bytes:
    """A retrieved dataset as DICOM file bytes, in memory."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def pull_dicomweb(
    vault: Vault,
    url: str,
    *,
    site: str,
    actor: str,
    study_uids: Iterable[str] = (),
    headers: dict[str, str] | None = None,
    limit: int = _DEFAULT_LIMIT,
    on_outcome: Callable[[IngestOutcome], None] | None = None,
    client: Any = None,
) -> PullReport:
    """Pull studies from a DICOMweb server (QIDO-RS, WADO-RS) into the vault (audited).

    Parameters
    ----------
    vault : Vault
        The open vault.
    url : str
        The DICOMweb service root, e.g. ``http://pacs:8042/dicom-web``.
    site : str
        The site the pulled studies belong to.
    actor : str
        Who asked for the pull (audited, also as each instance's ingesting actor).
    study_uids : iterable of str
        The studies to pull; none means every study QIDO-RS lists, up to ``limit``.
    headers : dict, optional
        Extra HTTP headers (e.g. ``Authorization: Bearer ...``).
    client : dicomweb_client.DICOMwebClient, optional
        A ready client (for custom sessions, TLS or authentication).

    Raises
    ------
    ConfigurationError
        When ``site`` is not registered (before the server is asked for anything).
    PullError
        When the server cannot be reached or answers with an HTTP error.
    """
    import requests
    from dicomweb_client import DICOMwebClient

    redact_library_logs()
    if client is None:
        client = DICOMwebClient(url=url, headers=headers or {})
    report = PullReport(method="dicomweb")
    ingestor = Ingestor(vault, actor=actor, site=site)
    try:
        uids = list(study_uids)
        if not uids:
            found = client.search_for_studies(limit=limit, fields=["StudyInstanceUID"])
            uids = [str(item["0020000D"]["Value"][0]) for item in found
                    if item.get("0020000D", {}).get("Value")]
        report.studies = uids
        for study_uid in uids:
            try:
                _pull_web_study(client, study_uid, ingestor, url, report, on_outcome)
            except requests.RequestException as exc:  # this study failed: on to the next
                report.problems.append(f"a study failed: {_request_failure(url, exc)}")
    except requests.RequestException as exc:
        raise PullError(_request_failure(url, exc)) from None
    finally:
        _audit_pull(vault, actor, report, url)
    return report


#: WADO-RS media type: instances in any transfer syntax the server holds (no transcoding).
_ANY_SYNTAX = (("application/dicom", "*"),)


def _pull_web_study(client: Any, study_uid: str, ingestor: Ingestor, url: str,
                    report: PullReport, on_outcome: Callable[[IngestOutcome], None] | None
                    ) -> None:
    """Fetch one study's instances as stored (``transfer-syntax=*``) and ingest each.

    Asking without a transfer syntax means Explicit VR Little Endian, which makes
    the server decompress (Orthanc fails a JPEG 2000 study with HTTP 500); as
    stored, every syntax the ingest can decode arrives, and the rest is refused there.

    Raises
    ------
    requests.RequestException
        When the server fails a request for this study.
    """
    if not client.search_for_instances(study_instance_uid=study_uid):
        report.problems.append("a requested study was not found on the server")
        return
    for ds in client.iter_study(study_uid, media_types=_ANY_SYNTAX):
        data = _dataset_bytes(ds)
        del ds
        outcome = ingestor.ingest_bytes(data, f"DICOMweb instance of {url}")
        report.outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)


def _request_failure(url: str, exc: Exception) -> str:
    """A failed HTTP request in words: the server and the HTTP status (or the error type)."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return (f"DICOMweb server {url} failed the request"
            + (f" (HTTP {status})" if status else f" ({type(exc).__name__})"))

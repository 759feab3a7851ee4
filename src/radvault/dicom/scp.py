"""RadVault's DICOM SCP: C-ECHO, C-STORE into the vault, C-FIND over the catalog.

The server (pynetdicom) accepts an association only from a calling AE title on
the allow-list (:mod:`radvault.dicom.nodes`) connecting from the host recorded
for it, and addressed to our own AE title; everything else is rejected with
"calling AE title not recognised" (or "called AE title not recognised") and
audited. A node whose site is not registered (``radvault sites add``) is
rejected too ("no reason given"; audited as "the node's site is unknown"), so
nothing it sends lands in a site nobody can be granted. Each accepted
association is audited when established and when it ends (with counts of
stored, duplicate and refused instances).

C-STORE hands the dataset bytes, exactly as received and never written to
disk, to the ingest use case, which de-identifies, preprocesses, seals,
signs, catalogs and audits them; Success goes back only after that, and a
refused instance gets a failure status naming the reason
(:data:`~radvault.dicom._storage.STATUS_BY_ERROR`). C-FIND (Study Root, STUDY and
SERIES levels) answers from the catalog alone, only with the calling node's
site's studies and only with de-identified values.

Sockets get TCP_NODELAY (Nagle would hold every small DIMSE message back by
~40 ms); with TLS configured, the handshake runs in the association's own
thread, so a slow or hostile client cannot stall the acceptor.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification
from pynetdicom.transport import ThreadedAssociationServer

from radvault._diagnostics import log_unexpected
from radvault.dicom._logs import redact_library_logs
from radvault.dicom._query import QueryError, find_matches
from radvault.dicom._storage import (
    STORAGE_SOP_CLASSES,
    StoreReceiver,
    accepted_transfer_syntaxes,
    actor_for,
    check_in_memory_receive,
    set_nodelay,
    set_nodelay_on_event,
)
from radvault.dicom.nodes import DicomNode, NodeRegistry, check_ae_title
from radvault.dicom.tls import TlsConfig, server_context
from radvault.errors import ConfigurationError
from radvault.pipeline.ingest import IngestOutcome
from radvault.pipeline.sites import DEFAULT_SITE, ensure_default_site, site_exists
from radvault.vault.audit import Outcome
from radvault.vault.vault import Vault

__all__ = [
    "ASSOCIATION_ACTION",
    "ASSOCIATION_END_ACTION",
    "FIND_ACTION",
    "TLS_REFUSED_ACTION",
    "DicomServer",
]

log = logging.getLogger(__name__)

ASSOCIATION_ACTION = "dicom_association"
"""Audit action of an association request (outcome ``ok`` or ``refused``)."""
ASSOCIATION_END_ACTION = "dicom_association_end"
"""Audit action of an association's end, with its instance counts."""
FIND_ACTION = "dicom_find"
"""Audit action of a C-FIND query, with its level and number of matches."""
TLS_REFUSED_ACTION = "dicom_tls_refused"
"""Audit action of a connection whose TLS handshake failed (no or bad client certificate)."""

#: Default largest PDU we accept: big PDUs mean fewer Python round trips per image.
DEFAULT_MAX_PDU = 1024 * 1024
_HANDSHAKE_TIMEOUT_S = 10.0
_REJECT_FLUSH_S = 2.0

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4
_REJECT_CALLING = (0x01, 0x01, 0x03)  # rejected-permanent, service user, calling AE not recognised
_REJECT_CALLED = (0x01, 0x01, 0x07)  # ..., called AE title not recognised
_REJECT_NO_REASON = (0x01, 0x01, 0x01)  # ..., no reason given (the node's site is unknown)
_REJECT_TRANSIENT = (0x02, 0x01, 0x01)  # rejected-transient: the site could not be checked


@dataclass
class _Session:
    """What the server knows about one accepted association."""

    node: DicomNode
    address: str
    receiver: StoreReceiver
    established: bool = False
    finds: int = 0


class _AssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, with TCP_NODELAY and the TLS handshake per thread."""

    on_tls_failure: Any = None

    def get_request(self) -> tuple[Any, Any]:
        """Accept a connection; TLS (if any) is negotiated later, in its own thread."""
        client, address = self.socket.accept()  # type: ignore[union-attr]
        set_nodelay(client)
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Wrap the connection in TLS (in this thread), then run the association."""
        context = self.ssl_context
        if context is not None:
            try:
                request.settimeout(_HANDSHAKE_TIMEOUT_S)
                request = context.wrap_socket(request, server_side=True)
                request.settimeout(None)
            except (ssl.SSLError, OSError) as exc:
                if self.on_tls_failure is not None:
                    self.on_tls_failure(client_address, exc)
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)


class DicomServer:
    """RadVault's DICOM SCP over an open vault.

    Parameters
    ----------
    vault : Vault
        The open vault the received instances go into.
    nodes : NodeRegistry
        The allow-list of calling AE titles, their hosts and sites.
    ae_title : str
        Our AE title (the *called* AE title peers must use).
    host : str
        Where to listen; loopback by default (give an interface address to serve a network).
    port : int
        TCP port; 0 picks a free one (see :attr:`address`).
    tls : TlsConfig, optional
        Serve DICOM TLS (mutual when the config names a CA).
    max_pdu : int
        The largest PDU we accept from peers (0: unlimited).
    on_outcome : callable, optional
        Called with every C-STORE's :class:`~radvault.pipeline.ingest.IngestOutcome`.

    Raises
    ------
    ConfigurationError
        When the AE title is invalid, the TLS files cannot be loaded, or pynetdicom
        is configured to spool received images to temporary files.
    """

    def __init__(
        self,
        vault: Vault,
        nodes: NodeRegistry,
        *,
        ae_title: str = "RADVAULT",
        host: str = "127.0.0.1",
        port: int = 11112,
        tls: TlsConfig | None = None,
        max_pdu: int = DEFAULT_MAX_PDU,
        on_outcome: Callable[[IngestOutcome], None] | None = None,
    ) -> None:
        check_in_memory_receive()
        if not 0 <= port <= 65535:
            raise ConfigurationError(f"port must be within 0..65535, got {port}")
        self.vault = vault
        self.nodes = nodes
        self.ae_title = check_ae_title(ae_title)
        self.host = host
        self.port = port
        self.tls = tls
        self._ssl = server_context(tls) if tls is not None else None
        self._on_outcome = on_outcome
        self._ingest_lock = threading.Lock()
        self._sessions: dict[Any, _Session] = {}
        self._sessions_changed = threading.Condition()
        self._ae = self._make_ae(max_pdu)
        self._server: _AssociationServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def _make_ae(self, max_pdu: int) -> AE:
        ae = AE(ae_title=self.ae_title)
        ae.maximum_pdu_size = max_pdu
        ae.require_called_aet = False  # checked (and audited) in _on_requested
        syntaxes = accepted_transfer_syntaxes()
        ae.add_supported_context(Verification)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        for uid in STORAGE_SOP_CLASSES:
            ae.add_supported_context(uid, syntaxes)
        return ae

    def start(self) -> tuple[str, int]:
        """Start listening in a background thread; return the bound ``(host, port)``.

        Raises
        ------
        ConfigurationError
            When the address cannot be bound (port in use, not this machine's, no such
            host): one line naming the address and the reason.
        """
        if self._server is not None:
            return self.address
        redact_library_logs()  # pynetdicom and pydicom log the values they find invalid
        handlers = [
            (evt.EVT_CONN_OPEN, set_nodelay_on_event),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_CONN_CLOSE, self._on_closed),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
        ]
        try:
            server = self._ae.make_server(
                (self.host, self.port), ae_title=self.ae_title, ssl_context=self._ssl,
                evt_handlers=handlers, server_class=_AssociationServer,
            )
        except OSError as exc:  # in use, not this machine's address, or no such host
            raise ConfigurationError(f"cannot listen on {self.host}:{self.port}: "
                                     f"{exc.strerror or type(exc).__name__}") from None
        server.on_tls_failure = self._on_tls_failure
        self._ae._servers.append(server)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2},
            name="radvault-dicom-scp", daemon=True,
        )
        self._thread.start()
        log.info("DICOM SCP %s listening on %s:%d%s", self.ae_title, *self.address[:2],
                 " (TLS)" if self._ssl else "")
        return self.address

    @property
    def address(self) -> tuple[str, int]:
        """The ``(host, port)`` the server listens on (the real port when 0 was asked)."""
        if self._server is None:
            return self.host, self.port
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        """Abort open associations, stop listening, and wait for the server thread."""
        if self._server is None:
            return
        for assoc in self._ae.active_associations:
            # only established ones: aborting a rejected association that waits for
            # its transport to close is an invalid event for pynetdicom's state machine
            if assoc.is_established:
                assoc.abort()
        self._server.shutdown()  # also closes the socket and leaves the AE's server list
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None
        log.info("DICOM SCP %s stopped", self.ae_title)

    def serve_until(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set (e.g. by a signal handler), then stop."""
        self.start()
        try:
            stop.wait()
        finally:
            self.stop()

    def __enter__(self) -> DicomServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ association control

    def _audit(self, actor: str, action: str, outcome: str, details: dict[str, Any]) -> None:
        try:
            self.vault.audit.append(actor, action, outcome, details=details)
        except Exception as exc:  # an audit failure is logged; the DICOM exchange goes on
            log.error("could not audit %s for %s (%s)", action, actor, type(exc).__name__)

    def _on_tls_failure(self, client_address: Any, exc: BaseException) -> None:
        host = str(client_address[0]) if client_address else "?"
        log.warning("DICOM TLS handshake from %s failed (%s)", host, type(exc).__name__)
        self._audit("dicom:unknown", TLS_REFUSED_ACTION, Outcome.REFUSED,
                    {"host": host, "error": type(exc).__name__})

    def _on_requested(self, event: Any) -> None:
        """Accept or reject an A-ASSOCIATE request by the allow-list (audited either way)."""
        assoc = event.assoc
        request = assoc.requestor.primitive
        calling = str(request.calling_ae_title).strip()
        called = str(request.called_ae_title).strip()
        address = assoc.requestor.address
        actor = actor_for(calling)
        node = self.nodes.match(calling, address)
        if node is None:
            known = self.nodes.get(calling) is not None
            reason = "host not allowed for this AE title" if known else "calling AE not allowed"
            self._reject(assoc, _REJECT_CALLING, actor, address, reason)
            return
        if called != self.ae_title:
            self._reject(assoc, _REJECT_CALLED, actor, address, "called AE title not ours")
            return
        try:  # what the node sends must go into a registered site (the default: made now)
            known = site_exists(self.vault, node.site)
            if not known and node.site == DEFAULT_SITE:
                ensure_default_site(self.vault)  # registered on first use
                known = True
        except Exception as exc:  # the database, not the node: the peer may try again later
            log_unexpected(log, exc, "DICOM association site check")
            self._reject(assoc, _REJECT_TRANSIENT, actor, address,
                         "the node's site could not be checked")
            return
        if not known:
            self._reject(assoc, _REJECT_NO_REASON, actor, address, "the node's site is unknown")
            return
        receiver = StoreReceiver(self.vault, actor, node.site, self._ingest_lock,
                                 on_outcome=self._on_outcome)
        with self._sessions_changed:
            self._sessions[assoc] = _Session(node, address, receiver)

    def _reject(self, assoc: Any, rsd: tuple[int, int, int], actor: str, address: str,
                reason: str) -> None:
        log.warning("DICOM association from %s at %s rejected: %s", actor, address, reason)
        self._audit(actor, ASSOCIATION_ACTION, Outcome.REFUSED,
                    {"host": address, "reason": reason, "tls": self._ssl is not None})
        assoc.acse.send_reject(*rsd)
        # The reject PDU leaves from the DUL thread; once this handler returns, the
        # association closes the socket. Wait (briefly) until the PDU went out,
        # so the peer reads a clean A-ASSOCIATE-RJ instead of a dropped connection.
        deadline = time.monotonic() + _REJECT_FLUSH_S
        state = assoc.dul.state_machine
        while state.current_state == "Sta3" and time.monotonic() < deadline:
            time.sleep(0.001)

    def _on_established(self, event: Any) -> None:
        session = self._session(event)
        if session is None:
            return
        session.established = True
        self._audit(session.receiver.actor, ASSOCIATION_ACTION, Outcome.OK,
                    {"host": session.address, "site": session.node.site,
                     "tls": self._ssl is not None})

    def _on_closed(self, event: Any) -> None:
        session = self._session(event)
        if session is not None and session.established:
            counts = session.receiver.counts
            self._audit(session.receiver.actor, ASSOCIATION_END_ACTION, Outcome.OK,
                        {"stored": counts["stored"], "duplicate": counts["duplicate"],
                         "refused": counts["refused"], "finds": session.finds})
        with self._sessions_changed:
            self._sessions.pop(event.assoc, None)
            self._sessions_changed.notify_all()

    def _session(self, event: Any) -> _Session | None:
        with self._sessions_changed:
            return self._sessions.get(event.assoc)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no accepted association is open (and its end is audited).

        Returns ``False`` if associations are still open after ``timeout`` seconds.
        """
        with self._sessions_changed:
            return self._sessions_changed.wait_for(lambda: not self._sessions, timeout)

    # ------------------------------------------------------------------ services

    def _on_echo(self, event: Any) -> int:
        return 0x0000 if self._session(event) is not None else 0x0124

    def _on_store(self, event: Any) -> Dataset | int:
        session = self._session(event)
        if session is None:  # cannot happen: unknown peers never get an association
            return 0x0124
        return session.receiver(event)

    def _on_find(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        session = self._session(event)
        if session is None:
            yield 0x0124, None
            return
        session.finds += 1
        actor = session.receiver.actor
        try:
            identifier = event.identifier
        except Exception:  # malformed identifier
            self._audit(actor, FIND_ACTION, Outcome.REFUSED, {"error": "unreadable identifier"})
            yield 0xC000, None
            return
        level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
        matches = 0
        try:
            for answer in find_matches(self.vault.catalog, session.node.site, identifier):
                if event.is_cancelled:
                    self._audit(actor, FIND_ACTION, Outcome.OK,
                                {"level": level, "matches": matches, "cancelled": True})
                    yield 0xFE00, None
                    return
                matches += 1
                yield 0xFF00, answer
        except QueryError:
            self._audit(actor, FIND_ACTION, Outcome.REFUSED, {"level": level[:16],
                                                              "error": "unsupported level"})
            yield 0xA900, None
            return
        self._audit(actor, FIND_ACTION, Outcome.OK, {"level": level, "matches": matches})


"""DICOM commands: ``radvault dicom serve``, ``radvault dicom nodes ...`` and ``radvault pull``."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from radvault.cli._common import console, err_console, handle_errors, settings_from_context
from radvault.cli._vault_cmds import ACTOR, opened_vault
from radvault.errors import ConfigurationError

if TYPE_CHECKING:
    from radvault.dicom.nodes import DicomNode

__all__ = ["dicom_app", "nodes_app", "pull", "register"]

dicom_app = typer.Typer(help="DICOM network services (SCP, allow-list).", no_args_is_help=True)
nodes_app = typer.Typer(help="The allow-list of DICOM nodes (AE title, host, site).",
                        no_args_is_help=True)

dicom_app.add_typer(nodes_app, name="nodes")

NODE_ADD_ACTION = "dicom_node_add"
NODE_REMOVE_ACTION = "dicom_node_remove"


def _quiet_pynetdicom() -> None:
    # pynetdicom's INFO/DEBUG logs can dump query identifiers (patient names): keep them out.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


@dicom_app.command("serve")
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 11112,
    ae_title: Annotated[str, typer.Option("--ae-title", help="Our AE title.")] = "RADVAULT",
    tls_cert: Annotated[
        Path | None, typer.Option(envvar="RADVAULT_DICOM_TLS_CERT", help="PEM certificate (TLS).")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(envvar="RADVAULT_DICOM_TLS_KEY", help="PEM private key (TLS).")
    ] = None,
    tls_ca: Annotated[
        Path | None,
        typer.Option(envvar="RADVAULT_DICOM_TLS_CA",
                     help="PEM CA bundle: clients must present a certificate it signed."),
    ] = None,
) -> None:
    """Run the DICOM SCP (C-ECHO, C-STORE, C-FIND) until interrupted."""

    @handle_errors
    def run() -> None:
        from radvault.dicom.nodes import NodeRegistry, nodes_path
        from radvault.dicom.scp import DicomServer
        from radvault.dicom.tls import TlsConfig
        from radvault.pipeline.sites import DEFAULT_SITE, site_exists

        _quiet_pynetdicom()
        settings = settings_from_context(ctx)
        nodes = NodeRegistry.from_settings(settings)
        tls = None
        if tls_cert or tls_key or tls_ca:
            if not (tls_cert and tls_key):
                raise ConfigurationError("DICOM TLS needs both --tls-cert and --tls-key")
            tls = TlsConfig(tls_cert, tls_key, tls_ca)
        stop = threading.Event()
        with opened_vault(settings) as vault:  # no vault: that error alone, no warnings
            if not len(nodes):
                err_console.print(f"[yellow]warning:[/] the allow-list {nodes_path(settings)} "
                                  "is empty: every association will be rejected "
                                  "(add nodes with `radvault dicom nodes add`)")
            for node in nodes:
                if node.site != DEFAULT_SITE and not site_exists(vault, node.site):
                    err_console.print(
                        f"[yellow]warning:[/] node {escape(node.ae_title)}: unknown site "
                        f"{escape(repr(node.site))}: its associations will be rejected "
                        f"(add it with `radvault sites add {escape(node.site)}`)",
                        highlight=False)
            server = DicomServer(vault, nodes, ae_title=ae_title, host=host, port=port, tls=tls)
            bound = server.start()
            mode = "DICOM TLS, mutual" if tls and tls.require_client_cert else (
                "DICOM TLS" if tls else "plain DICOM")
            console.print(f"DICOM SCP {server.ae_title} listening on {bound[0]}:{bound[1]} "
                          f"({mode}; {len(nodes)} allowed node(s)); Ctrl-C to stop")
            previous = {sig: signal.signal(sig, lambda *_a: stop.set())
                        for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                server.serve_until(stop)
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        console.print("DICOM SCP stopped")

    run()


@nodes_app.command("add")
def nodes_add(
    ctx: typer.Context,
    ae_title: Annotated[str, typer.Argument(help="The node's AE title.")],
    host: Annotated[str, typer.Option(help="IP address or host name it connects from.")],
    site: Annotated[str, typer.Option(
        help="The site its studies belong to (one `radvault sites add` made).")],
    port: Annotated[
        int | None, typer.Option(help="Where the node listens (for `radvault pull`).")
    ] = None,
    replace: Annotated[bool, typer.Option(
        "--replace", help="Replace the node of this AE title (its host, site, port).")] = False,
) -> None:
    """Allow a node, or change one with --replace; audited."""

    @handle_errors
    def run() -> None:
        from radvault.dicom.nodes import DicomNode, NodeRegistry, nodes_path
        from radvault.pipeline.sites import require_site
        from radvault.vault.audit import Outcome

        settings = settings_from_context(ctx)
        node = DicomNode(ae_title, host, site, port)
        path = nodes_path(settings)
        with opened_vault(settings) as vault:
            require_site(vault, node.site)  # what a node sends must go into a real site
            registry = NodeRegistry.load(path)
            old = registry.get(node.ae_title)
            details: dict[str, object] = {"ae_title": node.ae_title[:16],
                                          "host": node.host[:64], "site": node.site}
            if old is not None and not replace:  # never a silent change of who sends where
                vault.audit.append(ACTOR, NODE_ADD_ACTION, Outcome.REFUSED,
                                   details={**details, "reason": "AE title already allowed"})
                raise ConfigurationError(
                    f"{node.ae_title} is already allowed (from {old.host} for site "
                    f"{old.site}): give --replace to change it")
            registry.with_node(node).save(path)
            changed = _node_changes(old, node) if old is not None else {}
            if old is not None:
                details["replaced"] = sorted(changed)  # the fields that changed
            vault.audit.append(ACTOR, NODE_ADD_ACTION, details=details)
        if old is None:
            console.print(f"allowed {node.ae_title} from {node.host} for site {node.site}")
        else:
            console.print(f"replaced {node.ae_title}: " + ("; ".join(
                f"{name} {was} -> {now}" for name, (was, now) in changed.items())
                or "nothing changed"))

    run()


def _node_changes(old: DicomNode, new: DicomNode) -> dict[str, tuple[object, object]]:
    """The fields replacing ``old`` by ``new`` changes: ``{name: (old value, new value)}``."""
    return {name: (getattr(old, name), getattr(new, name)) for name in ("host", "site", "port")
            if getattr(old, name) != getattr(new, name)}


@nodes_app.command("remove")
def nodes_remove(
    ctx: typer.Context,
    ae_title: Annotated[str, typer.Argument(help="The node's AE title.")],
) -> None:
    """Remove a node from the allow-list; audited."""

    @handle_errors
    def run() -> None:
        from radvault.dicom.nodes import NodeRegistry, nodes_path

        settings = settings_from_context(ctx)
        path = nodes_path(settings)
        with opened_vault(settings) as vault:
            NodeRegistry.load(path).without(ae_title).save(path)
            vault.audit.append(ACTOR, NODE_REMOVE_ACTION,
                               details={"ae_title": ae_title.strip()[:16]})
        console.print(f"removed {ae_title.strip()}")

    run()


@nodes_app.command("ls")
def nodes_ls(ctx: typer.Context) -> None:
    """List the allowed nodes."""

    @handle_errors
    def run() -> None:
        from radvault.dicom.nodes import NodeRegistry

        nodes = NodeRegistry.from_settings(settings_from_context(ctx))
        table = Table(title=f"{len(nodes)} allowed DICOM node(s)")
        for col in ("AE title", "host", "site", "port"):
            table.add_column(col)
        for node in nodes:
            table.add_row(node.ae_title, node.host, node.site,
                          "" if node.port is None else str(node.port))
        console.print(table)

    run()


def pull(
    ctx: typer.Context,
    study: Annotated[
        list[str] | None,
        typer.Option("--study", help="Study Instance UID to pull (repeatable; none: all)."),
    ] = None,
    from_ae: Annotated[str | None, typer.Option("--from-ae", help="The PACS's AE title.")] = None,
    host: Annotated[str | None, typer.Option(help="The PACS's host.")] = None,
    port: Annotated[int | None, typer.Option(help="The PACS's DICOM port.")] = None,
    method: Annotated[str, typer.Option(help="get (C-GET) or move (C-MOVE).")] = "get",
    ae_title: Annotated[str, typer.Option("--ae-title", help="Our AE title.")] = "RADVAULT",
    listen_host: Annotated[
        str, typer.Option(help="C-MOVE: where we receive (the PACS must know it).")
    ] = "127.0.0.1",
    listen_port: Annotated[int, typer.Option(help="C-MOVE: the port we receive on.")] = 11113,
    dicomweb: Annotated[
        str | None, typer.Option("--dicomweb", help="DICOMweb root URL, instead of DIMSE.")
    ] = None,
    site: Annotated[
        str | None, typer.Option(help="Site of the pulled studies (default: the node's).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many studies when none is named.")]
    = 1000,
    tls_ca: Annotated[
        Path | None, typer.Option(envvar="RADVAULT_DICOM_TLS_CA", help="DICOM TLS: the CA.")
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(envvar="RADVAULT_DICOM_TLS_CERT", help="DICOM TLS: our cert.")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(envvar="RADVAULT_DICOM_TLS_KEY", help="DICOM TLS: our key.")
    ] = None,
) -> None:
    """Import studies from a PACS (C-GET, C-MOVE or DICOMweb) through the ingest pipeline."""

    @handle_errors
    def run() -> int:
        from radvault.dicom.nodes import NodeRegistry
        from radvault.dicom.pull import pull_dicomweb, pull_dimse
        from radvault.dicom.tls import client_context
        from radvault.pipeline.sites import DEFAULT_SITE

        _quiet_pynetdicom()
        settings = settings_from_context(ctx)
        uids = list(study or [])
        with opened_vault(settings) as vault:
            if dicomweb:
                if from_ae or host or port:
                    raise ConfigurationError("give either --dicomweb or --from-ae/--host/--port")
                token = os.environ.get("RADVAULT_DICOMWEB_TOKEN")
                headers = {"Authorization": f"Bearer {token}"} if token else None
                report = pull_dicomweb(vault, dicomweb, site=site or DEFAULT_SITE, actor=ACTOR,
                                       study_uids=uids, headers=headers, limit=limit)
                source = dicomweb
            else:
                if not from_ae:
                    raise ConfigurationError("name the PACS with --from-ae (or use --dicomweb)")
                node = NodeRegistry.from_settings(settings).get(from_ae)
                peer_host = host or (node.host if node else None)
                peer_port = port or (node.port if node else None)
                if not peer_host or not peer_port:
                    raise ConfigurationError(
                        f"{from_ae}: give --host and --port (or add them to the allow-list)")
                tls = client_context(tls_ca, tls_cert, tls_key) if tls_ca else None
                report = pull_dimse(
                    vault, peer_ae=from_ae, host=peer_host, port=peer_port,
                    site=site or (node.site if node else DEFAULT_SITE), actor=ACTOR,
                    study_uids=uids, method=method, ae_title=ae_title,
                    listen_host=listen_host, listen_port=listen_port, tls=tls, limit=limit,
                )
                source = f"{from_ae}@{peer_host}:{peer_port}"
        counts = report.counts
        console.print(f"pulled {len(report.studies)} study(ies) from {source} by "
                      f"{report.method}: {counts['stored']} stored, {counts['duplicate']} "
                      f"duplicate, {counts['refused']} refused, {report.failed} failed")
        for outcome in report.outcomes:
            if not outcome.ok:
                err_console.print(f"[red]refused[/] {outcome.error}: {outcome.reason}")
        for problem in report.problems:
            err_console.print(f"[red]problem[/] {problem}")
        return 0 if report.ok else 1

    raise typer.Exit(run())


def register(app: typer.Typer) -> None:
    """Add ``dicom`` (serve, nodes) and ``pull`` to the root application."""
    app.add_typer(dicom_app, name="dicom")
    app.command("pull")(pull)

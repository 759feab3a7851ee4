"""Service commands: ``serve``, ``tls selfsigned``, and user, site and grant administration.

The administration commands go through the same use cases as the API
(:class:`~radvault.pipeline.clinical.ClinicalService`), as an operator
principal: whoever holds the vault passphrase administers users, sites and
grants (and, like an API admin, never sees images or results). Every change
is audited under ``cli:<login name>``.

``serve`` speaks HTTPS with the certificate given (or the one ``radvault tls
selfsigned`` made in ``RADVAULT_HOME/tls``); plain HTTP only when asked for
with ``--insecure-http``, and then only on a loopback address.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from radvault.cli._common import console, handle_errors, settings_from_context
from radvault.cli._vault_cmds import ACTOR, read_passphrase
from radvault.config import Settings
from radvault.errors import ConfigurationError

if TYPE_CHECKING:
    from radvault.access.principal import Principal
    from radvault.pipeline.clinical import ClinicalService

__all__ = ["ServePlan", "grants_app", "plan_serve", "register", "sites_app", "tls_app",
           "users_app"]

users_app = typer.Typer(help="Manage user accounts (audited).", no_args_is_help=True)
sites_app = typer.Typer(help="Manage sites (audited).", no_args_is_help=True)
grants_app = typer.Typer(help="Grant users studies or sites (audited).", no_args_is_help=True)
tls_app = typer.Typer(help="TLS certificates for `radvault serve`.", no_args_is_help=True)

ROLES = ("admin", "technologist", "radiologist", "physician", "auditor")


def tls_paths(settings: Settings) -> tuple[Path, Path]:
    """Where ``tls selfsigned`` writes, and ``serve`` looks by default."""
    folder = settings.home / "tls"
    return folder / "cert.pem", folder / "key.pem"


@contextmanager
def _service(settings: Settings) -> Iterator[ClinicalService]:
    """The clinical service over the unlocked vault (closed, with a checkpoint, after)."""
    from radvault.pipeline.clinical import ClinicalService, ServiceSettings
    from radvault.vault.vault import Vault

    vault = Vault.open(settings, read_passphrase(settings))
    try:
        yield ClinicalService.build(vault, ServiceSettings(start_workers=False))
    finally:
        vault.close()


def _operator() -> Principal:
    from radvault.pipeline.clinical import operator_principal

    return operator_principal(ACTOR)


# --------------------------------------------------------------------------- serve


@dataclass(frozen=True)
class ServePlan:
    """What ``serve`` will do: where it listens and with which certificate (if any)."""

    host: str
    port: int
    cert: Path | None
    key: Path | None

    @property
    def origin(self) -> str:
        """Scheme, host and port."""
        scheme = "https" if self.cert else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The API's base URL."""
        return f"{self.origin}/api/v1"

    @property
    def web_url(self) -> str:
        """The web page's sign-in address."""
        return f"{self.origin}/web/login"


def listen_socket(plan: ServePlan) -> socket.socket:
    """A socket bound and listening where ``plan`` says, for the server to take over.

    Bound here, before the vault is unlocked and anything is printed, so that a port
    already in use is one clear error and not a banner followed by a server crash.

    Raises
    ------
    ConfigurationError
        If the address cannot be bound (in use, not this machine's, not permitted).
    """
    family = socket.AF_INET6 if ":" in plan.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((plan.host, plan.port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"cannot listen on {plan.host}:{plan.port}: "
                                 f"{exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plan_serve(settings: Settings, host: str, port: int, tls_cert: Path | None,
               tls_key: Path | None, insecure_http: bool) -> ServePlan:
    """Check the serve options before anything is opened.

    Parameters
    ----------
    settings : Settings
        For the default certificate in ``RADVAULT_HOME/tls``.
    host, port : str, int
        Where to listen.
    tls_cert, tls_key : Path, optional
        The certificate and its key (both or neither).
    insecure_http : bool
        Serve plain HTTP (loopback only).

    Returns
    -------
    ServePlan
        The checked plan.

    Raises
    ------
    ConfigurationError
        On half a certificate, a missing file, plain HTTP on a non-loopback
        address, HTTP and TLS both asked for, or no certificate at all.
    """
    if not 1 <= port <= 65535:
        raise ConfigurationError("--port must be within 1..65535")
    if (tls_cert is None) != (tls_key is None):
        raise ConfigurationError("give both --tls-cert and --tls-key")
    if insecure_http:
        if tls_cert is not None:
            raise ConfigurationError("--insecure-http and --tls-cert exclude each other")
        if not _is_loopback(host):
            raise ConfigurationError(
                f"plain HTTP is allowed on a loopback address only, not on {host!r}: "
                "give --tls-cert and --tls-key")
        return ServePlan(host, port, None, None)
    if tls_cert is None:
        cert, key = tls_paths(settings)
        if not (cert.is_file() and key.is_file()):
            raise ConfigurationError(
                "no TLS certificate: run `radvault tls selfsigned`, give --tls-cert and "
                "--tls-key, or (loopback only) --insecure-http")
        tls_cert, tls_key = cert, key
    assert tls_key is not None
    for path in (tls_cert, tls_key):
        if not path.is_file():
            raise ConfigurationError(f"{path}: no such file")
    return ServePlan(host, port, tls_cert, tls_key)


def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8443,
    tls_cert: Annotated[Path | None, typer.Option(help="TLS certificate (PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key (PEM).")] = None,
    insecure_http: Annotated[
        bool, typer.Option("--insecure-http", help="Plain HTTP, on loopback only.")] = False,
    workers: Annotated[int, typer.Option(help="Background analysis threads.")] = 2,
) -> None:
    """Start the RadVault API (HTTPS; OpenAPI at /api/v1/openapi.json).

    Upload and body limits come from the http table of RADVAULT_HOME/radvault.toml
    (or RADVAULT_HTTP__* variables), e.g. max_upload_bytes, upload_idle_timeout_s,
    upload_min_bytes_per_s.
    """

    @handle_errors
    def run() -> None:
        import uvicorn

        from radvault.api import ApiSettings, create_app
        from radvault.pipeline.clinical import ClinicalService, ServiceSettings
        from radvault.vault.vault import Vault

        settings = settings_from_context(ctx)
        plan = plan_serve(settings, host, port, tls_cert, tls_key, insecure_http)
        api = ApiSettings.from_settings(settings)
        passphrase = read_passphrase(settings)
        listener = listen_socket(plan)  # a port in use is refused before the vault opens
        try:
            vault = Vault.open(settings, passphrase)
            try:
                service = ClinicalService.build(vault, ServiceSettings(workers=workers))
                app = create_app(settings, service=service, api=api)
                server = uvicorn.Server(uvicorn.Config(
                    app, ssl_certfile=str(plan.cert) if plan.cert else None,
                    ssl_keyfile=str(plan.key) if plan.key else None,
                    log_level="warning", access_log=False, ws="none",
                    server_header=False, proxy_headers=False))
                console.print(f"RadVault API on [bold]{plan.url}[/]")
                console.print(f"log in: POST {plan.url}/auth/token (OAuth2 password flow); "
                              f"OpenAPI: {plan.url}/openapi.json", soft_wrap=True)
                console.print(f"web page: [bold]{plan.web_url}[/]")
                if plan.cert is None:
                    console.print("[yellow]plain HTTP on loopback: for this machine only[/]")
                with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: a clean stop
                    server.run(sockets=[listener])
                if not server.started:  # the app's start-up failed; uvicorn logged why
                    raise typer.Exit(1)
            finally:
                vault.close()
        finally:
            listener.close()

    run()


# --------------------------------------------------------------------------- tls


@tls_app.command("selfsigned")
def tls_selfsigned(
    ctx: typer.Context,
    host: Annotated[list[str] | None, typer.Option(
        "--host", help="Host names/addresses (default localhost, 127.0.0.1, ::1).")] = None,
    days: Annotated[int, typer.Option(help="Validity in days.")] = 365,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing certificate.")] = False,
) -> None:
    """Make a self-signed certificate for `radvault serve` in RADVAULT_HOME/tls."""

    @handle_errors
    def run() -> None:
        from radvault.api.tls import make_self_signed

        cert, key = tls_paths(settings_from_context(ctx))
        hosts = tuple(host) if host else ("localhost", "127.0.0.1", "::1")
        make_self_signed(cert, key, hosts=hosts, days=days, overwrite=overwrite)
        console.print(f"certificate {cert}\nprivate key {key} (mode 0600)")

    run()


# --------------------------------------------------------------------------- users


def _new_password(username: str) -> str:
    value = os.environ.get("RADVAULT_USER_PASSWORD")
    if value:
        return value
    if not sys.stdin.isatty():
        raise ConfigurationError(
            "no password: set RADVAULT_USER_PASSWORD or run in a terminal to be asked")
    return str(typer.prompt(f"Password for {username}", hide_input=True,
                            confirmation_prompt=True))


@users_app.command("add")
def users_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The account name.")],
    role: Annotated[str, typer.Option(help=f"One of: {', '.join(ROLES)}.")],
    site: Annotated[str | None, typer.Option(help="Home site (clinical roles).")] = None,
    no_password: Annotated[bool, typer.Option(
        "--no-password", help="OpenID Connect sign-in only.")] = False,
) -> None:
    """Add an account (password from RADVAULT_USER_PASSWORD or a prompt)."""

    @handle_errors
    def run() -> None:
        if role not in ROLES:
            raise ConfigurationError(f"--role must be one of {', '.join(ROLES)}")
        password = None if no_password else _new_password(name)
        with _service(settings_from_context(ctx)) as service:
            user = service.add_user(_operator(), name, role, site=site, password=password)
        console.print(f"user {user.username} ({user.role.value}"
                      f"{', site ' + user.site if user.site else ''}) added")

    run()


def _user_change(ctx: typer.Context, name: str, method: str, done: str) -> None:
    @handle_errors
    def run() -> None:
        with _service(settings_from_context(ctx)) as service:
            getattr(service, method)(_operator(), name)
        console.print(f"user {name} {done}")

    run()


@users_app.command("lock")
def users_lock(ctx: typer.Context,
               name: Annotated[str, typer.Argument(help="The account name.")]) -> None:
    """Lock an account until it is unlocked; its sessions end."""
    _user_change(ctx, name, "lock_user", "locked")


@users_app.command("unlock")
def users_unlock(ctx: typer.Context,
                 name: Annotated[str, typer.Argument(help="The account name.")]) -> None:
    """Lift a lock or a lock-out."""
    _user_change(ctx, name, "unlock_user", "unlocked")


@users_app.command("remove")
def users_remove(ctx: typer.Context,
                 name: Annotated[str, typer.Argument(help="The account name.")]) -> None:
    """Remove an account: grants and sessions go; the name is never reused."""
    _user_change(ctx, name, "remove_user", "removed")


@users_app.command("list")
def users_list(ctx: typer.Context) -> None:
    """List the accounts."""

    @handle_errors
    def run() -> None:
        with _service(settings_from_context(ctx)) as service:
            users = service.users(_operator())
        table = Table(title=f"{len(users)} users")
        for col in ("user", "role", "site", "locked"):
            table.add_column(col)
        for u in users:
            table.add_row(u.username, u.role.value, u.site or "", "yes" if u.locked_by_admin
                          else "")
        console.print(table)

    run()


# --------------------------------------------------------------------------- sites


@sites_app.command("add")
def sites_add(ctx: typer.Context,
              name: Annotated[str, typer.Argument(help="The site's name.")]) -> None:
    """Add a site (a hospital or imaging centre)."""

    @handle_errors
    def run() -> None:
        with _service(settings_from_context(ctx)) as service:
            service.add_site(_operator(), name)
        console.print(f"site {name} added")

    run()


@sites_app.command("list")
def sites_list(ctx: typer.Context) -> None:
    """List the sites."""

    @handle_errors
    def run() -> None:
        with _service(settings_from_context(ctx)) as service:
            for site in service.sites(_operator()):
                console.print(site.name)

    run()


# --------------------------------------------------------------------------- grants


def _target(study: str | None, site: str | None) -> dict[str, str | None]:
    if (study is None) == (site is None):
        raise ConfigurationError("give exactly one of --study and --site")
    return {"study_id": study, "site": site}


@grants_app.command("add")
def grants_add(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(help="The account name.")],
    study: Annotated[str | None, typer.Option(help="A study id.")] = None,
    site: Annotated[str | None, typer.Option(help="A site: every study of it.")] = None,
) -> None:
    """Grant a user one study or every study of one site."""

    @handle_errors
    def run() -> None:
        target = _target(study, site)
        with _service(settings_from_context(ctx)) as service:
            grant = service.grant(_operator(), user, **target)
        console.print(f"granted {grant.object_id} to {user}")

    run()


@grants_app.command("remove")
def grants_remove(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(help="The account name.")],
    study: Annotated[str | None, typer.Option(help="A study id.")] = None,
    site: Annotated[str | None, typer.Option(help="A site.")] = None,
) -> None:
    """Withdraw a grant (effective at once)."""

    @handle_errors
    def run() -> None:
        target = _target(study, site)
        with _service(settings_from_context(ctx)) as service:
            service.revoke_grant(_operator(), user, **target)
        console.print(f"grant withdrawn from {user}")

    run()


@grants_app.command("list")
def grants_list(ctx: typer.Context,
                user: Annotated[str, typer.Argument(help="The account name.")]) -> None:
    """List a user's grants."""

    @handle_errors
    def run() -> None:
        with _service(settings_from_context(ctx)) as service:
            for grant in service.grants(_operator(), user):
                console.print(grant.object_id)

    run()


def register(app: typer.Typer) -> None:
    """Add ``serve``, ``tls``, ``users``, ``sites`` and ``grants`` to the root application."""
    app.command()(serve)
    app.add_typer(tls_app, name="tls")
    app.add_typer(users_app, name="users")
    app.add_typer(sites_app, name="sites")
    app.add_typer(grants_app, name="grants")

"""`radvault demo`: the main job on the embedded default, with the shipped samples.

Creates (or reopens) a demo vault, ingests the sample images (de-identify,
preprocess, seal, catalog, audit), analyses them when a model is installed,
and verifies the whole vault and its audit trail.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from radvault.cli._common import console, handle_errors, progress_bar, settings_from_context

__all__ = ["demo"]

PASSPHRASE_FILE = "DEMO-PASSPHRASE.txt"  # noqa: S105 (a file name, not a secret)
LOGINS_FILE = "DEMO-LOGINS.txt"
DEMO_USER = "demo.radiologist"
DEMO_SITE = "default"


def _demo_passphrase(home: Path) -> str:
    """RADVAULT_PASSPHRASE, else the demo's own saved one, else a new random one (saved 0600)."""
    env = os.environ.get("RADVAULT_PASSPHRASE")
    if env:
        return env
    saved = home / PASSPHRASE_FILE
    if saved.exists():
        return saved.read_text(encoding="utf-8").strip()
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    passphrase = secrets.token_urlsafe(24)
    fd = os.open(saved, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(passphrase + "\n")
    return passphrase


def demo(
    ctx: typer.Context,
    home: Annotated[
        Path, typer.Option(help="Folder of the demo vault (kept apart from RADVAULT_HOME).")
    ] = Path("radvault-demo"),
) -> None:
    """Run the whole flow on the shipped samples: ingest, analyse, verify (embedded default)."""

    @handle_errors
    def run() -> int:
        from radvault.pipeline.ingest import Ingestor
        from radvault.pipeline.maintenance import verify_vault
        from radvault.samples import list_samples
        from radvault.vault.vault import Vault, VaultPaths

        settings = replace(settings_from_context(ctx), home=home.resolve(), catalog_url="")
        passphrase = _demo_passphrase(settings.home)
        if VaultPaths(settings.home).key_file.exists():
            vault = Vault.open(settings, passphrase)
            console.print(f"reopened the demo vault in {settings.home}")
        else:
            vault = Vault.init(settings, passphrase)
            console.print(f"created a demo vault in {settings.home}")
        if not os.environ.get("RADVAULT_PASSPHRASE"):
            console.print(f"[dim]demo passphrase saved in {settings.home / PASSPHRASE_FILE} "
                          "(demo only: a real vault takes RADVAULT_PASSPHRASE or a prompt)[/]")
        with vault:
            samples = list_samples()
            ingestor = Ingestor(vault, actor="demo")
            outcomes = []
            with progress_bar() as bar:
                task = bar.add_task("ingesting samples", total=len(samples))
                for sample in samples:
                    outcome = ingestor.ingest_file(sample.path, modality=sample.modality,
                                                   body_part=sample.body_part)
                    outcomes.append((sample, outcome))
                    bar.advance(task)
            table = Table(title="1. ingest: de-identified, preprocessed, sealed, audited")
            for col in ("sample", "status", "modality", "study (pseudonymous)", "note"):
                table.add_column(col, overflow="fold")
            for sample, o in outcomes:
                style = {"stored": "green", "duplicate": "yellow", "refused": "red"}[o.status]
                table.add_row(sample.path.name, f"[{style}]{o.status}[/]", o.modality or "",
                              o.study_id or "", o.reason or "")
            console.print(table)
            _analyse(vault, outcomes)
            report = verify_vault(vault, actor="demo")
            audit = report.audit
            n_problems = len(report.problems)
            verdict = "[green]clean[/]" if report.ok else f"[red]{n_problems} problem(s)[/]"
            console.print(f"3. verify: {report.objects_checked} sealed objects, "
                          f"{audit.get('entries_checked', 0)} audit entries: {verdict}")
            for problem in report.problems:
                console.print(f"   [red]{problem}[/]")
            login = _demo_login(vault, settings.home)
        exe = "radvault" if shutil.which("radvault") else sys.argv[0]
        env = f"RADVAULT_HOME={settings.home}"
        if not os.environ.get("RADVAULT_PASSPHRASE"):
            env += f" RADVAULT_PASSPHRASE=$(cat {settings.home / PASSPHRASE_FILE})"
        console.print(
            "\n4. log in: start the service on loopback with\n"
            f"   [bold]{env} {exe} serve --insecure-http --port 8000[/]\n"
            "   then open [bold]http://127.0.0.1:8000/[/] (web pages) or POST to "
            "http://127.0.0.1:8000/api/v1/auth/token (API; OpenAPI at /api/v1/openapi.json) as\n"
            f"   user [bold]{login[0]}[/] (radiologist, granted the demo site); password in "
            f"{settings.home / LOGINS_FILE}\n"
            f"Also: `{env} {exe} ls`, `radvault show ID`, `radvault audit tail`, "
            "`radvault --help`.",
            soft_wrap=True,  # never break the commands a user copies
        )
        return 0 if report.ok else 1

    raise typer.Exit(run())


def _demo_login(vault: object, home: Path) -> tuple[str, str]:
    """A radiologist granted the demo site, so the demo ends with someone who can log in."""
    from radvault.errors import AccountError
    from radvault.pipeline.clinical import ClinicalService, ServiceSettings, operator_principal

    saved = home / LOGINS_FILE
    if saved.exists():
        name, password = saved.read_text(encoding="utf-8").split()[:2]
        return name, password
    service = ClinicalService.build(vault, ServiceSettings(start_workers=False))
    operator = operator_principal("demo")
    with contextlib.suppress(AccountError):  # the site may already exist
        service.add_site(operator, DEMO_SITE)
    password = "Rv-" + secrets.token_urlsafe(15) + "-7q"
    service.add_user(operator, DEMO_USER, "radiologist", site=DEMO_SITE, password=password)
    service.grant(operator, DEMO_USER, site=DEMO_SITE)
    fd = os.open(saved, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(f"{DEMO_USER} {password}\n")
    return DEMO_USER, password


def _analyse(vault: object, outcomes: list) -> None:
    """Analyse the stored samples when the analysis engine and a model are available."""
    try:
        from radvault.pipeline.analyse import Analyser
    except ImportError:
        console.print("2. analyse: the analysis engine is not installed; skipped")
        return
    from radvault.errors import ModelError
    from radvault.reports import percent

    try:
        analyser = Analyser.default(vault, actor="demo")
        analyser.registry.get(analyser.registry.default)
    except ModelError as exc:
        console.print(f"2. analyse: skipped ({exc}); see docs/models.md to train one")
        return
    table = Table(title="2. analyse: decrypted in memory only, calibrated probabilities")
    for col in ("sample", "truth", "prediction", "probability", "decision support", "model"):
        table.add_column(col, overflow="fold")
    for sample, o in outcomes:
        if o.instance_id is None:
            continue
        result = analyser.analyse_instance(o.instance_id)
        flag = (f"[yellow]refer to a radiologist[/] ({', '.join(result.reasons)})"
                if result.refer else "-")
        table.add_row(sample.path.name, sample.label or "?", result.predicted_class,
                      percent(result.probability), flag, result.model_id)
    console.print(table)

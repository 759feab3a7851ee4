"""Vault commands: init, ingest, ls, show, export, verify, audit, keys, delete."""

from __future__ import annotations

import dataclasses
import hmac
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from radvault.cli._common import (
    console,
    err_console,
    handle_errors,
    iter_input_files,
    progress_bar,
    settings_from_context,
)
from radvault.config import Settings
from radvault.errors import ConfigurationError, InvalidRequest, ObjectNotFound

__all__ = ["audit_app", "keys_app", "register", "typed_hints"]

audit_app = typer.Typer(help="Inspect and verify the audit trail.", no_args_is_help=True)
keys_app = typer.Typer(help="Manage the vault's keys, and make model signing keys.",
                       no_args_is_help=True)

ACTOR = "cli:" + (os.environ.get("USER") or "operator")

#: The exit status of a verification that found damage: the integrity status of
#: :func:`radvault.errors.exit_status`, as when a read is refused for tampering.
INTEGRITY_EXIT = 5


def read_passphrase(settings: Settings | None = None, *, confirm: bool = False) -> str:
    """The vault passphrase from RADVAULT_PASSPHRASE or, on a terminal, a hidden prompt.

    Given the settings of a vault to open, refuses first when there is no vault
    there, so that nobody types a passphrase for nothing.
    """
    if settings is not None:
        from radvault.vault.vault import Vault

        Vault.ensure_exists(settings)
    value = os.environ.get("RADVAULT_PASSPHRASE")
    if value:
        return value
    if not sys.stdin.isatty():
        raise ConfigurationError(
            "no passphrase: set RADVAULT_PASSPHRASE or run in a terminal to be asked"
        )
    return typer.prompt("Vault passphrase", hide_input=True, confirmation_prompt=confirm)


def typed_hints(modality: str | None, body_part: str | None
                ) -> tuple[str | None, str | None]:
    """``--modality`` and ``--body-part`` as DICOM defined terms (``None``: not given).

    Raises
    ------
    ConfigurationError
        If one is not a defined term (exit status 2); the message names the option,
        not the value.
    """
    from radvault.imaging.vocabulary import body_part_hint, modality_hint

    try:
        return (modality_hint(modality, field="--modality"),
                body_part_hint(body_part, field="--body-part"))
    except InvalidRequest as exc:
        raise ConfigurationError(str(exc)) from None


@contextmanager
def opened_vault(settings: Settings) -> Iterator[object]:
    """Unlock the vault for one command and close it (with an audit checkpoint) after."""
    from radvault.vault.vault import Vault

    vault = Vault.open(settings, read_passphrase(settings))
    try:
        yield vault
    finally:
        vault.close()


@contextmanager
def opened_for_verify(settings: Settings) -> Iterator[object]:
    """Unlock the vault for a verify command, read-only when the audit trail refuses appends.

    A trail cut below its last checkpoint refuses every append, the unlock's
    included, so a normal open fails; verification must still be able to
    report that damage, so the vault is then opened read-only (nothing is
    appended, no checkpoint signed). A healthy vault is opened normally, so
    the verification itself is audited.
    """
    from radvault.errors import AuditChainError
    from radvault.vault.vault import Vault

    passphrase = read_passphrase(settings)
    try:
        vault = Vault.open(settings, passphrase)
    except AuditChainError:
        err_console.print("[yellow]the audit trail refuses appends: verifying read-only[/]")
        vault = Vault.open(settings, passphrase, read_only=True)
    try:
        yield vault
    finally:
        vault.close()


def init(
    ctx: typer.Context,
    tls: Annotated[bool, typer.Option(
        "--tls", help="Also make a self-signed certificate for `radvault serve` (localhost).")
    ] = False,
) -> None:
    """Create a vault in RADVAULT_HOME: key file, catalog, blob folder, audit trail, and
    the site "default" (where `radvault ingest` puts studies without --site)."""

    @handle_errors
    def run() -> None:
        from radvault.pipeline.sites import ensure_default_site
        from radvault.vault.vault import Vault

        settings = settings_from_context(ctx)
        passphrase = read_passphrase(confirm=True)
        with console.status("deriving the vault's key from the passphrase (Argon2id, a few "
                            "seconds on purpose: it slows guessing)"):
            vault = Vault.init(settings, passphrase)
        try:
            ensure_default_site(vault)
        finally:
            vault.close()
        console.print(f"vault created in {settings.home}")
        if tls:
            from radvault.api.tls import make_self_signed

            folder = settings.home / "tls"
            cert, key = make_self_signed(folder / "cert.pem", folder / "key.pem")
            console.print(f"self-signed certificate {cert} (key {key}, mode 0600)")
        console.print("next: `radvault users add NAME --role admin|technologist|radiologist|"
                      "physician|auditor`, `radvault ingest FILES...`, `radvault serve`",
                      soft_wrap=True)  # never break a command a user may copy

    run()


def ingest(
    ctx: typer.Context,
    inputs: Annotated[list[Path], typer.Argument(help="Files or folders (recursive).")],
    modality: Annotated[
        str | None, typer.Option(help="Modality for PNG/JPEG, a DICOM defined term (PS3.3: "
                                      "DX, CR, CT, MR, US, MG, OT...); any other is refused.")
    ] = None,
    body_part: Annotated[str | None, typer.Option(
        help="Body part for PNG/JPEG, a DICOM defined term (PS3.16 Annex L: CHEST, HEAD, "
             "BRAIN, ABDOMEN...); any other is refused.")] = None,
    site: Annotated[str | None, typer.Option(
        help="Site the new studies belong to, one `radvault sites add` made "
             "(default: the site \"default\", which every vault has).")] = None,
    accept_burned_in: Annotated[bool | None, typer.Option(
        "--accept-burned-in/--no-accept-burned-in",
        help="For this run, store (or refuse) images whose pixels may show text, whatever "
             "the vault's setting accept_burned_in says (default: that setting).")] = None,
) -> None:
    """De-identify, preprocess, seal and store images; a bad file is reported and skipped."""

    @handle_errors
    def run() -> int:
        from radvault.imaging.deid import DeidOptions
        from radvault.pipeline.ingest import Ingestor
        from radvault.pipeline.sites import DEFAULT_SITE

        hints = typed_hints(modality, body_part)  # before the passphrase is asked for
        settings = settings_from_context(ctx)
        files = list(iter_input_files(inputs))
        if not files:
            raise ObjectNotFound("no files to ingest: the folders given hold none (hidden "
                                 "files are skipped)")
        with opened_vault(settings) as vault, progress_bar() as bar:
            options = None
            if accept_burned_in is not None:
                options = dataclasses.replace(DeidOptions.from_settings(vault.settings),
                                              accept_burned_in=accept_burned_in)
            ingestor = Ingestor(vault, actor=ACTOR, options=options,
                                site=DEFAULT_SITE if site is None else site)
            task = bar.add_task("ingesting", total=len(files))
            outcomes = ingestor.ingest_paths(
                files, modality=hints[0], body_part=hints[1],
                on_file=lambda _o: bar.advance(task),
            )
        table = Table(title="ingest")
        for col in ("input", "status", "study", "instance", "note"):
            table.add_column(col, overflow="fold")
        for o in outcomes:
            note = f"{o.error}: {o.reason}" if o.error else (o.modality or "")
            style = {"stored": "green", "duplicate": "yellow", "refused": "red"}[o.status]
            table.add_row(o.name, f"[{style}]{o.status}[/]", o.study_id or "",
                          o.instance_id or "", note)
        console.print(table)
        counts = {s: sum(o.status == s for o in outcomes)
                  for s in ("stored", "duplicate", "refused")}
        console.print(", ".join(f"{n} {s}" for s, n in counts.items()))
        return 0 if counts["refused"] == 0 else 1

    raise typer.Exit(run())


def ls(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, help="At most this many studies.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List studies (pseudonymous ids only)."""

    @handle_errors
    def run() -> None:
        with opened_vault(settings_from_context(ctx)) as vault:
            studies = vault.catalog.list_studies(limit=limit)
        if as_json:
            typer.echo(json.dumps([{
                "study_id": s.study_id, "patient": s.patient_pseudonym, "site": s.site,
                "modality": s.modality, "body_part": s.body_part, "instances": s.n_instances,
                "status": s.status, "created": s.created_at.isoformat(),
                "shredded": s.shredded_at is not None} for s in studies], indent=2))
            return
        rows = [(s.study_id, s.patient_pseudonym, s.site, s.modality or "-",
                 s.body_part or "-", str(s.n_instances),
                 "shredded" if s.shredded_at else s.status) for s in studies]
        # ids are copied into other commands: never broken over lines. A terminal too
        # narrow for the table gets one line per study instead (soft-wrapped by it).
        widest = max((len(r[0]) for r in rows), default=5)
        if console.width < widest + 70:
            console.print(f"{len(studies)} studies (study, patient, site, modality, "
                          "body part, images, status)", soft_wrap=True)
            for row in rows:
                console.print("  ".join(row), soft_wrap=True, highlight=False)
            return
        table = Table(title=f"{len(studies)} studies")
        table.add_column("study", no_wrap=True, min_width=widest)
        for col in ("patient", "site", "modality", "body part", "images", "status"):
            table.add_column(col, overflow="fold")
        for row in rows:
            table.add_row(*row)
        console.print(table)

    run()


def show(
    ctx: typer.Context,
    study_or_instance: Annotated[str, typer.Argument(help="A study or instance id.")],
) -> None:
    """Show a study (or the study of an instance): its images, objects and results."""

    @handle_errors
    def run() -> None:
        with opened_vault(settings_from_context(ctx)) as vault:
            catalog = vault.catalog
            try:
                study = catalog.get_study(study_or_instance)
            except ObjectNotFound:
                study = catalog.get_study(catalog.get_instance(study_or_instance).study_id)
            console.print(f"[bold]study[/] {study.study_id}  patient {study.patient_pseudonym}"
                          f"  site {study.site}  {study.modality or ''} {study.body_part or ''}"
                          f"  status {'shredded' if study.shredded_at else study.status}")
            for inst in catalog.instances_of_study(study.study_id):
                console.print(f"  [bold]instance[/] {inst.instance_id}  {inst.source_format}"
                              f"  {inst.rows}x{inst.cols}x{inst.frames}"
                              f"  pixel digest {inst.pixel_sha256[:16]}…")
                for obj in catalog.objects_of_instance(inst.instance_id):
                    console.print(f"    object {obj.object_id}  {obj.kind}  {obj.plain_size} B"
                                  f" -> {obj.sealed_size} B sealed  kek {obj.kek_id}"
                                  f"{'  SHREDDED' if obj.shredded else ''}")
                for res in vault.results_of_instance(inst.instance_id, actor=ACTOR):
                    summary = dict(res.payload.get("summary", res.payload))
                    if res.payload.get("reasons"):  # why it is referred, as the API says
                        summary["reasons"] = res.payload["reasons"]
                    console.print(f"    result {res.result_id}  model {res.model_id}  "
                                  f"{json.dumps(summary)}")
                    check = res.payload.get("image_check")
                    if isinstance(check, dict):  # what the image check took it for
                        from radvault.reports import image_check_in_words, relabel_note

                        recorded = res.payload.get("recorded_as")
                        then = recorded or [study.modality, study.body_part]
                        line = image_check_in_words(check, modality=then[0],
                                                    body_part=then[1])
                        if note := relabel_note(recorded, study.modality, study.body_part):
                            line += f" ({note})"
                        console.print("      image check: " + line)
            vault.audit.append(ACTOR, "show", object_ids=[study.study_id])

    run()


def export(
    ctx: typer.Context,
    study_id: Annotated[str, typer.Argument(help="The study to export.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the decrypted files.")],
) -> None:
    """Decrypt a study's de-identified files into OUT (audited; back-verified first)."""

    @handle_errors
    def run() -> None:
        from radvault.pipeline.retrieve import export_study

        with opened_vault(settings_from_context(ctx)) as vault:
            files = export_study(vault, study_id, out, actor=ACTOR)
        console.print(f"exported {len(files)} file(s) to {out}")

    run()


def _print_report(report: object, as_json: bool, render: Callable[[], None]) -> None:
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        render()


def verify(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Check every object, blob, signature and the audit chain; exit 5 (integrity) on any
    problem."""

    @handle_errors
    def run() -> int:
        from radvault.pipeline.maintenance import verify_vault

        with opened_for_verify(settings_from_context(ctx)) as vault:
            report = verify_vault(vault, actor=ACTOR)

        def render() -> None:
            for p in report.problems:
                err_console.print(f"[red]PROBLEM[/] {p}")
            for n in report.notes:
                console.print(f"[dim]note[/] {n}")
            n_problems = len(report.problems)
            verdict = "[green]clean[/]" if report.ok else f"[red]{n_problems} problem(s)[/]"
            console.print(f"verify: {report.objects_checked} objects "
                          f"({report.objects_shredded} shredded), {report.blobs_seen} blobs, "
                          f"{report.audit.get('entries_checked', 0)} audit entries: {verdict}")

        _print_report(report.as_dict(), as_json, render)
        return 0 if report.ok else INTEGRITY_EXIT

    raise typer.Exit(run())


@audit_app.command("verify")
def audit_verify(
    ctx: typer.Context,
    anchors: Annotated[Path | None, typer.Option(
        help="Checkpoints exported earlier by `radvault audit anchors` and kept outside "
             "the vault: proves the chain up to the newest of them.")] = None,
    public_key: Annotated[Path | None, typer.Option(
        help="An outside auditor's check: the vault's vault.pub, from a trusted copy. "
             "No passphrase is asked and nothing is appended.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Prove the audit trail was not altered, inserted into, truncated or reordered; exit
    5 (integrity) if it was."""

    @handle_errors
    def run() -> int:
        document = _read_anchors(anchors) if anchors is not None else None
        if public_key is not None:
            from radvault.vault.vault import verify_audit_with_public_key

            try:
                key_hex = public_key.read_text(encoding="ascii")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigurationError(f"cannot read {public_key}: {exc}") from None
            report = verify_audit_with_public_key(settings_from_context(ctx), key_hex,
                                                  anchors=document)
        else:
            with opened_for_verify(settings_from_context(ctx)) as vault:
                report = vault.audit.verify(anchors=document)
                if not vault.read_only:
                    vault.audit.append(ACTOR, "audit_verify",
                                       "ok" if report.ok else "error")

        def render() -> None:
            for p in report.problems:
                err_console.print(f"[red]PROBLEM[/] {p}")
            for n in report.notes:
                console.print(f"[dim]note[/] {n}")
            console.print(f"audit: {report.entries_checked} entries, "
                          f"{report.checkpoints_checked} checkpoints: "
                          + ("[green]intact[/]" if report.ok else "[red]TAMPERED[/]"))

        _print_report(report.to_dict(), as_json, render)
        return 0 if report.ok else INTEGRITY_EXIT

    raise typer.Exit(run())


def _read_anchors(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read anchors {path}: {exc}") from None


@audit_app.command("anchors")
def audit_anchors(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Where to write the JSON document.")],
    since: Annotated[int, typer.Option(
        min=0, help="Only checkpoints after this sequence number.")] = 0,
) -> None:
    """Export the signed audit checkpoints, to keep where the vault's host cannot reach
    (print, WORM storage, an RFC 3161 timestamp; docs/audit.md)."""

    @handle_errors
    def run() -> None:
        with opened_vault(settings_from_context(ctx)) as vault:
            document = vault.audit.export_checkpoints(since_seq=since)
            try:
                out.write_text(document + "\n", encoding="utf-8")
            except OSError as exc:
                raise ConfigurationError(f"cannot write {out}: {exc.strerror}") from None
            vault.audit.append(ACTOR, "audit_export", "ok", details={"since": since})
        count = len(json.loads(document)["checkpoints"])
        console.print(f"{count} checkpoint(s) written to {out}; keep a copy outside the vault")

    run()


@audit_app.command("tail")
def audit_tail(
    ctx: typer.Context,
    n: Annotated[int, typer.Option("-n", min=1, help="How many entries.")] = 20,
) -> None:
    """Show the most recent audit entries."""

    @handle_errors
    def run() -> None:
        with opened_vault(settings_from_context(ctx)) as vault:
            entries = vault.audit.tail(n)
        table = Table(title="audit trail (oldest first)")
        for col in ("seq", "time", "actor", "action", "outcome", "objects", "details"):
            table.add_column(col, overflow="fold")
        for e in entries:
            table.add_row(str(e.seq), str(e.ts), e.actor, str(e.action), str(e.outcome),
                          ", ".join(e.object_ids[:3]) + (" …" if len(e.object_ids) > 3 else ""),
                          escape(_short_details(e.details)))
        console.print(table)

    run()


def _short_details(details: object, limit: int = 80) -> str:
    """An entry's details on one line, ``key=value``, cut at ``limit`` characters (the
    trail holds no PHI by design: error classes, counts, keyed digests)."""
    if not isinstance(details, dict) or not details:
        return ""
    text = " ".join(f"{k}={v}" for k, v in details.items())
    return text if len(text) <= limit else text[:limit - 1] + "…"


@keys_app.command("rotate")
def keys_rotate(
    ctx: typer.Context,
    retire_old: Annotated[
        bool, typer.Option(help="Destroy older key-encryption keys once all data keys moved.")
    ] = False,
) -> None:
    """New key-encryption key; rewrap every data key (blobs untouched; resumable)."""

    @handle_errors
    def run() -> None:
        from radvault.pipeline.maintenance import rotate_keys

        with opened_vault(settings_from_context(ctx)) as vault:
            report = rotate_keys(vault, actor=ACTOR, retire_old=retire_old)
        console.print(f"new key-encryption key {report.new_kek_id}; "
                      f"{report.rewrapped} data key(s) rewrapped; "
                      f"{len(report.retired)} old key(s) retired")

    run()


@keys_app.command("passphrase")
def keys_passphrase(ctx: typer.Context) -> None:
    """Change the vault passphrase: the key file is re-encrypted (audited); data keys,
    blobs and the catalog are untouched. The new one comes from RADVAULT_NEW_PASSPHRASE
    or a prompt."""

    @handle_errors
    def run() -> None:
        from radvault.vault.vault import Vault

        settings = settings_from_context(ctx)
        Vault.ensure_exists(settings)  # before anyone types a new passphrase
        new = os.environ.get("RADVAULT_NEW_PASSPHRASE")
        if not new:
            if not sys.stdin.isatty():
                raise ConfigurationError("no new passphrase: set RADVAULT_NEW_PASSPHRASE or "
                                         "run in a terminal to be asked")
            new = typer.prompt("New vault passphrase", hide_input=True,
                               confirmation_prompt=True)
        current = read_passphrase(settings)
        if hmac.compare_digest(new.encode(), current.encode()):
            raise ConfigurationError("the new passphrase is the current one: nothing changed")
        vault = Vault.open(settings, current)
        try:
            vault.change_passphrase(new, actor=ACTOR)
        finally:
            vault.close()
        console.print("passphrase changed: unlock with the new one from now on "
                      "(update RADVAULT_PASSPHRASE wherever services read it)")

    run()


@keys_app.command("model-key")
def keys_model_key(
    out: Annotated[Path, typer.Option(help="Where the private key goes (PKCS#8 PEM, 0600); "
                                           "keep it outside model folders and repositories.")],
    keys: Annotated[Path, typer.Option(help="Folder of trusted public keys: the models' "
                                            "../keys, e.g. my-models/keys.")],
) -> None:
    """Make a model signing key for `radvault train/ensemble/recalibrate --signing-key`."""

    @handle_errors
    def run() -> None:
        from radvault.analysis.export import new_signing_key
        from radvault.errors import ModelError

        try:
            key_id = new_signing_key(out, keys)
        except ModelError as exc:  # where the key may go is the user's choice: a usage error
            raise ConfigurationError(str(exc)) from None
        console.print(f"model signing key {key_id}: private half {out}, "
                      f"public half {keys / (key_id + '.pub')}")

    run()


def delete(
    ctx: typer.Context,
    study_id: Annotated[str, typer.Argument(help="The study to delete.")],
    shred: Annotated[
        bool, typer.Option("--shred", help="Destroy the data keys (required: irreversible).")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Crypto-shred a study: its blobs can never be opened again (audited)."""

    @handle_errors
    def run() -> None:
        from radvault.pipeline.maintenance import shred_study

        if not shred:
            raise ConfigurationError("deletion is crypto-shredding: pass --shred to confirm")
        if not yes and sys.stdin.isatty():
            typer.confirm(f"Irreversibly shred study {study_id}?", abort=True)
        with opened_vault(settings_from_context(ctx)) as vault:
            count = shred_study(vault, study_id, actor=ACTOR)
        console.print(f"study {study_id}: {count} data key(s) destroyed; blobs deleted")

    run()


def relabel(
    ctx: typer.Context,
    study_id: Annotated[str, typer.Argument(help="The study to correct.")],
    modality: Annotated[str, typer.Option(
        "--modality", help="What the study is: a DICOM defined term (DX, CT, MR, US, ...).")],
    body_part: Annotated[str | None, typer.Option(
        "--body-part", help="A DICOM defined term (CHEST, BRAIN, ...); none: unknown.")] = None,
) -> None:
    """Correct the modality and body part a study was recorded as (audited).

    For an image uploaded as something it is not, which the image check may have said
    (image_unlike_declared). Its objects' catalog rows are signed again; earlier
    results stay: run `radvault analyze STUDY_ID` for the answer of the right model.
    """

    @handle_errors
    def run() -> None:
        from radvault.pipeline.maintenance import relabel_study

        with opened_vault(settings_from_context(ctx)) as vault:  # it judges the terms
            before = relabel_study(vault, study_id, modality=modality, body_part=body_part,
                                   actor=ACTOR)  # (a refusal is audited there)
            after = vault.catalog.get_study(study_id)
        was = " ".join(v for v in before if v) or "nothing"
        now = " ".join(v for v in (after.modality, after.body_part) if v)
        console.print(f"study {study_id}: recorded as {now} (was {was}); analyse it again "
                      f"for the answer of the right model: radvault analyze {study_id}")

    run()


def register(app: typer.Typer) -> None:
    """Add the vault commands to the root application."""
    for command in (init, ingest, ls, show, export, verify, delete, relabel):
        app.command()(command)
    app.add_typer(audit_app, name="audit")
    app.add_typer(keys_app, name="keys")

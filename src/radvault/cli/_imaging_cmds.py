"""`radvault deid` and `radvault preprocess`: files to a folder, under the vault's settings."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from radvault.cli._common import (
    console,
    err_console,
    handle_errors,
    iter_input_files,
    progress_bar,
    settings_from_context,
)
from radvault.errors import ConfigurationError

if TYPE_CHECKING:
    from radvault.pipeline.batch_files import BatchSummary

__all__ = ["deid", "preprocess"]


def _secret(secret_file: Path | None) -> bytes:
    if secret_file is not None:
        try:
            data = secret_file.read_bytes().strip()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read secret file {secret_file}: {exc.strerror}"
            ) from None
    else:
        data = os.environ.get("RADVAULT_DEID_SECRET", "").encode()
    if not data:
        raise ConfigurationError(
            "no pseudonymisation secret: set RADVAULT_DEID_SECRET (at least 32 characters) "
            "or pass --secret-file; the same secret always gives the same pseudonyms and UIDs"
        )
    if len(data) < 32:
        raise ConfigurationError("the pseudonymisation secret must be at least 32 bytes long")
    return data


def _print_summary(summary: BatchSummary, out: Path, what: str) -> None:
    """Report skipped inputs by ordinal and path on the operator's console.

    summary.json, beside the outputs, names inputs by ordinal only (paths may name
    patients); the ``#n`` printed here is how the operator matches the two.
    """
    if summary.failed:
        err_console.print("skipped inputs (#n: the input's number in summary.json):")
        for failure in summary.failed:
            err_console.print(f"  #{failure.ordinal} {escape(failure.path)}: "
                              f"{failure.error}: {escape(failure.reason)}",
                              highlight=False, soft_wrap=True)
    if summary.duplicates:
        err_console.print("duplicate instances, written once (same SOP Instance UID as an "
                          "earlier input):")
        for duplicate in summary.duplicates:
            err_console.print(f"  #{duplicate.ordinal} {escape(duplicate.path)}",
                              highlight=False, soft_wrap=True)
    console.print(
        f"{what} {len(summary.written)} file(s) into {out}; "
        f"{len(summary.failed)} skipped"
        + (f", {len(summary.duplicates)} duplicate instance(s) written once"
           if summary.duplicates else "")
        + f"; summary in {out / 'summary.json'}"
    )


def deid(
    ctx: typer.Context,
    inputs: Annotated[list[Path], typer.Argument(help="DICOM files or folders (recursive).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for de-identified files.")],
    retain_dates: Annotated[
        bool | None,
        typer.Option("--retain-dates/--no-retain-dates",
                     help="Retain Longitudinal Temporal Information with Modified Dates. "
                          "Default: the vault's setting retain_dates_shifted (off if unset)."),
    ] = None,
    retain_patient_characteristics: Annotated[
        bool | None,
        typer.Option(help="Retain Patient Characteristics (sex, age, size, weight). "
                          "Default: the vault's setting (off if unset)."),
    ] = None,
    retain_device_identity: Annotated[
        bool | None,
        typer.Option(help="Retain Device Identity (station, serial numbers). "
                          "Default: the vault's setting (off if unset)."),
    ] = None,
    clean_descriptors: Annotated[
        bool | None,
        typer.Option(help="Clean Descriptors option (off removes them instead). "
                          "Default: the vault's setting (on if unset)."),
    ] = None,
    keep_private_tags: Annotated[
        bool | None,
        typer.Option(help="Keep private tags. Default: the vault's setting (off if unset)."),
    ] = None,
    accept_burned_in: Annotated[
        bool | None,
        typer.Option(help="Accept images that may carry burned-in text (flagged). "
                          "Default: the vault's setting (off if unset)."),
    ] = None,
    secret_file: Annotated[
        Path | None,
        typer.Option(help="File holding the pseudonymisation secret (else RADVAULT_DEID_SECRET)."),
    ] = None,
) -> None:
    """De-identify DICOM files (PS3.15 Basic Profile) into OUT as <new SOP Instance UID>.dcm.

    Each option not given on the command line takes the vault's setting of the same
    name (RADVAULT_* variables, RADVAULT_HOME/radvault.toml), as ingest does.
    """
    from dataclasses import replace

    from radvault.imaging.deid import Deidentifier, DeidOptions
    from radvault.pipeline.batch_files import deidentify_to_folder

    @handle_errors
    def run() -> int:
        settings = settings_from_context(ctx)
        flags = {
            "retain_dates_shifted": retain_dates,
            "retain_patient_characteristics": retain_patient_characteristics,
            "retain_device_identity": retain_device_identity,
            "clean_descriptors": clean_descriptors,
            "keep_private_tags": keep_private_tags,
            "accept_burned_in": accept_burned_in,
        }
        options = replace(DeidOptions.from_settings(settings),
                          **{name: value for name, value in flags.items() if value is not None})
        deidentifier = Deidentifier(_secret(secret_file), options)
        files = list(iter_input_files(inputs))
        with progress_bar() as bar:
            task = bar.add_task("de-identifying", total=len(files))
            summary = deidentify_to_folder(
                files, out, deidentifier, limits=settings.limits,
                on_file=lambda _p, _ok: bar.advance(task),
            )
        (out / "summary.json").write_text(json.dumps(summary.as_dict(), indent=2))
        _print_summary(summary, out, "de-identified")
        return 0 if summary.ok else 1

    raise typer.Exit(run())


def preprocess(
    ctx: typer.Context,
    inputs: Annotated[list[Path], typer.Argument(help="DICOM/PNG/JPEG files or folders.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the PNGs.")],
    size: Annotated[
        int | None,
        typer.Option(help="Square output size in pixels. Default: the vault's setting "
                          "preprocess.size (224 if unset)."),
    ] = None,
    window: Annotated[
        bool | None,
        typer.Option(help="Apply the DICOM VOI window first. "
                          "Default: the vault's setting preprocess.window (on if unset)."),
    ] = None,
    normalize: Annotated[
        bool | None,
        typer.Option(help="Min-max normalisation. "
                          "Default: the vault's setting preprocess.normalize (on if unset)."),
    ] = None,
    enhance: Annotated[
        bool | None,
        typer.Option(help="CLAHE contrast enhancement. "
                          "Default: the vault's setting preprocess.enhance (on if unset)."),
    ] = None,
    denoise: Annotated[
        bool | None,
        typer.Option(help="Bilateral, edge-preserving denoise. "
                          "Default: the vault's setting preprocess.denoise (on if unset)."),
    ] = None,
) -> None:
    """Preprocess images as the model sees them and write PNGs for inspection.

    Each step and the size not given on the command line take the vault's preprocess
    settings (RADVAULT_PREPROCESS__* variables, RADVAULT_HOME/radvault.toml).
    """
    from dataclasses import replace

    from radvault.pipeline.batch_files import preprocess_to_folder

    @handle_errors
    def run() -> int:
        settings = settings_from_context(ctx)
        flags = {"size": size, "window": window, "normalize": normalize,
                 "enhance": enhance, "denoise": denoise}
        pre = replace(settings.preprocess,
                      **{name: value for name, value in flags.items() if value is not None})
        files = list(iter_input_files(inputs))
        with progress_bar() as bar:
            task = bar.add_task("preprocessing", total=len(files))
            summary = preprocess_to_folder(
                files, out, pre, limits=settings.limits,
                on_file=lambda _p, _ok: bar.advance(task),
            )
        (out / "summary.json").write_text(json.dumps(summary.as_dict(), indent=2))
        _print_summary(summary, out, "preprocessed")
        return 0 if summary.ok else 1

    raise typer.Exit(run())

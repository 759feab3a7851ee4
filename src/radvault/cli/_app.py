"""Wires the commands into one Typer application."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from radvault import __version__
from radvault.cli import _analysis_cmds, _demo, _dicom_cmds, _imaging_cmds, _serve_cmds, _vault_cmds
from radvault.cli._common import configure_logging, handle_errors
from radvault.config import load_settings

__all__ = ["app", "main"]

app = typer.Typer(
    name="radvault",
    help="RadVault: de-identify, encrypt, verify, audit and analyse medical images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"radvault {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    home: Annotated[
        Path | None,
        typer.Option(envvar="RADVAULT_HOME", help="Vault folder (default ~/.radvault)."),
    ] = None,
    verbose: Annotated[int, typer.Option(
        "--verbose", "-v", count=True,
        help="More logging: -v info, -vv RadVault's debug, -vvv every library's debug.")] = 0,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Settings come from RADVAULT_* variables and RADVAULT_HOME/radvault.toml."""
    configure_logging(verbose)
    ctx.obj = handle_errors(load_settings)(home=home)


app.command()(_imaging_cmds.deid)
app.command()(_imaging_cmds.preprocess)
_vault_cmds.register(app)
_serve_cmds.register(app)
_dicom_cmds.register(app)
_analysis_cmds.register(app)
app.command()(_demo.demo)


def main(args: Sequence[str] | None = None) -> int:
    """Run the CLI with ``args`` and return its exit status (for tests and embedding)."""
    try:
        result = app(args=list(args) if args is not None else None, standalone_mode=False)
        # without standalone mode, click returns the exit code of a typer.Exit
        return result if isinstance(result, int) else 0
    except typer.Exit as exc:
        return exc.exit_code
    except SystemExit as exc:  # click's usage errors
        return int(exc.code or 0)
    except Exception as exc:  # click's ClickException and friends
        # Typer 0.29 raises its own vendored copy of click's exceptions (usage errors,
        # bad option values), which are not click.ClickException: match on the shape.
        show, code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            return code
        raise

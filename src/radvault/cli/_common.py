"""Shared helpers of the command-line face: console, error mapping, input walking."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from functools import wraps
from pathlib import Path
from typing import ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from radvault.config import Settings, load_settings
from radvault.errors import RadVaultError, exit_status, operator_message

__all__ = [
    "console",
    "err_console",
    "handle_errors",
    "iter_input_files",
    "progress_bar",
    "settings_from_context",
]

console = Console()
err_console = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn RadVault errors into one clear line on stderr and an exit status, never a traceback.

    An image error is printed as ``path: reason``: its message leaves the file out
    (it may name a patient), but here it goes to the operator who typed that path.
    """

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except RadVaultError as exc:
            code = exit_status(exc)
            err_console.print(f"[bold red]error:[/] {escape(operator_message(exc))}",
                              markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def settings_from_context(ctx: typer.Context) -> Settings:
    """Return the settings built by the root callback (or build them now)."""
    obj = ctx.find_root().obj
    if isinstance(obj, Settings):
        return obj
    return load_settings()


def iter_input_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Yield files named directly and, recursively and sorted, the files inside folders.

    Hidden files and folders (names starting with a dot) inside folders are skipped.
    """
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith("."):
                        yield Path(root) / name
        else:
            yield path


def progress_bar(*, transient: bool = False) -> Progress:
    """A progress bar on stderr that stays quiet when stderr is not a terminal."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=transient,
        disable=not sys.stderr.isatty(),
    )


def _own_debug_only(record: logging.LogRecord) -> bool:
    """Pass RadVault's records, and other libraries' from INFO up."""
    return record.levelno >= logging.INFO or record.name.partition(".")[0] == "radvault"


def configure_logging(verbose: int) -> None:
    """Configure the root logger for the CLI (library code only creates loggers).

    ``-v``: INFO; ``-vv``: RadVault's own DEBUG messages (the libraries' stay at INFO,
    or their plugin chatter drowns them); ``-vvv``: every library's DEBUG too.
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if verbose == 2:
        # Some libraries set their own loggers to DEBUG (pylibjpeg lists its plugins), so
        # a level on the root logger cannot hold them back: filter at the handlers.
        for handler in logging.getLogger().handlers:
            handler.addFilter(_own_debug_only)
    # pydicom's own messages can quote element values (possible PHI), and its errors (a
    # decoder's traceback) repeat what the imaging layer reports as one line: keep them out.
    # pydicom sets its logger's level when first imported, so import it before setting ours.
    import pydicom.config  # noqa: F401

    logging.getLogger("pydicom").setLevel(logging.CRITICAL)

"""Small helpers shared by the benchmark scripts: timing summaries, a table, a JSON file.

Every benchmark writes ``benchmarks/results/<name>.json`` with the machine it ran
on, so a later run can be compared with a baseline only when the machines match.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = [
    "DATA_DIR",
    "RESULTS_DIR",
    "add_site",
    "machine_info",
    "print_table",
    "summarize",
    "write_results",
]

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
DATA_DIR = REPO / ".." / "shared" / "data"

_PACKAGES = ("numpy", "opencv-python-headless", "pydicom", "pillow", "pylibjpeg", "torch")


def machine_info() -> dict[str, Any]:
    """Describe the machine and library versions a result was measured with.

    Returns
    -------
    dict
        CPU counts (all, and usable by this process), Python, platform, the
        versions of the libraries that dominate imaging speed, and the time.
    """
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": versions,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def add_site(vault: Any, name: str) -> None:
    """Register a site in a fresh vault (studies go only into sites that exist), as
    ``radvault sites add`` would, without building the clinical service."""
    from radvault.access.store import AccessStore
    from radvault.access.users import ensure_site

    ensure_site(AccessStore.create(vault.catalog.write_engine()), name, actor="benchmark",
                audit=vault.audit.append)


def summarize(samples: Iterable[float]) -> dict[str, float | int | None]:
    """Count, total, median, min and max of a series of timings (seconds).

    Returns
    -------
    dict
        ``n``, ``total``, ``median``, ``min``, ``max``; statistics are ``None``
        when there are no samples.
    """
    values = list(samples)
    if not values:
        return {"n": 0, "total": 0.0, "median": None, "min": None, "max": None}
    return {
        "n": len(values),
        "total": sum(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]],
                console: Console | None = None) -> None:
    """Print rows as a Rich table; numbers are right-aligned, ``None`` shows as ``-``."""
    table = Table(title=title)
    rows = [list(r) for r in rows]
    for i, column in enumerate(columns):
        numeric = bool(rows) and all(isinstance(r[i], int | float | None) for r in rows)
        table.add_column(column, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*("-" if v is None else f"{v:,.2f}" if isinstance(v, float) else str(v)
                        for v in row))
    if console is None:  # a pipe or a log file: wide enough for every column
        console = Console(width=None if sys.stdout.isatty() else 120)
    console.print(table)


def write_results(name: str, payload: Mapping[str, Any]) -> Path:
    """Write ``benchmarks/results/<name>.json`` with machine info added.

    Returns
    -------
    Path
        The file written.
    """
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    document = {"benchmark": name, "machine": machine_info(), **payload}
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path

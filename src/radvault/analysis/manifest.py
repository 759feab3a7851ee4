"""Dataset manifests: which file is which image, label, split and group.

A manifest is a CSV with at least the columns ``path``, ``sha256``, ``split``
and ``label`` (the radbench layout adds ``dataset``, ``modality``,
``body_part``, ``group``, ``source``, ``license``). Paths are relative to the
manifest's folder. Any split names work (``train``, ``val``, ``test``,
``holdout``...).

Loading checks two things before anything trains on it:

* every file's sha-256 equals the manifest's (a changed or swapped file is refused);
* no evaluation row shares a sha-256 or a group with a training row (leakage).

Error messages give counts and split names only, never group ids or paths of
other rows: group ids may be derived from patient identifiers.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

from radvault.errors import DatasetError

__all__ = [
    "REQUIRED_COLUMNS",
    "Manifest",
    "ManifestRow",
    "check_leakage",
    "file_sha256",
    "load_manifest",
]

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("path", "sha256", "split", "label")
_KNOWN = ("path", "sha256", "split", "dataset", "modality", "body_part", "label", "group")


def file_sha256(path: str | PathLike[str]) -> str:
    """Hex sha-256 of a file's bytes.

    Raises
    ------
    OSError
        If the file cannot be read.
    """
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


@dataclass(frozen=True)
class ManifestRow:
    """One image of a manifest.

    ``columns`` keeps every CSV column as text (tasks select on any of them);
    ``file`` is the resolved path of the image.
    """

    file: Path
    sha256: str
    split: str
    label: str
    modality: str = "OT"
    body_part: str = ""
    group: str = ""
    columns: Mapping[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        digest = self.sha256.strip().lower()
        if len(digest) != 64 or any(ch not in "0123456789abcdef" for ch in digest):
            raise DatasetError(f"{self.file}: sha256 column is not a hex sha-256")
        object.__setattr__(self, "sha256", digest)
        object.__setattr__(self, "modality", (self.modality or "OT").upper())
        object.__setattr__(self, "body_part", (self.body_part or "").upper())
        if not self.split:
            raise DatasetError(f"{self.file}: empty split")
        cols = dict(self.columns)
        cols.setdefault("label", self.label)
        cols.setdefault("split", self.split)
        object.__setattr__(self, "columns", cols)

    @property
    def group_key(self) -> str:
        """The unit of splitting: the ``group`` column, or the image's own sha-256."""
        return self.group or f"sha256:{self.sha256}"


@dataclass(frozen=True)
class Manifest:
    """An immutable, checked list of manifest rows.

    Parameters
    ----------
    rows : sequence of ManifestRow
    sha256 : str
        Digest of the manifest file's bytes (or of the canonical CSV for a
        manifest built in memory); recorded in model cards.
    source : str
        Where it came from (a path), for messages.
    """

    rows: tuple[ManifestRow, ...]
    sha256: str
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", tuple(self.rows))
        if not self.rows:
            raise DatasetError(f"{self.source or 'manifest'}: no rows")

    @property
    def splits(self) -> tuple[str, ...]:
        """Split names in order of first appearance."""
        return tuple(dict.fromkeys(r.split for r in self.rows))

    def split(self, name: str) -> tuple[ManifestRow, ...]:
        """Rows of one split.

        Raises
        ------
        DatasetError
            If the manifest has no such split.
        """
        rows = tuple(r for r in self.rows if r.split == name)
        if not rows:
            raise DatasetError(
                f"{self.source or 'manifest'}: no split {name!r} "
                f"(has {', '.join(self.splits)})"
            )
        return rows

    @classmethod
    def from_rows(cls, rows: Iterable[ManifestRow], *, source: str = "") -> Manifest:
        """Build a manifest in memory; its digest is that of its canonical CSV."""
        rows = tuple(rows)
        return cls(rows=rows, sha256=hashlib.sha256(to_csv_bytes(rows)).hexdigest(),
                   source=source)

    def verify_files(self) -> None:
        """Re-hash every file and compare with the manifest.

        Raises
        ------
        DatasetError
            If a file is missing or its sha-256 differs.
        """
        missing = 0
        bad: list[str] = []
        for row in self.rows:
            try:
                digest = file_sha256(row.file)
            except OSError:
                missing += 1
                continue
            if digest != row.sha256:
                bad.append(str(row.file))
        if missing or bad:
            detail = f"; first mismatch: {bad[0]}" if bad else ""
            raise DatasetError(
                f"{self.source or 'manifest'}: {missing} file(s) missing and {len(bad)} "
                f"file(s) whose sha-256 differs from the manifest{detail}"
            )


def to_csv_bytes(rows: Sequence[ManifestRow]) -> bytes:
    """Canonical CSV of rows (known columns first, then the others sorted)."""
    extra = sorted({k for r in rows for k in r.columns} - set(_KNOWN))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*_KNOWN, *extra])
    for r in rows:
        writer.writerow([str(r.file), r.sha256, r.split, r.columns.get("dataset", ""),
                         r.modality, r.body_part, r.label, r.group,
                         *(r.columns.get(k, "") for k in extra)])
    return out.getvalue().encode("utf-8")


def check_leakage(manifest: Manifest, *, train_split: str = "train") -> None:
    """Refuse a manifest whose other splits share an image or a group with training.

    Every split other than ``train_split`` is checked against it, on both the
    sha-256 of the file and the ``group`` column (patient, series or duplicate
    cluster).

    Raises
    ------
    DatasetError
        If any row of another split shares a sha-256 or a group with a training row.
    """
    train = [r for r in manifest.rows if r.split == train_split]
    if not train:
        return
    train_sha = {r.sha256 for r in train}
    train_groups = {r.group for r in train if r.group}
    problems: list[str] = []
    for split in manifest.splits:
        if split == train_split:
            continue
        rows = [r for r in manifest.rows if r.split == split]
        n_sha = sum(r.sha256 in train_sha for r in rows)
        n_group = sum(bool(r.group) and r.group in train_groups for r in rows)
        if n_sha:
            problems.append(f"{n_sha} row(s) of split {split!r} share a sha-256 with "
                            f"split {train_split!r}")
        if n_group:
            problems.append(f"{n_group} row(s) of split {split!r} share a group with "
                            f"split {train_split!r}")
    if problems:
        raise DatasetError(f"{manifest.source or 'manifest'}: leakage: {'; '.join(problems)}")


def load_manifest(
    path: str | PathLike[str],
    *,
    verify_sha256: bool = True,
    check_leak: bool = True,
    train_split: str = "train",
) -> Manifest:
    """Read a manifest CSV, check its files and refuse train/test leakage.

    Parameters
    ----------
    path : str or PathLike
        The CSV; relative ``path`` values resolve against its folder.
    verify_sha256 : bool
        Re-hash every file (default). Turn off only for a manifest already checked.
    check_leak : bool
        Refuse shared sha-256 or group between ``train_split`` and any other split.
    train_split : str
        Name of the training split.

    Returns
    -------
    Manifest

    Raises
    ------
    DatasetError
        If the file is unreadable, a required column is missing, a file is
        missing or altered, or the splits leak.

    Notes
    -----
    A manifest without a ``group`` column loads, with a warning: leakage can
    then only be checked on the files' sha-256, not per patient or series.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read manifest ({exc.strerror})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: manifest is not UTF-8 text") from None
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DatasetError(f"{path}: manifest lacks column(s) {', '.join(missing)}")
    if "group" not in header:  # patients or series may then span splits unnoticed
        log.warning("%s: manifest has no 'group' column; train/test leakage is checked on "
                    "sha-256 only (add a patient or series group to check it fully)", path)
    base = path.resolve().parent
    rows = []
    for i, rec in enumerate(reader, start=2):
        if None in rec:
            raise DatasetError(f"{path}: line {i} has more fields than the header")
        values = {k: (v or "").strip() for k, v in rec.items()}
        if not values["path"]:
            raise DatasetError(f"{path}: line {i} has an empty path")
        file = Path(values["path"])
        rows.append(ManifestRow(
            file=file if file.is_absolute() else base / file,
            sha256=values["sha256"], split=values["split"], label=values["label"],
            modality=values.get("modality", ""), body_part=values.get("body_part", ""),
            group=values.get("group", ""), columns=values,
        ))
    manifest = Manifest(rows=tuple(rows), sha256=hashlib.sha256(data).hexdigest(),
                        source=str(path))
    counts = Counter(r.split for r in manifest.rows)
    log.info("manifest %s: %s", path.name, dict(counts))
    if check_leak:
        check_leakage(manifest, train_split=train_split)
    if verify_sha256:
        manifest.verify_files()
    return manifest

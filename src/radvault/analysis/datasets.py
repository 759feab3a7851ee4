"""Datasets for training and evaluation, all preprocessed by the imaging layer.

Four sources, one result. Every source yields a :class:`PreparedSplit`: the
split's images already run through :class:`radvault.imaging.preprocess.Preprocessor`
(the very code path the vault uses in service), stored as ``float16``
``(N, 3, size, size)`` in memory so that epochs never redo CLAHE and the
bilateral filter.

* :class:`ManifestSource`: a manifest (:mod:`radvault.analysis.manifest`) and a task.
* :func:`folder_manifest`: a folder with one sub-folder per class (optionally
  inside ``train``/``val``/``test`` folders) becomes a manifest.
* :func:`dicom_folder_manifest`: a folder of DICOM files plus a labels CSV
  becomes a manifest (modality and body part read from the headers; the
  group is a hash of the Patient ID, so splits never share a patient).
* :class:`MedMNISTSource`: an official MedMNIST ``.npz`` file, read with numpy
  (nothing is downloaded).

A cache folder, when given, keeps each prepared split as a ``.npz`` named by
the sha-256 of its inputs and settings. Only use a cache for public
benchmark data, never for vault images (plaintext pixels must not reach disk).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from radvault.analysis.manifest import (
    Manifest,
    ManifestRow,
    check_leakage,
    file_sha256,
    load_manifest,
)
from radvault.analysis.tasks import Task, load_task
from radvault.config import PreprocessSettings
from radvault.errors import DatasetError, ImageInputError

__all__ = [
    "IMAGE_SUFFIXES",
    "MEDMNIST_CLASSES",
    "ManifestSource",
    "MedMNISTSource",
    "PreparedSplit",
    "dicom_folder_manifest",
    "folder_manifest",
    "read_pixels",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom", "")
SPLIT_NAMES = ("train", "val", "validation", "test", "holdout")

#: Class names of the MedMNIST files in ``shared/data/medmnist`` (label value order).
MEDMNIST_CLASSES: dict[str, tuple[str, ...]] = {
    "pneumoniamnist": ("normal", "pneumonia"),
    "breastmnist": ("malignant", "normal_or_benign"),
}
#: MedMNIST+ names larger images ``<name>_<size>.npz`` (``breastmnist_64.npz``).
_MEDMNIST_SIZED = re.compile(r"(?P<name>[a-z0-9]+)_(?P<size>\d+)")
_CACHE_VERSION = "radvault-prepared/1"

ProgressFn = Callable[[int, int], None]


@dataclass
class PreparedSplit:
    """One split, preprocessed and held in memory.

    Attributes
    ----------
    images : numpy.ndarray
        ``float16``, shape ``(N, 3, size, size)``, values in ``[0, 1]``.
    labels : numpy.ndarray
        ``int64`` class indices, shape ``(N,)``.
    classes : tuple of str
    modalities, body_parts : list of str
        Per image (``OT`` / ``""`` when unknown).
    """

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    modalities: list[str] = field(default_factory=list)
    body_parts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[1] != 3:
            raise DatasetError(f"prepared images must be (N, 3, S, S), got {self.images.shape}")
        if len(self.labels) != len(self.images):
            raise DatasetError("prepared images and labels differ in length")
        n = len(self.labels)
        self.modalities = list(self.modalities) or ["OT"] * n
        self.body_parts = list(self.body_parts) or [""] * n

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def class_counts(self) -> np.ndarray:
        """Images per class, length ``len(classes)``."""
        return np.bincount(self.labels, minlength=len(self.classes))

    @property
    def trained_on(self) -> list[dict[str, str]]:
        """Distinct (modality, body part) pairs, sorted, as dicts."""
        pairs = sorted(set(zip(self.modalities, self.body_parts, strict=True)))
        return [{"modality": m, "body_part": b} for m, b in pairs]

    @property
    def class_trained_on(self) -> dict[str, list[dict[str, str]]]:
        """Per class, the distinct (modality, body part) pairs of its images, sorted."""
        pairs: dict[str, set[tuple[str, str]]] = {c: set() for c in self.classes}
        for label, m, b in zip(self.labels.tolist(), self.modalities, self.body_parts,
                               strict=True):
            pairs[self.classes[label]].add((m, b))
        return {c: [{"modality": m, "body_part": b} for m, b in sorted(ps)]
                for c, ps in pairs.items()}


def read_pixels(path: str | PathLike[str]) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Decode one image file into an array the preprocessor accepts.

    PNG/JPEG/BMP/TIFF through Pillow (greyscale kept greyscale, palette and
    alpha images turned RGB); DICOM through pydicom with the Modality LUT
    applied and MONOCHROME1 inverted, plus its first VOI window.

    Returns
    -------
    pixels : numpy.ndarray
        ``(rows, cols)`` or ``(rows, cols, 3)``.
    window : tuple of float or None
        ``(center, width)`` for DICOM with a window.

    Raises
    ------
    ImageInputError
        If the file cannot be decoded.
    """
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                im.load()
                if im.mode in ("L", "I;16", "I", "F", "RGB"):
                    arr = np.asarray(im)
                elif im.mode == "LA":
                    arr = np.asarray(im.convert("L"))
                else:
                    arr = np.asarray(im.convert("RGB"))
        except (OSError, UnidentifiedImageError) as exc:
            raise ImageInputError(path, f"cannot decode image ({type(exc).__name__})") from None
        return arr, None
    return _read_dicom(path)


def _read_dicom(path: Path) -> tuple[np.ndarray, tuple[float, float] | None]:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
    except InvalidDicomError:
        raise ImageInputError(path, "not a DICOM, PNG or JPEG file") from None
    except (AttributeError, ValueError, RuntimeError, OSError, NotImplementedError) as exc:
        raise ImageInputError(path, f"cannot decode DICOM pixels ({type(exc).__name__})") from None
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    colour = getattr(ds, "SamplesPerPixel", 1) == 3
    if frames > 1:
        arr = arr[frames // 2]
    if colour:
        if str(getattr(ds, "PhotometricInterpretation", "")).startswith("YBR"):
            from pydicom.pixels import convert_color_space

            arr = convert_color_space(arr, ds.PhotometricInterpretation, "RGB")
        return np.asarray(arr), None
    arr = apply_modality_lut(arr, ds)
    if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
        arr = arr.max() + arr.min() - arr
    window = None
    if "WindowCenter" in ds and "WindowWidth" in ds:
        wc, ww = ds.WindowCenter, ds.WindowWidth
        wc = wc[0] if isinstance(wc, pydicom.multival.MultiValue) else wc
        ww = ww[0] if isinstance(ww, pydicom.multival.MultiValue) else ww
        window = (float(wc), float(ww))
    return np.asarray(arr), window


def _settings_key(settings: PreprocessSettings) -> dict[str, Any]:
    from radvault.imaging.preprocess import settings_to_dict

    return settings_to_dict(settings)


def _cache_path(cache_dir: Path | None, parts: dict[str, Any]) -> Path | None:
    if cache_dir is None:
        return None
    blob = json.dumps({"v": _CACHE_VERSION, **parts}, sort_keys=True).encode()
    return Path(cache_dir) / f"{hashlib.sha256(blob).hexdigest()[:32]}.npz"


def _load_cache(path: Path | None) -> np.ndarray | None:
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return np.asarray(data["images"])
    except (OSError, ValueError, KeyError):
        log.warning("ignoring an unreadable cache file")
        return None


def _save_cache(path: Path | None, images: np.ndarray) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")  # runs may share a cache
    np.savez(tmp, images=images)
    os.replace(tmp, path)


def _preprocess_many(loaders: Sequence[Callable[[], tuple[np.ndarray, Any]]],
                     settings: PreprocessSettings,
                     progress: ProgressFn | None) -> np.ndarray:
    from radvault.imaging.preprocess import Preprocessor

    pre = Preprocessor(settings)
    out = np.empty((len(loaders), 3, settings.size, settings.size), dtype=np.float16)
    for i, load in enumerate(loaders):
        pixels, window = load()
        out[i] = pre.from_array(pixels, window=window)
        if progress is not None:
            progress(i + 1, len(loaders))
    return out


class ManifestSource:
    """A manifest plus a task: the usual training source.

    Parameters
    ----------
    manifest : Manifest or path
        A loaded manifest, or a CSV path (loaded with sha-256 and leakage checks).
    task : Task, str or path
        Which rows form which class.
    train_split : str
        The split trained on (``--train-split``): every other split is checked
        against it for leakage, whatever it is called.

    Raises
    ------
    DatasetError
        If the manifest cannot be loaded, its splits leak (a sha-256 or group
        shared with ``train_split``), or the task selects no rows.
    """

    def __init__(self, manifest: Manifest | str | PathLike[str],
                 task: Task | str | PathLike[str], *, train_split: str = "train") -> None:
        self.manifest = (manifest if isinstance(manifest, Manifest)
                         else load_manifest(manifest, train_split=train_split))
        check_leakage(self.manifest, train_split=train_split)
        self.task = load_task(task)
        self._labels: dict[int, int] = {}
        for i, row in enumerate(self.manifest.rows):
            label = self.task.label_of(row.columns)
            if label is not None:
                self._labels[i] = label
        if not self._labels:
            raise DatasetError(f"task {self.task.name!r} selects no rows of the manifest")

    @property
    def sha256(self) -> str:
        """The manifest's digest (recorded in model cards)."""
        return self.manifest.sha256

    @property
    def splits(self) -> tuple[str, ...]:
        """Split names that hold rows of the task."""
        return tuple(dict.fromkeys(self.manifest.rows[i].split for i in self._labels))

    def rows(self, split: str) -> list[tuple[ManifestRow, int]]:
        """The task's rows of one split with their class index.

        Raises
        ------
        DatasetError
            If the task has no rows in that split.
        """
        out = [(self.manifest.rows[i], lb) for i, lb in self._labels.items()
               if self.manifest.rows[i].split == split]
        if not out:
            raise DatasetError(f"task {self.task.name!r} has no rows in split {split!r} "
                               f"(has {', '.join(self.splits)})")
        return out

    def groups(self, split: str) -> list[str]:
        """The group (patient, slice series) of each image of a split, in :meth:`load` order;
        an image without one is its own group.

        Raises
        ------
        DatasetError
            If the task has no rows in that split.
        """
        return [r.group or f"sha256:{r.sha256}" for r, _ in self.rows(split)]

    def load(self, split: str, settings: PreprocessSettings, *,
             cache_dir: str | PathLike[str] | None = None,
             progress: ProgressFn | None = None) -> PreparedSplit:
        """Preprocess one split (or read it from the cache).

        Raises
        ------
        DatasetError
            If the split is empty for this task.
        ImageInputError
            If an image cannot be decoded.
        """
        rows = self.rows(split)
        cache = _cache_path(Path(cache_dir) if cache_dir else None, {
            "sha256": [r.sha256 for r, _ in rows], "settings": _settings_key(settings)})
        images = _load_cache(cache)
        if images is None or len(images) != len(rows):
            loaders = [(lambda f=r.file: read_pixels(f)) for r, _ in rows]
            images = _preprocess_many(loaders, settings, progress)
            _save_cache(cache, images)
        return PreparedSplit(images=images, labels=np.array([lb for _, lb in rows], np.int64),
                             classes=self.task.class_names,
                             modalities=[r.modality for r, _ in rows],
                             body_parts=[r.body_part for r, _ in rows])


class MedMNISTSource:
    """An official-format MedMNIST ``.npz`` (keys ``{split}_images``, ``{split}_labels``).

    Parameters
    ----------
    path : str or PathLike
        The ``.npz`` file; it is read with numpy only (never downloaded).
    classes : sequence of str, optional
        Class names in label order; by default taken from
        :data:`MEDMNIST_CLASSES` by file stem, where a MedMNIST+ stem
        ``<name>_<size>`` (``breastmnist_64``) counts as ``<name>``.
    modality, body_part : str
        What the images are (e.g. ``DX``/``CHEST`` for PneumoniaMNIST).

    Raises
    ------
    DatasetError
        If the file is unreadable or not an ``.npz``, lacks the keys, holds a
        multi-label set (e.g. ChestMNIST: one task per image only), its labels
        exceed the classes, or the classes are unknown and not given.
    """

    def __init__(self, path: str | PathLike[str], classes: Sequence[str] | None = None, *,
                 modality: str = "OT", body_part: str = "") -> None:
        self.path = Path(path)
        stem = self.path.stem.lower()
        sized = _MEDMNIST_SIZED.fullmatch(stem)
        name = sized["name"] if sized else stem
        try:
            self._sha256 = file_sha256(self.path)
        except OSError as exc:
            raise DatasetError(f"{self.path}: cannot read MedMNIST file "
                               f"({exc.strerror or type(exc).__name__})") from None
        self._arrays = _read_npz(self.path)
        if not self.splits:
            raise DatasetError(f"{self.path}: no '<split>_images' arrays; not a MedMNIST file")
        labels = [a for k, a in self._arrays.items() if k.endswith("_labels")]
        wide = max((a.shape[1] for a in labels if a.ndim == 2), default=1)
        if wide > 1:  # ChestMNIST: 14 findings per image, each 0 or 1
            raise DatasetError(f"{self.path}: a multi-label set ({wide} labels per image); "
                               "only single-label classification can be trained")
        if classes is None:
            if name not in MEDMNIST_CLASSES:
                raise DatasetError(f"{self.path}: unknown MedMNIST set {name!r}; pass the class "
                                   "names in label order (--classes a,b,...)")
            classes = MEDMNIST_CLASSES[name]
        self.task = Task.from_labels(name, list(classes))
        top = max((int(a.max()) for a in labels if a.size), default=0)
        if top >= len(self.task.classes):
            raise DatasetError(f"{self.path}: labels run to {top} but "
                               f"{len(self.task.classes)} class names were given")
        self.modality = modality.upper()
        self.body_part = body_part.upper()

    @property
    def sha256(self) -> str:
        """Digest of the ``.npz`` file."""
        return self._sha256

    @property
    def splits(self) -> tuple[str, ...]:
        """Splits present in the file."""
        return tuple(k[: -len("_images")] for k in self._arrays if k.endswith("_images"))

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Raw ``uint8`` images and integer labels of one split.

        Raises
        ------
        DatasetError
            If the split is missing or labels are out of range.
        """
        try:
            images = self._arrays[f"{split}_images"]
            labels = self._arrays[f"{split}_labels"].reshape(-1).astype(np.int64)
        except KeyError:
            raise DatasetError(f"{self.path}: no split {split!r} "
                               f"(has {', '.join(self.splits)})") from None
        if len(images) != len(labels):
            raise DatasetError(f"{self.path}: split {split!r} has mismatched images and labels")
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.task.classes)):
            raise DatasetError(f"{self.path}: labels out of range for {len(self.task.classes)} "
                               "classes")
        return images, labels

    def groups(self, split: str) -> list[str]:
        """MedMNIST files record no patients: each image is its own group.

        Raises
        ------
        DatasetError
            If the split is missing.
        """
        return [f"{split}:{i}" for i in range(len(self.arrays(split)[1]))]

    def load(self, split: str, settings: PreprocessSettings, *,
             cache_dir: str | PathLike[str] | None = None,
             progress: ProgressFn | None = None) -> PreparedSplit:
        """Preprocess one split.

        Raises
        ------
        DatasetError
            If the split is missing.
        """
        images, labels = self.arrays(split)
        cache = _cache_path(Path(cache_dir) if cache_dir else None, {
            "npz": self._sha256, "split": split, "settings": _settings_key(settings)})
        prepared = _load_cache(cache)
        if prepared is None or len(prepared) != len(images):
            loaders = [(lambda a=img: (a, None)) for img in images]
            prepared = _preprocess_many(loaders, settings, progress)
            _save_cache(cache, prepared)
        n = len(labels)
        return PreparedSplit(images=prepared, labels=labels, classes=self.task.class_names,
                             modalities=[self.modality] * n, body_parts=[self.body_part] * n)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` (never unpickled), read now so that a damaged file fails here.

    Raises
    ------
    DatasetError
        If the file is truncated, damaged or not an ``.npz`` at all.
    """
    try:  # our own handle: numpy leaves its own open when a damaged zip fails to load
        with open(path, "rb") as fh:
            data = np.load(fh, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):  # a bare .npy array
                raise DatasetError(f"{path}: not a readable .npz (a single .npy array)")
            with data:
                return {k: np.asarray(data[k]) for k in data.files}
    except DatasetError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DatasetError(f"{path}: not a readable .npz ({type(exc).__name__})") from None


def _stratified_splits(labels: Sequence[str], groups: Sequence[str], *, val_fraction: float,
                       test_fraction: float, seed: int) -> list[str]:
    """Assign whole groups to train/val/test, roughly stratified by label."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1
            and val_fraction + test_fraction < 1):
        raise DatasetError("val and test fractions must be in [0, 1) and sum below 1")
    rng = np.random.default_rng(seed)
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    out = ["train"] * len(labels)
    # per label, shuffle the groups whose first image has that label, then cut
    by_label: dict[str, list[str]] = {}
    for g, idx in by_group.items():
        by_label.setdefault(labels[idx[0]], []).append(g)
    for label in sorted(by_label):
        gs = sorted(by_label[label])
        rng.shuffle(gs)
        n = len(gs)
        n_test = round(n * test_fraction)
        n_val = round(n * val_fraction)
        if n >= 3:
            n_test = max(n_test, 1) if test_fraction else 0
            n_val = max(n_val, 1) if val_fraction else 0
        for k, g in enumerate(gs):
            split = "test" if k < n_test else "val" if k < n_test + n_val else "train"
            for i in by_group[g]:
                out[i] = split
    return out


def folder_manifest(root: str | PathLike[str], *, modality: str = "OT", body_part: str = "",
                    val_fraction: float = 0.15, test_fraction: float = 0.15,
                    seed: int = 0) -> Manifest:
    """Build a manifest from a folder with one sub-folder per class.

    Layouts: ``root/<class>/<image>`` (split here, stratified, 70/15/15 by
    default; byte-identical files always land in the same split), or
    ``root/<split>/<class>/<image>`` with split folders named ``train``,
    ``val``/``validation``, ``test`` or ``holdout`` (kept as they are).

    A class folder must hold its images directly: one that holds only
    sub-folders is refused rather than read as a class (split folders with
    other names, such as ``dev``/``tune``, would otherwise become classes).

    Raises
    ------
    DatasetError
        If the folder has no class sub-folders with images, a class folder holds
        sub-folders but no images, or one file (same sha-256) is filed under
        two classes.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    presplit = bool(subdirs) and all(p.name.lower() in SPLIT_NAMES for p in subdirs)
    entries: list[tuple[Path, str, str]] = []  # file, label, split
    for top in subdirs:
        class_dirs = sorted(p for p in top.iterdir() if p.is_dir()) if presplit else [top]
        for cdir in class_dirs:
            direct = [f for f in cdir.iterdir() if f.is_file()
                      and f.suffix.lower() in IMAGE_SUFFIXES]
            if not direct and any(f.is_dir() for f in cdir.iterdir()):
                raise DatasetError(
                    f"{root}: class folder {cdir.name!r} holds sub-folders but no images; "
                    "expected one sub-folder per class with the images directly inside, "
                    "optionally within split folders named train, val, test or holdout")
            for f in sorted(cdir.rglob("*")):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                    entries.append((f, cdir.name, top.name.lower() if presplit else ""))
    if not entries:
        raise DatasetError(f"{root}: no images in class sub-folders")
    digests = [file_sha256(f) for f, _, _ in entries]
    label_of: dict[str, str] = {}
    for (_, label, _), digest in zip(entries, digests, strict=True):
        first = label_of.setdefault(digest, label)
        if first != label:
            raise DatasetError(f"{root}: identical files (same sha-256) are filed under "
                               f"classes {first!r} and {label!r}")
    if presplit:
        splits = ["val" if s == "validation" else s for _, _, s in entries]
    else:
        splits = _stratified_splits([lb for _, lb, _ in entries], digests,
                                    val_fraction=val_fraction, test_fraction=test_fraction,
                                    seed=seed)
    rows = [ManifestRow(file=f, sha256=d, split=s, label=lb, modality=modality,
                        body_part=body_part, group=f"sha256:{d}",
                        columns={"label": lb, "split": s})
            for (f, lb, _), d, s in zip(entries, digests, splits, strict=True)]
    return Manifest.from_rows(rows, source=str(root))


def dicom_folder_manifest(root: str | PathLike[str], labels_csv: str | PathLike[str], *,
                          val_fraction: float = 0.15, test_fraction: float = 0.15,
                          seed: int = 0) -> Manifest:
    """Build a manifest from a folder of DICOM files and a labels CSV.

    The CSV has columns ``path`` (or ``file``, relative to ``root``) and
    ``label``, optionally ``split`` and ``group``. Modality and body part come
    from each file's header. Without a ``group`` column the group is a
    sha-256 of the Patient ID (never the ID itself), so no patient spans two
    splits; without a ``split`` column whole groups are split 70/15/15.

    Raises
    ------
    DatasetError
        If the CSV lacks columns, names a missing file or a file is not DICOM.
    """
    import csv

    import pydicom
    from pydicom.errors import InvalidDicomError

    root = Path(root)
    try:
        with open(labels_csv, newline="", encoding="utf-8-sig") as fh:
            records = list(csv.DictReader(fh))
    except OSError as exc:
        raise DatasetError(f"{labels_csv}: cannot read labels CSV ({exc.strerror})") from None
    if not records:
        raise DatasetError(f"{labels_csv}: no rows")
    key = "path" if "path" in records[0] else "file" if "file" in records[0] else None
    if key is None or "label" not in records[0]:
        raise DatasetError(f"{labels_csv}: needs columns 'path' (or 'file') and 'label'")
    entries = []
    for rec in records:
        f = root / rec[key]
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except FileNotFoundError:
            raise DatasetError(f"{f}: file named in the labels CSV is missing") from None
        except (InvalidDicomError, OSError):
            raise DatasetError(f"{f}: not a readable DICOM file") from None
        group = rec.get("group") or (
            "patient:" + hashlib.sha256(str(getattr(ds, "PatientID", "")).encode()).hexdigest()[:16]
            if getattr(ds, "PatientID", "") else "")
        entries.append((f, rec["label"], rec.get("split", ""), group,
                        str(getattr(ds, "Modality", "OT") or "OT"),
                        str(getattr(ds, "BodyPartExamined", "") or "")))
    digests = [file_sha256(e[0]) for e in entries]
    groups = [e[3] or f"sha256:{d}" for e, d in zip(entries, digests, strict=True)]
    if all(e[2] for e in entries):
        splits = [e[2] for e in entries]
    else:
        splits = _stratified_splits([e[1] for e in entries], groups, val_fraction=val_fraction,
                                    test_fraction=test_fraction, seed=seed)
    rows = [ManifestRow(file=e[0], sha256=d, split=s, label=e[1], modality=e[4],
                        body_part=e[5], group=g, columns={"label": e[1], "split": s})
            for e, d, s, g in zip(entries, digests, splits, groups, strict=True)]
    return Manifest.from_rows(rows, source=str(root))

"""Shared fixtures: a tiny synthetic image dataset and one small trained model."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from radvault.config import PreprocessSettings

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
RADBENCH = SHARED / "radbench" / "manifest.csv"
MEDMNIST = SHARED / "medmnist"
CLASSES = ("disc", "square", "bars")
SIZE = 32


def draw_shape(kind: str, rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A noisy greyscale image of one easy shape at a random place."""
    img = rng.normal(40, 6, (size, size)).clip(0, 255).astype(np.uint8)
    cx, cy = (int(v) for v in rng.integers(16, size - 16, 2))
    r = int(rng.integers(8, 12))
    if kind == "disc":  # a large filled bright disc
        cv2.circle(img, (cx, cy), r, 230, -1)
    elif kind == "square":  # a thin square outline
        cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), 230, 1)
    else:  # a small dim blob
        cv2.circle(img, (cx, cy), 3, 120, -1)
    return img


def write_dataset(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """Write PNGs and a radbench-layout manifest; return the manifest path."""
    rng = np.random.default_rng(seed)
    rows = []
    for split, n in per_class.items():
        for label in CLASSES:
            folder = root / "images" / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                path = folder / f"{label}_{i}.png"
                Image.fromarray(draw_shape(label, rng)).save(path)
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                rows.append({"path": str(path.relative_to(root)), "sha256": digest,
                             "split": split, "dataset": "toy", "modality": "CT",
                             "body_part": "CHEST", "label": label,
                             "group": f"{split}-{label}-{i}"})
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


@pytest.fixture(scope="session")
def toy_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-class synthetic dataset: 20 train, 8 val, 8 test images per class."""
    return write_dataset(tmp_path_factory.mktemp("toy"), {"train": 20, "val": 8, "test": 8})


@pytest.fixture(scope="session")
def toy_task_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import json

    path = tmp_path_factory.mktemp("task") / "toy.json"
    path.write_text(json.dumps({
        "format": "radvault-task/1", "name": "toy", "augment": {"hflip": True},
        # "disc" is the toy data's "no disease", so that the toy models can answer
        # without the no_normal_class referral every answer would otherwise carry
        "classes": [{"name": c, "select": {"dataset": "toy", "label": c},
                     **({"normal": True} if c == "disc" else {})} for c in CLASSES]}))
    return path


@pytest.fixture(scope="session")
def tiny_settings() -> PreprocessSettings:
    return PreprocessSettings(size=SIZE, denoise=False, clahe_tile_grid=4)


@pytest.fixture(scope="session")
def signer():
    from radvault.analysis.export import Ed25519Signer

    return Ed25519Signer.generate()


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, toy_manifest: Path, toy_task_file: Path,
            tiny_settings: PreprocessSettings, signer):
    """One small ResNet-18 (quarter width) trained for a few epochs on the toy set."""
    from radvault.analysis.datasets import ManifestSource
    from radvault.analysis.training import TrainConfig, train

    out = tmp_path_factory.mktemp("model")
    config = TrainConfig(source=ManifestSource(toy_manifest, toy_task_file),
                         out_dir=out / "toy", network="resnet18", width=0.25,
                         preprocess=tiny_settings, epochs=8, batch_size=8, seed=0, threads=1,
                         checkpoint_dir=out / "ckpt", device="cpu")
    return train(config, progress=False, signer=signer)


@pytest.fixture(scope="session")
def radbench_manifest() -> Path:
    """The shared radbench manifest, or a clean skip when the data are absent."""
    if not RADBENCH.is_file():
        pytest.skip(f"radbench data not found at {RADBENCH}")
    return RADBENCH


@pytest.fixture(scope="session")
def medmnist_dir() -> Path:
    """The shared MedMNIST folder, or a clean skip when absent."""
    if not (MEDMNIST / "pneumoniamnist.npz").is_file():
        pytest.skip(f"MedMNIST data not found at {MEDMNIST}")
    return MEDMNIST

"""Datasets: manifest, MedMNIST, class folders and DICOM folders, all preprocessed alike."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest

from radvault.analysis.datasets import (
    ManifestSource,
    MedMNISTSource,
    dicom_folder_manifest,
    folder_manifest,
    read_pixels,
)
from radvault.config import PreprocessSettings
from radvault.errors import DatasetError
from radvault.imaging.preprocess import Preprocessor


def test_manifest_source_uses_the_imaging_preprocessor(toy_manifest, toy_task_file,
                                                       tiny_settings):
    src = ManifestSource(toy_manifest, toy_task_file)
    split = src.load("val", tiny_settings)
    assert split.images.shape == (24, 3, 32, 32) and split.images.dtype == np.float16
    assert split.class_counts.tolist() == [8, 8, 8]
    assert split.trained_on == [{"modality": "CT", "body_part": "CHEST"}]
    assert split.class_trained_on == {c: [{"modality": "CT", "body_part": "CHEST"}]
                                      for c in split.classes}
    row = src.rows("val")[0][0]
    expected = Preprocessor(tiny_settings).from_array(read_pixels(row.file)[0])
    np.testing.assert_allclose(split.images[0].astype(np.float32), expected, atol=1e-3)


def test_cache_round_trips(toy_manifest, toy_task_file, tiny_settings, tmp_path):
    src = ManifestSource(toy_manifest, toy_task_file)
    first = src.load("test", tiny_settings, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    again = src.load("test", tiny_settings, cache_dir=tmp_path)
    np.testing.assert_array_equal(first.images, again.images)


def test_medmnist_npz_is_read_with_numpy(medmnist_dir):
    src = MedMNISTSource(medmnist_dir / "breastmnist.npz", modality="US", body_part="BREAST")
    images, labels = src.arrays("test")
    assert images.shape == (156, 28, 28) and labels.shape == (156,)
    assert np.bincount(labels).tolist() == [42, 114]
    assert src.task.class_names == ("malignant", "normal_or_benign")
    split = src.load("val", PreprocessSettings(size=28, enhance=False, denoise=False))
    assert split.images.shape == (78, 3, 28, 28)
    pneu = MedMNISTSource(medmnist_dir / "pneumoniamnist.npz")
    assert pneu.arrays("train")[1].shape == (4708,)  # labels (N, 1) flattened
    with pytest.raises(DatasetError, match="no split 'holdout'"):
        pneu.arrays("holdout")


def test_class_folder_is_split_stratified(toy_manifest, tmp_path):
    root = tmp_path / "folder"
    for label in ("disc", "square", "bars"):
        shutil.copytree(toy_manifest.parent / "images" / "train" / label, root / label)
    m = folder_manifest(root, modality="CT", body_part="chest", seed=1)
    assert len(m.rows) == 60
    assert {r.label for r in m.split("test")} == {"disc", "square", "bars"}
    assert {r.body_part for r in m.rows} == {"CHEST"}


def test_presplit_class_folder_keeps_its_splits(toy_manifest):
    m = folder_manifest(toy_manifest.parent / "images")
    assert {s: len(m.split(s)) for s in m.splits} == {"test": 24, "train": 60, "val": 24}


def _write_dicom(path, patient_id, value, modality="CT"):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.Modality, ds.BodyPartExamined = patient_id, modality, "CHEST"
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.PixelData = (np.arange(256, dtype=np.uint16).reshape(16, 16) + value).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_dicom_folder_with_labels_csv(tmp_path):
    rows = []
    for i in range(12):
        name = f"im{i}.dcm"
        _write_dicom(tmp_path / name, patient_id=f"P{i // 2}", value=i)
        rows.append({"file": name, "label": "a" if i % 4 < 2 else "b"})
    with open(tmp_path / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "label"])
        writer.writeheader()
        writer.writerows(rows)
    m = dicom_folder_manifest(tmp_path, tmp_path / "labels.csv", seed=0)
    assert {(r.modality, r.body_part) for r in m.rows} == {("CT", "CHEST")}
    # both images of a patient share a group, hence a split; the group never shows the id
    by_group = {}
    for r in m.rows:
        by_group.setdefault(r.group, set()).add(r.split)
        prefix, digest = r.group.split(":", 1)
        assert prefix == "patient" and len(digest) == 16 and int(digest, 16) >= 0
    assert all(len(s) == 1 for s in by_group.values()) and len(by_group) == 6
    pixels, window = read_pixels(m.rows[0].file)
    assert window == (40.0, 400.0) and pixels.min() < 0  # rescale to HU applied


def test_dicom_labels_csv_naming_a_missing_file_is_refused(tmp_path):
    (tmp_path / "labels.csv").write_text("file,label\nnope.dcm,a\n")
    with pytest.raises(DatasetError, match="missing"):
        dicom_folder_manifest(tmp_path, tmp_path / "labels.csv")


def test_manifest_source_checks_leakage_against_its_training_split(toy_manifest, toy_task_file):
    from radvault.analysis.manifest import Manifest, ManifestRow, load_manifest

    m = load_manifest(toy_manifest)
    names = {"train": "dev", "val": "tune", "test": "holdout"}
    dev = next(r for r in m.rows if r.split == "train")
    rows = [ManifestRow(file=r.file, sha256=r.sha256, split=names[r.split], label=r.label,
                        group=r.group, columns={**r.columns, "split": names[r.split]})
            for r in m.rows]
    leak = next(i for i, r in enumerate(rows) if r.split == "holdout")
    rows[leak] = ManifestRow(file=dev.file, sha256=dev.sha256, split="holdout",
                             label=dev.label, columns={**dev.columns, "split": "holdout"})
    leaking = Manifest.from_rows(rows, source="custom.csv")
    ManifestSource(leaking, toy_task_file)  # nothing is called "train": the default sees no leak
    with pytest.raises(DatasetError, match="split 'holdout' share a sha-256 with split 'dev'"):
        ManifestSource(leaking, toy_task_file, train_split="dev")


def test_split_folders_with_other_names_are_not_read_as_classes(toy_manifest, tmp_path):
    images = toy_manifest.parent / "images"
    root = tmp_path / "fold2"
    shutil.copytree(images / "train", root / "train")
    shutil.copytree(images / "val", root / "tune")
    with pytest.raises(DatasetError, match="class folder 'train' holds sub-folders but no "
                                           "images; expected one sub-folder per class"):
        folder_manifest(root)


def test_one_file_filed_under_two_classes_is_refused(toy_manifest, tmp_path):
    root = tmp_path / "folder"
    for label in ("disc", "square"):
        shutil.copytree(toy_manifest.parent / "images" / "train" / label, root / label)
    shutil.copy(root / "disc" / "disc_3.png", root / "square" / "copy.png")
    with pytest.raises(DatasetError, match=r"same sha-256.*classes 'disc' and 'square'$"):
        folder_manifest(root)


def _write_npz(path, labels, size=8, **extra):
    rng = np.random.default_rng(0)
    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = rng.integers(0, 255, (len(labels), size, size), np.uint8)
        arrays[f"{split}_labels"] = np.asarray(labels, np.uint8)
    np.savez(path, **{**arrays, **extra})
    return path


def test_medmnist_plus_file_name_counts_as_its_set(tmp_path):
    src = MedMNISTSource(_write_npz(tmp_path / "breastmnist_64.npz", [[0], [1], [1]], size=64))
    assert src.task.class_names == ("malignant", "normal_or_benign")
    assert src.arrays("val")[0].shape == (3, 64, 64)


def test_unknown_medmnist_set_needs_its_class_names(tmp_path):
    path = _write_npz(tmp_path / "dermamnist.npz", [[0], [2], [1]])
    with pytest.raises(DatasetError, match=r"unknown MedMNIST set 'dermamnist'.*--classes"):
        MedMNISTSource(path)
    src = MedMNISTSource(path, ["akiec", "bcc", "bkl"])
    assert src.task.class_names == ("akiec", "bcc", "bkl")
    assert src.arrays("test")[1].tolist() == [0, 2, 1]
    with pytest.raises(DatasetError, match="labels run to 2 but 2 class names were given"):
        MedMNISTSource(path, ["akiec", "bcc"])


def test_multi_label_medmnist_set_is_refused(tmp_path):
    path = _write_npz(tmp_path / "chestmnist.npz", np.eye(3, 14, dtype=np.uint8))
    with pytest.raises(DatasetError, match="multi-label set \\(14 labels per image\\)"):
        MedMNISTSource(path, [f"finding{i}" for i in range(14)])
    with pytest.raises(DatasetError, match="multi-label"):  # before the unknown-set message
        MedMNISTSource(path)


@pytest.mark.parametrize("damage", ["truncated", "text", "npy"])
def test_a_damaged_or_foreign_npz_says_so(tmp_path, damage):
    path = tmp_path / "dermamnist.npz"
    if damage == "truncated":
        data = _write_npz(path, [[0], [1]] * 50, size=28).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "text":
        path.write_text("not numpy at all\n")
    else:
        with open(path, "wb") as fh:
            np.save(fh, np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DatasetError, match=r"not a readable \.npz"):
        MedMNISTSource(path, ["a", "b"])
    with pytest.raises(DatasetError, match=r"not a readable \.npz"):
        MedMNISTSource(path)  # not the unknown-set message


def test_each_class_s_training_pairs_are_its_own_images():
    import numpy as np

    from radvault.analysis.datasets import PreparedSplit

    split = PreparedSplit(np.zeros((4, 3, 8, 8), np.float16), np.array([0, 1, 1, 2]),
                          ("pneumonia", "stone", "glioma"), ["DX", "CT", "CT", "MR"],
                          ["CHEST", "KIDNEY", "", "BRAIN"])
    assert split.class_trained_on == {
        "pneumonia": [{"modality": "DX", "body_part": "CHEST"}],
        "stone": [{"modality": "CT", "body_part": ""}, {"modality": "CT", "body_part": "KIDNEY"}],
        "glioma": [{"modality": "MR", "body_part": "BRAIN"}]}

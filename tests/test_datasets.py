"""Patch datasets: files written in the published layouts are read back exactly, in any index order."""

from __future__ import annotations

import csv
import gzip
import io
import pickle
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from wsi_pipeline.core.errors import InputError
from wsi_pipeline.datasets import patches as datasets
from wsi_pipeline.datasets.patches import (
    PCAM_PREFIX,
    open_patch_dataset,
    write_class_folders,
    write_kaggle,
    write_pcam_split,
)

RNG = np.random.default_rng(7)
PATCHES = RNG.integers(0, 256, (20, 96, 96, 3), dtype=np.uint8)
LABELS = np.array([0, 1] * 10)
RNG.shuffle(LABELS)
CLASS_PATCHES = RNG.integers(0, 256, (12, 40, 56, 3), dtype=np.uint8)  # class folders: any size
CLASS_LABELS = np.array([0, 1, 2] * 4)
CLASS_NAMES = ["lymphocytes", "stroma", "tumour"]


def write_pcam(folder: Path, patches: np.ndarray = PATCHES, labels: np.ndarray = LABELS) -> dict:
    """In chunks of 7, as a converter streaming from a large source would."""
    chunks = ((patches[i : i + 7], labels[i : i + 7]) for i in range(0, len(patches), 7))
    meta = (
        {"coord_y": 10 * i, "coord_x": 20 * i, "tumor_patch": y, "center_tumor_patch": y, "wsi": "s1"}
        for i, y in enumerate(labels.astype(bool))
    )
    return write_pcam_split(folder, "train", chunks, meta)


@pytest.fixture(params=["pcam", "kaggle", "class_folders"])
def written(request, tmp_path) -> tuple[str, Path, np.ndarray, np.ndarray, list[str]]:
    """(format, root, patches, labels, class names) for one dataset of each layout."""
    root = tmp_path / request.param
    if request.param == "pcam":
        write_pcam(root)
        return "pcam", root, PATCHES, LABELS, ["normal", "tumour"]
    if request.param == "kaggle":
        write_kaggle(root, PATCHES, LABELS)
        return "kaggle", root, PATCHES, LABELS, ["normal", "tumour"]
    write_class_folders(root, CLASS_PATCHES, CLASS_LABELS, CLASS_NAMES)
    read_order = np.argsort(CLASS_LABELS, kind="stable")  # class by class, in written order within a class
    return "class_folders", root, CLASS_PATCHES[read_order], CLASS_LABELS[read_order], CLASS_NAMES


def test_round_trip_in_requested_order(written) -> None:
    format_name, root, patches, labels, class_names = written
    with open_patch_dataset(root) as dataset:
        assert len(dataset) == len(patches)
        assert dataset.class_names == class_names
        order = RNG.permutation(len(patches))[:9]
        assert not np.all(np.diff(order) > 0)  # really unsorted
        batch, batch_labels = dataset.read_batch(order)
        np.testing.assert_array_equal(batch, patches[order])
        np.testing.assert_array_equal(batch_labels, labels[order])
        assert batch.dtype == np.uint8 and batch_labels.dtype == np.int64
        repeated = np.array([7, 3, 6, 3, 0, 8, 11])  # runs 6-8, a duplicate
        np.testing.assert_array_equal(dataset.read_batch(repeated)[0], patches[repeated])
        assert dataset.read_batch(np.array([], np.int64))[0].shape == (0, *patches.shape[1:])
        description = dataset.describe()
    assert description["format"] == format_name
    assert description["n"] == len(patches)
    assert description["counts"] == {name: int(np.sum(labels == k)) for k, name in enumerate(class_names)}


def test_pickled_after_a_read_still_reads(written) -> None:
    _, root, patches, labels, _ = written
    dataset = open_patch_dataset(root)
    dataset.read_batch(np.array([2, 0]))
    clone = pickle.loads(pickle.dumps(dataset))
    batch, batch_labels = clone.read_batch(np.array([5, 1]))
    np.testing.assert_array_equal(batch, patches[[5, 1]])
    np.testing.assert_array_equal(batch_labels, labels[[5, 1]])
    np.testing.assert_array_equal(dataset.read_batch(np.array([4]))[0], patches[[4]])
    dataset.close()
    clone.close()


def test_bad_indices_are_refused(tmp_path) -> None:
    write_pcam(tmp_path)
    with open_patch_dataset(tmp_path) as dataset:
        with pytest.raises(IndexError):
            dataset.read_batch(np.array([0, len(PATCHES)]))
        with pytest.raises(IndexError):
            dataset.read_batch(np.array([-1]))
        with pytest.raises(ValueError, match="integer"):
            dataset.read_batch(np.array([0.0, 1.0]))


def test_pcam_written_in_published_layout(tmp_path) -> None:
    assert write_pcam(tmp_path) == {"normal": 10, "tumour": 10}
    with h5py.File(tmp_path / f"{PCAM_PREFIX}train_x.h5") as x_file:
        assert list(x_file) == ["x"]
        assert (x_file["x"].shape, x_file["x"].dtype) == ((20, 96, 96, 3), np.uint8)
        assert x_file["x"].chunks == (1, 96, 96, 3) and x_file["x"].compression is None
    with h5py.File(tmp_path / f"{PCAM_PREFIX}train_y.h5") as y_file:
        assert list(y_file) == ["y"]
        assert (y_file["y"].shape, y_file["y"].dtype) == ((20, 1, 1, 1), np.uint8)
        np.testing.assert_array_equal(y_file["y"][:, 0, 0, 0], LABELS)
    with open(tmp_path / f"{PCAM_PREFIX}train_meta.csv", newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["", "coord_y", "coord_x", "tumor_patch", "center_tumor_patch", "wsi"]
    assert rows[2] == ["1", "10", "20", str(bool(LABELS[1])), str(bool(LABELS[1])), "s1"]
    assert len(rows) == 21
    assert open_patch_dataset(tmp_path).describe()["paths"][2].endswith("train_meta.csv")


def test_pcam_reads_only_the_requested_patches(tmp_path, monkeypatch) -> None:
    n_patches = 5000

    def stamped(indices: np.ndarray) -> np.ndarray:
        patches = np.empty((len(indices), 96, 96, 3), np.uint8)
        patches[...] = (indices % 256)[:, None, None, None]
        patches[:, 0, 0, 0] = indices // 256
        return patches

    chunks = (
        (stamped(np.arange(i, i + 1000)), np.arange(i, i + 1000) % 2) for i in range(0, n_patches, 1000)
    )
    write_pcam_split(tmp_path, "valid", chunks)
    dataset = open_patch_dataset(tmp_path, "valid")
    x_path = tmp_path / f"{PCAM_PREFIX}valid_x.h5"

    bytes_read = [0]

    class CountingFile(io.FileIO):
        def readinto(self, buffer) -> int:
            count = super().readinto(buffer)
            bytes_read[0] += count
            return count

    real_file = h5py.File
    monkeypatch.setattr(datasets.h5py, "File", lambda path, mode: real_file(CountingFile(path, "r"), mode))
    wanted = np.array([4321, 17, 2500])
    batch, labels = dataset.read_batch(wanted)
    np.testing.assert_array_equal(batch, stamped(wanted))
    np.testing.assert_array_equal(labels, wanted % 2)
    assert 3 * 96 * 96 * 3 <= bytes_read[0] < 0.01 * x_path.stat().st_size
    dataset.close()


def test_pcam_x_file_path_and_split(tmp_path) -> None:
    write_pcam_split(tmp_path, "valid", [(PATCHES[:4], LABELS[:4])])
    dataset = open_patch_dataset(tmp_path / f"{PCAM_PREFIX}valid_x.h5")
    assert len(dataset) == 4 and dataset.describe()["paths"][0].endswith("valid_x.h5")
    with pytest.raises(InputError, match=re.escape(f"{PCAM_PREFIX}train_x.h5: no such file")):
        open_patch_dataset(tmp_path)  # train asked for, valid present
    with pytest.raises(InputError, match="not 'val'"):
        open_patch_dataset(tmp_path, "val")


def test_pcam_gzipped_only_says_gunzip(tmp_path) -> None:
    write_pcam(tmp_path)
    for part in ("x", "y"):
        path = tmp_path / f"{PCAM_PREFIX}train_{part}.h5"
        with open(path, "rb") as source, gzip.open(f"{path}.gz", "wb") as target:
            shutil.copyfileobj(source, target)
        path.unlink()
    gz = tmp_path / f"{PCAM_PREFIX}train_x.h5.gz"
    for given in (tmp_path, gz):
        with pytest.raises(InputError, match=re.escape(f"gunzip {gz}")) as error:
            open_patch_dataset(given)
        assert error.value.path == str(gz)


def test_pcam_y_gzipped_only_names_y(tmp_path) -> None:
    write_pcam(tmp_path)
    y = tmp_path / f"{PCAM_PREFIX}train_y.h5"
    y.rename(f"{y}.gz")  # the name is all that is looked at
    with pytest.raises(InputError, match=re.escape(f"gunzip {y}.gz")):
        open_patch_dataset(tmp_path)


def rewrite_h5(path: Path, key: str, data: np.ndarray) -> None:
    with h5py.File(path, "w") as file:
        file.create_dataset(key, data=data)


@pytest.mark.parametrize(
    ("part", "key", "data", "problem"),
    [
        ("y", "y", LABELS[:19].reshape(-1, 1, 1, 1).astype(np.uint8), "has 19 labels but .* has 20 patches"),
        ("y", "y", np.where(LABELS == 1, 2, 0).reshape(-1, 1, 1, 1).astype(np.uint8), "must be 0 or 1"),
        ("y", "y", LABELS.astype(np.uint8), r"expected uint8 \(N, 1, 1, 1\)"),
        ("x", "x", PATCHES[:, :64, :64], r"\(20, 64, 64, 3\); expected uint8"),
        ("x", "x", PATCHES.astype(np.float32), "float32"),
        ("x", "images", PATCHES, "has no dataset 'x' .found: images"),
    ],
)
def test_pcam_bad_files(tmp_path, part: str, key: str, data: np.ndarray, problem: str) -> None:
    write_pcam(tmp_path)
    path = tmp_path / f"{PCAM_PREFIX}train_{part}.h5"
    rewrite_h5(path, key, data)
    with pytest.raises(InputError, match=problem) as error:
        open_patch_dataset(tmp_path)
    assert error.value.path == str(path)


def test_pcam_not_hdf5(tmp_path) -> None:
    write_pcam(tmp_path)
    (tmp_path / f"{PCAM_PREFIX}train_x.h5").write_bytes(b"not hdf5")
    with pytest.raises(InputError, match="cannot be opened as HDF5"):
        open_patch_dataset(tmp_path)


def test_kaggle_layout(tmp_path) -> None:
    write_kaggle(tmp_path, PATCHES[:3], LABELS[:3])
    with open(tmp_path / "train_labels.csv", newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["id", "label"] and len(rows) == 4
    for (patch_id, label), patch, expected in zip(rows[1:], PATCHES[:3], LABELS[:3], strict=True):
        assert re.fullmatch("[0-9a-f]{40}", patch_id) and int(label) == expected
        with Image.open(tmp_path / "train" / f"{patch_id}.tif") as image:
            assert image.format == "TIFF" and image.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(image), patch)
    with pytest.raises(InputError, match="labels for 'train' only"):
        open_patch_dataset(tmp_path, "valid")


def test_kaggle_bad_labels_and_missing_tifs(tmp_path) -> None:
    write_kaggle(tmp_path, PATCHES[:3], LABELS[:3], ids=["a" * 40, "b" * 40, "c" * 40])
    labels_csv = tmp_path / "train_labels.csv"
    labels_csv.write_text(f"id,label\n{'a' * 40},0\n{'b' * 40},2\n")
    with pytest.raises(InputError, match="line 3: expected <id>,<0 or 1>") as error:
        open_patch_dataset(tmp_path)
    assert error.value.path == str(labels_csv)
    labels_csv.write_text(f"id,label\n{'a' * 40},0\n{'d' * 40},1\n")
    with pytest.raises(InputError, match=f"1 id.* have no .tif here, e.g. {'d' * 40}.tif"):
        open_patch_dataset(tmp_path)
    labels_csv.write_text(f"image,target\n{'a' * 40},0\n")
    with pytest.raises(InputError, match="expected id,label"):
        open_patch_dataset(tmp_path)


@pytest.mark.parametrize(
    ("pixels", "problem"),
    [(np.zeros((64, 96, 3), np.uint8), "96 × 64 RGB"), (np.zeros((96, 96), np.uint8), "96 × 96 L")],
)
def test_kaggle_bad_tif_is_named(tmp_path, pixels: np.ndarray, problem: str) -> None:
    write_kaggle(tmp_path, PATCHES[:3], LABELS[:3], ids=["a" * 40, "b" * 40, "c" * 40])
    bad = tmp_path / "train" / f"{'b' * 40}.tif"
    Image.fromarray(pixels).save(bad)
    dataset = open_patch_dataset(tmp_path)
    np.testing.assert_array_equal(dataset.read_batch(np.array([2, 0]))[0], PATCHES[[2, 0]])
    with pytest.raises(InputError, match=f"is a {problem} image; expected 96 × 96 RGB") as error:
        dataset.read_batch(np.array([0, 1]))
    assert error.value.path == str(bad)


def test_class_folder_errors(tmp_path) -> None:
    write_class_folders(tmp_path, CLASS_PATCHES, CLASS_LABELS, CLASS_NAMES)
    (tmp_path / "adipose").mkdir()
    (tmp_path / "adipose" / "notes.txt").write_text("no images here")
    with pytest.raises(InputError, match="class folder has no images") as error:
        open_patch_dataset(tmp_path)
    assert error.value.path == str(tmp_path / "adipose")
    with pytest.raises(InputError, match="no class folders"):
        open_patch_dataset(tmp_path / "adipose")
    with pytest.raises(InputError, match="no such file or folder"):
        open_patch_dataset(tmp_path / "absent")


def test_writers_refuse_what_cannot_be_read_back(tmp_path) -> None:
    with pytest.raises(ValueError, match="sorted"):
        write_class_folders(tmp_path, CLASS_PATCHES, CLASS_LABELS, ["tumour", "stroma", "lymphocytes"])
    with pytest.raises(ValueError, match=r"no patches for class.* tumour"):
        write_class_folders(tmp_path, CLASS_PATCHES, CLASS_LABELS % 2, CLASS_NAMES)
    with pytest.raises(ValueError, match="labels must be integers in"):
        write_pcam_split(tmp_path, "train", [(PATCHES, LABELS + 1)])
    with pytest.raises(ValueError, match=r"must be \(96, 96, 3\)"):
        write_kaggle(tmp_path, CLASS_PATCHES, CLASS_LABELS % 2)
    with pytest.raises(ValueError, match="distinct ids"):
        write_kaggle(tmp_path, PATCHES[[0, 0]], LABELS[:2])

"""Labelled patch datasets in their published layouts, read in batches from disk, and writers for them.

Three layouts are read (:func:`open_patch_dataset` tells them apart):

- **PCam** (PatchCamelyon, https://github.com/basveeling/pcam). Per split (``train``, ``valid``, ``test``):
  ``camelyonpatch_level_2_split_{split}_x.h5`` (dataset ``"x"``, uint8 ``(N, 96, 96, 3)``),
  ``..._{split}_y.h5`` (dataset ``"y"``, uint8 ``(N, 1, 1, 1)``; 1 = tumour in the centre 32 × 32) and
  optionally ``..._{split}_meta.csv`` (columns ``coord_y, coord_x, tumor_patch, center_tumor_patch, wsi``);
  N is 262,144 / 32,768 / 32,768. The .h5 files are distributed gzipped (``.h5.gz``); gunzip them first.
  What we relied on: file names, the gzipped distribution and the split sizes are in the PCam README; the
  dataset keys ``'x'``/``'y'`` in its Keras example and loader (``HDF5Matrix(path, 'x')``); the shapes
  ``(262144, 96, 96, 3)``/``(262144, 1, 1, 1)`` in several independent loaders. We found no published
  statement of the chunking or compression inside the .h5 files, so the reader assumes neither (contiguous
  or chunked, compressed or not, all read the same way). A gunzipped train_x of about 7 GB (the size of the
  raw pixels, from a 6.1 GB .gz) suggests no compression inside. The meta CSV header is checked by column
  name; third-party loaders read it with ``index_col=0`` (a leading unnamed pandas index column), which
  :func:`write_pcam_split` therefore writes too.
- **Kaggle** "histopathologic-cancer-detection": ``train/<id>.tif`` (96 × 96 RGB) and ``train_labels.csv``
  with header ``id,label``. Only the labelled train split is read.
- **Class folders**: ``root/<class name>/*.{png,jpg,jpeg,tif,tiff}``; classes sorted by name, label = index.

Patches are never all loaded: labels (one small integer each) are read when a dataset is opened, pixels only
for the indices asked for. PCam batches are read from HDF5 in index order, one slice per run of
consecutive indices, then put in the order asked for."""

from __future__ import annotations

import csv
import hashlib
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from wsi_pipeline.core.errors import InputError

BINARY_CLASSES = ["normal", "tumour"]
PCAM_PREFIX = "camelyonpatch_level_2_split_"
PCAM_SPLITS = ("train", "valid", "test")
PCAM_META_COLUMNS = ["coord_y", "coord_x", "tumor_patch", "center_tumor_patch", "wsi"]
PATCH_SHAPE = (96, 96, 3)  # PCam and Kaggle
KAGGLE_LABELS = "train_labels.csv"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


class PatchDataset(ABC):
    """Labelled RGB patches of one size, read in batches by index. Use as a context manager, or close()."""

    def __init__(
        self,
        format_name: str,
        class_names: list[str],
        labels: np.ndarray,
        patch_shape: tuple[int, int, int],
        paths: list[Path],
    ) -> None:
        self.format = format_name
        self.class_names = class_names
        self.labels = np.asarray(labels, dtype=np.int64)
        self.patch_shape = patch_shape
        self.paths = paths

    def __len__(self) -> int:
        return len(self.labels)

    def read_batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 patches (B, H, W, 3) and int64 labels (B,), in the order of `indices`."""
        indices = np.asarray(indices)
        if indices.ndim != 1 or (indices.size and indices.dtype.kind not in "iu"):
            raise ValueError(f"indices must be a 1-D integer array, not {indices.dtype} {indices.shape}")
        indices = indices.astype(np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"indices must be in [0, {len(self)}); got {indices.min()} … {indices.max()}")
        unique, inverse = np.unique(indices, return_inverse=True)
        return self._read_sorted(unique)[inverse], self.labels[indices]

    def describe(self) -> dict:
        """JSON-able summary: format, paths, number of patches, patches per class."""
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {
            "format": self.format,
            "paths": [str(path) for path in self.paths],
            "n": len(self),
            "patch_shape": list(self.patch_shape),
            "counts": {name: int(count) for name, count in zip(self.class_names, counts, strict=True)},
        }

    def close(self) -> None:  # noqa: B027 (a hook: most datasets hold no open file)
        """Release open files (they are reopened if the dataset is read again)."""

    def __enter__(self) -> PatchDataset:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @abstractmethod
    def _read_sorted(self, indices: np.ndarray) -> np.ndarray:
        """uint8 patches at strictly increasing, in-range indices."""


class PCamDataset(PatchDataset):
    """One PCam split: pixels read lazily from the _x.h5 file, labels loaded from the _y.h5 file.

    The HDF5 file is opened on first read in each process and dropped when pickled, so the dataset can be
    sent to DataLoader workers (and a handle inherited through fork is not reused).
    """

    def __init__(self, x_path: Path, y_path: Path, meta_path: Path | None = None) -> None:
        with _open_h5(x_path) as x_file:
            x = _h5_dataset(x_file, x_path, "x")
            if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != PATCH_SHAPE:
                raise InputError(x_path, f"'x' is {x.dtype} {x.shape}; expected uint8 (N, 96, 96, 3)")
            n_patches = x.shape[0]
        with _open_h5(y_path) as y_file:
            y = _h5_dataset(y_file, y_path, "y")
            if y.dtype.kind not in "iub" or y.ndim != 4 or y.shape[1:] != (1, 1, 1):
                raise InputError(y_path, f"'y' is {y.dtype} {y.shape}; expected uint8 (N, 1, 1, 1)")
            labels = y[:].reshape(-1)
        if len(labels) != n_patches:
            raise InputError(y_path, f"has {len(labels)} labels but {x_path.name} has {n_patches} patches")
        bad = np.flatnonzero((labels != 0) & (labels != 1))
        if bad.size:
            raise InputError(y_path, f"labels must be 0 or 1; patch {bad[0]} has {labels[bad[0]]}")
        if meta_path is not None:
            with open(meta_path, newline="") as meta:
                header = next(csv.reader(meta), [])
            if missing := [column for column in PCAM_META_COLUMNS if column not in header]:
                raise InputError(meta_path, f"has no column(s) {', '.join(missing)}")
        paths = [x_path, y_path] if meta_path is None else [x_path, y_path, meta_path]
        super().__init__("pcam", BINARY_CLASSES, labels, PATCH_SHAPE, paths)
        self.x_path = x_path
        self._file: h5py.File | None = None
        self._pid: int | None = None

    def _read_sorted(self, indices: np.ndarray) -> np.ndarray:
        """One slice per run of consecutive indices (h5py's list indexing was 100× slower on a chunked x)."""
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = _open_h5(self.x_path), os.getpid()
        x = self._file["x"]
        out = np.empty((len(indices), *PATCH_SHAPE), np.uint8)
        starts = np.flatnonzero(np.diff(indices, prepend=-2) != 1)  # indices are >= 0: -2 always breaks a run
        ends = np.flatnonzero(np.diff(indices, append=-2) != 1) + 1
        for begin, end in zip(starts, ends, strict=True):
            out[begin:end] = x[indices[begin] : indices[begin] + end - begin]
        return out

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = self._pid = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None, "_pid": None}


class ImageFilesDataset(PatchDataset):
    """Patches stored one image file each (Kaggle .tif, class-folder images); every file must be RGB."""

    def __init__(
        self,
        format_name: str,
        files: list[Path],
        labels: np.ndarray,
        class_names: list[str],
        patch_shape: tuple[int, int, int],
        paths: list[Path],
    ) -> None:
        super().__init__(format_name, class_names, labels, patch_shape, paths)
        self.files = files

    def _read_sorted(self, indices: np.ndarray) -> np.ndarray:
        out = np.empty((len(indices), *self.patch_shape), np.uint8)
        for row, index in enumerate(indices):
            out[row] = _read_rgb(self.files[index], self.patch_shape)
        return out


def open_patch_dataset(path: str | Path, split: str = "train") -> PatchDataset:
    """Open a PCam folder (or its _x.h5 file), a Kaggle folder (train split only) or a class-folder tree.

    `split` chooses the PCam split (train, valid, test); a class-folder dataset is the folder itself, whatever
    `split` says.
    """
    path = Path(path)
    if path.name.startswith(PCAM_PREFIX):
        match = re.fullmatch(rf"{PCAM_PREFIX}({'|'.join(PCAM_SPLITS)})_x\.h5(\.gz)?", path.name)
        if match is None:
            raise InputError(path, f"is not a PCam image file ({PCAM_PREFIX}<train|valid|test>_x.h5)")
        return _open_pcam(path.parent, match[1])
    if not path.is_dir():
        raise InputError(path, "is not a patch dataset folder" if path.exists() else "no such file or folder")
    if any(child.name.startswith(PCAM_PREFIX) for child in path.iterdir()):
        return _open_pcam(path, split)
    if (path / KAGGLE_LABELS).is_file():
        return _open_kaggle(path, split)
    return _open_class_folders(path)


def _open_pcam(folder: Path, split: str) -> PCamDataset:
    if split not in PCAM_SPLITS:
        raise InputError(folder, f"PCam has splits {', '.join(PCAM_SPLITS)}, not {split!r}")
    meta = folder / f"{PCAM_PREFIX}{split}_meta.csv"
    return PCamDataset(
        _pcam_h5(folder, split, "x"), _pcam_h5(folder, split, "y"), meta if meta.is_file() else None
    )


def _pcam_h5(folder: Path, split: str, part: str) -> Path:
    path = folder / f"{PCAM_PREFIX}{split}_{part}.h5"
    gzipped = path.with_name(path.name + ".gz")
    if not path.is_file():
        if gzipped.is_file():
            raise InputError(gzipped, f"is gzipped as published; unpack it first: gunzip {gzipped}")
        raise InputError(path, "no such file")
    return path


def _open_h5(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise InputError(path, f"cannot be opened as HDF5 ({error})") from error


def _h5_dataset(file: h5py.File, path: Path, key: str) -> h5py.Dataset:
    if not isinstance(file.get(key), h5py.Dataset):
        raise InputError(path, f"has no dataset {key!r} (found: {', '.join(file.keys()) or 'nothing'})")
    return file[key]


def _open_kaggle(root: Path, split: str) -> ImageFilesDataset:
    if split != "train":
        raise InputError(
            root, f"Kaggle histopathologic-cancer-detection has labels for 'train' only, not {split!r}"
        )
    labels_csv, train = root / KAGGLE_LABELS, root / "train"
    if not train.is_dir():
        raise InputError(train, "no such folder (expected train/<id>.tif)")
    with open(labels_csv, newline="") as file:
        rows = list(csv.reader(file))
    if not rows or rows[0] != ["id", "label"]:
        raise InputError(
            labels_csv, f"header is {','.join(rows[0]) if rows else 'missing'}; expected id,label"
        )
    if len(rows) == 1:
        raise InputError(labels_csv, "has no rows")
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 2 or row[1] not in ("0", "1"):
            raise InputError(labels_csv, f"line {line}: expected <id>,<0 or 1>, got {','.join(row)!r}")
    ids = [row[0] for row in rows[1:]]
    present = {entry.name for entry in os.scandir(train)}
    if missing := [patch_id for patch_id in ids if f"{patch_id}.tif" not in present]:
        raise InputError(
            train, f"{len(missing)} id(s) in {KAGGLE_LABELS} have no .tif here, e.g. {missing[0]}.tif"
        )
    labels = np.array([int(row[1]) for row in rows[1:]], np.int64)
    files = [train / f"{patch_id}.tif" for patch_id in ids]
    return ImageFilesDataset("kaggle", files, labels, BINARY_CLASSES, PATCH_SHAPE, [train, labels_csv])


def _open_class_folders(root: Path) -> ImageFilesDataset:
    class_dirs = sorted(
        child for child in root.iterdir() if child.is_dir() and not child.name.startswith(".")
    )
    if not class_dirs:
        raise InputError(root, "is not a PCam or Kaggle folder and has no class folders")
    files: list[Path] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        images = sorted(file for file in class_dir.iterdir() if file.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise InputError(class_dir, f"class folder has no images ({', '.join(IMAGE_SUFFIXES)})")
        files += images
        labels += [label] * len(images)
    try:
        with Image.open(files[0]) as first:
            width, height = first.size
    except OSError as error:
        raise InputError(files[0], f"cannot be read as an image ({error})") from error
    names = [class_dir.name for class_dir in class_dirs]
    return ImageFilesDataset("class_folders", files, np.array(labels), names, (height, width, 3), [root])


def _read_rgb(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    try:
        with Image.open(path) as image:
            if image.mode != "RGB" or image.size != (shape[1], shape[0]):
                width, height = image.size
                raise InputError(
                    path, f"is a {width} × {height} {image.mode} image; expected {shape[1]} × {shape[0]} RGB"
                )
            return np.asarray(image)
    except OSError as error:
        raise InputError(path, f"cannot be read as an image ({error})") from error


def write_pcam_split(
    folder: str | Path,
    split: str,
    chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    meta: Iterable[dict] | None = None,
) -> dict:
    """Stream (patches uint8 (n, 96, 96, 3), labels (n,)) chunks into a PCam split; return patches per class.

    Writes ``x`` and ``y`` with PCam's names, shapes and dtypes; the datasets are resizable, hence chunked,
    one patch per chunk (cheap random reads), uncompressed. `meta`, if given, holds one dict per patch with
    the keys coord_y, coord_x, tumor_patch, center_tumor_patch, wsi; it is iterated only after the last chunk,
    so it may be filled while the chunks are produced. Existing files of the split are replaced.
    """
    if split not in PCAM_SPLITS:
        raise ValueError(f"split must be one of {', '.join(PCAM_SPLITS)}, not {split!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    counts = np.zeros(2, np.int64)
    with (
        h5py.File(folder / f"{PCAM_PREFIX}{split}_x.h5", "w") as x_file,
        h5py.File(folder / f"{PCAM_PREFIX}{split}_y.h5", "w") as y_file,
    ):
        x = x_file.create_dataset(
            "x",
            shape=(0, *PATCH_SHAPE),
            maxshape=(None, *PATCH_SHAPE),
            dtype=np.uint8,
            chunks=(1, *PATCH_SHAPE),
        )
        y = y_file.create_dataset(
            "y", shape=(0, 1, 1, 1), maxshape=(None, 1, 1, 1), dtype=np.uint8, chunks=True
        )
        for patches, labels in chunks:
            labels = _check_patches(patches, labels, 2, PATCH_SHAPE)
            start, stop = len(x), len(x) + len(labels)
            x.resize(stop, axis=0)
            y.resize(stop, axis=0)
            x[start:stop] = patches
            y[start:stop] = labels.reshape(-1, 1, 1, 1)
            counts += np.bincount(labels, minlength=2)
        n_patches = len(x)
    if meta is not None:
        with open(folder / f"{PCAM_PREFIX}{split}_meta.csv", "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["", *PCAM_META_COLUMNS])
            n_rows = 0
            for n_rows, row in enumerate(meta, start=1):
                writer.writerow([n_rows - 1, *(row[column] for column in PCAM_META_COLUMNS)])
        if n_rows != n_patches:
            raise ValueError(f"meta has {n_rows} rows for {n_patches} patches")
    return {name: int(count) for name, count in zip(BINARY_CLASSES, counts, strict=True)}


def write_kaggle(
    root: str | Path, patches: np.ndarray, labels: np.ndarray, ids: list[str] | None = None
) -> Path:
    """Write ``train/<id>.tif`` and ``train_labels.csv``; ids default to the SHA-1 of each patch's pixels."""
    root = Path(root)
    labels = _check_patches(patches, labels, 2, PATCH_SHAPE)
    if ids is None:
        ids = [hashlib.sha1(np.ascontiguousarray(patch).tobytes()).hexdigest() for patch in patches]
    if len(ids) != len(labels) or len(set(ids)) != len(ids):
        raise ValueError(f"need {len(labels)} distinct ids, got {len(set(ids))} distinct of {len(ids)}")
    (root / "train").mkdir(parents=True, exist_ok=True)
    with open(root / KAGGLE_LABELS, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["id", "label"])
        for patch_id, patch, label in zip(ids, patches, labels, strict=True):
            Image.fromarray(patch).save(root / "train" / f"{patch_id}.tif")
            writer.writerow([patch_id, int(label)])
    return root


def write_class_folders(
    root: str | Path, patches: np.ndarray, labels: np.ndarray, class_names: list[str]
) -> Path:
    """Write ``root/<class name>/<index>.png``; class names must be sorted (the reader sorts them).

    Read back class by class, each class's patches in the order given here.
    """
    if class_names != sorted(set(class_names)):
        raise ValueError(f"class names must be distinct and sorted, got {class_names}")
    root = Path(root)
    labels = _check_patches(patches, labels, len(class_names), None)
    if empty := [
        name
        for name, count in zip(class_names, np.bincount(labels, minlength=len(class_names)), strict=True)
        if not count
    ]:
        raise ValueError(f"no patches for class(es) {', '.join(empty)}; an empty class folder cannot be read")
    for name in class_names:
        (root / name).mkdir(parents=True, exist_ok=True)
    for index, (patch, label) in enumerate(zip(patches, labels, strict=True)):
        Image.fromarray(patch).save(root / class_names[label] / f"{index:06d}.png")
    return root


def _check_patches(
    patches: np.ndarray, labels: np.ndarray, n_classes: int, shape: tuple[int, int, int] | None
) -> np.ndarray:
    """Labels as int64, after checking patches are uint8 RGB (of `shape`) and labels in range(n_classes)."""
    labels = np.asarray(labels).reshape(-1)
    if patches.dtype != np.uint8 or patches.ndim != 4 or patches.shape[-1] != 3:
        raise ValueError(f"patches must be uint8 (n, height, width, 3), not {patches.dtype} {patches.shape}")
    if shape is not None and patches.shape[1:] != shape:
        raise ValueError(f"patches must be {shape}, not {patches.shape[1:]}")
    if len(labels) != len(patches):
        raise ValueError(f"{len(labels)} labels for {len(patches)} patches")
    if labels.dtype.kind not in "iub" or (labels.size and (labels.min() < 0 or labels.max() >= n_classes)):
        raise ValueError(f"labels must be integers in [0, {n_classes})")
    return labels.astype(np.int64)

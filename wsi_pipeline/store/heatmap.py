"""The heatmap store: an OME-NGFF 0.5 Zarr v3 group written block by block, and reading it back.

Layout of ``<stem>.zarr``::

    zarr.json        ome.multiscales (axes c, y, x in micrometer), omero channel names, wsi_pipeline metadata
                     (a ``HeatmapRecord``, see ``store.metadata``)
    0/, 1/, ...      class probabilities (c, y, x) float32 per grid cell; NaN where no tissue was scored
    labels/tissue/0, 1, ...   uint8 per grid cell: 0 = background (never scored), 1 = tissue (scored),
                     2 = tissue whose pixels no pyramid level could decode (NaN), 3 = tissue scored from
                     another pyramid level than its block's (its own could not be decoded)
    blocks_done/     uint8 per block of cells (one 1-byte chunk each): 1 once the block's scores are on disk

A heatmap is written under an exclusive lock file ``<stem>.zarr.lock`` beside it (``FileLock``).

Each value sits at the centre of its cell's patch: level 0 has ``scale = stride * target_mpp`` µm and
``translation = patch_size / 2 * target_mpp`` µm, measured from the slide's top-left corner."""

from __future__ import annotations

import glob
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.storage import LocalStore

from wsi_pipeline.core.errors import InputError
from wsi_pipeline.store.metadata import HeatmapRecord, from_dict, migrate, to_dict, updated
from wsi_pipeline.store.ngff import NGFF_VERSION, halve, level_shapes, multiscales
from wsi_pipeline.tiling.grid import Block, PatchGrid

META_KEY = "wsi_pipeline"
BACKGROUND, TISSUE, UNREADABLE, OTHER_LEVEL = 0, 1, 2, 3  # the tissue label image's values
_LABEL_COLOURS = {TISSUE: [0, 160, 0, 255], UNREADABLE: [220, 0, 0, 255], OTHER_LEVEL: [240, 160, 0, 255]}
DONE_ARRAY = "blocks_done"
MAX_HEATMAP_BYTES = 1 << 32  # read_heatmap's limit: 2^26 cells (the metadata's) of 2 classes take 576 MiB
_COMPRESSORS = (BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle"),)


def _create_array(group: zarr.Group, name: str, **kwargs: object) -> zarr.Array:
    """A compressed array whose dimension names are the NGFF axes (``c, y, x`` or ``y, x``)."""
    shape = kwargs["data"].shape if "data" in kwargs else kwargs["shape"]
    names = ("c", "y", "x")[-len(shape) :]
    return group.create_array(name, dimension_names=names, **{"compressors": _COMPRESSORS, **kwargs})


def _sync_chunk(array: zarr.Array, chunk_coords: tuple[int, ...]) -> None:
    """Flush a chunk just written to a local store to the disk (other stores hold it once written)."""
    store = array.store
    if isinstance(store, LocalStore):
        try:
            fd = os.open(store.root / array.path / array.metadata.encode_chunk_key(chunk_coords), os.O_RDONLY)
        except FileNotFoundError:  # a chunk of fill values only (no cell of its block read) is not kept
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class HeatmapWriter:
    """Creates the store (or reopens a partial one), takes blocks of scores as they finish, records each block
    as done once its scores are on disk, and marks the heatmap complete at the end. ``metadata`` is the
    heatmap's record, its grid, classes and block size replaced by those given here, no devices or engines and
    not complete. A new store is made beside ``path`` with its ``tissue`` cells, then moved there (replacing
    a heatmap there): a run killed meanwhile leaves what was there, or nothing."""

    def __init__(
        self,
        path: str | Path,
        grid: PatchGrid,
        class_names: list[str],
        block_cells: int,
        metadata: HeatmapRecord,
        tissue: np.ndarray | None = None,
    ) -> None:
        metadata = updated(
            metadata,
            path,
            grid=grid,
            class_names=tuple(class_names),
            block_cells=block_cells,
            devices=(),
            engines=(),
            complete=False,
        )
        path, building = Path(path), _beside(Path(path), "partial")
        try:
            self._build(building, grid, class_names, block_cells, metadata, tissue)
            if path.exists():
                remove_heatmap(path)
            os.rename(building, path)
        finally:
            shutil.rmtree(building, ignore_errors=True)
        self._bind(path, zarr.open_group(path, mode="r+"), metadata)

    def _build(
        self,
        path: Path,
        grid: PatchGrid,
        class_names: list[str],
        block_cells: int,
        metadata: HeatmapRecord,
        tissue: np.ndarray | None,
    ) -> None:
        root = zarr.open_group(path, mode="w", zarr_format=3)
        rows, cols = grid.shape
        chunk = (min(block_cells, max(rows, 1)), min(block_cells, max(cols, 1)))
        _create_array(
            root,
            "0",
            shape=(len(class_names), rows, cols),
            chunks=(len(class_names), *chunk),
            dtype="float32",
            fill_value=np.nan,
        )
        labels = root.create_group("labels")
        labels.attrs["ome"] = {"version": NGFF_VERSION, "labels": ["tissue"]}
        tissue_group = labels.create_group("tissue")
        _create_array(tissue_group, "0", shape=(rows, cols), chunks=chunk, dtype="uint8", fill_value=0)
        _create_array(
            root,
            DONE_ARRAY,
            shape=(-(-rows // chunk[0]), -(-cols // chunk[1])),
            chunks=(1, 1),
            dtype="uint8",
            fill_value=0,
            compressors=None,
        )
        self._bind(path, root, metadata)
        if tissue is not None:
            self.write_tissue(tissue)
        self.tissue_group.attrs.update(self._tissue_attrs(n_levels=1))
        self.root.attrs.update(self._ome_attrs(n_levels=1))  # last: the metadata makes it a heatmap

    @classmethod
    def reopen(cls, path: str | Path) -> HeatmapWriter:
        """The writer of a partial heatmap, to add the blocks it lacks."""
        root = zarr.open_group(path, mode="r+")
        if DONE_ARRAY not in root:
            raise InputError(path, "partial heatmap keeps no record of its finished blocks; --overwrite")
        writer = cls.__new__(cls)
        writer._bind(Path(path), root, read_record(path))
        return writer

    def _bind(self, path: Path, root: zarr.Group, metadata: HeatmapRecord) -> None:
        self.path, self.root, self.metadata = path, root, metadata
        self.grid = metadata.grid
        self._shapes = level_shapes(self.grid.shape)
        self.probabilities = root["0"]
        self.tissue_group = root["labels/tissue"]
        self.tissue = self.tissue_group["0"]
        self.done = root[DONE_ARRAY]
        self._written = self.done[...].astype(bool)

    def _block_index(self, block: Block) -> tuple[int, int]:
        rows, cols = self.probabilities.chunks[1:]
        return block.row0_grid // rows, block.col0_grid // cols

    def is_written(self, block: Block) -> bool:
        """Whether a block's scores are in the store (from this run or an earlier one)."""
        return bool(self._written[self._block_index(block)])

    def record(self, **changes: object) -> None:
        """Replace fields of the heatmap's record (``HeatmapRecord`` field values, or their dict and list
        form) in the store; a heatmap of an earlier version is written as the current one."""
        self.metadata = updated(self.metadata, self.path, **changes)
        self.root.attrs.update({META_KEY: to_dict(self.metadata)})

    def note_runner(self, device: str, engines: tuple[str, ...]) -> None:
        """Record the device and engines (one per model of an ensemble) that scored blocks (all of them, kept
        across resumed runs)."""
        devices, known = self.metadata.devices, self.metadata.engines
        if device not in devices or not set(engines) <= set(known):
            self.record(devices=tuple(sorted({*devices, device})), engines=tuple(sorted({*known, *engines})))

    def _ome_attrs(self, n_levels: int) -> dict:
        class_names = self.metadata.class_names
        channels = [
            {"label": name, "active": i == len(class_names) - 1} for i, name in enumerate(class_names)
        ]
        for channel in channels:
            channel["window"] = {"min": 0.0, "max": 1.0, "start": 0.0, "end": 1.0}
        ome = {
            "version": NGFF_VERSION,
            "multiscales": multiscales("probabilities", self.grid, n_levels, with_channel=True),
            "omero": {"channels": channels},
        }
        return {"ome": ome, META_KEY: to_dict(self.metadata)}

    def _tissue_attrs(self, n_levels: int) -> dict:
        return {
            "ome": {
                "version": NGFF_VERSION,
                "multiscales": multiscales("tissue", self.grid, n_levels, with_channel=False),
                "image-label": {
                    "version": NGFF_VERSION,
                    "colors": [{"label-value": key, "rgba": rgba} for key, rgba in _LABEL_COLOURS.items()],
                    "source": {"image": "../../"},
                },
            }
        }

    def write_tissue(self, tissue_cells: np.ndarray) -> None:
        self.tissue[...] = tissue_cells.astype(np.uint8)

    def write_labels(self, block: Block, labels: np.ndarray) -> None:
        """Store a block's (n_rows, n_cols) cell labels as scoring found them (``TISSUE``, ``UNREADABLE``,
        ``OTHER_LEVEL`` or ``BACKGROUND``), one chunk flushed to the disk, before ``write_block`` marks it
        done."""
        self.tissue[block.cells] = labels
        _sync_chunk(self.tissue, self._block_index(block))

    def write_block(self, block: Block, probabilities: np.ndarray) -> None:
        """Store a block's (classes, n_rows, n_cols) probabilities, one chunk (blocks are aligned to chunks),
        then mark the block done: each chunk is written atomically, and the scores are flushed to the disk
        first, so a block marked done always has its scores."""
        self.probabilities[(slice(None), *block.cells)] = probabilities
        index = self._block_index(block)
        _sync_chunk(self.probabilities, (0, *index))
        self.done[index] = 1
        self._written[index] = True

    def forget_unreadable(self) -> int:
        """Mark the blocks holding ``UNREADABLE`` cells as not written, so that they are scored again (the
        heatmap is partial until then); returns how many."""
        unreadable = self.tissue[...] == UNREADABLE
        rows, cols = self.probabilities.chunks[1:]
        blocks = [(r // rows, c // cols) for r, c in np.argwhere(unreadable)]
        indices = tuple(np.array(sorted(set(blocks))).T)
        if not blocks:
            return 0
        self.record(complete=False)  # first: a heatmap that says it is complete lacks no block
        self.done.set_coordinate_selection(indices, 0)
        self._written[indices] = False
        return len(indices[0])

    def finalise(self, **changes: object) -> None:
        """Build the coarser levels, then record the cells scored, unreadable and read from another level (as
        the labels count them), ``changes`` (as ``record``), and the heatmap as complete (last, so a crash
        never claims it)."""
        probabilities, tissue = self.probabilities[...], self.tissue[...]
        counts = np.bincount(tissue.ravel(), minlength=OTHER_LEVEL + 1)
        for level in range(1, len(self._shapes)):
            probabilities, tissue = halve(probabilities, "nanmean"), halve(tissue, "max")
            _create_array(
                self.root, str(level), data=probabilities, chunks=probabilities.shape, overwrite=True
            )
            _create_array(self.tissue_group, str(level), data=tissue, chunks=tissue.shape, overwrite=True)
        self.tissue_group.attrs.update(self._tissue_attrs(len(self._shapes)))
        changes = {
            "patches_scored": int(counts[TISSUE] + counts[OTHER_LEVEL]),
            "unreadable_cells": int(counts[UNREADABLE]),
            "other_level_cells": int(counts[OTHER_LEVEL]),
            **changes,
        }
        self.metadata = updated(self.metadata, self.path, **changes, complete=True)
        self.root.attrs.update(self._ome_attrs(len(self._shapes)))


@dataclass
class Heatmap:
    """A heatmap read back: arrays at grid resolution (level 0) and the geometry to place them."""

    probabilities: np.ndarray  # float32 (classes, rows, cols), NaN where not scored
    tissue: np.ndarray  # bool (rows, cols)
    grid: PatchGrid
    class_names: list[str]
    metadata: HeatmapRecord
    labels: np.ndarray | None = None  # uint8 (rows, cols): the tissue label image (None: ``tissue`` as 0/1)

    def __post_init__(self) -> None:
        if self.labels is None:
            self.labels = self.tissue.astype(np.uint8)

    @property
    def complete(self) -> bool:
        return self.metadata.complete


def is_heatmap(path: str | Path) -> bool:
    """Whether ``path`` is a Zarr group written by this package."""
    try:
        return META_KEY in zarr.open_group(path, mode="r").attrs
    except Exception:
        return False


def read_record(path: str | Path) -> HeatmapRecord:
    """The metadata record of a heatmap store, of any version, checked (no arrays are read)."""
    if not is_heatmap(path):
        raise InputError(path, "not a wsi_pipeline heatmap (no Zarr group with wsi_pipeline metadata)")
    return from_dict(migrate(zarr.open_group(path, mode="r").attrs[META_KEY], path), path)


def read_heatmap(path: str | Path) -> Heatmap:
    """Read a heatmap store written by ``wsi-score``."""
    metadata = read_record(path)
    root = zarr.open_group(path, mode="r")
    probabilities, labels = root["0"], root["labels/tissue/0"]
    expected = (len(metadata.class_names), *metadata.grid.shape)
    if probabilities.shape != expected or labels.shape != expected[1:]:
        raise InputError(
            path, f"heatmap arrays of shape {probabilities.shape} where its metadata says {expected}"
        )
    size = probabilities.nbytes + labels.nbytes
    if size > MAX_HEATMAP_BYTES:
        problem = f"heatmap arrays of {size / 2**30:.0f} GiB, more than any slide gives; not read"
        raise InputError(path, problem)
    cell_labels = labels[...]
    return Heatmap(
        probabilities=probabilities[...],
        tissue=cell_labels.astype(bool),
        grid=metadata.grid,
        class_names=list(metadata.class_names),
        metadata=metadata,
        labels=cell_labels,
    )


def remove_heatmap(path: str | Path) -> None:
    """Delete a heatmap store (moved aside first, so a run killed meanwhile leaves no half of it); refuses
    anything that is not one, so user data is never removed."""
    if not is_heatmap(path):
        raise InputError(path, "exists and is not a wsi_pipeline heatmap; not overwriting it")
    aside = _beside(Path(path), "trash")
    os.rename(path, aside)
    shutil.rmtree(aside)


def _beside(path: Path, kind: str) -> Path:
    """A new, hidden name beside a store for it being made (``partial``) or deleted (``trash``)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.{kind}")


def remove_leftovers(path: str | Path) -> None:
    """Delete what runs killed while making or deleting the store at ``path`` left beside it (call while
    holding its lock)."""
    path = Path(path)
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*"):
        if leftover.suffix in (".partial", ".trash") and leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)

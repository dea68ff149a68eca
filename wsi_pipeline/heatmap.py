"""The heatmap store: an OME-NGFF 0.5 Zarr v3 group written block by block, and reading it back.

Layout of ``<stem>.zarr``::

    zarr.json        ome.multiscales (axes c, y, x in micrometer), omero channel names, wsi_pipeline metadata
    0/, 1/, ...      class probabilities (c, y, x) float32 per grid cell; NaN where no tissue was scored
    labels/tissue/0, 1, ...   uint8 per grid cell: 1 = tissue (scored), 0 = background (never scored)

Each value sits at the centre of its cell's patch: level 0 has ``scale = stride * target_mpp`` µm and
``translation = patch_size / 2 * target_mpp`` µm, measured from the slide's top-left corner.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from .errors import InputError
from .grid import Block, PatchGrid

NGFF_VERSION = "0.5"
META_KEY = "wsi_pipeline"
MIN_LEVELS = 2
SMALLEST_LEVEL_CELLS = 256  # add levels until the largest side is at most this
_COMPRESSORS = (BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle"),)


def _axes(with_channel: bool) -> list[dict]:
    space = [{"name": name, "type": "space", "unit": "micrometer"} for name in ("y", "x")]
    return ([{"name": "c", "type": "channel"}] if with_channel else []) + space


def _datasets(grid: PatchGrid, n_levels: int, with_channel: bool) -> list[dict]:
    """Per-level transforms: level k merges 2^k × 2^k cells, its value sitting at their centres' mean."""
    datasets = []
    for level in range(n_levels):
        factor = 2**level
        scale_um = grid.cell_um * factor
        translation_um = grid.origin_um + grid.cell_um * (factor - 1) / 2
        lead = [1.0] if with_channel else []
        lead_t = [0.0] if with_channel else []
        datasets.append(
            {
                "path": str(level),
                "coordinateTransformations": [
                    {"type": "scale", "scale": [*lead, scale_um, scale_um]},
                    {"type": "translation", "translation": [*lead_t, translation_um, translation_um]},
                ],
            }
        )
    return datasets


def _multiscales(name: str, grid: PatchGrid, n_levels: int, with_channel: bool) -> list[dict]:
    return [
        {
            "name": name,
            "axes": _axes(with_channel),
            "datasets": _datasets(grid, n_levels, with_channel),
            "type": "mean" if with_channel else "max",
        }
    ]


def level_shapes(grid_shape: tuple[int, int]) -> list[tuple[int, int]]:
    """Grid shapes of the pyramid, halving (rounding up) until the largest side fits."""
    shapes = [grid_shape]
    while len(shapes) < MIN_LEVELS or max(shapes[-1]) > SMALLEST_LEVEL_CELLS:
        rows, cols = shapes[-1]
        shapes.append(((rows + 1) // 2, (cols + 1) // 2))
    return shapes


def _halve(values: np.ndarray, reduce: str) -> np.ndarray:
    """2×2 reduction over the last two axes (nanmean or max), padding odd sides."""
    rows, cols = values.shape[-2:]
    pad = [(0, 0)] * (values.ndim - 2) + [(0, rows % 2), (0, cols % 2)]
    fill = np.nan if reduce == "nanmean" else 0
    padded = np.pad(values, pad, constant_values=fill)
    quads = padded.reshape(*values.shape[:-2], padded.shape[-2] // 2, 2, padded.shape[-1] // 2, 2)
    if reduce == "max":
        return quads.max(axis=(-3, -1))
    counts = np.isfinite(quads).sum(axis=(-3, -1))
    sums = np.nansum(quads, axis=(-3, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan).astype(values.dtype)


def _create_array(group: zarr.Group, name: str, **kwargs: object) -> zarr.Array:
    """A compressed array whose dimension names are the NGFF axes (``c, y, x`` or ``y, x``)."""
    shape = kwargs["data"].shape if "data" in kwargs else kwargs["shape"]
    names = ("c", "y", "x")[-len(shape) :]
    return group.create_array(name, dimension_names=names, compressors=_COMPRESSORS, **kwargs)


class HeatmapWriter:
    """Creates the store, takes blocks of scores as they finish, and marks it complete at the end."""

    def __init__(
        self, path: str | Path, grid: PatchGrid, class_names: list[str], block_cells: int, metadata: dict
    ) -> None:
        self.path = Path(path)
        self.grid = grid
        self.metadata = {**metadata, "grid": grid.to_dict(), "class_names": class_names, "complete": False}
        self.root = zarr.open_group(self.path, mode="w", zarr_format=3)
        self._shapes = level_shapes(grid.shape)
        rows, cols = grid.shape
        chunk = (min(block_cells, max(rows, 1)), min(block_cells, max(cols, 1)))
        self.probabilities = _create_array(
            self.root,
            "0",
            shape=(len(class_names), rows, cols),
            chunks=(len(class_names), *chunk),
            dtype="float32",
            fill_value=np.nan,
        )
        labels = self.root.create_group("labels")
        labels.attrs["ome"] = {"version": NGFF_VERSION, "labels": ["tissue"]}
        self.tissue_group = labels.create_group("tissue")
        self.tissue = _create_array(
            self.tissue_group, "0", shape=(rows, cols), chunks=chunk, dtype="uint8", fill_value=0
        )
        self.root.attrs.update(self._ome_attrs(class_names, n_levels=1))
        self.tissue_group.attrs.update(self._tissue_attrs(n_levels=1))

    def _ome_attrs(self, class_names: list[str], n_levels: int) -> dict:
        channels = [
            {"label": name, "active": i == len(class_names) - 1} for i, name in enumerate(class_names)
        ]
        for channel in channels:
            channel["window"] = {"min": 0.0, "max": 1.0, "start": 0.0, "end": 1.0}
        ome = {
            "version": NGFF_VERSION,
            "multiscales": _multiscales("probabilities", self.grid, n_levels, with_channel=True),
            "omero": {"channels": channels},
        }
        return {"ome": ome, META_KEY: self.metadata}

    def _tissue_attrs(self, n_levels: int) -> dict:
        return {
            "ome": {
                "version": NGFF_VERSION,
                "multiscales": _multiscales("tissue", self.grid, n_levels, with_channel=False),
                "image-label": {
                    "version": NGFF_VERSION,
                    "colors": [{"label-value": 1, "rgba": [0, 160, 0, 255]}],
                    "source": {"image": "../../"},
                },
            }
        }

    def write_tissue(self, tissue_cells: np.ndarray) -> None:
        self.tissue[...] = tissue_cells.astype(np.uint8)

    def write_block(self, block: Block, probabilities: np.ndarray) -> None:
        """Store a block's (classes, n_rows, n_cols) probabilities; aligned to chunks, so one write each."""
        self.probabilities[(slice(None), *block.cells)] = probabilities

    def finalise(self, **metadata: object) -> None:
        """Build the coarser levels, then mark the heatmap complete (last, so a crash never claims it)."""
        probabilities, tissue = self.probabilities[...], self.tissue[...]
        for level in range(1, len(self._shapes)):
            probabilities, tissue = _halve(probabilities, "nanmean"), _halve(tissue, "max")
            _create_array(self.root, str(level), data=probabilities, chunks=probabilities.shape)
            _create_array(self.tissue_group, str(level), data=tissue, chunks=tissue.shape)
        self.tissue_group.attrs.update(self._tissue_attrs(len(self._shapes)))
        self.metadata.update(metadata, complete=True)
        self.root.attrs.update(self._ome_attrs(self.metadata["class_names"], len(self._shapes)))


@dataclass
class Heatmap:
    """A heatmap read back: arrays at grid resolution (level 0) and the geometry to place them."""

    probabilities: np.ndarray  # float32 (classes, rows, cols), NaN where not scored
    tissue: np.ndarray  # bool (rows, cols)
    grid: PatchGrid
    class_names: list[str]
    metadata: dict

    @property
    def complete(self) -> bool:
        return bool(self.metadata.get("complete"))


def is_heatmap(path: str | Path) -> bool:
    """Whether ``path`` is a Zarr group written by this package."""
    try:
        return META_KEY in zarr.open_group(path, mode="r").attrs
    except Exception:
        return False


def read_metadata(path: str | Path) -> dict:
    """The run metadata of a heatmap store (no arrays are read)."""
    if not is_heatmap(path):
        raise InputError(path, "not a wsi_pipeline heatmap (no Zarr group with wsi_pipeline metadata)")
    return dict(zarr.open_group(path, mode="r").attrs[META_KEY])


def read_heatmap(path: str | Path) -> Heatmap:
    """Read a heatmap store written by ``wsi-score``."""
    metadata = read_metadata(path)
    root = zarr.open_group(path, mode="r")
    return Heatmap(
        probabilities=root["0"][...],
        tissue=root["labels/tissue/0"][...].astype(bool),
        grid=PatchGrid(**metadata["grid"]),
        class_names=list(metadata["class_names"]),
        metadata=metadata,
    )


def remove_heatmap(path: str | Path) -> None:
    """Delete a heatmap store; refuses anything that is not one, so user data is never removed."""
    if not is_heatmap(path):
        raise InputError(path, "exists and is not a wsi_pipeline heatmap; not overwriting it")
    shutil.rmtree(path)

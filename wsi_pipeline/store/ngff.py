"""OME-NGFF 0.5 metadata and pyramid levels of a heatmap: one value per grid cell, at its patch's centre."""

from __future__ import annotations

import numpy as np

from wsi_pipeline.tiling.grid import PatchGrid

NGFF_VERSION = "0.5"
MIN_LEVELS = 2
SMALLEST_LEVEL_CELLS = 256  # add levels until the largest side is at most this


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


def multiscales(name: str, grid: PatchGrid, n_levels: int, with_channel: bool) -> list[dict]:
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


def halve(values: np.ndarray, reduce: str) -> np.ndarray:
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

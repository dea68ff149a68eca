"""Blocks to patches: read a block of grid cells as one region at the target µm/px and cut its patches."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from wsi_pipeline.slide.reader import Slide
from wsi_pipeline.tiling.grid import Block, PatchGrid


def cut_patches(region: np.ndarray, patch_size: int, stride: int) -> np.ndarray:
    """View (rows, cols, patch, patch, 3) of the patches of a region whose corner is a cell's corner."""
    windows = sliding_window_view(region, (patch_size, patch_size, 3))
    return windows[::stride, ::stride, 0]


def read_block_patches(slide: Slide, grid: PatchGrid, block: Block, cells: np.ndarray) -> np.ndarray:
    """uint8 patches (N, patch, patch, 3) of the block's cells where ``cells`` (n_rows, n_cols) is True,
    in row-major order. Only the rows and columns of the block that hold such cells are read."""
    rows, cols = np.flatnonzero(cells.any(axis=1)), np.flatnonzero(cells.any(axis=0))
    if not len(rows):
        return np.empty((0, grid.patch_size, grid.patch_size, 3), np.uint8)
    row0, row1, col0, col1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    part = Block(block.row0_grid + row0, block.col0_grid + col0, row1 - row0, col1 - col0)
    x0_target, y0_target, width_target, height_target = part.target_box(grid)
    region = slide.read_at_mpp(x0_target, y0_target, width_target, height_target, grid.target_mpp)
    patches = cut_patches(region, grid.patch_size, grid.stride)
    return patches[: part.n_rows, : part.n_cols][cells[row0:row1, col0:col1]]


def read_cell_patches(slide: Slide, grid: PatchGrid, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """uint8 patches (N, patch, patch, 3) of the given grid cells, each read as a block of its own (for
    reviewing a few cells). Scoring reads many cells as one region, whose bilinear resampling may differ by
    one grey level from these."""
    one, none = np.ones((1, 1), bool), np.empty((0, grid.patch_size, grid.patch_size, 3), np.uint8)
    cells = zip(rows, cols, strict=True)
    return np.concatenate(
        [none, *(read_block_patches(slide, grid, Block(int(r), int(c), 1, 1), one) for r, c in cells)]
    )

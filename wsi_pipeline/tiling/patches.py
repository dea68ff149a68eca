"""Blocks to patches: read a block of grid cells as one region at the target µm/px and cut its patches.

A block whose region cannot be decoded (a corrupt tile) is read cell by cell, so a bad tile costs only the
cells over it; those are read from another pyramid level when one can give them, else left unread."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from wsi_pipeline.slide.reader import Slide, UnreadablePixelsError
from wsi_pipeline.tiling.grid import Block, PatchGrid


@dataclass(frozen=True)
class BlockPatches:
    """A block's patches as read."""

    patches: np.ndarray  # uint8 (N, patch, patch, 3): the cells of ``read``, in row-major order
    read: np.ndarray  # bool (n_rows, n_cols): the cells asked for whose pixels could be decoded
    elsewhere: np.ndarray  # bool (n_rows, n_cols): cells of ``read`` taken from another level (not their own)


def cut_patches(region: np.ndarray, patch_size: int, stride: int) -> np.ndarray:
    """View (rows, cols, patch, patch, 3) of the patches of a region whose corner is a cell's corner."""
    windows = sliding_window_view(region, (patch_size, patch_size, 3))
    return windows[::stride, ::stride, 0]


def read_block(slide: Slide, grid: PatchGrid, block: Block, cells: np.ndarray) -> BlockPatches:
    """The patches of the block's cells where ``cells`` (n_rows, n_cols) is True. Only the rows and columns of
    the block that hold such cells are read, as one region; when it cannot be decoded, the pixels under each
    cell are read alone (``Slide.read_in_parts``: every cell read so is exactly as from the whole region), and
    cells that still cannot be are read from another pyramid level (``Slide.read_elsewhere``) or left out."""
    read, elsewhere = np.zeros(cells.shape, bool), np.zeros(cells.shape, bool)
    rows, cols = np.flatnonzero(cells.any(axis=1)), np.flatnonzero(cells.any(axis=0))
    if not len(rows):
        return BlockPatches(np.empty((0, grid.patch_size, grid.patch_size, 3), np.uint8), read, elsewhere)
    row0, row1, col0, col1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    part = Block(block.row0_grid + row0, block.col0_grid + col0, row1 - row0, col1 - col0)
    wanted = cells[row0:row1, col0:col1]
    box = (*part.target_box(grid), grid.target_mpp)
    where = np.argwhere(wanted)  # row-major, as the patches
    try:
        region, failed = slide.read_at_mpp(*box), np.zeros(len(where), bool)
    except UnreadablePixelsError:
        step, side = grid.stride, grid.patch_size
        region, failed = slide.read_in_parts(box, [(c * step, r * step, side, side) for r, c in where])
    patches = cut_patches(region, grid.patch_size, grid.stride)[: part.n_rows, : part.n_cols][wanted]
    x0_target, y0_target = box[:2]
    for index in np.flatnonzero(failed):
        r, c = where[index]
        x, y = x0_target + c * grid.stride, y0_target + r * grid.stride
        pixels = slide.read_elsewhere(x, y, grid.patch_size, grid.patch_size, grid.target_mpp)
        if pixels is not None:
            patches[index], failed[index] = pixels, False
            elsewhere[row0 + r, col0 + c] = True
    read[row0:row1, col0:col1] = wanted
    read[tuple((where[failed] + (row0, col0)).T)] = False
    return BlockPatches(patches[~failed], read, elsewhere)


def read_block_patches(slide: Slide, grid: PatchGrid, block: Block, cells: np.ndarray) -> np.ndarray:
    """uint8 patches (N, patch, patch, 3) of the block's cells where ``cells`` (n_rows, n_cols) is True, in
    row-major order (``read_block``); ``UnreadablePixelsError`` when a cell's pixels cannot be decoded."""
    patches = read_block(slide, grid, block, cells)
    if not np.array_equal(patches.read, cells):
        unread = int((cells & ~patches.read).sum())
        raise UnreadablePixelsError(slide.path, f"cannot decode the pixels of {unread} cells at any level")
    return patches.patches


def read_cell_patches(slide: Slide, grid: PatchGrid, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """uint8 patches (N, patch, patch, 3) of the given grid cells, each read as a block of its own (for
    reviewing a few cells). Scoring reads many cells as one region, whose bilinear resampling may differ by
    one grey level from these."""
    one, none = np.ones((1, 1), bool), np.empty((0, grid.patch_size, grid.patch_size, 3), np.uint8)
    cells = zip(rows, cols, strict=True)
    return np.concatenate(
        [none, *(read_block_patches(slide, grid, Block(int(r), int(c), 1, 1), one) for r, c in cells)]
    )

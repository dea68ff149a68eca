"""The patch grid: one cell per patch at the model's µm/px, and blocks of cells read as one region.

Cell ``(row_grid, col_grid)`` covers target pixels ``[row*stride, row*stride + patch)`` ×
``[col*stride, col*stride + patch)``; target pixel ``t`` covers level-0 ``[t*ds, (t+1)*ds)``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np

from wsi_pipeline.slide.reader import Slide
from wsi_pipeline.tiling.tissue import TissueMask


@dataclass(frozen=True)
class PatchGrid:
    """Geometry of the patch grid over a slide."""

    width0: int  # slide size in level-0 pixels
    height0: int
    mpp0: float  # µm per level-0 pixel
    target_mpp: float  # µm per target pixel (the model's resolution)
    patch_size: int  # target pixels
    stride: int  # target pixels between neighbouring cells

    @property
    def ds(self) -> float:
        """Level-0 pixels per target pixel."""
        return self.target_mpp / self.mpp0

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of whole patches that fit in the slide."""
        width_target, height_target = self.width0 / self.ds, self.height0 / self.ds

        def count(extent: float) -> int:
            return int((extent - self.patch_size) // self.stride) + 1 if extent >= self.patch_size else 0

        return count(height_target), count(width_target)

    @property
    def cell_um(self) -> float:
        """Physical distance between neighbouring cells, µm."""
        return self.stride * self.target_mpp

    @property
    def origin_um(self) -> float:
        """Physical position (µm from the slide's corner) of the centre of cell (0, 0), on both axes."""
        return self.patch_size / 2 * self.target_mpp

    def cell_spans_level0(self, index_grid: np.ndarray) -> np.ndarray:
        """Level-0 ``[start, end)`` (float) of cells along one axis, shape (N, 2)."""
        start_level0 = np.asarray(index_grid, np.float64) * self.stride * self.ds
        return np.stack([start_level0, start_level0 + self.patch_size * self.ds], axis=-1)

    def cell_boxes_level0(self, rows_grid: np.ndarray, cols_grid: np.ndarray) -> np.ndarray:
        """Level-0 boxes ``(x0, y0, x1, y1)`` (float, end-exclusive) of the given cells, shape (N, 4)."""
        y_level0, x_level0 = self.cell_spans_level0(rows_grid), self.cell_spans_level0(cols_grid)
        return np.stack([x_level0[:, 0], y_level0[:, 0], x_level0[:, 1], y_level0[:, 1]], axis=-1)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Block:
    """A rectangle of grid cells read as one region."""

    row0_grid: int
    col0_grid: int
    n_rows: int
    n_cols: int

    @property
    def cells(self) -> tuple[slice, slice]:
        return slice(self.row0_grid, self.row0_grid + self.n_rows), slice(
            self.col0_grid, self.col0_grid + self.n_cols
        )

    def target_box(self, grid: PatchGrid) -> tuple[int, int, int, int]:
        """``(x0_target, y0_target, width_target, height_target)`` covering every patch of the block."""
        return (
            self.col0_grid * grid.stride,
            self.row0_grid * grid.stride,
            (self.n_cols - 1) * grid.stride + grid.patch_size,
            (self.n_rows - 1) * grid.stride + grid.patch_size,
        )


def split_blocks(grid_shape: tuple[int, int], block_cells: int) -> Iterator[Block]:
    """Cover the grid with blocks of at most ``block_cells`` × ``block_cells`` cells, row-major."""
    n_rows, n_cols = grid_shape
    for row0 in range(0, n_rows, block_cells):
        for col0 in range(0, n_cols, block_cells):
            yield Block(row0, col0, min(block_cells, n_rows - row0), min(block_cells, n_cols - col0))


def tissue_fraction(grid: PatchGrid, tissue: TissueMask) -> np.ndarray:
    """Fraction of each cell's patch that the tissue mask covers, float32 (rows, cols)."""
    n_rows, n_cols = grid.shape
    mask_ds = tissue.mpp / grid.mpp0  # level-0 pixels per mask pixel
    integral = np.pad(tissue.mask.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    mask_height, mask_width = tissue.mask.shape
    rows = grid.cell_spans_level0(np.arange(n_rows))
    cols = grid.cell_spans_level0(np.arange(n_cols))
    r0, r1 = _mask_bounds(rows / mask_ds, mask_height)
    c0, c1 = _mask_bounds(cols / mask_ds, mask_width)
    sums = (
        integral[r1[:, None], c1[None, :]]
        - integral[r0[:, None], c1[None, :]]
        - integral[r1[:, None], c0[None, :]]
        + integral[r0[:, None], c0[None, :]]
    )
    area = (r1 - r0)[:, None] * (c1 - c0)[None, :]
    return (sums / np.maximum(area, 1)).astype(np.float32)


def _mask_bounds(bounds_mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Round float mask-pixel intervals to index ranges of at least one pixel inside the mask."""
    start = np.clip(np.round(bounds_mask[:, 0]).astype(int), 0, size - 1)
    end = np.clip(np.round(bounds_mask[:, 1]).astype(int), start + 1, size)
    return start, end


def plan_grid(slide: Slide, patch_size: int, target_mpp: float, stride: int | None) -> PatchGrid:
    """The patch grid of a slide for a model's patch size and µm/px (``stride`` None: the patch size)."""
    return PatchGrid(
        width0=slide.width0,
        height0=slide.height0,
        mpp0=slide.mpp,
        target_mpp=target_mpp,
        patch_size=patch_size,
        stride=stride or patch_size,
    )

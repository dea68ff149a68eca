"""Grid geometry: cell counts and boxes, blocks, tissue fractions."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_pipeline import Block, PatchGrid, TissueMask, split_blocks, tissue_fraction
from wsi_pipeline.tiling.patches import cut_patches


def grid(stride: int = 96) -> PatchGrid:
    return PatchGrid(width0=4000, height0=3000, mpp0=0.243, target_mpp=0.972, patch_size=96, stride=stride)


def test_shape_counts_whole_patches():
    assert grid().ds == pytest.approx(4.0)
    assert grid().shape == (3000 // 4 // 96, 4000 // 4 // 96)  # 750 × 1000 target px
    assert grid(32).shape == ((750 - 96) // 32 + 1, (1000 - 96) // 32 + 1)
    tiny = PatchGrid(width0=300, height0=300, mpp0=0.243, target_mpp=0.972, patch_size=96, stride=96)
    assert tiny.shape == (0, 0)


def test_cell_boxes_in_level0_and_physical_placement():
    boxes = grid(32).cell_boxes_level0(np.array([0, 2]), np.array([0, 3]))
    np.testing.assert_allclose(boxes, [[0, 0, 384, 384], [384, 256, 768, 640]])
    assert grid(32).cell_um == pytest.approx(32 * 0.972)
    assert grid(32).origin_um == pytest.approx(48 * 0.972)


def test_blocks_cover_every_cell_once():
    counts = np.zeros((23, 17), int)
    blocks = list(split_blocks((23, 17), 5))
    for block in blocks:
        counts[block.cells] += 1
    assert (counts == 1).all() and len(blocks) == 5 * 4


def test_block_target_box_holds_its_patches():
    block = Block(row0_grid=2, col0_grid=3, n_rows=4, n_cols=5)
    assert block.target_box(grid(32)) == (96, 64, 4 * 32 + 96, 3 * 32 + 96)


def test_tissue_fraction_of_a_half_covered_mask():
    g = grid()  # cells are 384 level-0 px; mask at 32 level-0 px per pixel → 12 mask px per cell
    mask = np.zeros((3000 // 32, 4000 // 32), bool)
    mask[:, :60] = True  # columns 0..4 fully, cell 5 covers mask cols 60..72: none
    mask[:24, 60:66] = True  # cell (0..1, 5): half of its columns
    fraction = tissue_fraction(g, TissueMask(mask=mask, mpp=0.243 * 32, threshold=0))
    assert fraction.shape == g.shape
    np.testing.assert_allclose(fraction[:, :5], 1.0)
    np.testing.assert_allclose(fraction[:2, 5], 0.5)
    np.testing.assert_allclose(fraction[2:, 5:], 0.0)


def test_cut_patches_are_the_cells_windows():
    region = np.arange(160 * 224 * 3, dtype=np.int64).reshape(160, 224, 3)
    patches = cut_patches(region, 96, 64)
    assert patches.shape == (2, 3, 96, 96, 3)
    np.testing.assert_array_equal(patches[1, 2], region[64:160, 128:224])

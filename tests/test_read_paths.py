"""The read path's resampling: nearest neighbour near a level's scale, bilinear (antialiased) beyond it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from wsi_pipeline.slide import reader as slide_module
from wsi_pipeline.slide.reader import NEAREST_TOLERANCE, Slide, resample_nearest
from wsi_pipeline.tiling.grid import Block, plan_grid
from wsi_pipeline.tiling.patches import read_block_patches

from .conftest import CMU_SLIDE, make_slide


@pytest.mark.parametrize("scale", [0.5, 0.95, 0.972, 1.0, 1.03, 1.05, 1.2])
def test_nearest_is_pils_nearest_resize_with_a_box(scale):
    region = np.random.default_rng(0).integers(0, 256, (260, 250, 3), dtype=np.uint8)
    width, height = 200, 190
    box = (3.37, 5.81, 3.37 + width * scale, 5.81 + height * scale)
    expected = Image.fromarray(region).resize((width, height), Image.Resampling.NEAREST, box=box)
    np.testing.assert_array_equal(resample_nearest(region, box, width, height), np.asarray(expected))


def bilinear_everywhere(monkeypatch):
    monkeypatch.setattr(slide_module, "NEAREST_TOLERANCE", -1.0)


def test_near_the_levels_scale_patches_stay_close_to_the_bilinear_reference(monkeypatch):
    """Real H&E (the CMU sample at 0.499 µm/px) read at 0.972 × 0.499 µm/px, PCam's factor from a 4× level:
    mean |difference| under 3 grey levels and every 96² patch's mean colour within 1.5 of the reference."""
    with Slide(CMU_SLIDE) as opened:
        mpp_out = opened.mpp * 0.972
        args = (101.3, 57.8, 96 * 12, 96 * 10, mpp_out)
        nearest = opened.read_at_mpp(*args).astype(np.float64)
        bilinear_everywhere(monkeypatch)
        reference = opened.read_at_mpp(*args).astype(np.float64)
    assert nearest.shape == reference.shape == (960, 1152, 3)
    assert np.abs(nearest - reference).mean() < 3.0
    patch_means = [image.reshape(10, 96, 12, 96, 3).mean(axis=(1, 3)) for image in (nearest, reference)]
    assert np.abs(patch_means[0] - patch_means[1]).max() < 1.5


def test_beyond_the_tolerance_downsampling_is_antialiased_bilinear(tmp_path):
    """At twice the level's µm/px the read is PIL's bilinear resize (antialiased), unchanged (without JPEG
    scaling, which reads a 1/2 decode of level 0 there)."""
    assert NEAREST_TOLERANCE < 1.0
    with Slide(CMU_SLIDE, jpeg_scaling="off") as opened:
        result = opened.read_at_mpp(10, 20, 300, 200, opened.mpp * 2)
        region = opened.read_level(0, 0, 0, 700, 500)
    expected = Image.fromarray(region).resize((300, 200), Image.Resampling.BILINEAR, box=(20, 40, 620, 440))
    np.testing.assert_array_equal(result, np.asarray(expected))


def test_openslide_and_tiffslide_read_the_same_pixels_on_the_nearest_path(tmp_path):
    make_slide(tmp_path / "s.svs", 3000, 2400, 0.25, [(700.3, 500.2, 1900.7, 1300.1)], downsamples=(1, 4))
    reads = []
    for backend in ("openslide", "tiffslide"):
        with Slide(tmp_path / "s.svs", backend) as opened:
            assert opened.best_level(0.972 / 0.25) == 1
            reads.append(opened.read_at_mpp(13.5, 7.25, 500, 400, 0.972))
    np.testing.assert_array_equal(reads[0], reads[1])


@pytest.mark.parametrize("mpp", [0.25, 0.5])  # nearest from the 4× level; bilinear from level 0
def test_a_block_reads_only_its_tissue_rows_and_columns_with_the_same_patches(tmp_path, monkeypatch, mpp):
    make_slide(tmp_path / "s.svs", 4000, 3600, mpp, [(900.3, 700.2, 2100.7, 1800.1)], downsamples=(1, 4))
    grid = plan_grid(Slide(tmp_path / "s.svs"), 96, 0.972, None)
    block = Block(1, 2, 6, 7)
    cells = np.zeros((6, 7), bool)
    cells[2, 3] = cells[4, 5] = cells[3, 4] = True
    reads = []
    original = Slide.read_at_mpp

    def recording(self, *args):
        reads.append(args)
        return original(self, *args)

    with Slide(tmp_path / "s.svs") as opened:
        everything = read_block_patches(opened, grid, block, np.ones((6, 7), bool)).reshape(6, 7, 96, 96, 3)
        monkeypatch.setattr(Slide, "read_at_mpp", recording)
        some = read_block_patches(opened, grid, block, cells)
        none = read_block_patches(opened, grid, block, np.zeros((6, 7), bool))
    assert reads == [((2 + 3) * 96, (1 + 2) * 96, 3 * 96, 3 * 96, 0.972)]  # cells (2..4, 3..5) only
    assert none.shape == (0, 96, 96, 3)
    difference = np.abs(some.astype(int) - everything[cells])
    assert difference.max() <= 1 and difference.mean() < 0.01  # float rounding of the region's corner

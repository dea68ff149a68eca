"""JPEG scaling: reduced levels decoded at 1/2, 1/4, 1/8 put pixels where the full decode does (a scene whose
pixels encode their level-0 coordinates), agree with the full decode + antialiased resample, fall back like
the file's levels when a tile cannot be decoded, and are safe to read from several threads."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from wsi_pipeline.slide.reader import Slide, UnreadablePixelsError
from wsi_pipeline.synthetic.svs import write_slide

from .conftest import CMU_SLIDE, corrupt_tiles

MPP, SIZE, PERIOD = 0.25, (3000, 2400), 200.0  # level-0 px per period of the coordinate waves
AMPLITUDE = 90.0


class CoordinateScene:
    """Each pixel shows its level-0 coordinates as smooth waves (JPEG keeps them): red ``sin(2πx/P)``, green
    ``sin(2πy/P)``, blue ``cos(2πx/P)``, each 128 ± 90."""

    def render(self, x0_level0: float, y0_level0: float, width: int, height: int, downsample: float):
        x = x0_level0 + (np.arange(width) + 0.5) * downsample
        y = y0_level0 + (np.arange(height) + 0.5) * downsample
        return np.round(self.values(x[None, :], y[:, None])).astype(np.uint8)

    @staticmethod
    def values(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        phase_x, phase_y = 2 * np.pi * x / PERIOD, 2 * np.pi * y / PERIOD
        waves = np.broadcast_arrays(np.sin(phase_x), np.sin(phase_y), np.cos(phase_x))
        return 128.0 + AMPLITUDE * np.stack(waves, axis=-1)


@pytest.fixture(scope="module", params=["rgb", "ycbcr"])
def coordinates(tmp_path_factory, request) -> Path:
    """Levels 1× and 16×: 2×, 4× and 8× are level 0 decoded at 1/2, 1/4 and 1/8."""
    path = tmp_path_factory.mktemp("slides") / f"coordinates-{request.param}.svs"
    return write_slide(path, CoordinateScene(), *SIZE, MPP, (1, 16), photometric=request.param)


def centre_offset(pixels: np.ndarray, x_level0: np.ndarray, y_level0: np.ndarray) -> tuple[float, float]:
    """Where the pixels' centres are relative to the level-0 coordinates they should show (level-0 px, x and
    y; one per column and row): the least-squares shift of the scene that explains the difference, from the
    red (x) and green (y) waves."""
    x, y = x_level0[None, :], y_level0[:, None]
    difference = pixels.astype(np.float64) - CoordinateScene.values(x, y)
    slope = AMPLITUDE * 2 * np.pi / PERIOD
    gradient_x = np.broadcast_to(slope * np.cos(2 * np.pi * x / PERIOD), difference.shape[:2])
    gradient_y = np.broadcast_to(slope * np.cos(2 * np.pi * y / PERIOD), difference.shape[:2])
    shift_x = (gradient_x * difference[..., 0]).sum() / (gradient_x**2).sum()
    shift_y = (gradient_y * difference[..., 1]).sum() / (gradient_y**2).sum()
    return float(shift_x), float(shift_y)


def centres(start: float, count: int, downsample: float) -> np.ndarray:
    """Level-0 centres of ``count`` pixels of ``downsample`` level-0 px from pixel ``start`` on."""
    return (start + np.arange(count) + 0.5) * downsample


@pytest.mark.parametrize("k", [2, 4, 8])
def test_a_reduced_pixel_covers_k_level_pixels_from_k_times_its_index(coordinates, k):
    """Level 0 decoded at 1/k: pixel (i, j) shows level-0 ``[k·j, k·(j+1)) × [k·i, k·(i+1))``, within 0.05
    px over the whole slide; and across a tile corner (tiles of 256 px) as the full decode shows that area
    (where 2×2-subsampled chroma alone moves the red wave by up to half a pixel)."""
    with Slide(coordinates) as slide:
        level = slide.read_levels.index((0, k))
        width, height = SIZE[0] // k, SIZE[1] // k
        pixels = slide.read_level(level, 0, 0, width, height)
        offset = centre_offset(pixels, centres(0, width, k), centres(0, height, k))
        assert np.abs(offset).max() < 0.05, offset
        x, y = 256 // k - 7, 512 // k - 9
        pixels = slide.read_level(level, x, y, 40, 30)
        full = slide.read_level(0, x * k, y * k, 40 * k, 30 * k)
        offset = centre_offset(pixels, centres(x, 40, k), centres(y, 30, k))
        full_offset = centre_offset(full, centres(x * k, 40 * k, 1), centres(y * k, 30 * k, 1))
        assert np.abs(np.subtract(offset, full_offset)).max() < 0.05, (offset, full_offset)


@pytest.mark.parametrize("ds", [2.0, 4.0, 8.0])
def test_patch_centres_land_where_they_should(coordinates, ds):
    """A 96² patch at 2×, 4× and 8× of a 0.25 µm/px scan (level 0 at 1/2, 1/4, 1/8: no resampling left)
    shows the scene at its pixels' centres within 0.1 level-0 px, as the full decode + resample does; at a
    fractional corner the nearest resample is at most half a reduced pixel off, as from a file's level."""
    with Slide(coordinates) as scaled, Slide(coordinates, jpeg_scaling="off") as full:
        assert scaled.read_levels[scaled.best_level(ds)] == (0, round(ds))
        assert full.read_levels[full.best_level(ds)] == (0, 1)
        for x0_out, y0_out in [(3, 2), (40, 30), (150, 120)]:
            expected = centres(x0_out, 96, ds), centres(y0_out, 96, ds)
            for slide in (scaled, full):
                offset = centre_offset(slide.read_at_mpp(x0_out, y0_out, 96, 96, ds * MPP), *expected)
                assert np.abs(offset).max() < 0.1, (slide.jpeg_scaling, offset)
        for x0_out, y0_out in [(40.3, 30.7), (150.5, 120.25)]:
            expected = centres(x0_out, 96, ds), centres(y0_out, 96, ds)
            offset = centre_offset(scaled.read_at_mpp(x0_out, y0_out, 96, 96, ds * MPP), *expected)
            assert np.abs(offset).max() <= ds / 2 + 0.1, offset


def test_pcams_scale_reads_the_4x_reduced_level_upsampled_by_nearest(coordinates):
    """0.972 µm/px from a 0.25 µm/px scan: level 0 at 1/4 (1.0 µm/px) resampled by ×1.029 (nearest)."""
    ds = 0.972 / MPP
    with Slide(coordinates) as slide:
        assert slide.read_levels[slide.best_level(ds)] == (0, 4)
        pixels = slide.read_at_mpp(20, 10, 96, 96, 0.972)
    offset = centre_offset(pixels, centres(20, 96, ds), centres(10, 96, ds))
    assert np.abs(offset).max() < 1.0, offset


def difference_stats(slide_path: Path, ds: float, box_out: tuple[int, int, int, int]) -> tuple[float, float]:
    """Mean and 99th percentile of |reduced decode − full decode + resample| (grey levels) over a box."""
    with Slide(slide_path) as scaled, Slide(slide_path, jpeg_scaling="off") as full:
        mpp_out = scaled.mpp * ds
        reads = [slide.read_at_mpp(*box_out, mpp_out).astype(np.int16) for slide in (scaled, full)]
    difference = np.abs(reads[0] - reads[1])
    return float(difference.mean()), float(np.percentile(difference, 99))


@pytest.mark.parametrize("k", [2, 4, 8])
def test_on_real_tissue_a_reduced_decode_is_the_box_mean_of_the_full_one(k):
    """The CMU sample (H&E, Aperio RGB JPEG tiles of 240²): level 0 at 1/k against the k×k means of its full
    decode."""
    with Slide(CMU_SLIDE) as slide:
        width, height = 2220 // k, 2967 // k
        reduced = slide.read_level(slide.read_levels.index((0, k)), 0, 0, width, height)
        full = slide.read_level(0, 0, 0, width * k, height * k).astype(np.float64)
    box_mean = full.reshape(height, k, width, k, 3).mean(axis=(1, 3))
    difference = np.abs(reduced - box_mean)
    assert difference.mean() < 0.25 and np.percentile(difference, 99) < 2.5


@pytest.mark.parametrize(("ds", "mean", "p99"), [(2.0, 2.2, 19), (4.0, 2.4, 20), (8.0, 2.7, 21)])
def test_on_real_tissue_reads_differ_from_the_full_decode_and_resample_by_the_filter(ds, mean, p99):
    """The read at 2×, 4×, 8× against the full decode + antialiased bilinear resample: its triangle filter
    spans 2k level pixels where the reduced decode's box spans k, so sharp detail differs by a few grey
    levels."""
    width_out, height_out = int(2220 / ds) - 2, int(2967 / ds) - 2
    stats = difference_stats(CMU_SLIDE, ds, (1, 1, width_out, height_out))
    assert stats[0] < mean and stats[1] <= p99, stats


def test_on_the_coordinate_scene_reads_agree_with_the_full_decode_and_resample(coordinates):
    for ds in (2.0, 4.0, 8.0):
        stats = difference_stats(coordinates, ds, (1, 1, int(SIZE[0] / ds) - 2, int(SIZE[1] / ds) - 2))
        assert stats[0] < 0.7 and stats[1] <= 4, (ds, stats)


def test_a_tile_that_cannot_be_decoded_falls_back_to_another_level(tmp_path, coordinates):
    """The reduced read of a corrupt level-0 tile raises as the full one does; the rest of the slide reads
    as before, and the cells over it come from a finer or coarser level."""
    damaged = Path(shutil.copy(coordinates, tmp_path / "damaged.svs"))
    corrupt_tiles(damaged, 0, [(2, 3)])  # level-0 px x 768..1024, y 512..768
    with Slide(damaged) as slide, Slide(coordinates) as good:
        assert slide.read_levels[slide.best_level(2.0)] == (0, 2)
        with pytest.raises(UnreadablePixelsError, match="cannot read pixels"):
            slide.read_at_mpp(400, 300, 96, 96, 2 * MPP)
        np.testing.assert_array_equal(
            slide.read_at_mpp(0, 0, 300, 200, 2 * MPP), good.read_at_mpp(0, 0, 300, 200, 2 * MPP)
        )
        parts = [(100, 150, 96, 96), (0, 0, 96, 96)]  # over the tile, beside it
        region, unreadable = slide.read_in_parts((300, 150, 296, 296, 2 * MPP), parts)
        assert unreadable.tolist() == [True, False]
        np.testing.assert_array_equal(region[:96, :96], good.read_at_mpp(300, 150, 96, 96, 2 * MPP))
        assert slide.read_elsewhere(400, 300, 96, 96, 4 * MPP) is not None  # from level 0 at 1/8 (8×)


def test_threads_reading_one_slide_get_what_one_thread_does(coordinates):
    """Tiles are read by position (``os.pread``), so threads sharing a slide never read each other's bytes."""
    rng = np.random.default_rng(1)
    corners, scales = rng.uniform(0, 300, (64, 2)).tolist(), rng.choice([2.0, 3.888, 4.0, 8.0], 64).tolist()
    boxes = [(x, y, 80, 64, ds * MPP) for (x, y), ds in zip(corners, scales, strict=True)]
    with Slide(coordinates) as slide:
        alone = [slide.read_at_mpp(*box) for box in boxes]
        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(lambda box: slide.read_at_mpp(*box), boxes * 4))
    for index, pixels in enumerate(together):
        np.testing.assert_array_equal(pixels, alone[index % len(boxes)])

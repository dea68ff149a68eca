"""Slide I/O: µm/px, level choice (never level 0 when a closer level exists), resampling, both backends, reads
of levels whose downsample is not an integer."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import tifffile

from wsi_pipeline import InputError, Slide
from wsi_pipeline.slide.reader import READ_RULE
from wsi_pipeline.synthetic.svs import write_slide

from .conftest import CMU_SLIDE, make_slide

# Level-0 px of a slide whose levels are 500 × 400 (downsample 4.00225) and 125 × 100 px (16.009).
UNEVEN = (2001, 1601)
BOX = (24, 16)  # level px read at each corner


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slides")
    dark = [(1003.0, 801.0, 2207.0, 1609.0)]
    make_slide(folder / "pyramid.svs", 4000, 3200, 0.25, dark, downsamples=(1, 4, 16))
    make_slide(folder / "flat.svs", 4000, 3200, 0.25, dark, downsamples=(1,))
    return folder


def test_cmu_sample_opens_with_its_mpp_on_both_backends():
    for backend in ("openslide", "tiffslide"):
        with Slide(CMU_SLIDE, backend) as slide:
            assert (slide.width0, slide.height0, slide.mpp) == (2220, 2967, 0.499)
    assert Slide(CMU_SLIDE).backend == "tiffslide"  # auto picks the faster reader for SVS


def test_synthetic_slides_say_so_and_real_ones_do_not(pyramid):
    for backend in ("openslide", "tiffslide"):
        with Slide(pyramid / "pyramid.svs", backend) as synthetic, Slide(CMU_SLIDE, backend) as real:
            assert synthetic.synthetic and not real.synthetic


def test_mpp_override_wins():
    assert Slide(CMU_SLIDE, mpp=0.25).mpp == 0.25


@pytest.mark.parametrize(
    ("ds", "level"), [(1.0, 0), (3.8, 0), (3.89, 1), (4.0, 1), (15.2, 1), (15.5, 2), (100.0, 2)]
)
def test_best_level_is_the_largest_downsample_not_above_give_or_take_5_percent(pyramid, ds, level):
    """3.89: PCam's 0.972 µm/px from a 0.25 µm/px scan reads the 4× level (1.0 µm/px)."""
    assert Slide(pyramid / "pyramid.svs", jpeg_scaling="off").best_level(ds) == level


@pytest.mark.parametrize(
    ("ds", "read_level"),
    [
        (1.0, (0, 1)),
        (1.95, (0, 2)),
        (3.8, (0, 2)),
        (3.89, (1, 1)),
        (7.9, (1, 2)),
        (15.5, (2, 1)),
        (34.0, (2, 2)),
        (100.0, (2, 4)),
        (1000.0, (2, 8)),
    ],
)
def test_with_jpeg_scaling_the_same_rule_picks_among_file_and_reduced_levels(pyramid, ds, read_level):
    """Level 0 at 1/4 and 1/8 and level 1 at 1/4 are left out: levels 1 and 2 and level 1 at 1/2 give those
    downsamples from fewer bytes."""
    with Slide(pyramid / "pyramid.svs") as slide:
        assert slide.read_levels == ((0, 1), (1, 1), (2, 1), (0, 2), (1, 2), (2, 2), (2, 4), (2, 8))
        assert slide.read_levels[slide.best_level(ds)] == read_level


def test_reads_come_from_the_closest_level_only(pyramid, monkeypatch):
    slide = Slide(pyramid / "pyramid.svs", jpeg_scaling="off")
    levels_read = []
    original = Slide.read_level

    def spy(self, level, *args):
        levels_read.append(level)
        return original(self, level, *args)

    monkeypatch.setattr(Slide, "read_level", spy)
    slide.read_at_mpp(100, 100, 96, 96, 1.0)  # 4× → level 1
    slide.thumbnail(8.0)  # 32× → level 2
    assert levels_read and set(levels_read) == {1, 2}


def test_pyramid_and_flat_slides_read_alike(pyramid):
    """Resampling from a 4× level and from level 0 give the same picture at 1 µm/px (up to edge blur)."""
    via_level = Slide(pyramid / "pyramid.svs").read_at_mpp(0, 0, 1000, 800, 1.0).astype(int)
    via_level0 = Slide(pyramid / "flat.svs").read_at_mpp(0, 0, 1000, 800, 1.0).astype(int)
    difference = np.abs(via_level - via_level0).max(axis=-1)
    assert np.mean(difference > 10) < 0.01
    # The dark rectangle lands where it is: level-0 x 1003..2207 → 1 µm/px x 250.75..551.75.
    row = via_level[300, :, 0]
    assert row[245] > 150 and row[256] < 100 and row[546] < 100 and row[557] > 150


def test_outside_the_slide_reads_white(pyramid):
    region = Slide(pyramid / "pyramid.svs").read_level(0, 3900, 3100, 200, 200)
    assert region[150:, :].min() == 255 and region[:, 150:].min() == 255


def test_folder_is_not_a_slide(tmp_path):
    with pytest.raises(InputError, match="is a folder"):
        Slide(tmp_path)


class BlockNoise:
    """Level-0 blocks of 4 × 4 px, each of a random colour: a level-1 pixel is one block's colour, so a box
    read one level pixel off shows other colours throughout."""

    def __init__(self, width0: int, height0: int) -> None:
        shape = (height0 // 4 + 1, width0 // 4 + 1, 3)
        self.colours = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)

    def render(
        self, x0_level0: float, y0_level0: float, width: int, height: int, downsample: float
    ) -> np.ndarray:
        """Each pixel the colour of the block under its centre (the last row and column beyond the slide)."""
        rows_n, cols_n = self.colours.shape[:2]
        cols = np.minimum((x0_level0 + (np.arange(width) + 0.5) * downsample) // 4, cols_n - 1)
        rows = np.minimum((y0_level0 + (np.arange(height) + 0.5) * downsample) // 4, rows_n - 1)
        return self.colours[np.ix_(rows.astype(int), cols.astype(int))]


@pytest.fixture(scope="module")
def uneven(tmp_path_factory) -> Path:
    """A slide whose levels 1 and 2 have downsamples that are not integers (``UNEVEN``)."""
    path = tmp_path_factory.mktemp("slides") / "uneven.svs"
    return write_slide(path, BlockNoise(*UNEVEN), *UNEVEN, 0.25)


def level_image(path: Path, level: int) -> np.ndarray:
    """A level's pixels as the file stores them (tifffile decodes the JPEG tiles as tiffslide does)."""
    with tifffile.TiffFile(path) as tiff:
        return tiff.series[0].levels[level].asarray()


def corners(width: int, height: int) -> list[tuple[int, int]]:
    """Box corners along a few rows and columns of a level, the last boxes running over its edges."""
    box_w, box_h = BOX
    along = [(x, y) for x in range(0, width - box_w + 1, 3) for y in (0, 5, height // 2 + 1, height - box_h)]
    down = [(x, y) for y in range(0, height - box_h + 1, 3) for x in (0, 7, width // 2 + 1, width - box_w)]
    return along + down + [(width - 10, height - 5), (-3, -2)]


def expected_box(image: np.ndarray, x: int, y: int) -> np.ndarray:
    """The level's pixels in the box at (x, y), white outside the level."""
    box_w, box_h = BOX
    out = np.full((box_h, box_w, 3), 255, np.uint8)
    x0, y0 = max(x, 0), max(y, 0)
    inside = image[y0 : y + box_h, x0 : x + box_w]
    out[y0 - y : y0 - y + inside.shape[0], x0 - x : x0 - x + inside.shape[1]] = inside
    return out


@pytest.mark.parametrize("level", [1, 2])
@pytest.mark.parametrize("jpeg_scaling", ["auto", "off"])
def test_tiffslide_reads_exactly_the_level_pixels_asked_for_where_the_downsample_is_not_an_integer(
    uneven, level, jpeg_scaling
):
    """tiffslide takes level pixel ``int(location / downsample)``: a level-0 location of ``round(x ·
    downsample)`` read one level pixel early wherever it rounded down (the corners include many such)."""
    image = level_image(uneven, level)
    height, width = image.shape[:2]
    with Slide(uneven, "tiffslide", jpeg_scaling=jpeg_scaling) as slide:
        assert slide.read_levels[level] == (level, 1) and slide.jpeg_scaling == jpeg_scaling
        downsample = slide.level_downsamples[level]
        assert not downsample.is_integer() and slide.level_dimensions[level] == (width, height)
        boxes = corners(width, height)
        rounded_down = [
            (x, y) for x, y in boxes if x > 0 and math.floor(round(x * downsample) / downsample) < x
        ]
        assert len(rounded_down) > len(boxes) // 10
        wrong = [
            (x, y)
            for x, y in boxes
            if not np.array_equal(slide.read_level(level, x, y, *BOX), expected_box(image, x, y))
        ]
    assert not wrong, f"{len(wrong)} of {len(boxes)} boxes are not the level's pixels there, e.g. {wrong[:4]}"


@pytest.mark.parametrize("level", [1, 2])
def test_openslide_reads_a_level_whose_downsample_is_not_an_integer_from_the_nearest_location(uneven, level):
    """OpenSlide samples level L at ``location / downsample``, between its pixels (bilinear) when that is
    fractional, so no location lands on most pixels of such a level. From the nearest one (within half a
    level-0 pixel) each box is much nearer its own pixels than any box one pixel away; exactly them at the
    level's corner, where ``0 · downsample`` is whole."""
    image = level_image(uneven, level).astype(np.int16)
    height, width = image.shape[:2]
    box_w, box_h = BOX
    with Slide(uneven, "openslide") as slide:
        np.testing.assert_array_equal(slide.read_level(level, 0, 0, *BOX), image[:box_h, :box_w])
        for x, y in corners(width, height):
            if not (0 < x < width - box_w and 0 < y < height - box_h):  # each box one pixel away inside too
                continue
            pixels = slide.read_level(level, x, y, *BOX).astype(np.int16)
            away = {
                (dx, dy): np.abs(pixels - image[y + dy : y + dy + box_h, x + dx : x + dx + box_w]).mean()
                for dx in (-1, 0, 1)
                for dy in (-1, 0, 1)
            }
            own = away.pop((0, 0))
            assert own < min(away.values()) / 3, (x, y, own, away)


def test_the_read_rule_a_heatmap_records_is_the_first_that_reads_its_patches_as_now(uneven, pyramid):
    """Rule 2 moved tiffslide's reads of levels whose downsample is not an integer; reads that never touch
    one (the best level and the levels read where it cannot be decoded) and OpenSlide's read as under 1."""
    with Slide(uneven) as slide:
        assert slide.read_rule(0.972 / 0.25) == READ_RULE == 2  # level 1 (4.00225)
        assert slide.read_rule(32.0) == 2  # level 2 at 1/2, falling back to levels 1 and 2 among others
        assert slide.read_levels[slide.best_level(0.972 / 0.5)] == (0, 2)
        assert slide.read_rule(0.972 / 0.5) == 1  # level 0 at 1/2, or level 0 itself
    with Slide(uneven, jpeg_scaling="off") as slide:
        assert slide.read_rule(1.0) == slide.read_rule(0.972 / 0.5) == 1
    with Slide(uneven, "openslide") as slide:
        assert slide.read_rule(0.972 / 0.25) == 1
    with Slide(pyramid / "pyramid.svs") as slide:  # downsamples 4 and 16
        assert slide.read_rule(0.972 / 0.25) == slide.read_rule(32.0) == 1

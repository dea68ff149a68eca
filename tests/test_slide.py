"""Slide I/O: µm/px, level choice (never level 0 when a closer level exists), resampling, both backends."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_pipeline import InputError, Slide

from .conftest import CMU_SLIDE, make_slide


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

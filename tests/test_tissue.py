"""Tissue detection follows the tissue on a real H&E slide and on synthetic ones."""

from __future__ import annotations

import numpy as np

from wsi_pipeline import Slide, detect_tissue
from wsi_pipeline.synthetic.svs import Rect, RectScene

from .conftest import CMU_SLIDE, PINK


def test_cmu_mask_follows_the_tissue():
    """Checked by eye against the thumbnail: one tall strip of tissue, white glass around it."""
    with Slide(CMU_SLIDE) as slide:
        thumbnail = slide.thumbnail(8.0)
    tissue = detect_tissue(thumbnail, 8.0)
    mask = tissue.mask
    assert mask.shape == (185, 138) and tissue.mpp == 8.0
    assert 0.25 < mask.mean() < 0.45
    assert mask[:, :20].mean() < 0.02  # glass on the left (a thin strand reaches in)
    assert not mask[:20, :40].any() and not mask[-20:, -20:].any()  # glass corners
    assert mask[130:150, 55:70].all()  # the dense middle of the strip
    saturation_of_mask = thumbnail[mask].std(axis=-1).mean()
    saturation_of_glass = thumbnail[~mask].std(axis=-1).mean()
    assert saturation_of_mask > 3 * saturation_of_glass


def test_blank_slide_has_no_tissue():
    rng = np.random.default_rng(0)
    glass = (245 + rng.integers(-3, 4, (200, 300, 3))).astype(np.uint8)
    assert not detect_tissue(glass, 8.0).mask.any()


def test_rectangle_is_found_and_specks_dropped():
    scene = RectScene([Rect(400, 400, 1600, 1200, PINK), Rect(2000, 200, 2016, 216, PINK)])
    image = scene.render(0, 0, 300, 200, 8.0)  # 8 level-0 px per mask px at mpp 1 → 8 µm/px
    mask = detect_tissue(image, 8.0).mask
    truth = np.zeros_like(mask)
    truth[50:150, 50:200] = True
    assert (mask & truth).sum() / (mask | truth).sum() > 0.95
    assert not mask[:40, 240:].any()  # the 16 µm speck is below the minimum object area


def test_saturation_equals_scikit_image_hsv():
    from skimage.color import rgb2hsv

    from wsi_pipeline.tiling.tissue import hsv_saturation

    rgb = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    rgb[:4] = 0  # black: saturation 0, not a division by zero
    np.testing.assert_allclose(hsv_saturation(rgb), rgb2hsv(rgb)[..., 1], atol=1e-12)

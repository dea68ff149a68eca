"""Camelyon16 lesion-level FROC under the corrected rules (the challenge's own: test_froc_rules.py): hand-made
slides, lesions and detections with answers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_pipeline import Heatmap, PatchGrid
from wsi_pipeline.evaluation.annotations import TumourRegions
from wsi_pipeline.evaluation.froc import (
    find_lesions,
    froc_curve,
    froc_score,
    heatmap_detections,
    match_detections,
    sensitivity_at,
)

MPP0 = 0.5  # µm per level-0 pixel; the geometry below is in µm
SIZE0 = (8000, 8000)  # 4 × 4 mm
MASK_MPP = 2.0  # a finer evaluation mask than the default, so distances hold to about 2 µm


def box_um(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float) / MPP0


def disc_um(cx, cy, diameter, n=64):
    angle = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + diameter / 2 * np.cos(angle), cy + diameter / 2 * np.sin(angle)], 1) / MPP0


def lesions(*rings, exclusions=(), mask_mpp=MASK_MPP):
    regions = TumourRegions(list(rings), list(exclusions))
    return find_lesions(regions, SIZE0, MPP0, rules="corrected", mask_mpp=mask_mpp)


def match(found, detections_um):
    """Detections given as (x µm, y µm, probability)."""
    x, y, p = np.array(detections_um, float).reshape(-1, 3).T
    return match_detections(found, x / MPP0, y / MPP0, p, rules="corrected")


L1, L2, L3 = box_um(200, 200, 700, 700), box_um(1500, 200, 1900, 600), box_um(1000, 1000, 1400, 1400)
ITC = disc_um(3000, 3000, 100)


def test_itc_threshold_and_merging_follow_the_75_um_growth():
    # A disc grows by 75 µm in diameter: below 200 µm it stays under 275 µm (ITC), above it does not.
    found = lesions(disc_um(500, 500, 180), disc_um(500, 1500, 230))
    assert found.itc.tolist() == [True, False]
    # Regions closer than 75 µm merge into one lesion (each grows 37.5 µm); farther apart they stay two.
    assert len(lesions(box_um(0, 0, 400, 400), box_um(460, 0, 860, 400)).itc) == 1
    assert len(lesions(box_um(0, 0, 400, 400), box_um(490, 0, 890, 400)).itc) == 2
    # At the challenge's own resolution (7.776 µm/px, the default) a 1 mm lesion is one non-ITC lesion.
    default = find_lesions(TumourRegions([box_um(1000, 1000, 2000, 2000)]), SIZE0, MPP0, rules="corrected")
    assert default.itc.tolist() == [False] and default.downsample == pytest.approx(0.243 * 32 / MPP0)


def test_hits_in_the_margin_and_holes_count_and_itc_hits_are_ignored():
    found = lesions(L3, ITC, exclusions=[box_um(1150, 1150, 1250, 1250)])
    result = match(
        found,
        [
            (1400 + 30, 1200, 0.6),  # 30 µm outside the lesion: inside its 37.5 µm margin, a hit
            (1200, 1200, 0.7),  # in the exclusion hole, which the evaluation mask fills: a hit
            (1400 + 45, 1200, 0.5),  # 45 µm outside: a false positive
            (3000, 3000, 0.95),  # isolated tumour cells: neither hit nor false positive
        ],
    )
    assert result == {"lesions": 1, "itc": 1, "hits": [0.7], "fps": [0.5]}
    # a slide without tumour: every detection is a false positive
    assert match(lesions(), [(450, 450, 0.9), (10, 10, 0.1)]) == {
        "lesions": 0,
        "itc": 0,
        "hits": [],
        "fps": [0.9, 0.1],
    }


def test_perfect_detections_score_one():
    slides = [
        match(lesions(L1, L2, ITC), [(450, 450, 0.9), (1700, 400, 0.8)]),
        match(lesions(L3), [(1200, 1200, 0.7)]),
        match(lesions(), []),
    ]
    assert froc_score(slides, rules="corrected")["score"] == 1.0


def test_known_imperfect_detections():
    slide_a = match(
        lesions(L1, L2, ITC),
        [(450, 450, 0.9), (1000, 2000, 0.9), (1700, 400, 0.4), (1600, 300, 0.3), (3000, 3000, 0.95)],
    )
    slide_b = match(lesions(L3), [(1430, 1200, 0.7), (2500, 2500, 0.7), (3000, 500, 0.2)])
    assert slide_a == {"lesions": 2, "itc": 1, "hits": [0.9, 0.4], "fps": [0.9]}  # L2 keeps its best, 0.4
    assert slide_b == {"lesions": 1, "itc": 0, "hits": [0.7], "fps": [0.7, 0.2]}
    # 3 lesions, 2 slides (an FP adds 0.5 per slide). Thresholds from the top:
    #   0.9: L1 and an FP    → (0.5, 1/3)
    #   0.7: L3 and an FP    → (1.0, 2/3)
    #   0.4: L2              → (1.0, 1)
    #   0.2: an FP           → (1.5, 1)
    # At 1/4 FP/slide: halfway from (0, 0) to (0.5, 1/3) = 1/6; at 1/2: 1/3; at 1: the highest point, 1;
    # at 2, 4, 8: held at 1. Score = (1/6 + 1/3 + 1 + 1 + 1 + 1) / 6 = 0.75.
    fp_rate, sensitivity, thresholds = froc_curve([slide_a, slide_b], rules="corrected")
    np.testing.assert_allclose(fp_rate, [0, 0.5, 1.0, 1.0, 1.5])
    np.testing.assert_allclose(sensitivity, [0, 1 / 3, 2 / 3, 1, 1])
    np.testing.assert_allclose(thresholds, [np.inf, 0.9, 0.7, 0.4, 0.2])
    froc = froc_score([slide_a, slide_b], rules="corrected")
    assert froc["score"] == pytest.approx(0.75)
    assert list(froc["sensitivity_at"].values()) == pytest.approx([1 / 6, 1 / 3, 1, 1, 1, 1])
    # the challenge script's interpolation (np.interp over the curve) agrees
    assert np.interp([0.25, 0.5, 1, 2, 4, 8], fp_rate, sensitivity) == pytest.approx(
        sensitivity_at(fp_rate, sensitivity)
    )
    with pytest.raises(ValueError, match="no lesion"):
        froc_curve([match(lesions(ITC), [(3000, 3000, 0.9)])], rules="corrected")


def test_heatmap_detections_one_per_region_at_its_peak():
    grid = PatchGrid(width0=960, height0=480, mpp0=1.0, target_mpp=1.0, patch_size=96, stride=96)  # 5 × 10
    tumour = np.zeros(grid.shape, np.float32)
    tumour[0, 0:2], tumour[1, 2] = (0.5, 0.7), 0.7  # one region (diagonal neighbours), tied peak
    tumour[3:5, 6] = (0.3, 0.9)
    tumour[4, 9] = 0.1  # below the floor
    tumour[0, 8] = np.nan  # unscored
    tissue = np.isfinite(tumour)
    heatmap = Heatmap(np.stack([1 - tumour, tumour]), tissue, grid, ["normal", "tumour"], {})
    x, y, p = heatmap_detections(heatmap, floor=0.2)
    # the first peak in row-major order, at its cell's centre: (96·col + 48, 96·row + 48)
    np.testing.assert_allclose(np.c_[x, y, p], [[144, 48, 0.7], [624, 432, 0.9]], rtol=1e-6)
    assert len(heatmap_detections(heatmap, floor=0.95)[0]) == 0

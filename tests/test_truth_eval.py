"""Heatmaps against ground truth: hand-made cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_pipeline import Heatmap, PatchGrid
from wsi_pipeline.evaluation.truth import cell_tumour_fraction, evaluate_heatmap, summarise

# ds = 1: one target pixel per level-0 pixel; cells are the 96 × 96 squares [96·col, 96·col + 96)
GRID = PatchGrid(width0=960, height0=480, mpp0=1.0, target_mpp=1.0, patch_size=96, stride=96)


def box(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], float)


def heatmap(scores: np.ndarray) -> Heatmap:
    probs = np.stack([1 - scores, scores]).astype(np.float32)
    return Heatmap(probs, np.ones(GRID.shape, bool), GRID, ["normal", "tumour"], {})


def test_cell_fraction_of_squares():
    assert GRID.shape == (5, 10)
    fraction = cell_tumour_fraction(GRID, [box(96, 0, 288, 96), box(480, 192, 528, 288)])
    expected = np.zeros((5, 10))
    expected[0, 1:3] = 1.0  # two whole cells
    expected[2, 5] = 0.5  # half of one cell
    np.testing.assert_allclose(fraction, expected)


def test_perfect_inverted_and_missing_predictions():
    lesion = box(192, 96, 480, 288)  # 288 µm wide: cells rows 1-2, cols 2-4
    truth = cell_tumour_fraction(GRID, [lesion]) >= 0.5
    assert truth.sum() == 6
    perfect = evaluate_heatmap(heatmap(truth.astype(float)), [lesion])
    assert perfect["slide_score"] == 1.0 and perfect["metastases"][0]["detected"]
    assert perfect["metastases"][0]["diameter_um"] == pytest.approx(np.hypot(288, 192))
    inverted = evaluate_heatmap(heatmap(1 - truth.astype(float)), [lesion])
    assert not inverted["metastases"][0]["detected"]
    empty = evaluate_heatmap(heatmap(np.full(GRID.shape, 0.1)), [])
    assert empty["slide_score"] == pytest.approx(0.1) and not empty["slide_positive"]

    summary = summarise([perfect, empty], min_diameter_um=300)
    assert summary["cell_auc"] == 1.0 and summary["slide_auc"] == 1.0
    assert (summary["large_metastases"], summary["large_detected"]) == (1, 1)
    summary = summarise([inverted, empty], min_diameter_um=300)
    assert summary["cell_auc"] == 0.0 and summary["large_detected_fraction"] == 0.0
    # a positive slide whose max is below the negative slide's ranks wrongly: slide AUC 0
    low = evaluate_heatmap(heatmap(truth * 0.05), [lesion])
    assert summarise([low, empty])["slide_auc"] == 0.0
    assert summarise([perfect, empty], min_diameter_um=400)["large_metastases"] == 0


def test_unscored_tumour_is_counted_and_not_scored():
    lesion = box(0, 0, 192, 96)
    hm = heatmap(np.full(GRID.shape, 0.9))
    hm.tissue[0, 0] = False
    hm.probabilities[:, 0, 0] = np.nan
    result = evaluate_heatmap(hm, [lesion])
    assert (
        result["missed_tumour_cells"] == 1 and len(result["cell_scores"]) == GRID.shape[0] * GRID.shape[1] - 1
    )
    assert result["metastases"][0]["detected"]


def test_dice_on_a_hand_made_heatmap_counts_unscored_tumour_as_missed():
    lesion = box(192, 96, 480, 288)  # cells rows 1-2, cols 2-4: 6 tumour cells
    scores = np.full(GRID.shape, 0.1)
    scores[1, 2:5] = 0.9  # 3 of them found
    scores[2, 2] = 0.5  # a fourth, exactly at the threshold
    scores[4, 8:10] = 0.7  # 2 false cells
    result = evaluate_heatmap(heatmap(scores), [lesion])
    assert result["dice_counts"] == {"predicted": 6, "true": 6, "both": 4}
    assert result["dice"] == pytest.approx(2 * 4 / (6 + 6))
    # AUC over (tumour, other) pairs: three 0.9 beat all 44; 0.5 beats the 42 at 0.1; two 0.1 tie with them
    assert result["cell_auc"] == pytest.approx((3 * 44 + 42 + 2 * 42 * 0.5) / (6 * 44))
    hm = heatmap(scores)
    hm.tissue[1, 2] = False  # a found tumour cell left unscored is now missed
    hm.probabilities[:, 1, 2] = np.nan
    assert evaluate_heatmap(hm, [lesion])["dice"] == pytest.approx(2 * 3 / (5 + 6))
    assert evaluate_heatmap(heatmap(np.full(GRID.shape, 0.1)), [])["dice"] is None  # nothing to compare


def test_exclusions_are_not_tumour():
    lesion, hole = box(0, 0, 288, 192), box(96, 0, 192, 96)  # 6 cells, the second of the top row excluded
    fraction = cell_tumour_fraction(GRID, [lesion], [hole])
    assert fraction[:2, :3].tolist() == [[1, 0, 1], [1, 1, 1]] and fraction.sum() == 5


def test_slide_auc_and_pooled_dice_across_slides():
    lesion = box(192, 96, 480, 288)
    truth = cell_tumour_fraction(GRID, [lesion]) >= 0.5
    # FROC by the corrected rules: by the challenge's (µm counted at 0.243 µm/px) this lesion would be ITC
    positives = [evaluate_heatmap(heatmap(truth * p + 0.05), [lesion], rules="corrected") for p in (0.9, 0.1)]
    negatives = [evaluate_heatmap(heatmap(np.full(GRID.shape, p)), [], rules="corrected") for p in (0.5, 0.1)]
    # slide scores: positives 0.95, 0.15; negatives 0.5, 0.1 → 3 of 4 (positive, negative) pairs in order
    summary = summarise(positives + negatives, rules="corrected")
    assert summary["slide_auc"] == pytest.approx(0.75)
    # pooled: the first positive finds its 6 cells, the second none, the 0.5 negative calls all its 50
    assert summary["dice"] == pytest.approx(2 * 6 / ((6 + 50) + (6 + 6)))
    # detections (floor 0.2): the first lesion at 0.95, the 0.5 negative as one FP; the 0.15 lesion unfound
    assert summary["froc"]["score"] == pytest.approx(0.5)
    assert [r["lesion_detection"]["hits"] for r in positives] == [[pytest.approx(0.95)], []]

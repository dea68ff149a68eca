"""Heatmaps against ground truth: hand-made cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_pipeline import Heatmap, PatchGrid
from wsi_pipeline.truth_eval import cell_tumour_fraction, evaluate_heatmap, summarise

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

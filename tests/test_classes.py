"""One rule for the tumour class: a model whose classes are ["tumor", "normal"] is read the same way by the
findings, the napari layers, wsi-eval's heatmap and patch evaluation, and the FROC detections."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_pipeline import Heatmap, PatchGrid, find_regions
from wsi_pipeline.core.classes import tumour_class_index
from wsi_pipeline.evaluation.froc import heatmap_detections
from wsi_pipeline.evaluation.patches import patch_metrics
from wsi_pipeline.evaluation.truth import evaluate_heatmap
from wsi_pipeline.findings.regions import tumour_scores

GRID = PatchGrid(width0=960, height0=480, mpp0=1.0, target_mpp=1.0, patch_size=96, stride=96)
LESION = np.array([[192, 96], [480, 96], [480, 288], [192, 288], [192, 96]], float)  # rows 1-2, cols 2-4


def tumour_map() -> np.ndarray:
    scores = np.full(GRID.shape, 0.1, np.float32)
    scores[1:3, 2:5] = 0.9
    scores[4, 9] = 0.6  # a false positive
    return scores


def heatmap(class_names: list[str]) -> Heatmap:
    """The same tumour probabilities stored under either class order."""
    tumour = tumour_map()
    channels = [tumour if i == tumour_class_index(class_names) else 1 - tumour for i in range(2)]
    return Heatmap(np.stack(channels), np.ones(GRID.shape, bool), GRID, class_names, {})


@pytest.mark.parametrize(
    ("names", "index"),
    [(["tumor", "normal"], 0), (["normal", "tumour"], 1), (["Tumour", "other"], 0), (["a", "b", "c"], 2)],
)
def test_the_class_named_tumour_else_the_last(names, index):
    assert tumour_class_index(names) == index


def test_tumor_first_is_read_as_tumour_by_every_stage():
    first, last = heatmap(["tumor", "normal"]), heatmap(["normal", "tumour"])
    np.testing.assert_array_equal(tumour_scores(first), tumour_map())
    assert [r.cells for r in find_regions(first, 0.5)] == [r.cells for r in find_regions(last, 0.5)] == [6, 1]
    for a, b in zip(heatmap_detections(first), heatmap_detections(last), strict=True):
        np.testing.assert_allclose(a, b)
    on_first, on_last = (evaluate_heatmap(h, [LESION]) for h in (first, last))
    assert on_first["slide_score"] == on_last["slide_score"] == pytest.approx(0.9)
    assert on_first["cell_auc"] == on_last["cell_auc"] == 1.0
    assert on_first["lesion_detection"] == on_last["lesion_detection"]


def test_patch_metrics_score_the_tumour_class_whatever_its_index():
    tumour_p = np.array([0.9, 0.8, 0.3, 0.2, 0.7, 0.1])
    is_tumour = np.array([True, True, True, False, False, False])
    # the same patches under both class orders: labels index the model's classes
    tumor_first = patch_metrics(
        np.where(is_tumour, 0, 1), np.stack([tumour_p, 1 - tumour_p], 1), ["tumor", "normal"]
    )
    tumour_last = patch_metrics(
        np.where(is_tumour, 1, 0), np.stack([1 - tumour_p, tumour_p], 1), ["normal", "tumour"]
    )
    for key in ("auc", "accuracy", "sensitivity", "specificity"):
        assert tumor_first[key] == pytest.approx(tumour_last[key]), key
    assert tumor_first["sensitivity"] == pytest.approx(2 / 3) and tumor_first["specificity"] == pytest.approx(
        2 / 3
    )
    assert tumor_first["positive_class"] == "tumor"

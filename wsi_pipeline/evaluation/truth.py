"""Heatmaps against ground-truth tumour polygons: cell-level AUC and Dice, slide-level AUC, metastases found,
lesion-level FROC.

Each heatmap cell stands for the ``stride × stride`` square (target pixels) centred on its patch, as NGFF
viewers draw it. A cell is *tumour* when at least half of that square is inside the truth polygons (and
outside the exclusion polygons); a metastasis (one truth polygon) is *detected* when a cell that overlaps it
scores at least the threshold. Dice compares the cells scoring at least the threshold with the tumour cells
over the whole grid, so tumour the tissue mask left unscored counts as missed. The lesion-level FROC follows
the Camelyon16 challenge's rules or the corrected ones (:mod:`wsi_pipeline.evaluation.froc`) on the heatmap's
detections, or on detections given."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from wsi_pipeline.core.classes import tumour_class_index
from wsi_pipeline.core.polygons import max_diameter, points_in_polygons
from wsi_pipeline.evaluation.annotations import TumourRegions
from wsi_pipeline.evaluation.froc import (
    DETECTION_FLOOR,
    Detections,
    Lesions,
    Rules,
    find_lesions,
    froc_score,
    heatmap_detections,
    match_detections,
)
from wsi_pipeline.evaluation.metrics import binary_roc_auc
from wsi_pipeline.store.heatmap import Heatmap
from wsi_pipeline.tiling.grid import PatchGrid

SAMPLES = 8  # truth sampled on SAMPLES × SAMPLES points per cell square


def cell_tumour_fraction(
    grid: PatchGrid, polygons: Sequence[np.ndarray], exclusions: Sequence[np.ndarray] = ()
) -> np.ndarray:
    """Fraction (rows, cols) of each cell's square covered by the polygons (level-0 (x, y) rings) and not by
    the exclusions."""
    rows, cols = grid.shape
    side_level0 = grid.stride * grid.ds
    centre_x = grid.cell_spans_level0(np.arange(cols)).mean(axis=1)
    centre_y = grid.cell_spans_level0(np.arange(rows)).mean(axis=1)
    offsets = ((np.arange(SAMPLES) + 0.5) / SAMPLES - 0.5) * side_level0
    fraction = np.zeros((rows, cols))
    for ring in polygons:
        (x0, y0), (x1, y1) = ring.min(axis=0), ring.max(axis=0)
        near_cols = np.flatnonzero((centre_x + side_level0 / 2 > x0) & (centre_x - side_level0 / 2 < x1))
        near_rows = np.flatnonzero((centre_y + side_level0 / 2 > y0) & (centre_y - side_level0 / 2 < y1))
        if not len(near_cols) or not len(near_rows):
            continue
        x = centre_x[near_cols][None, :, None, None] + offsets[None, None, None, :]
        y = centre_y[near_rows][:, None, None, None] + offsets[None, None, :, None]
        x, y = np.broadcast_arrays(x, y)
        x, y = x.reshape(-1), y.reshape(-1)
        inside = points_in_polygons([ring], x, y) & ~points_in_polygons(exclusions, x, y)
        inside = inside.reshape(len(near_rows), len(near_cols), SAMPLES, SAMPLES).mean(axis=(2, 3))
        fraction[np.ix_(near_rows, near_cols)] += inside
    return np.minimum(fraction, 1.0)


def _auc_or_none(truth: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC, or None when the truth holds a single class."""
    return binary_roc_auc(truth, scores) if truth.any() and not truth.all() else None


def _dice(counts: dict) -> float | None:
    """Dice of {"predicted", "true", "both"} cell counts; None when both sets are empty."""
    total = counts["predicted"] + counts["true"]
    return 2 * counts["both"] / total if total else None


def evaluate_heatmap(
    heatmap: Heatmap,
    polygons: Sequence[np.ndarray],
    threshold: float = 0.5,
    exclusions: Sequence[np.ndarray] = (),
    detection_floor: float = DETECTION_FLOOR,
    *,
    rules: Rules = "challenge",
    detections: Detections | None = None,
    lesions: Lesions | None = None,
) -> dict:
    """One slide: each scored cell's truth and score, cell AUC and Dice, the slide score (max), which
    metastases were found, and the lesion-level matching by ``rules`` (``lesion_detection``, see
    :func:`wsi_pipeline.evaluation.froc.match_detections`) of ``detections`` (x, y, probability; default: the
    heatmap's) against ``lesions`` (default: found from the polygons).

    The tumour class is chosen by :func:`wsi_pipeline.core.classes.tumour_class_index`, as everywhere.
    """
    grid = heatmap.grid
    scores = heatmap.probabilities[tumour_class_index(heatmap.class_names)]
    scored = heatmap.tissue & np.isfinite(scores)
    fraction = cell_tumour_fraction(grid, polygons, exclusions)
    tumour_cells, predicted = fraction >= 0.5, scored & (np.nan_to_num(scores, nan=0.0) >= threshold)
    dice_counts = {
        "predicted": int(predicted.sum()),
        "true": int(tumour_cells.sum()),
        "both": int((predicted & tumour_cells).sum()),
    }
    if lesions is None:
        regions = TumourRegions(list(polygons), list(exclusions))
        lesions = find_lesions(regions, (grid.width0, grid.height0), grid.mpp0, rules=rules)
    if detections is None:
        detections = heatmap_detections(heatmap, detection_floor)
    metastases = []
    for ring in polygons:
        overlap = cell_tumour_fraction(grid, [ring], exclusions) > 0
        peak = (
            float(np.nanmax(np.where(overlap & scored, scores, np.nan))) if (overlap & scored).any() else 0.0
        )
        metastases.append(
            {"diameter_um": max_diameter(ring) * grid.mpp0, "peak": peak, "detected": bool(peak >= threshold)}
        )
    return {
        "cell_truth": tumour_cells[scored],
        "cell_scores": scores[scored],
        "cell_auc": _auc_or_none(tumour_cells[scored], scores[scored]),
        "dice": _dice(dice_counts),
        "dice_counts": dice_counts,
        "slide_score": float(scores[scored].max()) if scored.any() else 0.0,
        "slide_positive": bool(polygons),
        "missed_tumour_cells": int((tumour_cells & ~scored).sum()),  # tumour the tissue mask left out
        "metastases": metastases,
        "lesion_detection": match_detections(lesions, *detections, rules=rules),
    }


def summarise(results: Sequence[dict], min_diameter_um: float = 500.0, *, rules: Rules = "challenge") -> dict:
    """Across slides: pooled cell-level AUC and Dice, slide-level AUC (max score), the share of metastases
    larger than ``min_diameter_um`` that were detected, and the FROC by ``rules`` (None without a non-ITC
    lesion); the results must have been matched by the same rules."""
    truth = np.concatenate([r["cell_truth"] for r in results])
    scores = np.concatenate([r["cell_scores"] for r in results])
    slide_truth = np.array([r["slide_positive"] for r in results])
    slide_scores = np.array([r["slide_score"] for r in results])
    lesions = [r["lesion_detection"] for r in results]
    large = [m for r in results for m in r["metastases"] if m["diameter_um"] > min_diameter_um]
    return {
        "slides": len(results),
        "positive_slides": int(slide_truth.sum()),
        "cells": len(truth),
        "tumour_cells": int(truth.sum()),
        "cell_auc": _auc_or_none(truth, scores),
        "dice": _dice(
            {key: sum(r["dice_counts"][key] for r in results) for key in ("predicted", "true", "both")}
        ),
        "slide_auc": _auc_or_none(slide_truth, slide_scores),
        "large_metastases": len(large),
        "large_detected": sum(m["detected"] for m in large),
        "large_detected_fraction": sum(m["detected"] for m in large) / len(large) if large else None,
        "min_diameter_um": min_diameter_um,
        "tumour_cells_outside_tissue": sum(r["missed_tumour_cells"] for r in results),
        "froc": froc_score(lesions, rules=rules) if sum(s["lesions"] for s in lesions) else None,
    }

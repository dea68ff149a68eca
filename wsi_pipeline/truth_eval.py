"""Heatmaps against ground-truth tumour polygons: cell-level AUC, slide-level AUC, metastases found.

Each heatmap cell stands for the ``stride × stride`` square (target pixels) centred on its patch, as NGFF
viewers draw it. A cell is *tumour* when at least half of that square is inside the truth polygons; a
metastasis is *detected* when a cell that overlaps it scores at least the threshold.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .grid import PatchGrid
from .heatmap import Heatmap
from .metrics import binary_roc_auc
from .polygons import max_diameter, points_in_polygons

SAMPLES = 8  # truth sampled on SAMPLES × SAMPLES points per cell square


def cell_tumour_fraction(grid: PatchGrid, polygons: Sequence[np.ndarray]) -> np.ndarray:
    """Fraction (rows, cols) of each cell's square covered by the polygons (level-0 (x, y) rings)."""
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
        inside = points_in_polygons([ring], x.reshape(-1), y.reshape(-1)).reshape(x.shape).mean(axis=(2, 3))
        fraction[np.ix_(near_rows, near_cols)] += inside
    return np.minimum(fraction, 1.0)


def evaluate_heatmap(
    heatmap: Heatmap, polygons: Sequence[np.ndarray], threshold: float = 0.5, positive: int = -1
) -> dict:
    """One slide: each scored cell's truth and score, the slide score (max), and which metastases were found.

    ``positive`` indexes the tumour class among the heatmap's classes (default: the last).
    """
    grid = heatmap.grid
    scores = heatmap.probabilities[positive]
    scored = heatmap.tissue & np.isfinite(scores)
    fraction = cell_tumour_fraction(grid, polygons)
    metastases = []
    for ring in polygons:
        overlap = cell_tumour_fraction(grid, [ring]) > 0
        peak = (
            float(np.nanmax(np.where(overlap & scored, scores, np.nan))) if (overlap & scored).any() else 0.0
        )
        metastases.append(
            {"diameter_um": max_diameter(ring) * grid.mpp0, "peak": peak, "detected": bool(peak >= threshold)}
        )
    return {
        "cell_truth": fraction[scored] >= 0.5,
        "cell_scores": scores[scored],
        "slide_score": float(scores[scored].max()) if scored.any() else 0.0,
        "slide_positive": bool(polygons),
        "missed_tumour_cells": int(((fraction >= 0.5) & ~scored).sum()),  # tumour the tissue mask left out
        "metastases": metastases,
    }


def summarise(results: Sequence[dict], min_diameter_um: float = 500.0) -> dict:
    """Across slides: pooled cell-level AUC, slide-level AUC (max score), and the share of metastases larger
    than ``min_diameter_um`` that were detected."""
    truth = np.concatenate([r["cell_truth"] for r in results])
    scores = np.concatenate([r["cell_scores"] for r in results])
    slide_truth = np.array([r["slide_positive"] for r in results])
    slide_scores = np.array([r["slide_score"] for r in results])
    large = [m for r in results for m in r["metastases"] if m["diameter_um"] > min_diameter_um]
    both = truth.any() and not truth.all()
    return {
        "slides": len(results),
        "positive_slides": int(slide_truth.sum()),
        "cells": len(truth),
        "tumour_cells": int(truth.sum()),
        "cell_auc": binary_roc_auc(truth, scores) if both else None,
        "slide_auc": binary_roc_auc(slide_truth, slide_scores)
        if 0 < slide_truth.sum() < len(results)
        else None,
        "large_metastases": len(large),
        "large_detected": sum(m["detected"] for m in large),
        "large_detected_fraction": sum(m["detected"] for m in large) / len(large) if large else None,
        "min_diameter_um": min_diameter_um,
        "tumour_cells_outside_tissue": sum(r["missed_tumour_cells"] for r in results),
    }

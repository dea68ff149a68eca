"""The per-tile table ``<stem>.tiles.csv``."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from wsi_pipeline.core.files import write_atomically
from wsi_pipeline.store.heatmap import UNREADABLE, Heatmap


def write_csv(path: Path, header: Iterable[str], rows: Iterable[Iterable]) -> None:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)


def write_tile_table(path: str | Path, heatmap: Heatmap) -> Path:
    """Every grid cell: its row/col, its patch's level-0 box (end-exclusive), whether it was scored (tissue
    whose pixels could be decoded), and its class probabilities (empty when not scored)."""
    grid = heatmap.grid
    rows, cols = (axis.ravel() for axis in np.indices(grid.shape))
    boxes = grid.cell_boxes_level0(rows, cols).round(2).tolist()
    scored = heatmap.tissue[rows, cols] & (heatmap.labels[rows, cols] != UNREADABLE)
    probabilities = heatmap.probabilities[:, rows, cols].T.astype(np.float64).round(6).tolist()
    header = [
        "row",
        "col",
        *(f"patch_{name}_level0" for name in ("x0", "y0", "x1", "y1")),
        "scored",
        *(f"prob_{name}" for name in heatmap.class_names),
    ]
    unscored = [""] * len(heatmap.class_names)
    lines = (
        [rows[i], cols[i], *boxes[i], int(scored[i]), *(probabilities[i] if scored[i] else unscored)]
        for i in range(len(rows))
    )
    return write_atomically(path, lambda partial: write_csv(partial, header, lines))

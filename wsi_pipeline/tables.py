"""CSV tables: per tile (``<stem>.tiles.csv``) and per batch (``OUT/slides.csv``, one row per slide), and the
atomic file replacement every report uses."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .heatmap import Heatmap

if TYPE_CHECKING:
    from .run import SlideResult

BATCH_TABLE = "slides.csv"
BATCH_COLUMNS = (
    "slide",  # absolute path: the key of the table
    "status",  # ok, skipped (heatmap already complete) or failed
    "reason",
    "max_probability",  # the slide score
    "top_k",
    "top_k_mean",
    "tumour_area_mm2",
    "largest_diameter_mm",
    "category",  # research estimate, not a diagnosis
    "patches_scored",
    "seconds",
    "model_name",
    "weights_sha256",
    "heatmap",
    "finished",
)


def write_atomically(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write`` on a temporary file beside ``path``, then rename it over ``path``: a reader (or a crash)
    sees the old file or the new one, never half of one."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _write_csv(path: Path, header: Iterable[str], rows: Iterable[Iterable]) -> None:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)


def write_tile_table(path: str | Path, heatmap: Heatmap) -> Path:
    """Every grid cell: its row/col, its patch's level-0 box (end-exclusive), whether it was scored, and its
    class probabilities (empty when not scored)."""
    grid = heatmap.grid
    rows, cols = (axis.ravel() for axis in np.indices(grid.shape))
    boxes = grid.cell_boxes_level0(rows, cols).round(2).tolist()
    scored = heatmap.tissue[rows, cols]
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
    return write_atomically(path, lambda partial: _write_csv(partial, header, lines))


def batch_row(result: SlideResult, metadata: dict | None) -> dict:
    """A slide's row of the batch table from its result, its summary (if any) and its heatmap's metadata."""
    summary, metadata = result.summary or {}, metadata or {}
    model = metadata.get("model", {})
    return {
        "slide": str(Path(result.slide).resolve()),
        "status": result.status,
        "reason": result.message,
        **{
            key: summary.get(key)
            for key in (
                "max_probability",
                "top_k",
                "top_k_mean",
                "tumour_area_mm2",
                "largest_diameter_mm",
                "category",
            )
        },
        "patches_scored": metadata.get("patches_scored", result.patches),
        "seconds": round(metadata.get("seconds", result.seconds), 3),
        "model_name": model.get("name"),
        "weights_sha256": model.get("weights_sha256"),
        "heatmap": result.heatmap,
        "finished": metadata.get("finished", datetime.now(timezone.utc).isoformat()),
    }


def _cell(value: object) -> object:
    return "" if value is None else value


def read_batch_table(path: str | Path) -> dict[str, dict]:
    """The rows of a batch table by slide path (empty when there is none)."""
    path = Path(path)
    if not path.is_file():
        return {}
    with path.open(newline="") as file:
        return {row["slide"]: row for row in csv.DictReader(file)}


def update_batch_table(out_dir: str | Path, rows: Iterable[dict]) -> Path:
    """Add or replace (by slide path) rows of ``out_dir/slides.csv``, keeping the other rows and the order."""
    path = Path(out_dir) / BATCH_TABLE
    table = read_batch_table(path)
    for row in rows:
        table[row["slide"]] = row
    lines = ([_cell(row.get(key)) for key in BATCH_COLUMNS] for row in table.values())
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomically(path, lambda partial: _write_csv(partial, BATCH_COLUMNS, lines))

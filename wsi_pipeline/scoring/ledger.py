"""The batch table ``OUT/slides.csv``: one row per slide, replaced on re-runs, the others kept."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from wsi_pipeline.core.errors import output_faults
from wsi_pipeline.core.files import write_atomically
from wsi_pipeline.core.locks import FileLock
from wsi_pipeline.findings.tables import write_csv
from wsi_pipeline.store.metadata import HeatmapRecord

if TYPE_CHECKING:
    from wsi_pipeline.scoring.options import SlideResult


BATCH_TABLE = "slides.csv"
TABLE_LOCK_WAIT_S = 60.0  # how long a run waits for another run sharing OUT to finish updating the table
BATCH_COLUMNS = (
    "slide",  # absolute path: the key of the table
    "status",  # ok, skipped (heatmap already complete) or failed (options.SlideStatus)
    "reason",
    "max_probability",  # the slide score
    "top_k",
    "top_k_mean",
    "tumour_area_mm2",
    "largest_diameter_mm",
    "category",  # research estimate, not a diagnosis; "not assessed (demonstration model)" (summary.py)
    "patches_scored",
    "seconds",
    "model_name",  # an ensemble's members joined by " + ", as are their weights' sha256
    "weights_sha256",
    "heatmap",
    "finished",
)


def batch_row(result: SlideResult, metadata: HeatmapRecord | None) -> dict:
    """A slide's row of the batch table from its result, its summary (if any) and its heatmap's metadata (None
    for a failed slide)."""
    summary = result.summary or {}
    complete = metadata is not None and metadata.complete
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
        "patches_scored": metadata.patches_scored if complete else result.patches,
        "seconds": round(metadata.seconds if complete else result.seconds, 3),
        "model_name": metadata.model_name if metadata else None,
        "weights_sha256": " + ".join(model.weights_sha256 for model in metadata.models) if metadata else None,
        "heatmap": result.heatmap,
        "finished": metadata.finished if complete else datetime.now(timezone.utc).isoformat(),
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
    return write_atomically(path, lambda partial: write_csv(partial, BATCH_COLUMNS, lines))


def record_in_batch_table(out_dir: str | Path, result: SlideResult, metadata: HeatmapRecord | None) -> None:
    """Add or replace a slide's row of ``out_dir/slides.csv`` under the table's lock (other runs may share
    ``out_dir``); an ``OutputError`` when the folder refuses the write (full, read-only).

    Args:
        out_dir: the folder of the heatmaps and the table.
        result: the slide's result (with its summary, if any).
        metadata: its heatmap's metadata, or None (a failed slide).
    """
    with output_faults(out_dir):
        lock = FileLock(Path(out_dir) / f"{BATCH_TABLE}.lock").acquire(TABLE_LOCK_WAIT_S)
        try:
            update_batch_table(out_dir, [batch_row(result, metadata)])
        finally:
            lock.release()

"""Detections in the Camelyon16 challenge's CSV format: one file per slide, ``<slide stem>.csv``, one
detection a line as ``probability,x,y`` (x, y in level-0 px), no header: what its evaluation script reads
(``readCSVContent``: ``float`` of the first field, ``int`` of the other two)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsi_pipeline.core.errors import InputError
from wsi_pipeline.core.files import write_atomically
from wsi_pipeline.evaluation.froc import Detections, heatmap_detections
from wsi_pipeline.store.heatmap import Heatmap


def write_detections_csv(path: str | Path, x: np.ndarray, y: np.ndarray, probability: np.ndarray) -> Path:
    """Write detections; coordinates become the level-0 pixel holding them (floor), probabilities are written
    so that they read back exactly."""
    columns = np.asarray(probability, np.float64), np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    lines = [f"{p!r},{col},{row}\n" for p, col, row in zip(*(c.tolist() for c in columns), strict=True)]
    try:
        return write_atomically(path, "".join(lines))
    except OSError as error:
        raise InputError(path, f"cannot be written ({error.strerror})") from None


def read_detections_csv(path: str | Path) -> Detections:
    """Detections (x, y, probability) of a challenge CSV file; blank lines are skipped."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise InputError(path, f"cannot be read ({error.strerror})") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(",")
        try:
            if len(fields) != 3:
                raise ValueError
            rows.append((int(fields[1]), int(fields[2]), float(fields[0])))
        except ValueError:
            raise InputError(path, f"line {number}: expected probability,x,y (x, y whole pixels)") from None
    x, y, probability = np.array(rows, np.float64).reshape(-1, 3).T
    return x, y, probability


def slide_detections(
    heatmap: Heatmap,
    stem: str,
    floor: float,
    *,
    read_from: Path | None = None,
    export_to: Path | None = None,
) -> Detections:
    """A slide's detections: from ``read_from/<stem>.csv`` when given, else the heatmap's
    (:func:`~wsi_pipeline.evaluation.froc.heatmap_detections` at ``floor``); also written to
    ``export_to/<stem>.csv`` when given."""
    if read_from is not None:
        detections = read_detections_csv(read_from / f"{stem}.csv")
    else:
        detections = heatmap_detections(heatmap, floor)
    if export_to is not None:
        export_to.mkdir(parents=True, exist_ok=True)
        write_detections_csv(export_to / f"{stem}.csv", *detections)
    return detections

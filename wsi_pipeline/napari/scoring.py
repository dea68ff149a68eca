"""Scoring from napari: ``run.score_slide`` on an in-process Dask cluster, its events yielded to a napari
worker thread. The store, lock, resume and reports are those of ``wsi-score``, so a cancelled run is resumed
by the next one with the same parameters (from napari or the command line)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from wsi_pipeline.findings.options import DEFAULT_REPORTS
from wsi_pipeline.scoring.api import score_slide
from wsi_pipeline.scoring.cluster import dask_client
from wsi_pipeline.scoring.options import ScoreOptions, ScoringEvent, SlideResult


def score_events(
    slide_path: str | Path,
    model: str | Path,
    out_dir: str | Path,
    options: ScoreOptions,
    stop: threading.Event,
) -> Generator[ScoringEvent, None, SlideResult]:
    """Score a slide into ``out_dir/<stem>.zarr`` with its reports, yielding ``SlidePlanned`` and then one
    ``BlockWritten`` per block; setting ``stop`` (or closing the generator) ends it after the block being
    written. Returns the slide's result ("ok", "skipped" when a complete heatmap is kept, or "cancelled")."""
    events: queue.SimpleQueue[ScoringEvent | None] = queue.SimpleQueue()

    def score() -> SlideResult:
        try:
            with dask_client(scheduler="threads") as client:
                return score_slide(
                    slide_path,
                    model,
                    out_dir,
                    client=client,
                    options=options,
                    show_progress=False,
                    reports=DEFAULT_REPORTS,
                    on_event=events.put,
                    stop=stop,
                )
        finally:
            events.put(None)

    with ThreadPoolExecutor(1, thread_name_prefix="wsi-napari") as pool:
        result = pool.submit(score)
        try:
            while (event := events.get()) is not None:
                yield event
        finally:
            stop.set()  # no-op after the end; stops the run when the generator is closed early
        return result.result()

"""Scoring slides: the public entry points."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from wsi_pipeline.findings.reports import DEFAULT_REPORTS, ReportOptions
from wsi_pipeline.model.bundled import resolve_model_folder
from wsi_pipeline.model.folder import read_card
from wsi_pipeline.model.predict import choose_engine
from wsi_pipeline.scoring.batch import _Batch
from wsi_pipeline.scoring.cluster import dask_client
from wsi_pipeline.scoring.options import ScoreOptions, ScoringEvent, SlideResult


def score_slide(
    slide_path: str | Path,
    model_folder: str | Path,
    out_dir: str | Path,
    client,
    options: ScoreOptions = ScoreOptions(),
    show_progress: bool = True,
    reports: ReportOptions | None = None,
    on_event: Callable[[ScoringEvent], object] | None = None,
    stop: threading.Event | None = None,
) -> SlideResult:
    """Score one slide into ``out_dir/<stem>.zarr`` with a model folder (or bundled model name) on the cluster
    behind ``client``, resuming or keeping a heatmap as ``score_slides`` does; no batch-table row, and a
    failure is raised. ``on_event`` is called (in this thread) with a ``SlidePlanned`` and then a
    ``BlockWritten`` per block; setting ``stop`` ends the run after the block being written, "cancelled" and
    resumable. Reports are written when ``reports`` is given."""
    options.validate()
    model_folder = resolve_model_folder(model_folder)
    if reports is not None:
        reports.validate()
    batch = _Batch(
        client, model_folder, out_dir, options, show_progress, reports, False, True, on_event, stop
    )
    (result,) = batch.run([slide_path])
    return result


def score_slides(
    slide_paths: Sequence[str | Path],
    model_folder: str | Path,
    out_dir: str | Path,
    options: ScoreOptions = ScoreOptions(),
    scheduler: str = "local",
    n_workers: int | None = None,
    client=None,
    show_progress: bool = True,
    reports: ReportOptions | None = DEFAULT_REPORTS,
) -> list[SlideResult]:
    """Score slides with a model folder (or bundled model name), several at a time, each into
    ``out_dir/<stem>.zarr``, with its reports (unless ``reports`` is None; a complete heatmap's missing or
    outdated reports are made again) and its row of ``out_dir/slides.csv`` written as soon as it is done. A
    slide that fails is reported and the batch goes on. A partial heatmap with the same parameters is resumed;
    one with other parameters is refused unless ``options.overwrite``. Scripts using the default local cluster
    need an ``if __name__ == "__main__":`` guard."""
    options.validate()
    model_folder = resolve_model_folder(model_folder)
    read_card(model_folder)  # a bad model folder stops the batch before any cluster starts
    # the engine race (first run of a model on a machine) is timed before worker processes start
    options = replace(options, engine=choose_engine(model_folder, options.engine))
    if reports is not None:
        reports.validate()
    with contextlib.ExitStack() as stack:
        if client is None:
            client = stack.enter_context(dask_client(scheduler, n_workers))
        return _Batch(client, model_folder, out_dir, options, show_progress, reports).run(slide_paths)

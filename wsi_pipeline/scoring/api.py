"""Scoring slides: the public entry points.

Both plan each slide (``planning``), keep its blocks in flight on a Dask cluster (``scheduler``) and settle it
(``settling``): ``score_slides`` reports a failed slide and goes on, writing ``OUT/slides.csv``;
``score_slide`` raises a failure and writes no table. Either takes one model or an ensemble's members (a
sequence of models): each patch is scored by every member and the heatmap holds their mean probability."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from wsi_pipeline.core.files import make_output_folder
from wsi_pipeline.findings.options import DEFAULT_REPORTS, ReportOptions
from wsi_pipeline.scoring.calibration import int8_members
from wsi_pipeline.scoring.cluster import choose_scheduler, dask_client
from wsi_pipeline.scoring.options import ScoreOptions, ScoringEvent, SlideResult
from wsi_pipeline.scoring.planning import Member, ModelSpec, model_members, plan_slide
from wsi_pipeline.scoring.scheduler import Scheduler
from wsi_pipeline.scoring.settling import (
    Settle,
    cancelled_result,
    import_reports_meanwhile,
    settle_alone,
    settle_in_batch,
)
from wsi_pipeline.scoring.slurm import SlurmOptions

_log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from distributed import Client


def score_slide(
    slide_path: str | Path,
    model: ModelSpec,
    out_dir: str | Path,
    *,
    client: Client,
    options: ScoreOptions = ScoreOptions(),
    show_progress: bool = True,
    reports: ReportOptions | None = None,
    on_event: Callable[[ScoringEvent], object] | None = None,
    stop: threading.Event | None = None,
) -> SlideResult:
    """Score one slide into ``out_dir/<stem>.zarr``, resuming or keeping a heatmap as ``score_slides`` does,
    but raising a failure and writing no batch-table row.

    Args:
        slide_path: the slide file.
        model: a model folder, a bundled or published model's name, or a sequence of them (an ensemble).
        out_dir: the folder of the heatmap (created if missing).
        client: a ``distributed.Client`` to score on.
        options: the scoring parameters.
        show_progress: a progress bar (or log lines) while blocks are scored.
        reports: the reports to write beside the heatmap; None: none.
        on_event: called (in this thread) with a ``SlidePlanned`` and then a ``BlockWritten`` per block.
        stop: once set, the run ends after the block being written.

    Returns:
        The slide's result: "ok", "skipped" (a complete heatmap kept) or "cancelled" (``stop`` was set; the
        heatmap is resumable).

    Raises:
        InputError: the slide, its heatmap or a model cannot be used (e.g. other parameters, ensemble members
            that differ).
        OutputError: the output folder cannot be made or written, or is full.
    """
    options.validate()
    if reports is not None:
        reports.validate()
    members = int8_members(model_members(model, options), options, [slide_path], out_dir)
    make_output_folder(out_dir)
    settle = partial(settle_alone, reports=reports)
    (result,) = _score(
        lambda scheduler: contextlib.nullcontext(client),
        [slide_path],
        members,
        out_dir,
        options=options,
        settle=settle,
        show_progress=show_progress,
        on_event=on_event,
        stop=stop,
    )
    return result


def score_slides(
    slide_paths: Sequence[str | Path],
    model: ModelSpec,
    out_dir: str | Path,
    *,
    options: ScoreOptions = ScoreOptions(),
    scheduler: str = "auto",
    n_workers: int | None = None,
    slurm: SlurmOptions | None = None,
    client: Client | None = None,
    show_progress: bool = True,
    reports: ReportOptions | None = DEFAULT_REPORTS,
) -> list[SlideResult]:
    """Score slides, several at a time, each into ``out_dir/<stem>.zarr`` with its reports and its row of
    ``out_dir/slides.csv`` written as soon as it is done. A slide that fails is reported and the batch goes
    on. A partial heatmap with the same parameters is resumed, a complete one kept; one with other parameters
    is refused unless ``options.overwrite``. Scripts using the default local cluster need an
    ``if __name__ == "__main__":`` guard.

    Args:
        slide_paths: the slide files.
        model: a model folder, a bundled or published model's name, or a sequence of them (an ensemble).
        out_dir: the folder of the heatmaps, reports and batch table (created if missing).
        options: the scoring parameters.
        scheduler: the cluster to start when no ``client`` is given (see ``dask_client``), or ``auto``:
            chosen from the first slide's plan (``choose_scheduler``).
        n_workers: the number of workers (processes, or threads of one) of ``auto``, ``local`` and
            ``threads``; None: one per core. SLURM's are ``slurm``'s jobs × cores per job.
        slurm: the worker jobs of ``scheduler="slurm"``; None: ``SlurmOptions()``.
        client: a ``distributed.Client`` to score on instead.
        show_progress: a progress bar (or log lines) per slide.
        reports: the reports to write (a complete heatmap's missing or outdated ones are made again); None:
            none.

    Returns:
        One result per slide, in slide order: "ok", "skipped" (a complete heatmap kept) or "failed".

    Raises:
        InputError: a model cannot be used, or ensemble members differ (before any cluster starts).
        ClusterError: the cluster asked for cannot be started (e.g. SLURM refuses its jobs).
        OutputError: the output folder cannot be made or written (before any cluster starts), or refused a
            write (full, read-only): the slides settled are kept, the one in progress is resumable.
    """
    options.validate()
    if reports is not None:
        reports.validate()
    if n_workers is not None and (client is not None or scheduler not in ("auto", "local", "threads")):
        where = "a client given" if client is not None else f"the {scheduler} scheduler"
        raise ValueError(f"a number of workers is for the auto, local and threads schedulers, not {where}")
    members = int8_members(model_members(model, options), options, slide_paths, out_dir)  # before any cluster
    make_output_folder(out_dir)  # before any slide is written into it
    _log.info("scoring %d slides into %s", len(slide_paths), Path(out_dir).resolve())
    settle = partial(settle_in_batch, reports=reports, out_dir=out_dir)
    import_reports_meanwhile()

    def connect(planning: Scheduler) -> contextlib.AbstractContextManager[Client]:
        if client is not None:
            return contextlib.nullcontext(client)

        def patch_scores() -> int:  # about: the first slide's, as many times as there are slides
            first = planning.first_plan()
            patches = 0 if first is None else first.patches * len(slide_paths) * len(members)
            scores = patches * (8 if options.tta else 1)
            _log.info("scheduler auto: about %d patch scores", scores)
            return scores

        chosen = scheduler
        if scheduler == "auto":
            chosen = choose_scheduler(n_workers or os.cpu_count() or 1, patch_scores)
            _log.info("scheduler auto: %s", chosen)
        return dask_client(scheduler=chosen, n_workers=n_workers, slurm=slurm)

    return _score(
        connect, slide_paths, members, out_dir, options=options, settle=settle, show_progress=show_progress
    )


def _score(
    connect: Callable[[Scheduler], contextlib.AbstractContextManager[Client]],
    slide_paths: Sequence[str | Path],
    members: tuple[Member, ...],
    out_dir: str | Path,
    *,
    options: ScoreOptions,
    settle: Settle,
    show_progress: bool,
    on_event: Callable[[ScoringEvent], object] | None = None,
    stop: threading.Event | None = None,
) -> list[SlideResult]:
    """Plan, schedule and settle the slides on the cluster ``connect`` gives (called once planning has
    begun, so a cluster starts while the first slide is planned); the slides not settled when ``stop`` was
    set are "cancelled"."""
    slide_paths = list(slide_paths)
    with (
        ThreadPoolExecutor(1, thread_name_prefix="wsi-tissue") as tissue_pool,  # tissue found while hashing
        Scheduler(
            models=tuple(member.source for member in members),
            options=options,
            plan=partial(
                plan_slide, out_dir=out_dir, members=members, options=options, tissue_pool=tissue_pool
            ),
            settle=settle,
            show_progress=show_progress,
            on_event=on_event,
            stop=stop,
        ) as scheduler,
    ):
        scheduler.start(slide_paths)
        with connect(scheduler) as client:
            settled = scheduler.run(client)
    return settled + [cancelled_result(path, out_dir) for path in slide_paths[len(settled) :]]

"""Scoring slides end to end on a Dask cluster: slide → tissue → grid → block tasks → heatmap store.

Slides of a batch are scored together: the next slides are planned (hashed, tissue found, heatmap opened under
its lock) in a thread while the blocks of the current ones run, at most a few blocks per worker thread are in
flight across slide boundaries, and each slide is settled (heatmap finalised, reports, batch-table row) in
slide order as soon as its last block is written. A heatmap records each block it holds, so an interrupted
run resumes where it stopped; a heatmap made with other parameters is never mixed with new blocks."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from wsi_pipeline.core.errors import InputError
from wsi_pipeline.core.files import file_sha256
from wsi_pipeline.core.locks import FileLock, LockedError, describe_holder, lock_path
from wsi_pipeline.core.progress import Progress
from wsi_pipeline.core.version import __version__
from wsi_pipeline.findings.reports import ReportOptions, current_summary, ensure_reports
from wsi_pipeline.model.card import ModelCard
from wsi_pipeline.model.folder import read_card
from wsi_pipeline.model.predict import choose_engine
from wsi_pipeline.scoring.ledger import BATCH_TABLE, batch_row, update_batch_table
from wsi_pipeline.scoring.options import BlockWritten, ScoreOptions, ScoringEvent, SlidePlanned, SlideResult
from wsi_pipeline.scoring.worker import ModelSource, SlideSource, score_block
from wsi_pipeline.slide.reader import Slide
from wsi_pipeline.store.heatmap import HeatmapWriter, is_heatmap, read_metadata, remove_heatmap
from wsi_pipeline.store.metadata import file_stamp, parameter_differences, recorded_sha256
from wsi_pipeline.tiling.grid import Block, PatchGrid, plan_grid, split_blocks, tissue_fraction
from wsi_pipeline.tiling.tissue import TissueMask, detect_tissue

PLANNED_AHEAD = 2  # slides planned ahead of the blocks being submitted
TABLE_LOCK_WAIT_S = 60.0


def heatmap_path(slide_path: str | Path, out_dir: str | Path) -> Path:
    return Path(out_dir) / f"{Path(slide_path).stem}.zarr"


def model_source(folder: Path, card: ModelCard, options: ScoreOptions) -> ModelSource:
    """What a worker needs to load the model folder, with the CPU engine chosen here once for all workers."""
    engine = choose_engine(folder, options.engine)
    return ModelSource(str(folder.resolve()), file_sha256(folder / card.weights), options.device, engine)


def heatmap_metadata(
    slide: Slide,
    sha256: str,
    card: ModelCard,
    model: ModelSource,
    grid: PatchGrid,
    options: ScoreOptions,
    started: str,
) -> dict:
    """The metadata a heatmap starts with: what was scored, by which model, how (the resume identity)."""
    return {
        "slide": {
            "path": str(slide.path.resolve()),
            "sha256": sha256,
            "backend": slide.backend,
            "mpp": slide.mpp,
            "mpp_source": "file" if options.mpp is None else "--mpp",
            "width0": slide.width0,
            "height0": slide.height0,
            **file_stamp(slide.path),
        },
        "model": {
            "name": card.name,
            "folder": model.folder,
            "weights_sha256": model.weights_sha256,
            "architecture": card.architecture,
            "engine": model.engine,
        },
        "grid": grid.to_dict(),
        "tissue_threshold": options.tissue_threshold,
        "tissue_mpp": options.tissue_mpp,
        "tissue_min_um2": options.tissue_min_um2,
        "tissue_max_hole_um2": options.tissue_max_hole_um2,
        "block_cells": options.block_cells,
        "tta": options.tta,
        "package_version": __version__,
        "started": started,
    }


def tissue_cells(slide: Slide, grid: PatchGrid, options: ScoreOptions) -> tuple[np.ndarray, TissueMask]:
    """The grid cells to score (tissue fraction ≥ the threshold) and the tissue mask they come from."""
    tissue = detect_tissue(
        slide.thumbnail(options.tissue_mpp),
        options.tissue_mpp,
        min_tissue_um2=options.tissue_min_um2,
        max_hole_um2=options.tissue_max_hole_um2,
    )
    return tissue_fraction(grid, tissue) >= options.tissue_threshold, tissue


@dataclass
class SlideJob:
    """A slide of a batch from its planning to its settling; it holds its heatmap's lock until settled."""

    path: Path
    clock: float  # time.monotonic() when its planning began
    heatmap: Path | None = None
    lock: FileLock | None = None
    writer: HeatmapWriter | None = None  # None: nothing to score (a complete heatmap) or failed
    source: SlideSource | None = None
    cells: np.ndarray | None = None  # grid cells to score
    todo: deque[Block] = field(default_factory=deque)  # blocks still to submit
    unwritten: int = 0  # blocks of this run whose scores are not written yet
    patches: int = 0  # patches scored by this run
    kept: int = 0  # blocks an earlier run wrote
    notes: list[str] = field(default_factory=list)
    progress: Progress | None = None
    error: Exception | None = None

    @property
    def settled(self) -> bool:
        return self.error is not None or self.unwritten == 0


def _failure(path: Path, error: Exception) -> str:
    return str(error) if isinstance(error, InputError) else f"{path}: {type(error).__name__}: {error}"


class _Batch:
    """Slides scored together on the cluster behind ``client`` (see the module's docstring)."""

    def __init__(
        self,
        client,
        model_folder: Path,
        out_dir: str | Path,
        options: ScoreOptions,
        show_progress: bool,
        reports: ReportOptions | None,
        table: bool = True,
        raise_errors: bool = False,
        on_event: Callable[[ScoringEvent], object] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.client, self.out_dir, self.options = client, Path(out_dir), options
        self.show_progress, self.reports = show_progress, reports
        self.table, self.raise_errors = table, raise_errors
        self.on_event, self.stop = on_event or (lambda event: None), stop or threading.Event()
        self.card = read_card(model_folder)
        self.model = model_source(model_folder, self.card, options)
        self.planner = ThreadPoolExecutor(1, thread_name_prefix="wsi-plan")
        self.tissue_finder = ThreadPoolExecutor(1, thread_name_prefix="wsi-tissue")  # runs during hashing
        self.paths: Iterator[str | Path] = iter(())  # slides not planned yet
        self.planned: deque[Future[SlideJob]] = deque()  # in slide order
        self.active: deque[SlideJob] = deque()  # taken up, in slide order
        self.owners: dict = {}  # block future → (its SlideJob, its Block)
        from distributed import as_completed

        self.in_flight = as_completed(with_results=True, raise_errors=False)  # results fetched as they land

    def run(self, slide_paths: Sequence[str | Path]) -> list[SlideResult]:
        """Score the slides; their results in slide order. An interrupt, or ``stop`` being set, leaves every
        heatmap resumable; slides not finished when ``stop`` is set are "cancelled"."""
        slide_paths = list(slide_paths)
        self.paths, results = iter(slide_paths), []
        try:
            self._plan_ahead()
            while (self.planned or self.active) and not self.stop.is_set():
                self._fill()
                if not self.in_flight.is_empty():
                    self._land(*next(self.in_flight))
                while self.active and self.active[0].settled:
                    results.append(self._settle(self.active.popleft()))
        finally:
            self._abandon()
        return results + [self._cancelled(Path(path)) for path in slide_paths[len(results) :]]

    def _cancelled(self, path: Path) -> SlideResult:
        message = "cancelled; the blocks written are kept and the next run with the same parameters resumes"
        return SlideResult(path, "cancelled", heatmap_path(path, self.out_dir), message)

    def _plan_ahead(self) -> None:
        while len(self.planned) < PLANNED_AHEAD and (path := next(self.paths, None)) is not None:
            self.planned.append(self.planner.submit(self._plan, Path(path)))

    def _fill(self) -> None:
        """Submit blocks until a few per worker thread are in flight, taking up planned slides in order
        (waiting for a plan only when nothing is in flight)."""
        window = 2 * sum(self.client.nthreads().values()) + 2
        while self.in_flight.count() < window:
            job = next((job for job in self.active if job.todo), None)
            if job is not None:
                self._submit(job, job.todo.popleft())
            elif self.planned and (self.planned[0].done() or self.in_flight.is_empty()):
                self.active.append(self._take_up(self.planned.popleft().result()))
                self._plan_ahead()
            else:
                break

    def _plan(self, path: Path) -> SlideJob:
        """Open the slide, lock its heatmap, and decide what to score (runs in the planning thread)."""
        job = SlideJob(path, time.monotonic())
        try:
            with Slide(path, self.options.backend, self.options.mpp) as slide, contextlib.ExitStack() as undo:
                job.heatmap = heatmap_path(path, self.out_dir)
                if job.heatmap.exists() and not is_heatmap(job.heatmap):
                    raise InputError(
                        job.heatmap, "exists and is not a wsi_pipeline heatmap; not overwriting it"
                    )
                self.out_dir.mkdir(parents=True, exist_ok=True)
                job.lock = FileLock(lock_path(job.heatmap)).acquire()
                undo.callback(job.lock.release)
                if job.lock.took_over is not None:
                    job.notes.append(f"took over the stale lock of {describe_holder(job.lock.took_over)}")
                self._open_heatmap(job, slide)
                undo.pop_all()
        except Exception as error:  # reported when the slide's turn comes
            job.error, job.lock = error, None
        return job

    def _open_heatmap(self, job: SlideJob, slide: Slide) -> None:
        """Start the slide's heatmap, resume a partial one made the same way, or keep a complete one."""
        options, card = self.options, self.card
        job.source = SlideSource(str(slide.path.resolve()), slide.backend, slide.mpp)
        grid = plan_grid(slide, card.patch_size, card.mpp, options.stride)
        started = datetime.now(timezone.utc).isoformat()
        existing = None if options.overwrite or not job.heatmap.exists() else read_metadata(job.heatmap)
        sha256, found = recorded_sha256(existing, job.path), None
        if sha256 is None:
            found = self.tissue_finder.submit(tissue_cells, slide, grid, options)  # while the file is hashed
            try:
                sha256 = file_sha256(job.path)
            finally:
                wait([found])  # the slide stays open until then
        metadata = heatmap_metadata(slide, sha256, card, self.model, grid, options, started)
        if existing is not None:
            differences = parameter_differences(existing, metadata)
            if differences:
                raise InputError(
                    job.heatmap,
                    f"holds a heatmap made with other parameters ({'; '.join(differences)}); "
                    "--overwrite scores it afresh",
                )
            if existing.get("complete"):
                job.notes.insert(0, "complete heatmap exists (--overwrite)")
                if found is not None:  # hashed: same content under a new stamp, kept for the next re-run
                    HeatmapWriter.reopen(job.heatmap).record(slide=metadata["slide"])
                return
        job.cells, tissue = tissue_cells(slide, grid, options) if found is None else found.result()
        if existing is None:
            if job.heatmap.exists():
                remove_heatmap(job.heatmap)
            metadata["tissue_saturation_threshold"] = tissue.threshold
            job.writer = HeatmapWriter(job.heatmap, grid, card.class_names, options.block_cells, metadata)
            job.writer.write_tissue(job.cells)
        else:
            job.writer = HeatmapWriter.reopen(job.heatmap)
            if not np.array_equal(job.writer.tissue[...].astype(bool), job.cells):
                raise InputError(
                    job.heatmap,
                    "partial heatmap has other tissue cells than found now; --overwrite scores it afresh",
                )
            job.writer.record(resumed=[*existing.get("resumed", []), started])
        blocks = [b for b in split_blocks(grid.shape, options.block_cells) if job.cells[b.cells].any()]
        todo = [(int(job.cells[b.cells].sum()), b) for b in blocks if not job.writer.is_written(b)]
        todo.sort(key=lambda pair: -pair[0])  # largest first: small blocks make the tail
        job.todo = deque(block for _, block in todo)
        job.unwritten, job.patches, job.kept = len(todo), sum(n for n, _ in todo), len(blocks) - len(todo)
        if job.kept:
            job.notes.append(f"resumed: {job.kept} of {len(blocks)} blocks were written")

    def _take_up(self, job: SlideJob) -> SlideJob:
        if job.writer is not None:
            if self.show_progress:
                job.progress = Progress(job.patches, job.path.name)
            self.on_event(SlidePlanned(job.path, job.heatmap, job.patches, job.kept))
        return job

    def _submit(self, job: SlideJob, block: Block) -> None:
        future = self.client.submit(
            score_block,
            job.source,
            self.model,
            job.writer.grid,
            block,
            job.cells[block.cells],
            self.options.batch_size,
            self.options.tta,
            pure=False,
        )
        self.owners[future] = (job, block)
        self.in_flight.add(future)

    def _land(self, future, outcome: object) -> None:
        """Write a block's scores into its slide's heatmap; a block that failed fails its slide only."""
        job, block = self.owners.pop(future, (None, None))
        if job is None:  # cancelled with its slide
            return
        try:
            if future.status != "finished":
                future.result()  # raises the task's error
            _, probabilities, device, engine = outcome
            job.writer.write_block(block, probabilities)
            job.writer.note_runner(device, engine)
        except Exception as error:
            self._fail(job, error)
            return
        finally:
            future.release()
        job.unwritten -= 1
        patches = int(job.cells[block.cells].sum())
        if job.progress is not None:
            job.progress.update(patches)
        self.on_event(BlockWritten(job.path, job.heatmap, block, probabilities, patches))

    def _fail(self, job: SlideJob, error: Exception) -> None:
        job.error = error
        job.todo.clear()
        doomed = [future for future, (owner, _) in self.owners.items() if owner is job]
        for future in doomed:
            del self.owners[future]
        if doomed:
            self.client.cancel(doomed)

    def _settle(self, job: SlideJob) -> SlideResult:
        """Finalise a slide's heatmap, write its reports and its batch-table row, and release its lock. A
        slide locked by another run leaves that run's row alone."""
        if job.progress is not None:
            job.progress.close()
        try:
            result, metadata = self._finish(job)
        except Exception as error:
            if self.raise_errors:
                raise
            result = SlideResult(
                job.path, "failed", None, _failure(job.path, error), seconds=time.monotonic() - job.clock
            )
            if self.table and not isinstance(error, LockedError):
                self._write_row(result, None)
        else:
            if self.table:
                self._write_row(result, metadata)
        finally:
            if job.lock is not None:
                job.lock.release()
        return result

    def _finish(self, job: SlideJob) -> tuple[SlideResult, dict]:
        if job.error is not None:
            raise job.error
        message = "; ".join(job.notes)
        if job.writer is None:
            result = SlideResult(job.path, "skipped", job.heatmap, message)
        else:
            seconds = time.monotonic() - job.clock
            job.writer.finalise(
                patches_scored=int(job.cells.sum()),
                seconds=round(seconds, 3),
                finished=datetime.now(timezone.utc).isoformat(),
            )
            result = SlideResult(job.path, "ok", job.heatmap, message, job.patches, seconds)
        if self.reports is None:
            result.summary = current_summary(job.heatmap)
        else:
            result.summary = ensure_reports(job.heatmap, self.reports)
        return result, read_metadata(job.heatmap)

    def _write_row(self, result: SlideResult, metadata: dict | None) -> None:
        """Update the slide's row of ``OUT/slides.csv`` under the table's lock (other runs may share OUT)."""
        lock = FileLock(self.out_dir / f"{BATCH_TABLE}.lock").acquire(TABLE_LOCK_WAIT_S)
        try:
            update_batch_table(self.out_dir, [batch_row(result, metadata)])
        finally:
            lock.release()

    def _abandon(self) -> None:
        """Cancel what is in flight and release every lock still held (all are, after an interrupt): each
        heatmap keeps the blocks written so far and is resumed by the next run."""
        if self.owners:
            self.client.cancel(list(self.owners))
            self.owners.clear()
        for plan in self.planned:
            plan.cancel()
        self.planner.shutdown(wait=True)
        self.tissue_finder.shutdown(wait=True)
        for job in [*self.active, *(plan.result() for plan in self.planned if not plan.cancelled())]:
            if job.progress is not None:
                job.progress.close()
            if job.lock is not None:
                job.lock.release()

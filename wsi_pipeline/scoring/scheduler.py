"""The in-flight scheduler: keeps a window of block tasks running on the cluster across slide boundaries and
lands their results into the heatmaps.

- Slides are planned (``planning.plan_slide``) in a thread, up to ``PLANNED_AHEAD`` ahead of the slide whose
  blocks are being submitted, and taken up in slide order.
- At most ``window(client)`` blocks (two per worker thread, plus two) are in flight; a slide's blocks are
  submitted largest first, and the next slide's as soon as the last of the current one is submitted.
- A slide taken up with blocks to score is reported as ``SlidePlanned``; a landed block is written into its
  heatmap (which marks it done) and reported as ``BlockWritten``.
- A slide fails alone (``_fail_slide``): its blocks still in flight are cancelled, the others go on; but a
  write the output folder refuses (full, read-only) stops the run, as an ``OutputError``.
- Each slide is settled (a ``settling.Settle`` policy) in slide order as soon as none of its blocks is left.
- Setting ``stop``, an interrupt or an error cancels what is in flight and releases every lock held: each
  heatmap keeps the blocks written so far and is resumed by the next run.

Planning starts (``start``) before the cluster is needed (``run``), so a cluster's workers start, and load
the models (``PreloadModels``), while the first slide is hashed and its tissue found."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from wsi_pipeline.core.errors import output_fault
from wsi_pipeline.core.progress import Progress
from wsi_pipeline.scoring.options import BlockWritten, ScoreOptions, ScoringEvent, SlidePlanned, SlideResult
from wsi_pipeline.scoring.planning import SlidePlan
from wsi_pipeline.scoring.settling import Settle
from wsi_pipeline.scoring.worker import ModelSource, score_block
from wsi_pipeline.scoring.worker_plugins import PreloadModels
from wsi_pipeline.tiling.grid import Block

if TYPE_CHECKING:
    from distributed import Client, as_completed
    from distributed import Future as Task

PLANNED_AHEAD = 2  # slides planned ahead of the blocks being submitted


def window(client: Client) -> int:
    """How many blocks to keep in flight on the cluster behind ``client``: two per worker thread, plus two."""
    return 2 * sum(client.nthreads().values()) + 2


@dataclass
class SlideRun:
    """A planned slide taken up by the scheduler, until it is settled."""

    plan: SlidePlan
    todo: deque[Block] = field(default_factory=deque)  # blocks still to submit
    unwritten: int = 0  # blocks of this run whose scores are not written yet
    progress: Progress | None = None
    error: Exception | None = None  # planning's or a block's

    @property
    def ready_to_settle(self) -> bool:
        """Whether the slide can be settled: failed, or none of its blocks left to write."""
        return self.error is not None or self.unwritten == 0


class Scheduler:
    """One run of slides through a cluster (see the module's docstring): ``start`` plans, ``run`` scores; used
    as a context manager, which abandons (``_abandon``) whatever is left on leaving it.

    Args:
        models: the model as the workers load it, or each member of an ensemble.
        options: the run's options (batch size and TTA of the block tasks).
        plan: plans a slide (in the planning thread); never raises.
        settle: settles a slide (in this thread), in slide order.
        show_progress: a progress bar (or log lines) per slide.
        on_event: called (in this thread) with each ``SlidePlanned`` and ``BlockWritten``.
        stop: once set, the run ends after the block being written.
    """

    def __init__(
        self,
        *,
        models: tuple[ModelSource, ...],
        options: ScoreOptions,
        plan: Callable[[str | Path], SlidePlan],
        settle: Settle,
        show_progress: bool = True,
        on_event: Callable[[ScoringEvent], object] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.client: Client | None = None
        self.models, self.options = models, options
        self.plan, self.settle, self.show_progress = plan, settle, show_progress
        self.on_event, self.stop = on_event or (lambda event: None), stop or threading.Event()
        self.planner = ThreadPoolExecutor(1, thread_name_prefix="wsi-plan")
        self.paths: Iterator[str | Path] = iter(())  # slides not planned yet
        self.planned: deque[Future[SlidePlan]] = deque()  # in slide order
        self.active: deque[SlideRun] = deque()  # taken up, in slide order
        self.owners: dict[Task, tuple[SlideRun, Block]] = {}  # a block's task → its slide and block
        self.in_flight: as_completed | None = None  # results fetched as they land (made by ``run``)

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self._abandon()

    def start(self, slide_paths: Sequence[str | Path]) -> None:
        """Begin planning the slides (once: a scheduler runs one batch), in the order their results come."""
        self.paths = iter(slide_paths)
        self._plan_ahead()

    def first_plan(self) -> SlidePlan | None:
        """The first slide's plan, waited for (None: no slides)."""
        return self.planned[0].result() if self.planned else None

    def run(self, client: Client) -> list[SlideResult]:
        """Score and settle the slides ``start`` was given on the cluster behind ``client``, whose workers
        start loading the models at once.

        Returns:
            The results of the slides settled, in slide order: all of them, or the first few when ``stop`` was
            set. An interrupt or an error raised by ``settle`` propagates, every heatmap left resumable.
        """
        from distributed import as_completed

        self.client, results = client, []
        self.in_flight = as_completed(loop=client.loop, with_results=True, raise_errors=False)
        try:
            client.register_plugin(PreloadModels(self.models))
            while (self.planned or self.active) and not self.stop.is_set():
                self._fill()
                if not self.in_flight.is_empty():
                    self._land(*next(self.in_flight))
                while self.active and self.active[0].ready_to_settle:
                    results.append(self._settle(self.active.popleft()))
        finally:
            self._abandon()  # while the client is up (leaving the context abandons a run never begun)
        return results

    def _plan_ahead(self) -> None:
        while len(self.planned) < PLANNED_AHEAD and (path := next(self.paths, None)) is not None:
            self.planned.append(self.planner.submit(self.plan, path))

    def _fill(self) -> None:
        """Submit blocks until the window is full, taking up planned slides in order (waiting for a plan only
        when nothing is in flight)."""
        limit = window(self.client)
        while self.in_flight.count() < limit:
            run = next((run for run in self.active if run.todo), None)
            if run is not None:
                self._submit(run, run.todo.popleft())
            elif self.planned and (self.planned[0].done() or self.in_flight.is_empty()):
                self.active.append(self._take_up(self.planned.popleft().result()))
                self._plan_ahead()
            else:
                break

    def _take_up(self, plan: SlidePlan) -> SlideRun:
        run = SlideRun(plan, deque(plan.blocks), len(plan.blocks), error=plan.error)
        if plan.writer is not None:
            if self.show_progress:
                run.progress = Progress(plan.patches, plan.path.name)
            self.on_event(SlidePlanned(plan.path, plan.heatmap, plan.patches, plan.kept))
        return run

    def _submit(self, run: SlideRun, block: Block) -> None:
        plan = run.plan
        future = self.client.submit(
            score_block,
            plan.source,
            self.models,
            plan.writer.grid,
            block,
            plan.cells[block.cells],
            self.options.batch_size,
            self.options.tta,
            pure=False,
        )
        self.owners[future] = (run, block)
        self.in_flight.add(future)

    def _land(self, future: Task, outcome: object) -> None:
        """Write a block's scores into its slide's heatmap; a block that failed fails its slide only."""
        run, block = self.owners.pop(future, (None, None))
        if run is None:  # cancelled with its slide
            return
        writer = run.plan.writer
        try:
            if future.status != "finished":
                future.result()  # raises the task's error
            _, probabilities, labels, device, engines = outcome
            writer.write_labels(block, labels)
            writer.write_block(block, probabilities)
            writer.note_runner(device, engines)
        except Exception as error:
            fault = output_fault(error, run.plan.heatmap.parent)
            if fault is not None:  # a full or read-only folder stops the run (``_abandon``)
                raise fault from error
            self._fail_slide(run, error)
            return
        finally:
            future.release()
        run.unwritten -= 1
        patches = int(run.plan.cells[block.cells].sum())
        if run.progress is not None:
            run.progress.update(patches)
        self.on_event(BlockWritten(run.plan.path, run.plan.heatmap, block, probabilities, patches))

    def _fail_slide(self, run: SlideRun, error: Exception) -> None:
        """A slide whose block failed: none of its blocks is submitted any more and those in flight are
        cancelled; its heatmap keeps the blocks written (resumable), the other slides go on, and the failure
        is settled in the slide's turn."""
        run.error = error
        run.todo.clear()
        doomed = [future for future, (owner, _) in self.owners.items() if owner is run]
        for future in doomed:
            del self.owners[future]
        if doomed:
            self.client.cancel(doomed)

    def _settle(self, run: SlideRun) -> SlideResult:
        if run.progress is not None:
            run.progress.close()
        return self.settle(run.plan, run.error)

    def _abandon(self) -> None:
        """Cancel what is in flight and release every lock still held (all are, after an interrupt): each
        heatmap keeps the blocks written so far and is resumed by the next run. Done once: later calls find
        nothing left."""
        if self.owners:
            self.client.cancel(list(self.owners))
            self.owners.clear()
        for planned in self.planned:
            planned.cancel()
        self.planner.shutdown(wait=True)
        for run in self.active:
            if run.progress is not None:
                run.progress.close()
            run.plan.release_lock()
        for planned in self.planned:
            if not planned.cancelled():
                planned.result().release_lock()
        self.active.clear()
        self.planned.clear()

"""Settling a slide once the scheduler is done with it (its last block written, nothing to score, or failed):
its heatmap finalised, its reports, its row of the batch table, its heatmap's lock released.

Two policies, one per entry point (see ``api``):

- ``settle_in_batch`` (``score_slides``): a failure becomes a "failed" result and the batch goes on; every
  slide gets its row of ``OUT/slides.csv``, except one locked by another run (that row is the other run's).
- ``settle_alone`` (``score_slide``): a failure is raised to the caller; no batch-table row.

A slide the scheduler never settled (``stop`` was set first) is ``cancelled_result``: resumable."""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from wsi_pipeline.core.errors import InputError, output_fault, output_faults
from wsi_pipeline.core.locks import LockedError
from wsi_pipeline.core.logs import FILE_ONLY
from wsi_pipeline.findings.options import ReportOptions
from wsi_pipeline.scoring.ledger import record_in_batch_table
from wsi_pipeline.scoring.options import SlideResult
from wsi_pipeline.scoring.planning import SlidePlan, heatmap_path
from wsi_pipeline.slide.find import slide_stamp
from wsi_pipeline.slide.remote import is_url
from wsi_pipeline.store.heatmap import read_record
from wsi_pipeline.store.metadata import HeatmapRecord

_log = logging.getLogger(__name__)
REPORTS = "wsi_pipeline.findings.reports"  # with matplotlib, SciPy and Pillow's drawing: ~0.5 s to import

Settle = Callable[[SlidePlan, "Exception | None"], SlideResult]
"""A settling policy: a slide's plan and its error (planning's or a block's, None when all went well) → its
result; it releases the plan's lock."""


def finish_slide(
    plan: SlidePlan, error: Exception | None, *, reports: ReportOptions | None
) -> tuple[SlideResult, HeatmapRecord]:
    """Finalise a slide whose blocks are all written (or a complete heatmap kept) and make its reports.

    Args:
        plan: the slide's plan.
        error: the slide's error (planning's or a block's), raised here; None when all went well.
        reports: the reports to write (missing or outdated ones are made again); None: none, but the
            summary of current reports already there is read into the result.

    Returns:
        The slide's result ("ok", "skipped", or "partial" when cells could not be decoded; with its summary)
        and its heatmap's metadata.
    """
    if error is not None:
        raise error
    if plan.writer is None:
        result = SlideResult(plan.path, "skipped", plan.heatmap)
    else:
        _check_unchanged(plan)
        seconds = time.monotonic() - plan.started
        plan.writer.finalise(seconds=round(seconds, 3), finished=datetime.now(timezone.utc).isoformat())
        result = SlideResult(plan.path, "ok", plan.heatmap, patches=plan.patches, seconds=seconds)
    metadata = read_record(plan.heatmap)
    notes = [*plan.notes, *damage_notes(metadata)]
    result.message = "; ".join(notes)
    if metadata.unreadable_cells:
        result.status = "partial"
    made = importlib.import_module(REPORTS)
    if reports is None:
        result.summary = made.current_summary(plan.heatmap)
    else:
        result.summary = made.ensure_reports(plan.heatmap, reports)
    return result, metadata


def import_reports_meanwhile() -> None:
    """Import the report modules on a thread of their own, so that the import overlaps scoring instead of
    holding up its start (``finish_slide`` imports them when it needs them, waiting for this import if it
    is still under way)."""
    threading.Thread(target=importlib.import_module, args=(REPORTS,), name="wsi-import-reports").start()


def _check_unchanged(plan: SlidePlan) -> None:
    """Refuse to complete a heatmap whose slide file changed while it was scored (its blocks may come from
    both contents): its size and modification time must be those planned. The next run hashes it again:
    the same content is resumed, other content refused."""
    recorded = plan.writer.metadata.slide
    try:
        stamp = slide_stamp(plan.path)
    except OSError as error:
        raise InputError(plan.path, f"gone while it was scored ({error.strerror})") from None
    if (stamp.get("size"), stamp.get("mtime_ns")) != (recorded.size, recorded.mtime_ns):
        raise InputError(
            plan.path,
            "changed while it was scored (size or modification time); its heatmap is left unfinished: "
            "a re-run resumes it if the content is the same, --overwrite scores new content afresh",
        )


def damage_notes(metadata: HeatmapRecord) -> list[str]:
    """What a complete heatmap's result says of cells whose pixels could not be decoded at their level."""
    notes = []
    if metadata.other_level_cells:
        notes.append(f"{metadata.other_level_cells} cells read from another pyramid level")
    if metadata.unreadable_cells:
        notes.append(
            f"{metadata.unreadable_cells} cells unreadable at every level, left unscored "
            "(--retry-unreadable tries them again)"
        )
    return notes


def settle_in_batch(
    plan: SlidePlan, error: Exception | None, *, reports: ReportOptions | None, out_dir: str | Path
) -> SlideResult:
    """Settle a slide of ``score_slides``: a failure is its "failed" result, and its row of
    ``out_dir/slides.csv`` is written (unless another run holds its heatmap's lock); but a write the folder
    refuses (full, read-only) is raised as its ``OutputError``, to stop the batch.

    Args:
        plan: the slide's plan (its lock is released here).
        error: its error (planning's or a block's), or None.
        reports: as for ``finish_slide``.
        out_dir: the folder of the heatmaps and the batch table.

    Returns:
        The slide's result: "ok", "skipped" or "failed".
    """
    try:
        result, metadata = finish_slide(plan, error, reports=reports)
    except Exception as failure:
        fault = output_fault(failure, out_dir)
        if fault is not None:  # a full or read-only folder: the batch stops, this slide left resumable
            raise fault from failure
        result = failed_result(plan, failure)
        if not isinstance(failure, LockedError):
            record_in_batch_table(out_dir, result, None)
    else:
        record_in_batch_table(out_dir, result, metadata)
    finally:
        plan.release_lock()
    return result


def settle_alone(plan: SlidePlan, error: Exception | None, *, reports: ReportOptions | None) -> SlideResult:
    """Settle the slide of ``score_slide``: a failure is raised; no batch-table row.

    Args:
        plan: the slide's plan (its lock is released here).
        error: its error (planning's or a block's), raised here; or None.
        reports: as for ``finish_slide``.

    Returns:
        The slide's result: "ok" or "skipped".
    """
    try:
        with output_faults(plan.heatmap.parent):
            return finish_slide(plan, error, reports=reports)[0]
    finally:
        plan.release_lock()


def failed_result(plan: SlidePlan, error: Exception) -> SlideResult:
    """A failed slide's result; its message is the error's (an ``InputError`` names the file and problem). An
    unexpected error's traceback is logged (to the log file only)."""
    if isinstance(error, InputError):
        message = str(error)
    else:
        message = f"{plan.path}: {type(error).__name__}: {error}"
        _log.error("%s failed", plan.path, exc_info=error, extra=FILE_ONLY)
    return SlideResult(plan.path, "failed", None, message, seconds=time.monotonic() - plan.started)


def cancelled_result(path: str | Path, out_dir: str | Path) -> SlideResult:
    """The result of a slide not settled when the run was stopped: its heatmap keeps the blocks written."""
    message = "cancelled; the blocks written are kept and the next run with the same parameters resumes"
    slide = path if is_url(path) else Path(path)
    return SlideResult(slide, "cancelled", heatmap_path(path, out_dir), message)

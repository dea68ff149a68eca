"""Planning a slide: open it, lock its heatmap, and decide what this run scores into it.

The decision, from the heatmap already at ``OUT/<stem>.zarr`` (if any):

- none, or ``overwrite``: a new heatmap with every tissue block to score;
- partial, made from the same slide content, model and parameters: resumed, only the blocks not written;
- complete, made the same way: kept, nothing to score (the slide is "skipped"), unless it holds cells that
  could not be decoded and ``retry_unreadable`` is set: then the blocks holding them are scored again;
- made otherwise (another slide content, model or parameter): refused, the slide fails.

A heatmap resumed or kept is read as it was (``slide.jpeg_scaling``: its tissue found and its blocks read
alike) unless the options say otherwise, which then refuses it as another parameter does.

The slide's sha256 is the one the heatmap records while the file's path, size and mtime are unchanged;
otherwise the file is hashed while its tissue is found in ``tissue_pool``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from concurrent.futures import Executor, wait
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from wsi_pipeline.core.errors import InputError
from wsi_pipeline.core.files import file_sha256
from wsi_pipeline.core.locks import FileLock, describe_holder, lock_path
from wsi_pipeline.core.version import __version__
from wsi_pipeline.model.bundled import resolve_model_folder
from wsi_pipeline.model.card import ModelCard, ensemble_difference
from wsi_pipeline.model.folder import read_card
from wsi_pipeline.model.predict import choose_engine
from wsi_pipeline.model.sources import ModelSourceInfo
from wsi_pipeline.scoring.options import ScoreOptions
from wsi_pipeline.scoring.worker import ModelSource, SlideSource
from wsi_pipeline.slide.dicom import is_dicom, series_of
from wsi_pipeline.slide.find import slide_identity, slide_location, slide_name, slide_stamp
from wsi_pipeline.slide.reader import Slide
from wsi_pipeline.slide.remote import is_url
from wsi_pipeline.store.heatmap import HeatmapWriter, is_heatmap, read_record, remove_leftovers
from wsi_pipeline.store.metadata import (
    HeatmapRecord,
    ModelRecord,
    SlideRecord,
    TissueParameters,
    parameter_differences,
    recorded_sha256,
)
from wsi_pipeline.tiling.grid import Block, PatchGrid, plan_grid, split_blocks, tissue_fraction
from wsi_pipeline.tiling.tissue import TissueMask, detect_tissue

COMPLETE_NOTE = "complete heatmap exists (--overwrite)"
ModelSpec = str | Path | Sequence[str | Path]
"""A model (a folder, a bundled or published model's name), or an ensemble's members."""


def heatmap_path(slide_path: str | Path, out_dir: str | Path) -> Path:
    """Where a slide's heatmap goes: ``out_dir/<slide name>.zarr`` (the file's stem, or a DICOM series' slide
    id: ``slide_name``)."""
    return Path(out_dir) / f"{slide_name(slide_path)}.zarr"


def model_source(folder: Path, card: ModelCard, options: ScoreOptions) -> ModelSource:
    """What a worker needs to load the model folder, with the CPU engine chosen here once for all workers.

    Args:
        folder: the model folder.
        card: its card (names the weights file).
        options: the run's options (device, engine: ``auto`` is resolved here).

    Returns:
        The folder's absolute path, the weights' sha256, the device and the resolved engine.
    """
    weights_sha256 = file_sha256(folder / card.weights)
    engine = choose_engine(folder, options.engine, weights_sha256=weights_sha256)
    return ModelSource(str(folder.resolve()), weights_sha256, options.device, engine)


@dataclass(frozen=True)
class Member:
    """A model of a run (its one model, or a member of its ensemble): its card and how workers load it."""

    card: ModelCard
    source: ModelSource

    def record(self) -> ModelRecord:
        """What the heatmap records of it."""
        card, source = self.card, self.source
        return ModelRecord(
            name=card.name,
            folder=source.folder,
            weights_sha256=source.weights_sha256,
            architecture=card.architecture,
            engine=source.engine,
            demonstration=card.demonstration,
            intended_use=card.intended_use or None,
            source=ModelSourceInfo.from_card(card),
            precision=source.precision,
            calibration_sha256=source.calibration,
        )


def model_members(models: ModelSpec, options: ScoreOptions) -> tuple[Member, ...]:
    """The run's model, or its ensemble's members in the order given, each resolved and its CPU engine chosen
    (``model_source``; before any worker starts, so the engine race has the machine to itself).

    Args:
        models: a model, or the members of an ensemble (each patch's probabilities are their mean).
        options: the run's options (device, engine).

    Returns:
        One member per model given.

    Raises:
        InputError: a model cannot be used, or members differ in patch size, µm/px or class names.
    """
    given = [models] if isinstance(models, (str, Path)) else list(models)
    if not given:
        raise ValueError("no model given")
    folders = [resolve_model_folder(model) for model in given]
    cards = [read_card(folder) for folder in folders]
    for folder, card in zip(folders[1:], cards[1:], strict=True):
        difference = ensemble_difference(cards[0], card)
        if difference is not None:
            raise InputError(
                folder,
                f"ensemble members differ in {difference}; members must share patch size, µm/px and class "
                "names (in the same order)",
            )
    return tuple(
        Member(card, model_source(folder, card, options)) for folder, card in zip(folders, cards, strict=True)
    )


def heatmap_metadata(
    slide: Slide,
    identity: tuple[str, str | None],
    members: Sequence[Member],
    grid: PatchGrid,
    options: ScoreOptions,
    started: str,
) -> HeatmapRecord:
    """The metadata a heatmap starts with: what was scored, by which models, how (the resume identity).

    Args:
        slide: the open slide.
        identity: the slide's sha256 and what it was taken of when not its content (``slide_identity``).
        members: the run's model, or its ensemble's members.
        grid: the slide's patch grid.
        options: the run's options.
        started: when this run began on the slide (ISO 8601, UTC).

    Returns:
        The record ``HeatmapWriter`` stores and ``parameter_differences`` compares.
    """
    series = series_of(slide.path) if is_dicom(slide.path) else None
    return HeatmapRecord(
        slide=SlideRecord(
            path=slide_location(slide.path),
            sha256=identity[0],
            identity_source=identity[1],
            backend=slide.backend,
            jpeg_scaling=slide.jpeg_scaling,
            read_rule=slide.read_rule(grid.ds),
            mpp=slide.mpp,
            mpp_source="file" if options.mpp is None else "--mpp",
            width0=slide.width0,
            height0=slide.height0,
            **slide_stamp(slide.path),
            synthetic=slide.synthetic,
            study_uid=series.study_uid if series else None,
            series_uid=series.series_uid if series else None,
        ),
        models=tuple(member.record() for member in members),
        grid=grid,
        class_names=tuple(members[0].card.class_names),
        tissue=TissueParameters(
            threshold=options.tissue_threshold,
            mpp=options.tissue_mpp,
            min_um2=options.tissue_min_um2,
            max_hole_um2=options.tissue_max_hole_um2,
        ),
        block_cells=options.block_cells,
        tta=options.tta,
        package_version=__version__,
        started=started,
    )


def tissue_cells(slide: Slide, grid: PatchGrid, options: ScoreOptions) -> tuple[np.ndarray, TissueMask]:
    """The grid cells to score and the tissue mask they come from.

    Args:
        slide: the open slide.
        grid: its patch grid.
        options: the tissue options (µm/px of the mask, smallest object and largest hole, threshold).

    Returns:
        (rows, cols) bool, True where a cell's tissue fraction reaches the threshold; and the tissue mask.
    """
    tissue = detect_tissue(
        slide.thumbnail(options.tissue_mpp),
        options.tissue_mpp,
        min_tissue_um2=options.tissue_min_um2,
        max_hole_um2=options.tissue_max_hole_um2,
    )
    return tissue_fraction(grid, tissue) >= options.tissue_threshold, tissue


@dataclass(frozen=True, eq=False)
class SlidePlan:
    """What planning decided for one slide. A plan with a ``lock`` holds its heatmap's lock until the slide is
    settled (or the run abandoned); a plan with an ``error`` holds none."""

    path: Path | str  # a URL: str
    started: float  # time.monotonic() when planning began
    heatmap: Path
    lock: FileLock | None = None
    writer: HeatmapWriter | None = None  # None: nothing to score (a complete heatmap kept) or failed
    source: SlideSource | None = None  # how workers open the slide
    cells: np.ndarray | None = None  # (rows, cols) bool: the grid cells to score
    blocks: tuple[Block, ...] = ()  # the blocks this run scores, largest first (small blocks make the tail)
    patches: int = 0  # patches in those blocks
    kept: int = 0  # blocks an earlier run wrote
    notes: tuple[str, ...] = ()  # for the slide's result message
    error: Exception | None = None  # planning failed; reported when the slide is settled

    def release_lock(self) -> None:
        """Release the heatmap's lock, if this plan holds it."""
        if self.lock is not None:
            self.lock.release()


def plan_slide(
    path: str | Path,
    *,
    out_dir: str | Path,
    members: Sequence[Member],
    options: ScoreOptions,
    tissue_pool: Executor,
) -> SlidePlan:
    """Open a slide, lock its heatmap, and decide what to score into it (see the module's docstring).

    Args:
        path: the slide file (or URL).
        out_dir: the folder of the heatmaps (created if missing).
        members: the run's model, or its ensemble's members (``model_members``).
        options: the run's options.
        tissue_pool: runs tissue detection while the slide file is hashed.

    Returns:
        The slide's plan, holding the heatmap's lock; a failure (the slide, a foreign folder where the
        heatmap goes, a lock held by another run, other parameters) is the plan's ``error``, never raised.
    """
    path = path if is_url(path) else Path(path)
    plan = SlidePlan(path, time.monotonic(), heatmap_path(path, out_dir))
    try:
        scaling = options.jpeg_scaling or "auto"
        with Slide(path, options.backend, options.mpp, scaling) as slide, contextlib.ExitStack() as undo:
            if plan.heatmap.exists() and not is_heatmap(plan.heatmap):
                raise InputError(plan.heatmap, "exists and is not a wsi_pipeline heatmap; not overwriting it")
            plan.heatmap.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(lock_path(plan.heatmap)).acquire()
            undo.callback(lock.release)
            remove_leftovers(plan.heatmap)
            stale = lock.took_over
            notes = () if stale is None else (f"took over the stale lock of {describe_holder(stale)}",)
            planned = _plan_heatmap(
                replace(plan, lock=lock, notes=notes),
                slide,
                members=members,
                options=options,
                tissue_pool=tissue_pool,
            )
            undo.pop_all()
            return planned
    except Exception as error:  # reported when the slide's turn comes
        return replace(plan, error=error)


def _plan_heatmap(
    plan: SlidePlan,
    slide: Slide,
    *,
    members: Sequence[Member],
    options: ScoreOptions,
    tissue_pool: Executor,
) -> SlidePlan:
    """Start the slide's heatmap, resume a partial one made the same way, or keep a complete one; a heatmap
    resumed or kept records the slide and models as found now (the same by the resume identity)."""
    card = members[0].card  # the members share patch size and µm/px
    grid = plan_grid(slide, card.patch_size, card.mpp, options.stride)
    started = datetime.now(timezone.utc).isoformat()
    existing = None if options.overwrite or not plan.heatmap.exists() else read_record(plan.heatmap)
    if existing is not None and options.jpeg_scaling is None:
        slide.jpeg_scaling = existing.slide.jpeg_scaling  # before the tissue is found
    sha256, found = recorded_sha256(existing, plan.path), None
    identity = (sha256, None)
    if sha256 is None:
        found = tissue_pool.submit(tissue_cells, slide, grid, options)  # while the file is hashed
        try:
            identity = slide_identity(plan.path)
        finally:
            wait([found])  # the slide stays open until then
    record = heatmap_metadata(slide, identity, members, grid, options, started)
    if existing is not None:
        differences = parameter_differences(existing, record)
        if differences:
            raise InputError(
                plan.heatmap,
                f"holds a heatmap made with other parameters ({'; '.join(differences)}); "
                "--overwrite scores it afresh",
            )
        if existing.complete and not (options.retry_unreadable and existing.unreadable_cells):
            # hashed (the same content under a new stamp, kept for the next re-run), moved, or older
            if (existing.slide, existing.models) != (record.slide, record.models):
                HeatmapWriter.reopen(plan.heatmap).record(slide=record.slide, models=record.models)
            return replace(plan, notes=(COMPLETE_NOTE, *plan.notes))
    cells, tissue = tissue_cells(slide, grid, options) if found is None else found.result()
    if existing is None:
        tissue_record = replace(record.tissue, saturation_threshold=float(tissue.threshold))
        writer = _new_heatmap(plan.heatmap, replace(record, tissue=tissue_record), cells)
    else:
        writer = _resume_heatmap(plan.heatmap, cells, record)
    retried = writer.forget_unreadable() if options.retry_unreadable else 0
    blocks = [b for b in split_blocks(grid.shape, options.block_cells) if cells[b.cells].any()]
    todo = sorted(
        ((int(cells[b.cells].sum()), b) for b in blocks if not writer.is_written(b)),
        key=lambda pair: -pair[0],
    )
    kept = len(blocks) - len(todo)
    resumed = (f"resumed: {kept} of {len(blocks)} blocks were written",) if kept else ()
    resumed += (f"{retried} blocks with unreadable cells read again",) if retried else ()
    return replace(
        plan,
        writer=writer,
        source=SlideSource(
            slide_location(slide.path), slide.backend, slide.mpp, record.slide.sha256, slide.jpeg_scaling
        ),
        cells=cells,
        blocks=tuple(block for _, block in todo),
        patches=sum(n for n, _ in todo),
        kept=kept,
        notes=(*plan.notes, *resumed),
    )


def _new_heatmap(heatmap: Path, record: HeatmapRecord, cells: np.ndarray) -> HeatmapWriter:
    """A new heatmap store (replacing any there) holding the tissue cells to score."""
    return HeatmapWriter(heatmap, record.grid, list(record.class_names), record.block_cells, record, cells)


def _resume_heatmap(heatmap: Path, cells: np.ndarray, record: HeatmapRecord) -> HeatmapWriter:
    """A heatmap reopened to add the blocks it lacks (its slide and models as ``record`` has them now, this
    run's start added), refused when its tissue cells are not those found now."""
    writer = HeatmapWriter.reopen(heatmap)
    if not np.array_equal(writer.tissue[...].astype(bool), cells):
        raise InputError(
            heatmap, "partial heatmap has other tissue cells than found now; --overwrite scores it afresh"
        )
    resumed = (*writer.metadata.resumed, record.started)
    writer.record(resumed=resumed, slide=record.slide, models=record.models)
    return writer

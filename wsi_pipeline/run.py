"""Scoring slides end to end on a Dask cluster: slide → tissue → grid → block tasks → heatmap store."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path

import dask

from .checksum import file_sha256
from .errors import InputError
from .grid import PatchGrid, split_blocks, tissue_fraction
from .heatmap import HeatmapWriter, is_heatmap, read_metadata, remove_heatmap
from .model import read_card, resolve_model_folder
from .progress import Progress
from .reports import DEFAULT_REPORTS, ReportOptions, current_summary, ensure_reports
from .scoring import ModelSource, SlideSource, score_block
from .slide import Slide
from .tables import batch_row, update_batch_table
from .tissue import MAX_HOLE_UM2, MIN_TISSUE_UM2, TISSUE_MPP, detect_tissue

# One BLAS/OpenMP thread per Dask thread, as Dask sets by default, but without its MALLOC_TRIM_THRESHOLD_:
# fixing that threshold turns off glibc's adaptive mmap threshold, and torch's large per-batch buffers then
# cost a page-fault storm (measured: the model ran 25-45% slower inside workers).
WORKER_ENVIRONMENT = {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1}
SCHEDULERS_HELP = (
    "local (worker processes sized to the machine), threads (one in-process worker), tcp://HOST:PORT"
)


@dataclass(frozen=True)
class ScoreOptions:
    """Parameters of a scoring run (the model card fixes patch size and µm/px)."""

    stride: int | None = None  # target pixels between cells; None = the model's patch size
    tissue_threshold: float = 0.5  # minimum tissue fraction of a patch for it to be scored
    tissue_mpp: float = TISSUE_MPP
    tissue_min_um2: float = MIN_TISSUE_UM2  # tissue objects smaller than this are dropped
    tissue_max_hole_um2: float = MAX_HOLE_UM2  # holes in tissue smaller than this are filled
    block_cells: int = 32  # block side in grid cells
    batch_size: int = 256
    device: str = "auto"
    backend: str = "auto"
    mpp: float | None = None  # overrides the slide's µm/px
    overwrite: bool = False

    def validate(self) -> None:
        if self.stride is not None and self.stride < 1:
            raise ValueError("stride must be at least 1 pixel")
        if not 0.0 <= self.tissue_threshold <= 1.0:
            raise ValueError("tissue threshold must be between 0 and 1")
        if self.block_cells < 1 or self.batch_size < 1:
            raise ValueError("block size and batch size must be positive")
        if self.mpp is not None and self.mpp <= 0:
            raise ValueError("mpp must be positive")
        if self.tissue_mpp <= 0 or self.tissue_min_um2 < 0 or self.tissue_max_hole_um2 < 0:
            raise ValueError("tissue µm/px must be positive and tissue areas not negative")


@dataclass
class SlideResult:
    """What happened to one slide of a batch."""

    slide: Path
    status: str  # "ok", "skipped" or "failed"
    heatmap: Path | None = None
    message: str = ""
    patches: int = 0
    seconds: float = 0.0
    summary: dict | None = None  # the slide's summary record (reports.py), when there is one


def package_version() -> str:
    from . import __version__

    return __version__


@contextlib.contextmanager
def dask_client(scheduler: str = "local", n_workers: int | None = None) -> Iterator:
    """A ``distributed.Client``: a local cluster of single-threaded worker processes (default), one
    in-process worker with threads, or an existing cluster at a ``tcp://`` address."""
    from distributed import Client, LocalCluster

    workers = n_workers or os.cpu_count() or 1
    if scheduler == "local":
        with (
            dask.config.set({"distributed.nanny.pre-spawn-environ": WORKER_ENVIRONMENT}),
            LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client
    elif scheduler == "threads":
        with Client(
            processes=False, n_workers=1, threads_per_worker=workers, dashboard_address=":0"
        ) as client:
            yield client
    elif "://" in scheduler:
        with Client(scheduler) as client:
            yield client
    else:
        raise ValueError(f"scheduler must be one of: {SCHEDULERS_HELP}; not {scheduler!r}")


def heatmap_path(slide_path: str | Path, out_dir: str | Path) -> Path:
    return Path(out_dir) / f"{Path(slide_path).stem}.zarr"


def plan_grid(slide: Slide, patch_size: int, target_mpp: float, stride: int | None) -> PatchGrid:
    return PatchGrid(
        width0=slide.width0,
        height0=slide.height0,
        mpp0=slide.mpp,
        target_mpp=target_mpp,
        patch_size=patch_size,
        stride=stride or patch_size,
    )


def score_slide(
    slide_path: str | Path,
    model_folder: str | Path,
    out_dir: str | Path,
    client,
    options: ScoreOptions = ScoreOptions(),
    show_progress: bool = True,
) -> SlideResult:
    """Score one slide into ``out_dir/<stem>.zarr`` with a model folder (or bundled model name) on the cluster
    behind ``client``."""
    options.validate()
    started, clock = datetime.now(timezone.utc), time.monotonic()
    out_path = heatmap_path(slide_path, out_dir)
    if out_path.exists():
        if not is_heatmap(out_path):
            raise InputError(out_path, "exists and is not a wsi_pipeline heatmap; not overwriting it")
        if read_metadata(out_path).get("complete") and not options.overwrite:
            return SlideResult(Path(slide_path), "skipped", out_path, "complete heatmap exists (--overwrite)")
    model_folder = resolve_model_folder(model_folder)
    card = read_card(model_folder)
    model_source = ModelSource(
        str(model_folder.resolve()), file_sha256(model_folder / card.weights), options.device
    )
    with Slide(slide_path, options.backend, options.mpp) as slide:
        slide_source = SlideSource(str(slide.path.resolve()), slide.backend, slide.mpp)
        grid = plan_grid(slide, card.patch_size, card.mpp, options.stride)
        tissue = detect_tissue(
            slide.thumbnail(options.tissue_mpp),
            options.tissue_mpp,
            min_tissue_um2=options.tissue_min_um2,
            max_hole_um2=options.tissue_max_hole_um2,
        )
    cells = tissue_fraction(grid, tissue) >= options.tissue_threshold
    if out_path.exists():
        remove_heatmap(out_path)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    metadata = {
        "slide": {
            "path": slide_source.path,
            "sha256": file_sha256(slide_path),
            "backend": slide.backend,
            "mpp": slide.mpp,
            "mpp_source": "file" if options.mpp is None else "--mpp",
            "width0": slide.width0,
            "height0": slide.height0,
        },
        "model": {
            "name": card.name,
            "folder": model_source.folder,
            "weights_sha256": model_source.weights_sha256,
            "architecture": card.architecture,
        },
        "tissue_threshold": options.tissue_threshold,
        "tissue_mpp": options.tissue_mpp,
        "tissue_min_um2": options.tissue_min_um2,
        "tissue_max_hole_um2": options.tissue_max_hole_um2,
        "tissue_saturation_threshold": tissue.threshold,
        "block_cells": options.block_cells,
        "package_version": package_version(),
        "started": started.isoformat(),
    }
    writer = HeatmapWriter(out_path, grid, card.class_names, options.block_cells, metadata)
    writer.write_tissue(cells)
    blocks = [block for block in split_blocks(grid.shape, options.block_cells) if cells[block.cells].any()]
    n_patches = int(cells.sum())
    progress = Progress(n_patches, Path(slide_path).name) if show_progress else None
    try:
        devices = _run_blocks(
            client, blocks, cells, slide_source, model_source, grid, options, writer, progress
        )
    finally:
        if progress is not None:
            progress.close()
    seconds = time.monotonic() - clock
    writer.finalise(
        devices=sorted(devices),
        patches_scored=n_patches,
        seconds=round(seconds, 3),
        finished=datetime.now(timezone.utc).isoformat(),
    )
    return SlideResult(Path(slide_path), "ok", out_path, "", n_patches, seconds)


def _run_blocks(
    client, blocks, cells, slide_source, model_source, grid, options, writer, progress
) -> set[str]:
    """Submit block tasks, at most a few per worker thread at a time, and write each result as it lands."""
    from distributed import as_completed

    max_in_flight = 2 * sum(client.nthreads().values()) + 2
    todo = iter(blocks)

    def submit(block):
        return client.submit(
            score_block,
            slide_source,
            model_source,
            grid,
            block,
            cells[block.cells],
            options.batch_size,
            pure=False,
        )

    in_flight = as_completed([submit(block) for block in islice(todo, max_in_flight)])
    devices: set[str] = set()
    try:
        for future in in_flight:
            block, probabilities, device = future.result()
            future.release()
            writer.write_block(block, probabilities)
            devices.add(device)
            if progress is not None:
                progress.update(int(cells[block.cells].sum()))
            following = next(todo, None)
            if following is not None:
                in_flight.add(submit(following))
    finally:
        remaining = list(in_flight.futures)
        if remaining:
            client.cancel(remaining)
    return devices


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
    """Score each slide with a model folder (or bundled model name), write its reports (unless ``reports`` is
    None; a complete heatmap's missing or outdated reports are made again) and, after each slide, its row of
    ``out_dir/slides.csv``. A slide that fails is reported and the batch goes on. Scripts using the default
    local cluster need an ``if __name__ == "__main__":`` guard."""
    model_folder = resolve_model_folder(model_folder)
    read_card(model_folder)  # a bad model folder stops the batch before any cluster starts
    if reports is not None:
        reports.validate()
    with contextlib.ExitStack() as stack:
        if client is None:
            client = stack.enter_context(dask_client(scheduler, n_workers))
        results = []
        for path in slide_paths:
            clock = time.monotonic()
            try:
                result = score_slide(path, model_folder, out_dir, client, options, show_progress)
                metadata = read_metadata(result.heatmap)
                if reports is None:
                    result.summary = current_summary(result.heatmap)
                else:
                    result.summary = ensure_reports(result.heatmap, reports)
            except Exception as error:  # a batch goes on past any one slide's failure
                message = (
                    str(error)
                    if isinstance(error, InputError)
                    else f"{path}: {type(error).__name__}: {error}"
                )
                result = SlideResult(Path(path), "failed", None, message, seconds=time.monotonic() - clock)
                metadata = None
            results.append(result)
            update_batch_table(out_dir, [batch_row(result, metadata)])
    return results

"""Scoring one slide in this process, block by block, as a generator a napari worker thread can run.

Each block is scored by ``scoring.score_block`` (the Dask task's function, run here in-process with its
per-process model and slide caches) and written to the heatmap store before it is yielded, so a run stopped
between blocks leaves a valid, incomplete store.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..checksum import file_sha256
from ..grid import Block, split_blocks
from ..heatmap import Heatmap, HeatmapWriter, remove_heatmap
from ..model import read_card, resolve_model_folder
from ..reports import write_reports
from ..run import ScoreOptions, heatmap_metadata, heatmap_path, model_source, plan_grid, tissue_cells
from ..scoring import SlideSource, score_block
from ..slide import Slide


@dataclass
class ScoringStarted:
    """The run is planned: ``heatmap`` holds the tissue cells and NaN probabilities, to be filled in."""

    heatmap: Heatmap
    path: Path  # the store being written
    patches: int  # tissue patches to score


@dataclass
class BlockScored:
    """One block's probabilities ``(classes, n_rows, n_cols)``, already written to the store."""

    block: Block
    probabilities: np.ndarray
    patches: int


def score_in_process(
    slide_path: str | Path, model: str | Path, out_dir: str | Path, options: ScoreOptions
) -> Generator[ScoringStarted | BlockScored, None, Path]:
    """Score a slide into ``out_dir/<stem>.zarr`` (replacing a heatmap of ours there, never anything else),
    yielding the plan and then each block; write the reports at the end and return the store's path."""
    options.validate()
    started = datetime.now(timezone.utc).isoformat()
    folder = resolve_model_folder(model)
    card = read_card(folder)
    weights = model_source(folder, card, options)
    with Slide(slide_path, options.backend, options.mpp) as slide:
        slide_source = SlideSource(str(slide.path.resolve()), slide.backend, slide.mpp)
        grid = plan_grid(slide, card.patch_size, card.mpp, options.stride)
        cells, tissue = tissue_cells(slide, grid, options)
        metadata = heatmap_metadata(slide, file_sha256(slide_path), card, weights, grid, options, started)
    metadata.update(tissue_saturation_threshold=tissue.threshold, scored_by="napari")
    out_path = heatmap_path(slide_path, out_dir)
    if out_path.exists():
        remove_heatmap(out_path)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    writer = HeatmapWriter(out_path, grid, card.class_names, options.block_cells, metadata)
    writer.write_tissue(cells)
    empty = np.full((len(card.class_names), *grid.shape), np.nan, np.float32)
    heatmap = Heatmap(empty, cells, grid, card.class_names, writer.metadata)
    yield ScoringStarted(heatmap, out_path, int(cells.sum()))
    devices = set()
    for block in split_blocks(grid.shape, options.block_cells):
        block_cells = cells[block.cells]
        if block_cells.any():
            _, probabilities, device, _engine = score_block(
                slide_source, weights, grid, block, block_cells, options.batch_size
            )
            writer.write_block(block, probabilities)
            devices.add(device)
            yield BlockScored(block, probabilities, int(block_cells.sum()))
    writer.finalise(
        devices=sorted(devices),
        patches_scored=int(cells.sum()),
        finished=datetime.now(timezone.utc).isoformat(),
    )
    write_reports(out_path)
    return out_path

"""int8 for a scoring run: the patches it is calibrated on (``model.quantize``), random tissue cells of a
slide or of the slides in a folder, read at the model's patch size and µm/px as scoring reads them, or
patches of a patch data set; and the run's models switched to int8 where it agrees with float32.

Slides are read with the run's JPEG scaling or, when it has none (``ScoreOptions.jpeg_scaling``: as each
heatmap was made), with that of the first of its heatmaps already in the output folder: a resumed int8
heatmap is calibrated on the patches it was (its calibration's sha256 is part of its identity)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

from wsi_pipeline.core.errors import InputError
from wsi_pipeline.datasets.patches import open_patch_dataset
from wsi_pipeline.model.card import ModelCard
from wsi_pipeline.model.predict import MIN_CALIBRATION_PATCHES, choose_int8
from wsi_pipeline.scoring.options import ScoreOptions
from wsi_pipeline.scoring.planning import Member, heatmap_path, tissue_cells
from wsi_pipeline.slide.find import find_slides
from wsi_pipeline.slide.reader import SLIDE_SUFFIXES, Slide
from wsi_pipeline.store.heatmap import read_record
from wsi_pipeline.tiling.grid import Block, plan_grid
from wsi_pipeline.tiling.patches import read_block_patches

CALIBRATION_PATCHES = 384  # 256 calibrate, 128 are held out to check int8 against float32
_ONE_CELL = np.ones((1, 1), bool)


def int8_members(
    members: tuple[Member, ...], options: ScoreOptions, slides: Sequence[str | Path], out_dir: str | Path
) -> tuple[Member, ...]:
    """The run's models, each switched to int8 where int8 agrees with float32 (``model.choose_int8``; a
    model where it does not keeps its float32 engine, with a warning); as given unless the options ask for
    int8.

    Args:
        members: the run's model, or its ensemble's members (``planning.model_members``).
        options: the run's options: precision, and ``calibration`` (a slide, a folder of slides or a patch
            data set) or None: tissue of the first of ``slides`` that has enough.
        slides: the run's slides.
        out_dir: the run's output folder.

    Raises:
        InputError: the calibration named cannot be read.
    """
    if options.precision != "int8":
        return members
    options = replace(options, jpeg_scaling=calibration_scaling(options, slides, out_dir))
    patches = run_calibration_patches(members[0].card, options, slides)
    switched = []
    for member in members:
        sha256 = choose_int8(member.source.folder, patches)
        if sha256 is not None:
            int8 = {"engine": "onnxruntime", "precision": "int8", "calibration": sha256}
            member = replace(member, source=replace(member.source, **int8))
        switched.append(member)
    return tuple(switched)


def calibration_scaling(options: ScoreOptions, slides: Sequence[str | Path], out_dir: str | Path) -> str:
    """The JPEG scaling calibration patches are read with: the run's, else that of the first of the run's
    heatmaps in ``out_dir`` that will be resumed or kept (``--overwrite``: none), else ``auto``."""
    if options.jpeg_scaling is not None:
        return options.jpeg_scaling
    for slide in [] if options.overwrite else slides:
        heatmap = heatmap_path(slide, out_dir)
        if heatmap.exists():
            try:
                return read_record(heatmap).slide.jpeg_scaling
            except InputError:  # planning reports it
                continue
    return "auto"


def run_calibration_patches(
    card: ModelCard, options: ScoreOptions, slides: Sequence[str | Path]
) -> np.ndarray:
    """Patches of ``options.calibration``, else of the first slide with enough tissue (a slide that cannot be
    read is skipped here: planning reports it); none when no slide has enough."""
    if options.calibration is not None:
        return calibration_patches(options.calibration, card, options)
    for slide in slides:
        try:
            patches = calibration_patches(slide, card, options)
        except InputError:
            continue
        if len(patches) >= MIN_CALIBRATION_PATCHES:
            return patches
    return np.empty((0, card.patch_size, card.patch_size, 3), np.uint8)


def calibration_patches(
    source: str | Path, card: ModelCard, options: ScoreOptions, n: int = CALIBRATION_PATCHES, seed: int = 0
) -> np.ndarray:
    """Up to ``n`` uint8 patches (N, H, W, 3) in random order (fixed by ``seed``).

    Args:
        source: a slide (its tissue cells), a folder of slides (tissue cells of each, in equal shares), or a
            patch data set that ``open_patch_dataset`` reads (PCam, Kaggle, class folders).
        card: the model's card (patch size and µm/px of the cells).
        options: the run's options (reader, µm/px override, tissue detection, stride).
        n: how many patches at most.
        seed: which cells or patches.
    """
    path, rng = Path(source), np.random.default_rng(seed)
    children = path.iterdir() if path.is_dir() else [path]
    if any(child.suffix.lower() in SLIDE_SUFFIXES for child in children):
        return slides_patches(find_slides([str(path)]), card, options, n, rng)
    with open_patch_dataset(path) as dataset:  # a PCam folder or _x.h5 file, Kaggle, class folders
        picked = np.sort(rng.permutation(len(dataset))[:n])
        return dataset.read_batch(picked)[0][rng.permutation(len(picked))]


def slides_patches(
    slides: Sequence[Path], card: ModelCard, options: ScoreOptions, n: int, rng: np.random.Generator
) -> np.ndarray:
    """Up to ``n`` patches of random tissue cells, an equal share from each slide, in random order."""
    share = -(-n // len(slides))
    found = [tissue_patches(slide, card, options, share, rng) for slide in slides]
    patches = np.concatenate(found)
    return patches[rng.permutation(len(patches))[:n]]


def tissue_patches(
    path: Path, card: ModelCard, options: ScoreOptions, n: int, rng: np.random.Generator
) -> np.ndarray:
    """Up to ``n`` patches of random tissue cells of a slide (cells as the run's options find them)."""
    with Slide(path, options.backend, options.mpp, options.jpeg_scaling or "auto") as slide:
        grid = plan_grid(slide, card.patch_size, card.mpp, options.stride)
        rows, cols = np.nonzero(tissue_cells(slide, grid, options)[0])
        picked = rng.permutation(len(rows))[:n]
        cells = [Block(int(row), int(col), 1, 1) for row, col in zip(rows[picked], cols[picked], strict=True)]
        with ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="wsi-calibration") as readers:
            patches = list(readers.map(lambda cell: read_block_patches(slide, grid, cell, _ONE_CELL), cells))
    side = grid.patch_size
    return np.concatenate(patches) if patches else np.empty((0, side, side, 3), np.uint8)

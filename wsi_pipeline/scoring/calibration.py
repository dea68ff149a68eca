"""Patches to calibrate int8 on (``model.quantize``): random tissue cells of a slide or of the slides in a
folder, read at the model's patch size and µm/px as scoring reads them, or patches of a patch data set."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wsi_pipeline.datasets.patches import open_patch_dataset
from wsi_pipeline.model.card import ModelCard
from wsi_pipeline.scoring.options import ScoreOptions
from wsi_pipeline.scoring.planning import tissue_cells
from wsi_pipeline.slide.find import find_slides
from wsi_pipeline.slide.reader import SLIDE_SUFFIXES, Slide
from wsi_pipeline.tiling.grid import Block, plan_grid
from wsi_pipeline.tiling.patches import read_block_patches

CALIBRATION_PATCHES = 384  # 256 calibrate, 128 are held out to check int8 against float32
_ONE_CELL = np.ones((1, 1), bool)


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
    with Slide(path, options.backend, options.mpp) as slide:
        grid = plan_grid(slide, card.patch_size, card.mpp, options.stride)
        rows, cols = np.nonzero(tissue_cells(slide, grid, options)[0])
        picked = rng.permutation(len(rows))[:n]
        cells = [Block(int(row), int(col), 1, 1) for row, col in zip(rows[picked], cols[picked], strict=True)]
        patches = [read_block_patches(slide, grid, cell, _ONE_CELL) for cell in cells]
    side = grid.patch_size
    return np.concatenate(patches) if patches else np.empty((0, side, side, 3), np.uint8)

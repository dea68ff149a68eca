"""Synthetic slides with known content: scenes in level-0 coordinates, written as Aperio-style pyramidal TIFF.

The writer streams tile by tile, so slides of any size are made in bounded memory, and openslide and tiffslide
both read the result with its µm/px. H&E-like scenes with ground truth are in ``synthetic.scene``."""

from __future__ import annotations

import itertools
import tempfile
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from multiprocessing import get_context
from pathlib import Path
from typing import Protocol

import numpy as np
import tifffile
from PIL import Image

from wsi_pipeline.slide.reader import SYNTHETIC_MARK

WHITE = (255, 255, 255)
_APERIO = "Aperio Image Library v12.0.0"


@dataclass(frozen=True)
class Rect:
    """An axis-aligned rectangle of one colour, ``[x0, x1) × [y0, y1)`` in level-0 pixels."""

    x0_level0: float
    y0_level0: float
    x1_level0: float
    y1_level0: float
    colour: tuple[int, int, int]


@dataclass
class RectScene:
    """Rectangles painted in order over a background."""

    rects: Sequence[Rect] = field(default_factory=list)
    background: tuple[int, int, int] = WHITE

    def render(
        self, x0_level0: float, y0_level0: float, width: int, height: int, downsample: float
    ) -> np.ndarray:
        """RGB uint8 (height, width, 3): pixel (i, j) samples the scene at its centre,
        level-0 ``(x0 + (j + 0.5) * downsample, y0 + (i + 0.5) * downsample)``."""
        out = np.empty((height, width, 3), np.uint8)
        out[...] = self.background
        x_level0 = x0_level0 + (np.arange(width) + 0.5) * downsample
        y_level0 = y0_level0 + (np.arange(height) + 0.5) * downsample
        for rect in self.rects:
            cols = (x_level0 >= rect.x0_level0) & (x_level0 < rect.x1_level0)
            rows = (y_level0 >= rect.y0_level0) & (y_level0 < rect.y1_level0)
            if cols.any() and rows.any():
                out[np.ix_(rows, cols)] = rect.colour
        return out


class Scene(Protocol):
    def render(
        self, x0_level0: float, y0_level0: float, width: int, height: int, downsample: float
    ) -> np.ndarray: ...


def _render_row(scene: Scene, y0_level0: int, width0: int, tile: int) -> list[np.ndarray]:
    return [scene.render(x, y0_level0, tile, tile, 1) for x in range(0, width0, tile)]


def _level0_tiles(scene: Scene, width0: int, height0: int, tile: int, workers: int) -> Iterator[np.ndarray]:
    """Level-0 tiles in row-major order, rendered by ``workers`` processes a bounded number of rows ahead."""
    rows = iter(range(0, height0, tile))
    if workers <= 1:
        for y0_level0 in rows:
            yield from _render_row(scene, y0_level0, width0, tile)
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        pending = deque(pool.submit(_render_row, scene, y, width0, tile) for y in islice(rows, 2 * workers))
        while pending:
            row_tiles = pending.popleft().result()
            for y0_level0 in islice(rows, 1):
                pending.append(pool.submit(_render_row, scene, y0_level0, width0, tile))
            yield from row_tiles


def _reducing(tiles: Iterator[np.ndarray], n_cols: int, tile: int, ratio: int, out: np.ndarray | None):
    """Pass ``tiles`` through, writing each one's ``ratio``× box-average into ``out`` (the next level)."""
    small = tile // ratio
    for index, pixels in enumerate(tiles):
        if out is not None:
            row, col = divmod(index, n_cols)
            reduced = pixels.reshape(small, ratio, small, ratio, 3).mean(axis=(1, 3), dtype=np.float32)
            out[row * small : (row + 1) * small, col * small : (col + 1) * small] = reduced + 0.5
        yield pixels


def _stored_tiles(level: np.ndarray, width: int, height: int, tile: int) -> Iterator[np.ndarray]:
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            pixels = np.full((tile, tile, 3), 255, np.uint8)
            part = level[y : min(y + tile, height), x : min(x + tile, width)]
            pixels[: part.shape[0], : part.shape[1]] = part
            yield pixels


def _to_ycbcr(pixels: np.ndarray) -> np.ndarray:
    """RGB pixels as JPEG's YCbCr (JFIF, full range)."""
    return np.asarray(Image.fromarray(pixels).convert("YCbCr"))


def _as_is(pixels: np.ndarray) -> np.ndarray:
    return pixels


def write_slide(
    path: str | Path,
    scene: Scene,
    width0: int,
    height0: int,
    mpp: float | None,
    downsamples: Sequence[int] = (1, 4, 16),
    tile: int = 256,
    quality: int = 95,
    workers: int = 1,
    photometric: str = "rgb",
) -> Path:
    """Write an Aperio-style SVS: tiled JPEG levels (level 0, then the reduced ones) and a thumbnail page.

    Level 0 is rendered from the scene tile by tile (by ``workers`` processes); each reduced level is the box
    average of the one before, kept in a temporary memory-mapped file beside ``path``, so memory stays bounded
    for any slide size. ``mpp=None`` writes no µm/px, as some scanners' exports do. ``photometric`` is the
    tiles' JPEG colour space: ``rgb`` (as Aperio's) or ``ycbcr`` (chroma subsampled 2×2).
    """
    path = Path(path)
    steps = list(itertools.pairwise(downsamples))
    ratios = [b // a for a, b in steps]
    if downsamples[0] != 1 or any(
        a * r != b or r < 2 or tile % r for (a, b), r in zip(steps, ratios, strict=True)
    ):
        raise ValueError("downsamples must start at 1 and grow by integer factors that divide the tile size")
    marks = f"|{SYNTHETIC_MARK}"  # says it is no real tissue
    header = f"{_APERIO}\r\n{width0}x{height0} [0,0 {width0}x{height0}] ({tile}x{tile})"
    mpp_field = f"|MPP = {mpp}" if mpp is not None else ""
    options = {
        "photometric": photometric,
        "compression": "jpeg",
        "compressionargs": {"level": quality},
        "metadata": None,
    }
    bigtiff = width0 * height0 * 3 > 2**31
    encoded = _to_ycbcr if photometric == "ycbcr" else _as_is  # tifffile takes YCbCr pixels for "ycbcr"
    with (
        tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}-") as scratch,
        tifffile.TiffWriter(path, bigtiff=bigtiff) as tiff,
    ):
        tiles = _level0_tiles(scene, width0, height0, tile, workers)
        for index, downsample in enumerate(downsamples):
            width, height = max(1, width0 // downsample), max(1, height0 // downsample)
            n_rows, n_cols = -(-height // tile), -(-width // tile)
            ratio = ratios[index] if index < len(ratios) else None
            reduced = None
            if ratio is not None:
                shape = (n_rows * tile // ratio, n_cols * tile // ratio, 3)
                reduced = np.lib.format.open_memmap(Path(scratch) / f"{index + 1}.npy", "w+", np.uint8, shape)
            level_text = f" -> {width}x{height}" if downsample > 1 else ""
            tiff.write(
                map(encoded, _reducing(tiles, n_cols, tile, ratio or 1, reduced)),
                shape=(height, width, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                description=f"{header}{level_text} JPEG/RGB Q={quality}|AppMag = 20{mpp_field}{marks}",
                **options,
            )
            if index == 0:  # Aperio's second page is a stripped thumbnail
                thumb_ds = max(width0, height0) / 512
                thumb_w, thumb_h = max(1, round(width0 / thumb_ds)), max(1, round(height0 / thumb_ds))
                tiff.write(
                    encoded(scene.render(0, 0, thumb_w, thumb_h, thumb_ds)),
                    description=f"{_APERIO}\r\n{width0}x{height0} -> {thumb_w}x{thumb_h} - ",
                    **options,
                )
            if reduced is not None:
                next_width, next_height = max(1, width // ratio), max(1, height // ratio)
                tiles = _stored_tiles(reduced, next_width, next_height, tile)
    return path

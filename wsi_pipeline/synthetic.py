"""Synthetic slides with known content: scenes in level-0 coordinates, written as Aperio-style pyramidal TIFF.

The writer streams tile by tile (each pyramid level rendered directly from the scene), so slides of any size
are made in bounded memory, and openslide and tiffslide both read the result with its µm/px.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

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


def _tiles(scene: RectScene, width: int, height: int, downsample: float, tile: int) -> Iterator[np.ndarray]:
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            yield scene.render(x * downsample, y * downsample, tile, tile, downsample)


def write_slide(
    path: str | Path,
    scene: RectScene,
    width0: int,
    height0: int,
    mpp: float | None,
    downsamples: Sequence[int] = (1, 4, 16),
    tile: int = 256,
    quality: int = 95,
) -> Path:
    """Write an Aperio-style SVS: tiled JPEG levels (level 0, then the reduced ones) and a thumbnail page.

    ``mpp=None`` writes no µm/px, as some scanners' exports do.
    """
    path = Path(path)
    header = f"{_APERIO}\r\n{width0}x{height0} [0,0 {width0}x{height0}] ({tile}x{tile})"
    mpp_field = f"|MPP = {mpp}" if mpp is not None else ""
    options = {
        "photometric": "rgb",
        "compression": "jpeg",
        "compressionargs": {"level": quality},
        "metadata": None,
    }
    bigtiff = width0 * height0 * 3 > 2**31
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tiff:
        for index, downsample in enumerate(downsamples):
            width, height = max(1, width0 // downsample), max(1, height0 // downsample)
            level_text = f" -> {width}x{height}" if downsample > 1 else ""
            tiff.write(
                _tiles(scene, width, height, downsample, tile),
                shape=(height, width, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                description=f"{header}{level_text} JPEG/RGB Q={quality}|AppMag = 20{mpp_field}",
                **options,
            )
            if index == 0:  # Aperio's second page is a stripped thumbnail
                thumb_ds = max(width0, height0) / 512
                thumb_w, thumb_h = max(1, round(width0 / thumb_ds)), max(1, round(height0 / thumb_ds))
                tiff.write(
                    scene.render(0, 0, thumb_w, thumb_h, thumb_ds),
                    description=f"{_APERIO}\r\n{width0}x{height0} -> {thumb_w}x{thumb_h} - ",
                    **options,
                )
    return path

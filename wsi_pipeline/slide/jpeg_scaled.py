"""Decode a box of a JPEG-tiled TIFF level at 1/k of its resolution (k = 2, 4 or 8) with libjpeg's scaled
inverse DCT (Pillow's JPEG draft mode): each 8×8 block is transformed straight to (8/k)² pixels, cheaper
than a full decode, and much cheaper than a full decode and a resample. Decoded pixel ``i`` covers level
pixels ``[k·i, k·(i+1))`` (tile sides must be multiples of k).

Tiles are read with ``os.pread`` (no shared file position: threads may read a level at once). Each tile's
stream gets the level's JPEGTables and, for an RGB (not YCbCr) level, an Adobe APP14 marker with transform 0,
so that libjpeg takes the components as they are instead of converting them from YCbCr."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image
from tifffile import TiffPage

SCALES = (2, 4, 8)
_SOI, _EOI = b"\xff\xd8", b"\xff\xd9"
_ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"  # APP14, version 100, transform 0
_JPEG, _PHOTOMETRIC_RGB, _PHOTOMETRIC_YCBCR = 7, 2, 6


@dataclass(frozen=True)
class JpegLevel:
    """A JPEG-tiled level as the file stores it: its size (level pixels), tile size, the tiles' byte ranges
    (row-major) and the bytes each tile's stream starts with (SOI, APP14 for RGB, the shared tables)."""

    width: int
    height: int
    tile_width: int
    tile_height: int
    offsets: np.ndarray
    bytecounts: np.ndarray
    prefix: bytes

    @property
    def scales(self) -> tuple[int, ...]:
        """The reductions k its tiles can be decoded at (those dividing both tile sides)."""
        return tuple(k for k in SCALES if self.tile_width % k == 0 and self.tile_height % k == 0)


def jpeg_level(page: TiffPage) -> JpegLevel | None:
    """The level of a TIFF page whose tiles are 8-bit RGB or YCbCr JPEG (one plane, pixel-interleaved); None
    for any other page."""
    if not (
        page.is_tiled
        and page.compression == _JPEG
        and page.photometric in (_PHOTOMETRIC_RGB, _PHOTOMETRIC_YCBCR)
        and page.samplesperpixel == 3
        and page.bitspersample == 8
        and page.planarconfig == 1
        and page.imagedepth == page.tiledepth == 1
    ):
        return None
    tiles = -(-page.imagewidth // page.tilewidth) * -(-page.imagelength // page.tilelength)
    if len(page.dataoffsets) != tiles:
        return None
    tables = page.jpegtables or b""
    tables = tables.removeprefix(_SOI).removesuffix(_EOI)
    adobe = _ADOBE_RGB if page.photometric == _PHOTOMETRIC_RGB else b""
    return JpegLevel(
        width=page.imagewidth,
        height=page.imagelength,
        tile_width=page.tilewidth,
        tile_height=page.tilelength,
        offsets=np.asarray(page.dataoffsets, np.int64),
        bytecounts=np.asarray(page.databytecounts, np.int64),
        prefix=_SOI + adobe + tables,
    )


def read_scaled(fd: int, level: JpegLevel, k: int, x: int, y: int, width: int, height: int) -> np.ndarray:
    """RGB uint8 (height, width, 3) of a box of the level decoded at 1/k, in 1/k pixels (within the level's
    ``width // k`` × ``height // k``). Raises ``OSError`` or ``ValueError`` when a tile cannot be decoded."""
    if k not in level.scales:
        raise ValueError(f"tiles of {level.tile_width}×{level.tile_height} px cannot be decoded at 1/{k}")
    out = np.empty((height, width, 3), np.uint8)
    tile_width, tile_height = level.tile_width // k, level.tile_height // k  # in 1/k pixels
    per_row = -(-level.width // level.tile_width)
    for row in range(y // tile_height, (y + height - 1) // tile_height + 1):
        for col in range(x // tile_width, (x + width - 1) // tile_width + 1):
            tile = _decode_tile(fd, level, row * per_row + col, k)
            if tile.shape[0] < tile_height or tile.shape[1] < tile_width:
                raise ValueError(f"tile {row},{col} holds {tile.shape[1]}×{tile.shape[0]} px at 1/{k}")
            x0_tile, y0_tile = col * tile_width, row * tile_height
            x0, y0 = max(x, x0_tile), max(y, y0_tile)
            x1, y1 = min(x + width, x0_tile + tile_width), min(y + height, y0_tile + tile_height)
            part = tile[y0 - y0_tile : y1 - y0_tile, x0 - x0_tile : x1 - x0_tile]
            out[y0 - y : y1 - y, x0 - x : x1 - x] = part
    return out


def _decode_tile(fd: int, level: JpegLevel, index: int, k: int) -> np.ndarray:
    """A tile decoded at 1/k; black where the file holds no tile (as tifffile reads it)."""
    count = int(level.bytecounts[index])
    if count == 0:
        return np.zeros((level.tile_height // k, level.tile_width // k, 3), np.uint8)
    data = os.pread(fd, count, int(level.offsets[index]))
    if not data.startswith(_SOI):
        raise ValueError(f"tile {index} is not a JPEG stream")
    with Image.open(io.BytesIO(level.prefix + data[2:]), formats=("JPEG",)) as image:
        image.draft("RGB", (image.width // k, image.height // k))
        return np.asarray(image.convert("RGB") if image.mode != "RGB" else image)

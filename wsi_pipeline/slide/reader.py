"""Slide I/O: open a whole-slide image and read regions at any µm/px from the best pyramid level.

Spaces: *level-0* pixels are the file's full resolution (``mpp`` µm/px); *level-L* pixels are those of
pyramid level L (``level_downsamples[L]`` level-0 pixels each); *target* pixels are at a caller-chosen
µm/px. A pixel's integer index ``i`` covers ``[i, i+1)`` in its space, so target pixel ``i`` covers level-0
``[i*ds, (i+1)*ds)`` with ``ds = target_mpp / mpp``.

Levels are the file's (``level_downsamples``) and, with JPEG scaling, *reduced* ones after them: a JPEG-tiled
level L decoded at 1/k (k = 2, 4, 8), whose pixel i covers level-L pixels ``[k*i, k*(i+1))``; one is left out
when the file or a coarser level gives its downsample within ``LEVEL_TOLERANCE``. ``read_downsamples`` lists
the downsamples of both, which ``best_level``, ``window`` and ``read_level`` take indices into."""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

from wsi_pipeline.core.errors import InputError
from wsi_pipeline.slide.dicom import holds_dicom, series_of
from wsi_pipeline.slide.jpeg_scaled import JpegLevel, jpeg_level, read_scaled
from wsi_pipeline.slide.remote import is_url, open_remote

_log = logging.getLogger(__name__)

BACKENDS = ("auto", "openslide", "tiffslide")
# auto: a JPEG-tiled level also reads as levels 2, 4 and 8 times coarser, decoded at that scale (libjpeg's
# scaled inverse DCT, ``slide.jpeg_scaled``); off: only the file's levels, decoded in full.
JPEG_SCALINGS = ("auto", "off")
# Formats tiffslide reads well (and faster than openslide, see benchmarks); openslide takes the rest, DICOM
# WSI (.dcm) included: OpenSlide 4 reads a series through any of its files: no second DICOM library.
TIFFSLIDE_SUFFIXES = {".svs", ".tif", ".tiff"}
SLIDE_SUFFIXES = {".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif"}
# The Aperio description field by which slides this package synthesises say so (openslide and tiffslide
# both read it as the property ``aperio.Synthetic``).
SYNTHETIC_MARK = "Synthetic = wsi_pipeline"
_MPP_TOLERANCE = 0.01  # relative difference allowed between mpp-x and mpp-y
# A level up to 5% coarser than asked for is still used (then upsampled by at most 5%): a 40× scan at
# 0.25 µm/px reads PCam's 0.972 µm/px from its 4× level (1.0 µm/px), not 16× more pixels at level 0.
LEVEL_TOLERANCE = 0.05
# Resampling by at most this much (e.g. that 4× level to 0.972 µm/px: ×1.029) takes each output pixel from the
# level pixel under its centre (nearest neighbour: at most half a level pixel off, no blur, ~4× faster than
# PIL's bilinear); larger changes are bilinear, antialiased when downsampling.
NEAREST_TOLERANCE = LEVEL_TOLERANCE
# How ``read_level`` places a box of a file's level, by version (heatmaps record the first that reads their
# patches as now): 1 — at level-0 round(x · downsample), which tiffslide, truncating location / downsample,
# read one level pixel early at many x of a level whose downsample is not an integer; 2 — for tiffslide, at a
# location it maps back to x (OpenSlide as in 1: no location lands there; the nearest is least off).
READ_RULE = 2
# Pixels that cannot be decoded at their level may come from another: any finer level, or a coarser one up
# to this many times the output's pixel size (a patch upsampled more than 2× holds too little of the tissue).
FALLBACK_MAX_UPSAMPLE = 2.0
THUMBNAIL_PIECE = 256  # output px: the side of the pieces a thumbnail tile that cannot be decoded is read in


def choose_backend(path: Path | str, backend: str = "auto") -> str:
    """Resolve ``auto`` to the backend that reads this file type best (tiffslide for a URL: OpenSlide reads
    local files only)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    if backend != "auto":
        return backend
    if is_url(path):
        return "tiffslide"
    return "tiffslide" if Path(path).suffix.lower() in TIFFSLIDE_SUFFIXES else "openslide"


class UnreadablePixelsError(InputError):
    """Pixels of a slide that cannot be decoded (a corrupt or truncated tile); the rest of it may be fine."""


class Slide:
    """An open whole-slide image with its µm/px and pyramid."""

    def __init__(
        self, path: str | Path, backend: str = "auto", mpp: float | None = None, jpeg_scaling: str = "auto"
    ) -> None:
        """Open ``path``: a slide file, a DICOM WSI series (a folder holding one, or any of its files), or a
        URL (``slide.remote``); ``jpeg_scaling`` (``JPEG_SCALINGS``) as the attribute of that name."""
        self.path: Path | str = path if is_url(path) else Path(path)
        self._file: IO[bytes] | None = None  # a remote slide's cached file
        self._fd: int | None = None  # the file, for reading JPEG tiles by position (reduced levels)
        self.backend = choose_backend(self.path, backend)
        if isinstance(self.path, str):
            if self.backend == "openslide":
                raise InputError(self.path, "OpenSlide reads local files only; use --backend tiffslide")
        elif not self.path.exists():
            raise InputError(self.path, "no such file")
        elif self.path.is_dir() and holds_dicom(self.path):
            self.path = series_of(self.path).path  # OpenSlide reads the series through any of its files
        elif self.path.is_dir():
            raise InputError(self.path, "is a folder, not a slide file")
        elif self.path.stat().st_size == 0:
            raise InputError(self.path, "empty file (0 bytes), not a slide")
        try:
            with _tifffile_errors() as tiff_errors:
                if self.backend == "openslide":
                    import openslide

                    self._handle = openslide.OpenSlide(str(self.path))
                else:
                    import tiffslide

                    if isinstance(self.path, str):
                        self._file = open_remote(self.path)
                    self._handle = tiffslide.TiffSlide(self._file or str(self.path))
                self.width0, self.height0 = (int(v) for v in self._handle.dimensions)
                self.level_dimensions = tuple((int(w), int(h)) for w, h in self._handle.level_dimensions)
                self.level_downsamples = tuple(float(d) for d in self._handle.level_downsamples)
                properties = dict(self._handle.properties)
            if tiff_errors:
                raise InputError(self.path, f"truncated or corrupt file ({tiff_errors[0]})")
        except InputError:
            raise
        except Exception as error:
            raise InputError(self.path, f"not a readable slide ({type(error).__name__}: {error})") from None
        self.mpp = float(mpp) if mpp is not None else self._mpp_from(properties)
        # written by this package's synthetic-slide writer (not real tissue)
        self.synthetic = str(properties.get("aperio.Synthetic", "")).strip() == "wsi_pipeline"
        self._jpeg_levels = self._find_jpeg_levels(properties)
        self._reduced = reduced_levels(self.level_downsamples, self._jpeg_levels)
        if self._reduced:
            self._fd = os.open(self.path, os.O_RDONLY)
        self.jpeg_scaling = jpeg_scaling

    def _find_jpeg_levels(self, properties: dict) -> dict[int, JpegLevel]:
        """The levels of a local file read by tiffslide whose tiles are JPEG that ``jpeg_scaled`` decodes."""
        if self.backend != "tiffslide" or isinstance(self.path, str):
            return {}
        if properties.get("tiffslide.series-axes") != "YXS":
            return {}
        series = self._handle.ts_tifffile.series[properties["tiffslide.series-index"]]
        found = {}
        for index, level in enumerate(series.levels):
            jpeg = jpeg_level(level.keyframe) if len(level.pages) == 1 else None
            if jpeg is not None and (jpeg.width, jpeg.height) == self.level_dimensions[index]:
                found[index] = jpeg
        return found

    @property
    def jpeg_scaling(self) -> str:
        """``auto``: the reduced levels take part in reads (``read_downsamples``); ``off``: only the file's
        levels. A slide without reduced levels (no JPEG-tiled level, openslide, a URL) is always ``off``.
        Set it before reading, not while other threads read."""
        return self._jpeg_scaling

    @jpeg_scaling.setter
    def jpeg_scaling(self, mode: str) -> None:
        if mode not in JPEG_SCALINGS:
            raise ValueError(f"JPEG scaling must be one of {JPEG_SCALINGS}, not {mode!r}")
        self._jpeg_scaling = mode if self._reduced else "off"
        reduced = self._reduced if self._jpeg_scaling == "auto" else ()
        # per read level (index): the file's level it is decoded from, at 1/k
        self.read_levels = tuple((level, 1) for level in range(len(self.level_downsamples))) + reduced
        self.read_downsamples = tuple(self.level_downsamples[level] * k for level, k in self.read_levels)

    def _mpp_from(self, properties: dict) -> float:
        values = []
        for axis in ("x", "y"):
            value = properties.get(f"{self.backend}.mpp-{axis}")
            try:
                values.append(float(value))
            except (TypeError, ValueError):
                raise InputError(self.path, "no µm/px (mpp) in the file; give it with --mpp") from None
        mpp_x, mpp_y = values
        if not (mpp_x > 0 and mpp_y > 0):
            raise InputError(self.path, f"invalid µm/px in the file ({mpp_x}, {mpp_y}); give it with --mpp")
        if abs(mpp_x - mpp_y) > _MPP_TOLERANCE * mpp_x:
            raise InputError(self.path, f"non-square pixels ({mpp_x} x {mpp_y} µm) are not supported")
        return (mpp_x + mpp_y) / 2

    def close(self) -> None:
        self._handle.close()
        if self._fd is not None:
            os.close(self._fd)
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def best_level(self, ds: float) -> int:
        """Index of the read level with the largest downsample not above ``ds`` (level-0 px per output px),
        give or take ``LEVEL_TOLERANCE``."""
        fits = [i for i, d in enumerate(self.read_downsamples) if d <= ds * (1 + LEVEL_TOLERANCE)]
        return max(fits, key=lambda i: self.read_downsamples[i]) if fits else 0

    def read_level(self, level: int, x_level: int, y_level: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 of a pixel box of a read level (a file's level, or a reduced one); parts outside the
        slide are white. They are the level's own pixels but for OpenSlide on a level whose downsample is not
        an integer, which samples between them, up to half a level-0 pixel away (bilinear; 1.5 from the 4097th
        pixel of a side on, which it reads as another piece placed by truncation). ``UnreadablePixelsError``
        when the file's data there cannot be decoded (an openslide handle, unusable after such an error, is
        reopened)."""
        out = np.full((height, width, 3), 255, np.uint8)
        file_level, k = self.read_levels[level]
        level_width, level_height = (side // k for side in self.level_dimensions[file_level])
        x0, y0 = max(x_level, 0), max(y_level, 0)
        x1, y1 = min(x_level + width, level_width), min(y_level + height, level_height)
        if x1 <= x0 or y1 <= y0:
            return out
        downsample, size = self.level_downsamples[file_level], (x1 - x0, y1 - y0)
        try:
            if k > 1:
                pixels = read_scaled(self._fd, self._jpeg_levels[file_level], k, x0, y0, *size)
            elif self.backend == "tiffslide":
                location = (_tiffslide_location(x0, downsample), _tiffslide_location(y0, downsample))
                pixels = self._handle.read_region(location, file_level, size, as_array=True)
            else:
                # OpenSlide blends the pixels around location / downsample: the nearest location blends least
                location = (round(x0 * downsample), round(y0 * downsample))
                pixels = np.asarray(self._handle.read_region(location, file_level, size))
        except Exception as error:
            if self.backend == "openslide":  # threads still reading the old handle keep it until they finish
                import openslide

                self._handle = openslide.OpenSlide(str(self.path))
            problem = f"cannot read pixels; truncated or corrupt file? ({type(error).__name__}: {error})"
            raise UnreadablePixelsError(self.path, problem) from None
        out[y0 - y_level : y1 - y_level, x0 - x_level : x1 - x_level] = _to_rgb_on_white(pixels)
        return out

    def read_rule(self, ds: float) -> int:
        """The first ``READ_RULE`` that reads ``ds`` level-0 px per output px as this one does, from its best
        level or those read where that cannot be decoded (``other_levels``): 1 unless tiffslide reads a file
        level whose downsample is not an integer."""
        levels = [self.read_levels[i] for i in (self.best_level(ds), *self.other_levels(ds))]
        uneven = any(k == 1 and not self.level_downsamples[level].is_integer() for level, k in levels)
        return READ_RULE if self.backend == "tiffslide" and uneven else 1

    def window(
        self, x0_out: float, y0_out: float, width_out: int, height_out: int, mpp_out: float, level: int | None
    ) -> Window:
        """The level pixels a read of an output box at ``mpp_out`` µm/px takes, from ``level`` (None: the
        best one, see ``best_level``)."""
        ds = mpp_out / self.mpp
        level = self.best_level(ds) if level is None else level
        scale = ds / self.read_downsamples[level]  # level-L pixels per output pixel (>= 1 unless upsampling)
        x0_level, y0_level = x0_out * scale, y0_out * scale
        x1_level, y1_level = (x0_out + width_out) * scale, (y0_out + height_out) * scale
        margin = math.ceil(max(scale, 1.0)) + 1  # room for the resampling kernel
        ix0, iy0 = math.floor(x0_level) - margin, math.floor(y0_level) - margin
        ix1, iy1 = math.ceil(x1_level) + margin, math.ceil(y1_level) + margin
        box = (x0_level - ix0, y0_level - iy0, x1_level - ix0, y1_level - iy0)
        return Window(level, ix0, iy0, ix1 - ix0, iy1 - iy0, box, scale, width_out, height_out)

    def read_window(self, window: Window) -> np.ndarray:
        """The level pixels of a window (``read_level``)."""
        return self.read_level(window.level, window.x, window.y, window.width, window.height)

    def read_at_mpp(
        self,
        x0_out: float,
        y0_out: float,
        width_out: int,
        height_out: int,
        mpp_out: float,
        level: int | None = None,
    ) -> np.ndarray:
        """RGB uint8 (height_out, width_out, 3) of output pixels at ``mpp_out`` µm/px.

        ``(x0_out, y0_out)`` is the box's corner in output pixels. Reads the pyramid level closest below the
        output resolution (or ``level``) once and resamples the rest of the way: nearest neighbour within
        ``NEAREST_TOLERANCE`` of the level's scale, else bilinear (antialiased when downsampling).
        """
        window = self.window(x0_out, y0_out, width_out, height_out, mpp_out, level)
        return window.resample(self.read_window(window))

    def read_in_parts(
        self, box: tuple[float, float, int, int, float], parts: Sequence[tuple[int, int, int, int]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """``read_at_mpp(*box)`` of a box whose level pixels cannot be decoded as one region: the pixels under
        each part (an output box ``x, y, width, height`` from the box's corner) are read alone, and the region
        they make up is resampled as a whole, so each part read is exactly as ``read_at_mpp`` gives it.

        Returns:
            The box's pixels (those of parts that could not be read are undefined) and, per part, whether
            its pixels could not be decoded.
        """
        x0_out, y0_out, _, _, mpp_out = box
        window = self.window(*box, None)
        region = np.full((window.height, window.width, 3), 255, np.uint8)
        unreadable = np.zeros(len(parts), bool)
        for index, (x, y, width, height) in enumerate(parts):
            part = self.window(x0_out + x, y0_out + y, width, height, mpp_out, window.level)
            try:
                pixels = self.read_window(part)
            except UnreadablePixelsError:
                unreadable[index] = True
                continue
            x0, y0 = part.x - window.x, part.y - window.y  # the part's pixels lie within the box's
            region[y0 : y0 + part.height, x0 : x0 + part.width] = pixels
        return window.resample(region), unreadable

    def other_levels(self, ds: float) -> list[int]:
        """The levels to read ``ds`` level-0 px per output px from when its best level cannot be decoded:
        the finer ones, closest first, then the coarser ones up to ``FALLBACK_MAX_UPSAMPLE`` × ``ds``."""
        best = self.best_level(ds)
        best_ds = self.read_downsamples[best]
        others = [(d, i) for i, d in enumerate(self.read_downsamples) if i != best]
        finer = sorted(((d, i) for d, i in others if d <= best_ds), reverse=True)
        coarser = sorted((d, i) for d, i in others if best_ds < d <= ds * FALLBACK_MAX_UPSAMPLE)
        return [i for _, i in finer + coarser]

    def read_elsewhere(
        self, x0_out: float, y0_out: float, width_out: int, height_out: int, mpp_out: float
    ) -> np.ndarray | None:
        """``read_at_mpp`` from the first of ``other_levels`` that can be decoded there; None if none can."""
        for level in self.other_levels(mpp_out / self.mpp):
            with contextlib.suppress(UnreadablePixelsError):
                return self.read_at_mpp(x0_out, y0_out, width_out, height_out, mpp_out, level)
        return None

    def thumbnail(self, mpp_out: float, tile_out: int = 2048) -> np.ndarray:
        """The whole slide at ``mpp_out`` µm/px, read tile by tile so memory stays bounded. Pieces of a tile
        that cannot be decoded are read from another level (``read_elsewhere``), or left white, with a
        warning."""
        ds = mpp_out / self.mpp
        width_out = max(1, round(self.width0 / ds))
        height_out = max(1, round(self.height0 / ds))
        out = np.empty((height_out, width_out, 3), np.uint8)
        elsewhere = unreadable = 0
        for y in range(0, height_out, tile_out):
            for x in range(0, width_out, tile_out):
                h, w = min(tile_out, height_out - y), min(tile_out, width_out - x)
                try:
                    out[y : y + h, x : x + w] = self.read_at_mpp(x, y, w, h, mpp_out)
                    continue
                except UnreadablePixelsError:
                    pass
                side = THUMBNAIL_PIECE
                pieces = [
                    (px, py, min(side, w - px), min(side, h - py))
                    for py in range(0, h, side)
                    for px in range(0, w, side)
                ]
                out[y : y + h, x : x + w], failed = self.read_in_parts((x, y, w, h, mpp_out), pieces)
                for px, py, pw, ph in itertools.compress(pieces, failed):
                    pixels = self.read_elsewhere(x + px, y + py, pw, ph, mpp_out)
                    out[y + py : y + py + ph, x + px : x + px + pw] = 255 if pixels is None else pixels
                    elsewhere += pixels is not None
                    unreadable += pixels is None
        if elsewhere or unreadable:
            _log.warning(
                "%s: pixels of the %g µm/px image could not be decoded: %d pieces of %d px read from another "
                "level, %d left white (no tissue)",
                self.path,
                mpp_out,
                elsewhere,
                THUMBNAIL_PIECE,
                unreadable,
            )
        return out


def _tiffslide_location(x_level: int, downsample: float) -> int:
    """The level-0 coordinate tiffslide's ``read_region`` reads level pixel ``x_level`` from: it truncates
    ``location / downsample``, so the first integer from ``x_level * downsample`` on (one more where that
    product's float rounding put it below)."""
    location = math.ceil(x_level * downsample)
    return location if int(location / downsample) >= x_level else location + 1


def reduced_levels(
    level_downsamples: Sequence[float], jpeg_levels: dict[int, JpegLevel]
) -> tuple[tuple[int, int], ...]:
    """The reduced levels (file level, k) of a pyramid, by increasing downsample: each JPEG-tiled level at 1/k
    for each k its tiles allow, unless the file or a coarser level gives that downsample within
    ``LEVEL_TOLERANCE`` (fewer bytes to decode)."""
    taken, found = list(level_downsamples), []
    for level in sorted(jpeg_levels, key=lambda i: -level_downsamples[i]):
        for k in jpeg_levels[level].scales:
            downsample = level_downsamples[level] * k
            if all(abs(downsample / d - 1) > LEVEL_TOLERANCE for d in taken):
                taken.append(downsample)
                found.append((downsample, (level, k)))
    return tuple(pair for _, pair in sorted(found))


@dataclass(frozen=True)
class Window:
    """The level pixels a read at some µm/px takes: a box of read level ``level`` (corner ``x, y``, ``width``
    × ``height``, with a margin for the resampling kernel) and, in its pixels, the output box ``box`` (x0, y0,
    x1, y1) of ``width_out`` × ``height_out`` output pixels, ``scale`` level pixels each."""

    level: int
    x: int
    y: int
    width: int
    height: int
    box: tuple[float, float, float, float]
    scale: float
    width_out: int
    height_out: int

    def resample(self, region: np.ndarray) -> np.ndarray:
        """The output pixels from the window's level pixels: nearest neighbour within ``NEAREST_TOLERANCE``
        of the level's scale, else bilinear (antialiased when downsampling)."""
        if abs(self.scale - 1.0) <= NEAREST_TOLERANCE:
            return resample_nearest(region, self.box, self.width_out, self.height_out)
        size = (self.width_out, self.height_out)
        return np.asarray(Image.fromarray(region).resize(size, Image.Resampling.BILINEAR, box=self.box))


def resample_nearest(
    region: np.ndarray, box: tuple[float, float, float, float], width: int, height: int
) -> np.ndarray:
    """(height, width) pixels over ``box`` (x0, y0, x1, y1, in region pixels), each the region pixel under its
    centre: PIL's NEAREST resize with a box, as two gathers of whole rows and columns."""
    x0, y0, x1, y1 = box
    cols = np.floor(x0 + (np.arange(width) + 0.5) * ((x1 - x0) / width)).astype(np.intp)
    rows = np.floor(y0 + (np.arange(height) + 0.5) * ((y1 - y0) / height)).astype(np.intp)
    return _gather_runs(_gather_runs(region, rows, axis=0), cols, axis=1)


def _gather_runs(array: np.ndarray, index: np.ndarray, axis: int) -> np.ndarray:
    """``np.take(array, index, axis)`` copied as slices, one per run of consecutive indices: near the level's
    scale the runs are long (a 3% change of scale skips or repeats one pixel in ~33), and slice copies of
    3-byte pixels are ~2.5× faster than ``take`` (the read path's nearest resample)."""
    starts = np.flatnonzero(np.diff(index, prepend=index[0] - 2) != 1)
    ends = np.append(starts[1:], len(index))
    shape = list(array.shape)
    shape[axis] = len(index)
    out = np.empty(shape, array.dtype)
    moved_out, moved_in = np.moveaxis(out, axis, 0), np.moveaxis(array, axis, 0)
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        source = int(index[start])
        moved_out[start:end] = moved_in[source : source + end - start]
    return out


def _to_rgb_on_white(pixels: np.ndarray) -> np.ndarray:
    """Drop alpha, compositing transparent (no-data) pixels onto white."""
    if pixels.shape[-1] == 3:
        return pixels
    rgb, alpha = pixels[..., :3], pixels[..., 3:]
    if alpha.min() == 255:
        return rgb
    weight = alpha.astype(np.float32) / 255.0
    return np.round(rgb * weight + 255.0 * (1.0 - weight)).astype(np.uint8)


@contextlib.contextmanager
def _tifffile_errors() -> Iterator[list[str]]:
    """Collect the errors tifffile logs (and otherwise prints) while parsing a file, e.g. bad page offsets."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    tiff_logger = logging.getLogger("tifffile")
    handler, propagate = Collect(logging.WARNING), tiff_logger.propagate
    tiff_logger.addHandler(handler)
    tiff_logger.propagate = False
    try:
        yield messages
    finally:
        tiff_logger.removeHandler(handler)
        tiff_logger.propagate = propagate

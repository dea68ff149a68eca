"""The review sheet ``<stem>.review.png``: the evidence behind a slide's answers, tile by tile.

The highest-scoring tiles first, each with its tumour probability, its region (numbered as in the summary, at
the report threshold) and its patch box in level-0 px; below them a row of borderline tiles, those whose
probability lies nearest the threshold. A slide without a region shows its top tiles all the same. With
``explain``, each tile has its Grad-CAM saliency of the tumour class (``Model.explain``) beside it as a
translucent overlay; a model Grad-CAM cannot explain gets a line saying why instead.

Tiles are read through the reader scoring uses (``Slide.read_at_mpp`` at the grid's µm/px, boxes from the
heatmap's grid), so they are the patches the model saw."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from wsi_pipeline.core.errors import InputError, SaliencyUnavailableError
from wsi_pipeline.findings.options import REVIEW_TILES
from wsi_pipeline.findings.overlay import PNG_COMPRESSION, overlay_title
from wsi_pipeline.findings.regions import Region, tumour_scores
from wsi_pipeline.findings.summary import answer_parts
from wsi_pipeline.model.predict import Model
from wsi_pipeline.slide.reader import Slide
from wsi_pipeline.store.heatmap import Heatmap
from wsi_pipeline.store.metadata import HeatmapRecord
from wsi_pipeline.tiling.patches import read_cell_patches

PANELS_PER_ROW = 8  # a tile takes one panel, a tile and its saliency two
PANEL_SIDE = 144  # px a tile is drawn at (PCam's 96 px at 1.5×)
PAIR_GAP, ITEM_GAP, MARGIN = 2, 12, 12  # px between a tile and its saliency, between tiles, around the sheet
HEADER, LABEL, CAPTION = 66, 20, 30  # px of the title, of a section's label, of the lines under a tile
SALIENCY_COLORMAP = "inferno"
SALIENCY_ALPHA = 0.65  # opacity of the saliency colour where the map is 1 (in proportion below)
SALIENCY_NOTE = (
    "saliency: Grad-CAM of {tumour} on the last convolutional stage, each map scaled to its maximum"
)


def review_cells(scores: np.ndarray, top: int, borderline: int, threshold: float) -> tuple[np.ndarray, ...]:
    """(rows, cols) of the ``top`` highest scored cells, highest first, and of the ``borderline`` others whose
    score is nearest ``threshold``, nearest first (ties in row-major order)."""
    rows, cols = np.nonzero(np.isfinite(scores))
    values = scores[rows, cols]
    highest = np.argsort(-values, kind="stable")[:top]
    others = np.setdiff1d(np.arange(len(values)), highest)
    nearest = others[np.argsort(np.abs(values[others] - threshold), kind="stable")[:borderline]]
    return rows[highest], cols[highest], rows[nearest], cols[nearest]


def region_numbers(shape: tuple[int, int], regions: list[Region]) -> np.ndarray:
    """Per grid cell, the number of its region (from 1, in the summary's order), 0 outside every region."""
    numbers = np.zeros(shape, np.int32)
    for number, region in enumerate(regions, start=1):
        numbers[region.cell_index] = number
    return numbers


def read_tiles(heatmap: Heatmap, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, str]:
    """The cells' patches read from the heatmap's slide as scoring read it (file, reader, µm/px, JPEG
    scaling), and a note; white patches and the reason when the slide cannot be read."""
    slide, grid = heatmap.metadata.slide, heatmap.grid
    try:
        with Slide(slide.path, slide.backend, slide.mpp, slide.jpeg_scaling) as opened:
            return read_cell_patches(opened, grid, rows, cols), ""
    except InputError as error:
        blank = np.full((len(rows), grid.patch_size, grid.patch_size, 3), 255, np.uint8)
        return blank, f"tiles not read ({error})"


@functools.lru_cache(maxsize=4)
def explaining_model(folder: str, weights_sha256: str) -> Model:
    """A model that scored a heatmap, loaded once per process on the CPU for Grad-CAM; refused
    (``SaliencyUnavailableError``) when its folder is gone or holds other weights than those that scored."""
    try:
        model = Model(folder, "cpu")
    except (InputError, ValueError) as error:
        raise SaliencyUnavailableError(f"the model cannot be loaded ({error})") from None
    if model.weights_sha256 != weights_sha256:
        raise SaliencyUnavailableError(f"{folder} holds other weights than those that scored the heatmap")
    return model


def explain_tiles(record: HeatmapRecord, tiles: np.ndarray) -> np.ndarray:
    """Grad-CAM maps (N, H, W) in [0, 1] of the tumour class for tiles of a heatmap, by the model that scored
    it (an ensemble's: the mean of its members' maps); ``SaliencyUnavailableError`` when there are none."""
    models = [explaining_model(model.folder, model.weights_sha256) for model in record.models]
    return np.mean([model.explain(tiles) for model in models], axis=0)


def tile_saliency(
    record: HeatmapRecord, tiles: np.ndarray, tumour_class: str
) -> tuple[np.ndarray | None, str]:
    """``explain_tiles`` and a line saying what the maps are, or None and why there are none."""
    try:
        return explain_tiles(record, tiles), SALIENCY_NOTE.format(tumour=tumour_class)
    except SaliencyUnavailableError as error:
        return None, f"saliency not available: {error}"


def saliency_overlay(tile: np.ndarray, saliency: np.ndarray) -> np.ndarray:
    """RGB uint8: the tile under the saliency's colour, opaque in proportion to the saliency (clear at 0)."""
    colours = colormaps[SALIENCY_COLORMAP](saliency)[..., :3] * 255
    weight = (SALIENCY_ALPHA * saliency)[..., None]
    return np.round(tile * (1 - weight) + colours * weight).astype(np.uint8)


def tile_caption(probability: float, region: int | None, box_level0: np.ndarray) -> str:
    """What a tile is: its tumour probability (NaN: not scored yet), region number (0: none; None: not
    said) and patch box in level-0 px."""
    x0, y0, x1, y1 = box_level0
    words = "not scored yet" if np.isnan(probability) else f"p {probability:.4f}"
    if region is not None:
        words += f" · region {region}" if region else " · no region"
    return f"{words}\nx {x0:.0f}–{x1:.0f}, y {y0:.0f}–{y1:.0f}"


def write_review(
    path: str | Path,
    heatmap: Heatmap,
    regions: list[Region],
    summary: dict,
    tiles: int = REVIEW_TILES,
    explain: bool = False,
) -> Path:
    """Write ``review_sheet``'s picture as a PNG."""
    review_sheet(heatmap, regions, summary, tiles, explain).image.save(
        path, format="png", compress_level=PNG_COMPRESSION
    )
    return Path(path)


@dataclass(frozen=True)
class Sheet:
    """A review sheet: its picture and the texts written on it, in order."""

    image: Image.Image
    texts: list[str]


def review_sheet(
    heatmap: Heatmap, regions: list[Region], summary: dict, tiles: int = REVIEW_TILES, explain: bool = False
) -> Sheet:
    """The review sheet of a heatmap (``regions`` and ``summary`` as the reports found them): its ``tiles``
    highest-scoring tiles and a row of borderline ones, each with its Grad-CAM saliency beside it if
    ``explain`` (or, where the model has none, a word saying so)."""
    grid, threshold = heatmap.grid, summary["threshold"]
    per_row = PANELS_PER_ROW // (2 if explain else 1)
    scores = tumour_scores(heatmap)
    top_rows, top_cols, near_rows, near_cols = review_cells(scores, tiles, per_row, threshold)
    rows, cols = np.r_[top_rows, near_rows], np.r_[top_cols, near_cols]
    pictures, note = read_tiles(heatmap, rows, cols)
    images: list[list[np.ndarray | None]] = [[tile] for tile in pictures]
    score, found, category = answer_parts(summary)
    facts = f"tiles {grid.patch_size} px at {grid.target_mpp:g} µm/px, boxes in level-0 px"
    if explain:
        maps, saliency_note = tile_saliency(heatmap.metadata, pictures, summary["tumour_class"])
        overlays = [None] * len(pictures) if maps is None else map(saliency_overlay, pictures, maps)
        images = [[tile, overlay] for tile, overlay in zip(pictures, overlays, strict=True)]
        facts += f"; {saliency_note}"
    numbers = region_numbers(grid.shape, regions)
    boxes = grid.cell_boxes_level0(rows, cols)
    captions = [
        tile_caption(scores[r, c], numbers[r, c], box) for r, c, box in zip(rows, cols, boxes, strict=True)
    ]
    title = [overlay_title(summary, note).split("\n")[0], f"{score} · {found}", category, facts]
    top = len(top_rows)
    top_label = f"The {top} highest {summary['tumour_class']} probabilities" if top else "No scored tiles"
    if top and not regions:
        top_label += f" (no region ≥ {threshold}: shown all the same)"
    sections = [
        (top_label, images[:top], captions[:top]),
        (f"Borderline: the probabilities nearest the threshold {threshold}", images[top:], captions[top:]),
    ]
    return _sheet("\n".join(title), sections, per_row, max(1, -(-top // per_row)))


def _sheet(
    title: str,
    sections: list[tuple[str, list[list[np.ndarray | None]], list[str]]],
    per_row: int,
    top_lines: int,
) -> Sheet:
    """Draw the title, then each section's label and its tiles (each a list of pictures side by side, None for
    "saliency not available", its caption below), ``per_row`` a row; the first section takes ``top_lines``
    rows, the second one. Drawn with PIL in matplotlib's font (a matplotlib figure's text took 3× as long)."""
    panels = PANELS_PER_ROW // per_row
    item_width = panels * PANEL_SIDE + (panels - 1) * PAIR_GAP
    row_height = PANEL_SIDE + CAPTION
    width = 2 * MARGIN + per_row * item_width + (per_row - 1) * ITEM_GAP
    height = HEADER + 2 * LABEL + (top_lines + 1) * row_height + MARGIN
    image = Image.new("RGB", (width, height), "white")
    draw, texts = ImageDraw.Draw(image), []

    def text(x: float, y: float, words: str, size: int, colour: str = "black") -> None:
        draw.multiline_text((x, y), words, fill=colour, font=_font(size), spacing=2)
        texts.append(words)

    text(MARGIN, 6, title, 11)
    y_label = HEADER
    for label, items, captions in sections:
        text(MARGIN, y_label + 4, label, 12)
        for place, (pictures, caption) in enumerate(zip(items, captions, strict=True)):
            x = MARGIN + (place % per_row) * (item_width + ITEM_GAP)
            y = y_label + LABEL + (place // per_row) * row_height
            for offset, picture in enumerate(pictures):
                left = x + offset * (PANEL_SIDE + PAIR_GAP)
                if picture is None:
                    text(left + 8, y + PANEL_SIDE // 2 - 12, "saliency\nnot available", 11, "grey")
                else:
                    image.paste(_panel(picture), (left, y))
            text(x, y + PANEL_SIDE + 2, caption, 10)
        y_label += LABEL + top_lines * row_height
    return Sheet(image, texts)


def _panel(picture: np.ndarray) -> Image.Image:
    return Image.fromarray(picture).resize((PANEL_SIDE, PANEL_SIDE), Image.Resampling.LANCZOS)


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans, the font of matplotlib's figures (it ships with matplotlib), ``size`` px high."""
    return ImageFont.truetype(str(Path(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")), size)

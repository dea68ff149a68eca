"""The picture a person looks at first: the slide thumbnail with the tumour heatmap blended over it, a colour
bar, and the tumour regions outlined (``<stem>.overlay.png``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from wsi_pipeline.core.errors import InputError
from wsi_pipeline.findings.regions import Region, tumour_scores
from wsi_pipeline.findings.summary import DEMONSTRATION_TITLE, NOT_ASSESSED, answer_parts
from wsi_pipeline.slide.reader import Slide
from wsi_pipeline.store.heatmap import Heatmap

# zlib level of the pictures: photographs hardly compress further, and level 6 takes 2-3× as long (the
# overlay of CMU-1 tiled: 0.37 s against 0.57-0.70 s to write, 14% larger)
PNG_COMPRESSION = 1

COLORMAP = "viridis"  # perceptually uniform; fixed range 0-1
HEATMAP_ALPHA = 0.5
OUTLINE_RGB = (0, 255, 255)  # cyan: not in viridis, nor in H&E
OUTLINE_WIDTH = 2
THUMBNAIL_MAX_SIDE = 1200  # px
DPI = 100
MARGINS = {"left": 10, "right": 110, "top": 60, "bottom": 10}  # px around the picture: colour bar, title
MIN_WIDTH = 640  # px, so the title fits


def slide_thumbnail(heatmap: Heatmap, max_side: int = THUMBNAIL_MAX_SIDE) -> tuple[np.ndarray, float, str]:
    """The slide at the µm/px that fits ``max_side`` (never finer than level 0), that µm/px, and a note; a
    white picture of the slide's size when the slide file cannot be opened."""
    grid = heatmap.grid
    mpp = max(grid.mpp0, max(grid.width0, grid.height0) * grid.mpp0 / max_side)
    try:
        with Slide(heatmap.metadata.slide.path, mpp=grid.mpp0) as slide:
            return slide.thumbnail(mpp), mpp, ""
    except InputError as error:
        scale = mpp / grid.mpp0
        shape = (max(1, round(grid.height0 / scale)), max(1, round(grid.width0 / scale)), 3)
        return np.full(shape, 255, np.uint8), mpp, f"slide not shown ({error})"


def compose_overlay(
    thumbnail: np.ndarray, mpp: float, heatmap: Heatmap, regions: list[Region], alpha: float = HEATMAP_ALPHA
) -> np.ndarray:
    """RGB uint8 of a thumbnail at ``mpp`` µm/px with each scored cell's square coloured by its tumour
    probability (unscored cells left clear) and the regions' outlines drawn."""
    grid = heatmap.grid
    scale = mpp / grid.mpp0  # level-0 px per thumbnail px
    rows_n, cols_n = grid.shape

    def cells_under(n_pixels: int, n_cells: int) -> np.ndarray:
        """Cell index under each thumbnail pixel's centre; ``n_cells`` (a NaN pad) outside the grid."""
        target = (np.arange(n_pixels) + 0.5) * scale / grid.ds  # pixel centres in target px
        index = np.floor((target - (grid.patch_size - grid.stride) / 2) / grid.stride).astype(np.int64)
        return np.where((index >= 0) & (index < n_cells), index, n_cells)

    scores = np.pad(tumour_scores(heatmap), ((0, 1), (0, 1)), constant_values=np.nan)
    colours = (colormaps[COLORMAP](np.nan_to_num(scores))[..., :3] * 255).astype(np.float32)
    weights = (alpha * np.isfinite(scores)[..., None]).astype(np.float32)
    under = np.ix_(cells_under(thumbnail.shape[0], rows_n), cells_under(thumbnail.shape[1], cols_n))
    colours, weight = colours[under], weights[under]
    image = Image.fromarray(np.round(thumbnail * (1 - weight) + colours * weight).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for region in regions:
        for polygon in region.polygons:
            for ring in polygon:
                draw.line([tuple(point) for point in ring / scale], fill=OUTLINE_RGB, width=OUTLINE_WIDTH)
    return np.asarray(image)


def write_overlay(path: str | Path, heatmap: Heatmap, regions: list[Region], summary: dict) -> Path:
    """Write the overlay PNG: the composed picture at one figure pixel per thumbnail pixel (placed
    ``MARGINS["left"]``, ``MARGINS["top"]`` from the corner), a colour bar, and a title with the answers."""
    thumbnail, mpp, note = slide_thumbnail(heatmap)
    picture = compose_overlay(thumbnail, mpp, heatmap, regions)
    height, width = picture.shape[:2]
    fig_width = max(MIN_WIDTH, width + MARGINS["left"] + MARGINS["right"])
    fig_height = height + MARGINS["top"] + MARGINS["bottom"]
    figure = Figure(figsize=(fig_width / DPI, fig_height / DPI), dpi=DPI)
    figure.figimage(picture, xo=MARGINS["left"], yo=MARGINS["bottom"], origin="upper")
    bar = figure.add_axes(
        (
            (MARGINS["left"] + width + 15) / fig_width,
            MARGINS["bottom"] / fig_height,
            16 / fig_width,
            height / fig_height,
        )
    )
    figure.colorbar(
        ScalarMappable(Normalize(0.0, 1.0), colormaps[COLORMAP]),
        cax=bar,
        label=f"probability of {summary['tumour_class']}",
    )
    title = overlay_title(summary, note)
    figure.text(MARGINS["left"] / fig_width, 1 - 6 / fig_height, title, va="top", ha="left", fontsize=8)
    figure.savefig(path, dpi=DPI, format="png", pil_kwargs={"compress_level": PNG_COMPRESSION})
    return Path(path)


def overlay_title(summary: dict, note: str = "") -> str:
    """The overlay's title: slide, model (and, where its sizes get no category, that it is a demonstration
    model), cell size, ``note``; then the answers of the summary."""
    score, regions, category = answer_parts(summary)
    model = " + ".join(model["name"] for model in summary["models"])
    if summary["category"] == NOT_ASSESSED:
        model += f" ({DEMONSTRATION_TITLE})"
    head = f"{Path(summary['slide']['path'] or '').name} · model {model} · "
    head += f"heatmap cell {summary['cell_size_um']:.0f} µm" + (f" · {note}" if note else "")
    return "\n".join([head, f"{score} · {regions} (outlined)", category])

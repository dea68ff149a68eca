"""Make the README's overlay picture: a slide thumbnail with its heatmap blended over it.

python docs/overlay_figure.py results/CMU-1-Small-Region.zarr docs/cmu_overlay.png
python docs/overlay_figure.py results/synthetic-node_19_000.zarr docs/synthetic_overlay.png --truth
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image, ImageDraw

from wsi_pipeline import Slide, read_heatmap
from wsi_pipeline.synthetic_sets import read_truth_polygons

THUMB_MPP = 4.0  # µm per thumbnail pixel


def overlay(heatmap_path: str, channel: int = -1, alpha: float = 0.5, truth: bool = False) -> Image.Image:
    """Thumbnail | thumbnail with each scored cell's probability (blue → red) blended over its square, and
    with ``truth`` the outlines of a synthetic slide's true metastases (green)."""
    heatmap = read_heatmap(heatmap_path)
    grid = heatmap.grid
    with Slide(heatmap.metadata["slide"]["path"], mpp=grid.mpp0) as slide:
        thumbnail = slide.thumbnail(THUMB_MPP)
    blended = thumbnail.astype(np.float32)
    values = heatmap.probabilities[channel]
    half_um = grid.cell_um / 2
    for row, col in zip(*np.nonzero(heatmap.tissue), strict=True):
        centre_y_um = grid.origin_um + row * grid.cell_um
        centre_x_um = grid.origin_um + col * grid.cell_um
        y0, y1 = (round((centre_y_um + s * half_um) / THUMB_MPP) for s in (-1, 1))
        x0, x1 = (round((centre_x_um + s * half_um) / THUMB_MPP) for s in (-1, 1))
        p = float(values[row, col])
        colour = np.array([255 * p, 64, 255 * (1 - p)], np.float32)
        blended[y0:y1, x0:x1] = (1 - alpha) * blended[y0:y1, x0:x1] + alpha * colour
    side_by_side = Image.fromarray(np.concatenate([thumbnail, blended.astype(np.uint8)], axis=1))
    if truth:
        draw = ImageDraw.Draw(side_by_side)
        offset_x = thumbnail.shape[1]
        for ring in read_truth_polygons(heatmap.metadata["slide"]["path"]):
            points = ring * grid.mpp0 / THUMB_MPP  # level-0 px → thumbnail px
            draw.line([(x + offset_x, y) for x, y in points], fill=(0, 220, 0), width=2)
    return side_by_side


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("heatmap")
    parser.add_argument("png")
    parser.add_argument("--truth", action="store_true", help="outline a synthetic slide's true metastases")
    args = parser.parse_args()
    overlay(args.heatmap, truth=args.truth).save(args.png)


if __name__ == "__main__":
    main()

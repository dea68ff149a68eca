"""Make the README's overlay picture: a slide thumbnail with its heatmap blended over it.

python docs/overlay_figure.py results/CMU-1-Small-Region.zarr docs/cmu_overlay.png
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image

from wsi_pipeline import Slide, read_heatmap

THUMB_MPP = 4.0  # µm per thumbnail pixel


def overlay(heatmap_path: str, channel: int = -1, alpha: float = 0.5) -> Image.Image:
    """Thumbnail | thumbnail with each scored cell's probability (blue → red) blended over its square."""
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
    side_by_side = np.concatenate([thumbnail, blended.astype(np.uint8)], axis=1)
    return Image.fromarray(side_by_side)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("heatmap")
    parser.add_argument("png")
    args = parser.parse_args()
    overlay(args.heatmap).save(args.png)


if __name__ == "__main__":
    main()

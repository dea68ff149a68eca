"""Tumour regions of a heatmap: thresholded cells, grouped into 8-connected regions and measured.

Each grid cell stands for the ``stride × stride`` target-pixel square centred on its patch (as NGFF viewers
draw it). The squares tile the slide on a *corner lattice*: lattice line ``k`` lies at level-0
``(k·stride + (patch − stride)/2)·ds`` px on either axis, so cell ``(row, col)`` spans lattice lines
``col … col+1`` by ``row … row+1``. Region sizes are therefore multiples of the cell (``stride · target_mpp``
µm wide): a heatmap cannot resolve anything smaller."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.measure import find_contours

from wsi_pipeline.core.classes import tumour_class_index
from wsi_pipeline.core.polygons import max_diameter, signed_area
from wsi_pipeline.store.heatmap import Heatmap
from wsi_pipeline.tiling.grid import PatchGrid

# Nodal metastasis size categories by the largest dimension (AJCC: ITC ≤ 0.2 mm, micrometastasis > 0.2 mm
# and ≤ 2 mm, macrometastasis > 2 mm). The cell-count criterion (> 200 cells) cannot be read from a heatmap.
ITC_MAX_MM = 0.2
MICRO_MAX_MM = 2.0
CATEGORIES = ("none", "isolated tumour cells", "micrometastasis", "macrometastasis")
_EIGHT_CONNECTED = np.ones((3, 3), bool)


@dataclass(frozen=True)
class Region:
    """One tumour region: its cells, measurements, and outline in level-0 pixels."""

    cells: int
    area_mm2: float  # cells × cell area
    diameter_mm: float  # largest distance between corners of its cell squares
    centroid_level0: tuple[float, float]  # (x, y), mean of its cell centres
    bbox_level0: tuple[float, float, float, float]  # (x0, y0, x1, y1) of its cell squares
    peak_probability: float
    mean_probability: float
    polygons: list[list[np.ndarray]]  # per polygon: closed rings [exterior (CCW in x/y), *holes (CW)]
    cell_index: tuple[np.ndarray, np.ndarray]  # (rows, cols) of its cells in the grid

    @property
    def category(self) -> str:
        return size_category(self.diameter_mm)


def size_category(diameter_mm: float | None) -> str:
    """Nodal size category of a region's longest diameter (``None``: no region)."""
    if diameter_mm is None:
        return CATEGORIES[0]
    if diameter_mm <= ITC_MAX_MM:
        return CATEGORIES[1]
    return CATEGORIES[2] if diameter_mm <= MICRO_MAX_MM else CATEGORIES[3]


def lattice_to_level0(grid: PatchGrid, k: np.ndarray | float) -> np.ndarray:
    """Level-0 position of corner-lattice coordinates (either axis); ``k + 0.5`` is a cell's centre."""
    return (np.asarray(k, np.float64) * grid.stride + (grid.patch_size - grid.stride) / 2) * grid.ds


def tumour_scores(heatmap: Heatmap) -> np.ndarray:
    """The tumour class's probabilities (rows, cols), NaN wherever the cell was not scored."""
    scores = heatmap.probabilities[tumour_class_index(heatmap.class_names)]
    return np.where(heatmap.tissue, scores, np.nan)


def find_regions(heatmap: Heatmap, threshold: float = 0.5) -> list[Region]:
    """Regions of scored cells whose tumour probability is at least ``threshold``, 8-connected, longest
    diameter first."""
    grid = heatmap.grid
    scores = tumour_scores(heatmap)
    with np.errstate(invalid="ignore"):
        labels, _ = ndimage.label(scores >= threshold, structure=_EIGHT_CONNECTED)
    regions = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        mask = labels[box] == index
        rows, cols = np.nonzero(mask)
        rows, cols = rows + box[0].start, cols + box[1].start
        values = scores[rows, cols]
        corner = np.array([box[1].start, box[0].start])
        lattice_polygons = [[ring + corner for ring in polygon] for polygon in outline(mask)]
        exteriors = np.concatenate([polygon[0] for polygon in lattice_polygons])
        regions.append(
            Region(
                cells=len(rows),
                area_mm2=len(rows) * (grid.cell_um / 1000) ** 2,
                diameter_mm=max_diameter(exteriors) * grid.cell_um / 1000,
                centroid_level0=(
                    float(lattice_to_level0(grid, cols + 0.5).mean()),
                    float(lattice_to_level0(grid, rows + 0.5).mean()),
                ),
                bbox_level0=tuple(
                    float(v)
                    for v in lattice_to_level0(
                        grid, np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
                    )
                ),
                peak_probability=float(values.max()),
                mean_probability=float(values.mean()),
                polygons=[[lattice_to_level0(grid, ring) for ring in rings] for rings in lattice_polygons],
                cell_index=(rows, cols),
            )
        )
    return sorted(regions, key=lambda region: (-region.diameter_mm, -region.cells))


def outline(mask: np.ndarray) -> list[list[np.ndarray]]:
    """The union of a mask's cell squares as polygons in corner-lattice (x, y): one per face-connected part,
    ``[exterior, *holes]``, rings closed, exterior counter-clockwise and holes clockwise (signed area in x/y
    as written). Parts touching only at a corner are separate polygons sharing that point."""
    parts, _ = ndimage.label(mask)
    polygons = []
    for index, box in enumerate(ndimage.find_objects(parts), start=1):
        part = parts[box] == index
        filled = ndimage.binary_fill_holes(part)
        holes, _ = ndimage.label(filled & ~part)
        offset = (box[1].start, box[0].start)
        rings = [_oriented(ring + offset, counter_clockwise=True) for ring in _rings(filled)]
        for hole_index, hole_box in enumerate(ndimage.find_objects(holes), start=1):
            hole_offset = (offset[0] + hole_box[1].start, offset[1] + hole_box[0].start)
            hole = holes[hole_box] == hole_index
            rings += [_oriented(ring + hole_offset, counter_clockwise=False) for ring in _rings(hole)]
        polygons.append(rings)
    return polygons


def _rings(mask: np.ndarray) -> list[np.ndarray]:
    """Boundaries of a mask's face-connected parts as closed rings of lattice corners (x, y).

    Marching squares on the mask upsampled 2× crosses each cell edge a quarter cell from a lattice line or
    corner, so rounding takes every contour point exactly to the corner lattice."""
    upsampled = np.kron(np.pad(mask, 1), np.ones((2, 2), np.float32))
    rings = []
    for contour in find_contours(upsampled, 0.5, fully_connected="low"):
        corners = np.round((contour[:, ::-1] + 0.5) / 2) - 1  # (x, y) lattice, padding removed
        corners = corners[np.r_[True, np.any(np.diff(corners, axis=0) != 0, axis=1)]]
        if (corners[0] == corners[-1]).all():
            corners = corners[:-1]
        before, after = corners - np.roll(corners, 1, axis=0), np.roll(corners, -1, axis=0) - corners
        corners = corners[before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0] != 0]  # drop straight runs
        rings.append(np.vstack([corners, corners[:1]]))
    return rings


def _oriented(ring: np.ndarray, counter_clockwise: bool) -> np.ndarray:
    return ring if (signed_area(ring) > 0) == counter_clockwise else ring[::-1]

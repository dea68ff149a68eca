"""Tumour regions of hand-made heatmaps: level-0 geometry, outlines, measurements, size categories."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_pipeline import Heatmap, PatchGrid, find_regions
from wsi_pipeline.core.polygons import points_in_polygons, signed_area
from wsi_pipeline.findings.regions import (
    CATEGORIES,
    lattice_to_level0,
    outline,
    size_category,
    tumour_class_index,
)
from wsi_pipeline.findings.summary import slide_summary, top_k_mean

from .conftest import heatmap_record

# PCam's geometry on a 0.5 µm/px scan: cells are 96 target px = 186.62 level-0 px = 93.312 µm wide
PCAM = PatchGrid(width0=6000, height0=4000, mpp0=0.5, target_mpp=0.972, patch_size=96, stride=96)
CELL_UM = 96 * 0.972


def heatmap(scores: np.ndarray, grid: PatchGrid = PCAM, tissue: np.ndarray | None = None) -> Heatmap:
    tissue = np.ones(scores.shape, bool) if tissue is None else tissue
    probs = np.stack([1 - scores, scores]).astype(np.float32)
    probs[:, ~tissue] = np.nan
    return Heatmap(probs, tissue, grid, ["normal", "tumour"], heatmap_record(grid))


def background(grid: PatchGrid = PCAM) -> np.ndarray:
    return np.full(grid.shape, 0.1)


@pytest.mark.parametrize("stride", [96, 32])
def test_lattice_maps_to_the_cell_squares_ngff_viewers_draw(stride):
    """Cell (r, c) is the stride × stride square centred on its patch; NGFF puts the value at its centre."""
    grid = PatchGrid(width0=6000, height0=4000, mpp0=0.5, target_mpp=0.972, patch_size=96, stride=stride)
    k = np.arange(5)
    centre = lattice_to_level0(grid, k + 0.5)
    np.testing.assert_allclose(centre, (k * stride + 48) * grid.ds)  # centre of patch k along an axis
    np.testing.assert_allclose(centre * grid.mpp0, grid.origin_um + k * grid.cell_um)  # NGFF transform, µm
    np.testing.assert_allclose(lattice_to_level0(grid, k + 1) - lattice_to_level0(grid, k), stride * grid.ds)
    # a single cell's region is exactly that square
    scores = background(grid)
    scores[2, 3] = 0.9
    (region,) = find_regions(heatmap(scores, grid))
    x0, x1 = lattice_to_level0(grid, np.array([3, 4]))
    y0, y1 = lattice_to_level0(grid, np.array([2, 3]))
    assert region.bbox_level0 == pytest.approx((x0, y0, x1, y1))
    ring = region.polygons[0][0]
    assert sorted(map(tuple, ring[:-1].round(6))) == sorted(
        map(tuple, np.round([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], 6))
    )
    assert region.centroid_level0 == pytest.approx(((3 * stride + 48) * grid.ds, (2 * stride + 48) * grid.ds))


def test_rectangle_region_measurements():
    scores = background()
    scores[4:7, 5:9] = 0.9  # 3 rows × 4 cols
    scores[5, 6] = 0.7
    scores[7, 9] = 0.6  # touches the block's corner: 8-connected, same region
    scores[0, 0] = 0.5  # exactly the threshold: a region of its own
    regions = find_regions(heatmap(scores))
    assert [r.cells for r in regions] == [13, 1]
    block = regions[0]
    assert block.area_mm2 == pytest.approx(13 * (CELL_UM / 1000) ** 2)
    # longest distance between cell corners: from (5, 4) to (10, 8) in lattice units
    assert block.diameter_mm == pytest.approx(np.hypot(5, 4) * CELL_UM / 1000)
    assert block.peak_probability == pytest.approx(0.9)
    assert block.mean_probability == pytest.approx((11 * 0.9 + 0.7 + 0.6) / 13, abs=1e-6)
    side = 96 * PCAM.ds
    assert block.bbox_level0 == pytest.approx((5 * side, 4 * side, 10 * side, 8 * side))
    centre_cols = np.r_[np.tile(np.arange(5, 9), 3), 9] + 0.5
    centre_rows = np.r_[np.repeat(np.arange(4, 7), 4), 7] + 0.5
    assert block.centroid_level0 == pytest.approx((centre_cols.mean() * side, centre_rows.mean() * side))
    # the corner cell is its own polygon, touching the block at one point
    assert len(block.polygons) == 2
    assert regions[1].bbox_level0 == pytest.approx((0, 0, side, side))


def test_unscored_cells_are_never_tumour():
    scores = np.full(PCAM.shape, 0.9)
    tissue = np.zeros(PCAM.shape, bool)
    tissue[1:3, 1:3] = True
    (region,) = find_regions(heatmap(scores, tissue=tissue))
    assert region.cells == 4


def _rings_containing(polygons, x, y):
    rings = [ring for polygon in polygons for ring in polygon]
    return sum(points_in_polygons([ring], x, y).astype(int) for ring in rings)


@pytest.mark.parametrize("seed", range(6))
def test_outline_is_exactly_the_union_of_the_cell_squares(seed):
    """Random masks with holes, islands in holes and corner contacts: outline rings are closed, on the
    lattice, oriented (exterior CCW, holes CW), and contain exactly the mask's cells."""
    rng = np.random.default_rng(seed)
    mask = rng.random((14, 17)) < 0.55
    polygons = outline(mask)
    total = 0.0
    for polygon in polygons:
        exterior, *holes = polygon
        assert signed_area(exterior) > 0 and all(signed_area(hole) < 0 for hole in holes)
        for ring in polygon:
            assert (ring[0] == ring[-1]).all() and len(ring) >= 5
            assert (ring == np.round(ring)).all()
            assert len({tuple(p) for p in ring[:-1]}) == len(ring) - 1  # simple: no vertex visited twice
            edges = np.diff(ring, axis=0)
            assert ((edges[:, 0] == 0) != (edges[:, 1] == 0)).all()  # axis-aligned, no zero-length edges
        total += sum(signed_area(ring) for ring in polygon)
    assert total == mask.sum()
    rows, cols = np.indices(mask.shape).reshape(2, -1)
    inside = _rings_containing(polygons, cols + 0.5, rows + 0.5) % 2 == 1  # even-odd over all rings
    np.testing.assert_array_equal(inside, mask[rows, cols])


def test_ring_with_a_hole_and_an_island_inside():
    mask = np.zeros((7, 7), bool)
    mask[1:6, 1:6] = True
    mask[2:5, 2:5] = False  # a 3 × 3 hole ...
    mask[3, 3] = True  # ... with a separate one-cell island in it (not 8-connected to the ring)
    ring_polygon, island = sorted(outline(mask), key=len, reverse=True)
    assert len(ring_polygon) == 2 and signed_area(ring_polygon[1]) == -9
    assert len(island) == 1 and signed_area(island[0]) == 1
    scores = background()
    scores[:7, :7][mask] = 0.9
    assert sorted(r.cells for r in find_regions(heatmap(scores))) == [1, 16]


@pytest.mark.parametrize(
    ("cells", "category"),
    [
        ([(3, 3)], "isolated tumour cells"),  # one cell: √2 × 93.3 = 132 µm
        ([(3, 3), (3, 4)], "micrometastasis"),  # two cells: √5 × 93.3 = 209 µm
        ([(3, c) for c in range(21)], "micrometastasis"),  # 21 cells in a row: 1,961 µm
        ([(3, c) for c in range(22)], "macrometastasis"),  # 22 cells: 2,055 µm
    ],
)
def test_size_category_of_cell_sized_cases(cells, category):
    scores = background()
    for row, col in cells:
        scores[row, col] = 0.95
    regions = find_regions(heatmap(scores))
    n = len(cells)
    assert regions[0].diameter_mm == pytest.approx(np.hypot(n, 1) * CELL_UM / 1000)
    assert regions[0].category == category
    summary = slide_summary(heatmap(scores), regions, 0.5, 10, "x.zarr")
    assert summary["category"] == category and summary["largest_diameter_mm"] == pytest.approx(
        regions[0].diameter_mm, abs=1e-4
    )


def test_category_thresholds_and_none():
    assert size_category(None) == "none" == CATEGORIES[0]
    assert size_category(0.2) == "isolated tumour cells"  # ITC: not greater than 0.2 mm
    assert size_category(0.2001) == "micrometastasis"
    assert size_category(2.0) == "micrometastasis" and size_category(2.0001) == "macrometastasis"
    summary = slide_summary(heatmap(background()), [], 0.5, 10, "x.zarr")
    assert summary["category"] == "none" and summary["region_count"] == 0 and summary["tumour_area_mm2"] == 0


def test_largest_region_is_the_one_with_the_longest_diameter():
    scores = background()
    scores[0:3, 0:3] = 0.9  # 9 cells, diameter √18 cells
    scores[8, 2:10] = 0.9  # 8 cells in a row, diameter √65 cells
    regions = find_regions(heatmap(scores))
    assert [r.cells for r in regions] == [8, 9]


def test_tumour_class_is_named_or_last():
    assert tumour_class_index(["normal", "tumor"]) == 1
    assert tumour_class_index(["Tumour", "stroma", "lymphocytes"]) == 0
    assert tumour_class_index(["light", "dark"]) == 1


def test_slide_scores_and_areas():
    scores = background()
    tissue = np.zeros(PCAM.shape, bool)
    tissue[2:8, 3:13] = True  # 60 scored cells
    scores[3, 4], scores[3, 5], scores[6, 10] = 0.99, 0.8, 0.6
    scores[0, 0] = 1.0  # not tissue: ignored
    hm = heatmap(scores, tissue=tissue)
    summary = slide_summary(hm, find_regions(hm), 0.5, 4, "x.zarr")
    cell_mm2 = (CELL_UM / 1000) ** 2
    assert summary["max_probability"] == pytest.approx(0.99)
    assert summary["top_k"] == 4 and summary["top_k_mean"] == pytest.approx((0.99 + 0.8 + 0.6 + 0.1) / 4)
    assert summary["scored_cells"] == 60 and summary["tissue_area_mm2"] == pytest.approx(60 * cell_mm2)
    assert summary["tumour_area_mm2"] == pytest.approx(3 * cell_mm2) and summary["region_count"] == 2
    assert summary["cell_size_um"] == pytest.approx(CELL_UM) and "93.3 µm" in summary["resolution_note"]
    assert top_k_mean(np.array([np.nan, 0.5, 0.3]), 10) == (pytest.approx(0.4), 2)  # fewer cells than k
    assert top_k_mean(np.full(3, np.nan), 10) == (None, 0)

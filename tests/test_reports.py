"""Reports beside the heatmap: summary, QuPath GeoJSON, overlay picture, tile table, and the batch table."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from datetime import datetime, timezone

import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image

from wsi_pipeline import PatchGrid, ReportOptions, Slide, find_regions, read_heatmap, write_reports
from wsi_pipeline.core.polygons import max_diameter, polygon_area, signed_area
from wsi_pipeline.evaluation.truth import cell_tumour_fraction
from wsi_pipeline.findings.overlay import (
    COLORMAP,
    HEATMAP_ALPHA,
    MARGINS,
    OUTLINE_RGB,
    compose_overlay,
    slide_thumbnail,
)
from wsi_pipeline.findings.regions import lattice_to_level0
from wsi_pipeline.findings.reports import report_paths
from wsi_pipeline.store.heatmap import HeatmapWriter
from wsi_pipeline.synthetic.scene import make_scene
from wsi_pipeline.synthetic.sets import read_truth_polygons, write_synthetic_slide
from wsi_pipeline.tiling.grid import Block, tissue_fraction
from wsi_pipeline.tiling.tissue import detect_tissue

from .conftest import heatmap_record

try:  # an independent validity check when shapely happens to be installed (not a dependency)
    from shapely.geometry import shape as shapely_shape
except ImportError:
    shapely_shape = None

GRID = PatchGrid(width0=3000, height0=2400, mpp0=0.5, target_mpp=0.972, patch_size=96, stride=96)
SIDE = 96 * GRID.ds  # a cell's side in level-0 px (stride = patch)
# the probe's dark rectangle covering exactly the cell squares of cols 5-8, rows 4-6
DARK_CELLS = (5 * SIDE, 4 * SIDE, 9 * SIDE, 7 * SIDE)


# -------------------------------------------------------------- a GeoJSON checker (RFC 7946 + QuPath layout)


def _orient(a, b, c) -> float:
    return np.sign((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]))


def _segments_touch(p1, p2, q1, q2) -> bool:
    d1, d2, d3, d4 = _orient(q1, q2, p1), _orient(q1, q2, p2), _orient(p1, p2, q1), _orient(p1, p2, q2)
    if d1 == d2 == d3 == d4 == 0:  # collinear: do their extents overlap?
        return all(
            max(min(p1[i], p2[i]), min(q1[i], q2[i])) <= min(max(p1[i], p2[i]), max(q1[i], q2[i]))
            for i in (0, 1)
        )
    return d1 * d2 <= 0 and d3 * d4 <= 0


def _is_simple(ring: np.ndarray) -> bool:
    """No two non-adjacent edges of the closed ring touch."""
    n = len(ring) - 1
    return not any(
        _segments_touch(ring[i], ring[i + 1], ring[j], ring[j + 1])
        for i in range(n)
        for j in range(i + 2, n)
        if not (i == 0 and j == n - 1)
    )


def _reject(constant: str):
    raise ValueError(f"{constant} is not JSON")


def check_geojson(text: str) -> dict:
    """Parse and check a GeoJSON text: a FeatureCollection of Polygon/MultiPolygon features with closed,
    simple, finite rings (at least 4 positions), exteriors counter-clockwise and holes clockwise inside their
    exterior's bounds; QuPath's properties (objectType, classification name and [r, g, b], numeric
    measurements)."""
    doc = json.loads(text, parse_constant=_reject)
    assert doc["type"] == "FeatureCollection" and isinstance(doc["features"], list)
    for feature in doc["features"]:
        assert feature["type"] == "Feature"
        geometry, properties = feature["geometry"], feature["properties"]
        assert geometry["type"] in ("Polygon", "MultiPolygon")
        polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
        assert geometry["type"] == "Polygon" or len(polygons) > 1  # QuPath: one part is a Polygon
        for polygon in polygons:
            rings = [np.asarray(ring, float) for ring in polygon]
            for index, ring in enumerate(rings):
                assert ring.ndim == 2 and ring.shape[1] == 2 and len(ring) >= 4
                assert np.isfinite(ring).all() and (ring[0] == ring[-1]).all()
                assert (signed_area(ring) > 0) == (index == 0), "exterior CCW, holes CW"
                assert _is_simple(ring)
                assert (ring.min(0) >= rings[0].min(0)).all() and (ring.max(0) <= rings[0].max(0)).all()
        if shapely_shape is not None:
            assert shapely_shape(geometry).is_valid
        assert properties["objectType"] in ("annotation", "detection")
        assert isinstance(properties["name"], str)
        measurements = properties["measurements"]
        assert all(type(value) in (int, float) for value in measurements.values())
        if "classification" in properties:
            colour = properties["classification"]["color"]
            assert isinstance(properties["classification"]["name"], str)
            assert len(colour) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in colour)
    return doc


def _feature(coordinates, kind="Polygon") -> dict:
    return {
        "type": "Feature",
        "geometry": {"type": kind, "coordinates": coordinates},
        "properties": {"objectType": "annotation", "name": "x", "measurements": {}},
    }


@pytest.mark.parametrize(
    "bad",
    [
        [[[0, 0], [1, 0], [1, 1], [0, 1]]],  # open ring
        [[[0, 0], [0, 1], [1, 1], [1, 0], [0, 0]]],  # clockwise exterior
        [[[0, 0], [2, 0], [0, 2], [2, 2], [0, 0]]],  # bow tie
        [[[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]], [[1, 1], [2, 1], [2, 2], [1, 2], [1, 1]]],  # CCW hole
    ],
    ids=["open", "clockwise", "bow-tie", "ccw-hole"],
)
def test_geojson_checker_rejects_invalid_polygons(bad):
    collection = {"type": "FeatureCollection", "features": [_feature(bad)]}
    with pytest.raises(AssertionError):
        check_geojson(json.dumps(collection))


def test_geojson_checker_rejects_nan_and_single_part_multipolygons():
    square = [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]
    good = {"type": "FeatureCollection", "features": [_feature(square)]}
    check_geojson(json.dumps(good))
    with pytest.raises(ValueError, match="NaN"):
        check_geojson(json.dumps(good).replace("[1, 1]", "[NaN, 1]"))
    with pytest.raises(AssertionError):
        check_geojson(
            json.dumps({"type": "FeatureCollection", "features": [_feature([square], "MultiPolygon")]})
        )


# ------------------------------------------------------- a synthetic slide with truth and a hand-made heatmap


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict:
    """A synthetic node (one ~300 µm metastasis) and a heatmap written by the real writer: 0.95 on tissue
    cells at least half inside the truth, 0.7 on one lone cell (an ITC-sized region), 0.05 on other tissue."""
    folder = tmp_path_factory.mktemp("synthetic")
    slide_path = folder / "node.svs"
    write_synthetic_slide(slide_path, make_scene(GRID.width0, GRID.height0, GRID.mpp0, 1, 1, (250, 600)))
    with Slide(slide_path) as slide:
        tissue = tissue_fraction(GRID, detect_tissue(slide.thumbnail(8.0), 8.0)) >= 0.5
    truth = read_truth_polygons(slide_path)
    tumour = (cell_tumour_fraction(GRID, truth) >= 0.5) & tissue
    scores = np.where(tumour, 0.95, 0.05)
    rows, cols = np.nonzero(tissue)
    tumour_rows, tumour_cols = np.nonzero(tumour)
    far = (np.abs(rows[:, None] - tumour_rows).min(1) > 2) | (np.abs(cols[:, None] - tumour_cols).min(1) > 2)
    lone = (rows[far][0], cols[far][0])
    scores[lone] = 0.7
    probabilities = np.stack([1 - scores, scores]).astype(np.float32)
    probabilities[:, ~tissue] = np.nan
    heatmap_path = folder / "out" / "node.zarr"
    metadata = heatmap_record(GRID, slide_path)
    writer = HeatmapWriter(heatmap_path, GRID, ["normal", "tumour"], max(GRID.shape), metadata)
    writer.write_tissue(tissue)
    writer.write_block(Block(0, 0, *GRID.shape), probabilities)
    writer.finalise(patches_scored=int(tissue.sum()), finished=datetime.now(timezone.utc).isoformat())
    return {"heatmap": heatmap_path, "truth": truth, "tumour": tumour, "tissue": tissue, "lone": lone}


def test_regions_match_the_truth_within_a_cell(synthetic):
    heatmap = read_heatmap(synthetic["heatmap"])
    metastasis, lone = find_regions(heatmap)
    (ring,) = synthetic["truth"]
    cell_px, cell_um = SIDE, GRID.cell_um
    # exact against the cells we set
    assert metastasis.cells == synthetic["tumour"].sum() and lone.cells == 1
    assert metastasis.area_mm2 == pytest.approx(synthetic["tumour"].sum() * (cell_um / 1000) ** 2)
    assert metastasis.peak_probability == pytest.approx(0.95) and lone.peak_probability == pytest.approx(0.7)
    row, col = synthetic["lone"]
    assert lone.bbox_level0 == pytest.approx((col * SIDE, row * SIDE, (col + 1) * SIDE, (row + 1) * SIDE))
    # against the truth polygon, within one cell: centroid and bounding box sides within one cell, longest
    # diameter within a cell's diagonal, area within a band of half a cell around the outline
    truth_centre = ring[:-1].mean(axis=0)
    assert np.hypot(*(np.array(metastasis.centroid_level0) - truth_centre)) <= cell_px
    truth_box = np.r_[ring.min(axis=0), ring.max(axis=0)]
    assert np.abs(np.array(metastasis.bbox_level0) - truth_box).max() <= cell_px
    truth_diameter_um = max_diameter(ring) * GRID.mpp0
    assert abs(metastasis.diameter_mm * 1000 - truth_diameter_um) <= np.sqrt(2) * cell_um
    perimeter_um = np.hypot(*np.diff(ring, axis=0).T).sum() * GRID.mpp0
    truth_area_um2 = polygon_area(ring) * GRID.mpp0**2
    assert abs(metastasis.area_mm2 * 1e6 - truth_area_um2) <= perimeter_um * cell_um / 2
    assert metastasis.category == "micrometastasis" and lone.category == "isolated tumour cells"


def test_write_reports_beside_the_heatmap(synthetic):
    heatmap = read_heatmap(synthetic["heatmap"])
    summary = write_reports(synthetic["heatmap"], ReportOptions(top_k=5, tile_table=True, geojson_tiles=True))
    paths = report_paths(synthetic["heatmap"])
    assert {p.name for p in paths.values()} == {
        "node.summary.json",
        "node.geojson",
        "node.overlay.png",
        "node.review.png",
        "node.tiles.csv",
    }
    assert all(path.is_file() for path in paths.values())
    assert json.loads(paths["summary"].read_text()) == summary
    assert summary["schema"] == "wsi_pipeline.summary" and summary["schema_version"] == 2
    assert (summary["threshold"], summary["top_k"]) == (0.5, 5)
    assert summary["models"] == [{"name": "hand-made", "weights_sha256": "0" * 64, "source": None}]
    assert (summary["model_intended_use"], summary["demonstration_model"]) == ("not stated", False)
    assert summary["top_k_mean"] == pytest.approx(0.95) and summary["max_probability"] == pytest.approx(0.95)
    assert summary["scored_cells"] == synthetic["tissue"].sum() and summary["region_count"] == 2
    assert summary["category"] == "micrometastasis" and "not a diagnosis" in summary["category_note"]
    first = summary["regions"][0]
    assert set(first) == {
        "id",
        "category",
        "cells",
        "area_mm2",
        "diameter_mm",
        "centroid_level0",
        "bbox_level0",
        "peak_probability",
        "mean_probability",
    }
    assert first["bbox_level0"] == pytest.approx(find_regions(heatmap)[0].bbox_level0, abs=0.01)

    doc = check_geojson(paths["geojson"].read_text())
    annotations = [f for f in doc["features"] if f["properties"]["objectType"] == "annotation"]
    detections = [f for f in doc["features"] if f["properties"]["objectType"] == "detection"]
    assert len(annotations) == 2 and len(detections) == synthetic["tissue"].sum()
    props = annotations[0]["properties"]
    assert props["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
    assert "micrometastasis" in props["name"] and "not a diagnosis" in props["name"]
    assert (
        props["measurements"]["area_mm2"] == first["area_mm2"]
        and props["measurements"]["cells"] == first["cells"]
    )
    assert polygon_area(np.array(annotations[0]["geometry"]["coordinates"][0])) == pytest.approx(
        first["cells"] * SIDE**2, rel=1e-5
    )
    values = sorted(d["properties"]["measurements"]["prob_tumour"] for d in detections)
    assert values[-synthetic["tumour"].sum() :] == pytest.approx([0.95] * synthetic["tumour"].sum())
    assert all(
        sum(d["properties"]["measurements"].values()) == pytest.approx(1.0, abs=1e-5) for d in detections
    )

    with paths["tiles"].open(newline="") as file:
        tiles = list(csv.DictReader(file))
    assert len(tiles) == GRID.shape[0] * GRID.shape[1]
    assert sum(int(t["scored"]) for t in tiles) == synthetic["tissue"].sum()
    row, col = synthetic["lone"]
    lone = next(t for t in tiles if (int(t["row"]), int(t["col"])) == (row, col))
    assert float(lone["prob_tumour"]) == pytest.approx(0.7) and float(lone["prob_normal"]) == pytest.approx(
        0.3
    )
    assert [float(lone[f"patch_{k}_level0"]) for k in ("x0", "y0", "x1", "y1")] == pytest.approx(
        GRID.cell_boxes_level0(np.array([row]), np.array([col]))[0], abs=0.01
    )
    unscored = next(t for t in tiles if t["scored"] == "0")
    assert unscored["prob_tumour"] == "" and "tissue_fraction" not in unscored


def test_overlay_shows_the_heatmap_and_outlines_over_the_thumbnail(synthetic):
    heatmap = read_heatmap(synthetic["heatmap"])
    regions = find_regions(heatmap)
    write_reports(synthetic["heatmap"])
    png = np.asarray(Image.open(report_paths(synthetic["heatmap"])["overlay"]).convert("RGB")).astype(int)
    thumbnail, mpp, note = slide_thumbnail(heatmap)
    assert note == "" and (thumbnail < 250).any()  # the real slide, not a blank stand-in
    picture = compose_overlay(thumbnail, mpp, heatmap, regions).astype(int)
    height, width = picture.shape[:2]
    assert png.shape == (
        height + MARGINS["top"] + MARGINS["bottom"],
        width + MARGINS["left"] + MARGINS["right"],
        3,
    )
    # the picture sits in the PNG pixel for pixel
    top, left = MARGINS["top"], MARGINS["left"]
    np.testing.assert_array_equal(png[top : top + height, left : left + width], picture)
    scale = mpp / GRID.mpp0  # level-0 px per picture px

    def at(x_level0: float, y_level0: float) -> tuple[int, int]:
        return int(y_level0 / scale), int(x_level0 / scale)

    # over the metastasis: viridis(0.95) blended over the slide
    y, x = at(*regions[0].centroid_level0)
    expected = (1 - HEATMAP_ALPHA) * thumbnail[y, x] + HEATMAP_ALPHA * np.array(
        colormaps[COLORMAP](0.95)[:3]
    ) * 255
    np.testing.assert_allclose(picture[y, x], expected, atol=1.5)
    # an unscored cell (background) is left clear
    rows, cols = np.nonzero(~heatmap.tissue)
    y, x = at(*(lattice_to_level0(GRID, np.array([cols[0], rows[0]]) + 0.5)))
    np.testing.assert_array_equal(picture[y, x], thumbnail[y, x])
    # the outline is drawn along the region's left side (a couple of pixels wide)
    x0, y0, x1, y1 = regions[0].bbox_level0
    y, x = at((x0 + x1) / 2, (y0 + y1) / 2)
    column = int(x0 / scale)
    strip = picture[y, column - 2 : column + 3]
    assert (strip == OUTLINE_RGB).all(axis=1).any()
    above = int(min(region.bbox_level0[1] for region in regions) / scale) - 3
    assert not (picture == OUTLINE_RGB).all(axis=2)[:above].any()  # and nowhere above the regions
    # the colour bar (right margin) runs through viridis up to its top colour
    bar = png[top:, left + width :]
    assert (np.abs(bar - np.array(colormaps[COLORMAP](1.0)[:3]) * 255).max(axis=2) < 3).any()


def test_overlay_without_the_slide_file_draws_on_white(synthetic):
    heatmap = read_heatmap(synthetic["heatmap"])
    slide = replace(heatmap.metadata.slide, path="/nowhere/node.svs")
    moved = replace(heatmap, metadata=replace(heatmap.metadata, slide=slide))
    thumbnail, _, note = slide_thumbnail(moved)
    assert "no such file" in note and (thumbnail == 255).all()

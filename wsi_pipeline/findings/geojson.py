"""Tumour regions (and optionally every scored tile) as GeoJSON that QuPath imports by drag and drop.

Layout as QuPath (v0.4 and later) writes and reads it: a ``FeatureCollection`` whose features carry
``properties.objectType`` (``annotation`` or ``detection``), ``name``, ``classification`` (``name`` and
``color`` as ``[r, g, b]``) and ``measurements`` as a flat object of numbers. Coordinates are level-0 pixels
from the slide's top-left corner (QuPath's image space). Per RFC 7946 rings are closed, exteriors
counter-clockwise and holes clockwise (in x/y as written); a region of one part is a ``Polygon``, else a
``MultiPolygon`` (QuPath wants a single part as a ``Polygon``)."""

from __future__ import annotations

import numpy as np

from wsi_pipeline.findings.regions import Region, lattice_to_level0
from wsi_pipeline.findings.summary import category_words, region_record, reported_category
from wsi_pipeline.store.heatmap import Heatmap

TUMOUR_CLASSIFICATION = {"name": "Tumor", "color": [200, 0, 0]}  # QuPath's built-in Tumor class
REGION_MEASUREMENTS = ("cells", "area_mm2", "diameter_mm", "peak_probability", "mean_probability")


def geometry(polygons: list[list[np.ndarray]]) -> dict:
    """GeoJSON geometry of polygons given as lists of closed (n, 2) rings, ``[exterior, *holes]``."""
    coordinates = [[ring.round(2).tolist() for ring in polygon] for polygon in polygons]
    if len(coordinates) == 1:
        return {"type": "Polygon", "coordinates": coordinates[0]}
    return {"type": "MultiPolygon", "coordinates": coordinates}


def region_feature(number: int, region: Region, category: str) -> dict:
    """A region as a QuPath ``Tumor`` annotation with its measurements, named with its reported category."""
    record = region_record(number, region, category)
    return {
        "type": "Feature",
        "geometry": geometry(region.polygons),
        "properties": {
            "objectType": "annotation",
            "name": f"Tumour region {number}: {category_words(category)}",
            "classification": TUMOUR_CLASSIFICATION,
            "measurements": {key: record[key] for key in REGION_MEASUREMENTS},
        },
    }


def tile_features(heatmap: Heatmap) -> list[dict]:
    """Every scored cell as a QuPath detection (its cell square) measured by its class probabilities."""
    grid = heatmap.grid
    rows, cols = np.nonzero(heatmap.tissue)
    x0, x1 = lattice_to_level0(grid, cols).round(2), lattice_to_level0(grid, cols + 1).round(2)
    y0, y1 = lattice_to_level0(grid, rows).round(2), lattice_to_level0(grid, rows + 1).round(2)
    probabilities = heatmap.probabilities[:, rows, cols].astype(np.float64).round(6)
    names = [f"prob_{name}" for name in heatmap.class_names]
    return [
        {
            "type": "Feature",
            "geometry": {
                "type": "Polygon",
                "coordinates": [
                    [[x0[i], y0[i]], [x1[i], y0[i]], [x1[i], y1[i]], [x0[i], y1[i]], [x0[i], y0[i]]]
                ],
            },
            "properties": {
                "objectType": "detection",
                "name": f"tile r{rows[i]} c{cols[i]}",
                "measurements": dict(zip(names, probabilities[:, i].tolist(), strict=True)),
            },
        }
        for i in range(len(rows))
    ]


def qupath_geojson(heatmap: Heatmap, regions: list[Region], tiles: bool = False) -> dict:
    """The regions as annotations, and with ``tiles`` every scored tile as a detection."""
    features = [
        region_feature(number, region, reported_category(heatmap.metadata, region.diameter_mm))
        for number, region in enumerate(regions, start=1)
    ]
    return {"type": "FeatureCollection", "features": features + (tile_features(heatmap) if tiles else [])}

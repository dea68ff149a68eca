"""napari layer data for slides and heatmaps, all in micrometres from the slide's top-left corner.

World space is (y, x) µm. Level-0 pixel ``i`` covers ``[i·mpp, (i+1)·mpp)`` µm, so a slide layer has
``scale = mpp`` and ``translate = mpp/2`` (napari places a value at its pixel's centre). A heatmap cell sits
at its patch's centre: ``scale = stride·target_mpp``, ``translate = patch/2·target_mpp``, as in the NGFF
store. Region outlines are given in µm directly (layer scale 1)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import dask.array as da
import numpy as np
from npe2.types import LayerData

from wsi_pipeline.core.classes import tumour_class_index
from wsi_pipeline.findings.regions import Region, find_regions
from wsi_pipeline.findings.summary import reported_category
from wsi_pipeline.scoring.worker import SlideSource, worker_slide
from wsi_pipeline.slide.reader import Slide
from wsi_pipeline.store.heatmap import Heatmap

if TYPE_CHECKING:
    from napari import Viewer
    from napari.layers import Image, Shapes


UNITS = ("micrometer", "micrometer")
AXES = ("y", "x")
SLIDE_KEY = "wsi_pipeline_slide"  # layer.metadata key: the slide's path
HEATMAP_KEY = "wsi_pipeline_heatmap"  # layer.metadata key: the Heatmap shown (kept in memory, grid-sized)
THRESHOLD_KEY = "wsi_pipeline_threshold"  # layer.metadata key: the threshold the regions were found at
TILE = 512  # level pixels per side of a dask chunk of a slide level
HEATMAP_OPACITY = 0.6


def _read_chunk(source: SlideSource, level: int, block_info: dict) -> np.ndarray:
    """One chunk of a slide level, read through this process's open handle on the slide."""
    (y0, y1), (x0, x1), _ = block_info[None]["array-location"]
    with worker_slide(source) as slide:
        return slide.read_level(level, x0, y0, x1 - x0, y1 - y0)


def slide_levels(slide: Slide) -> list[da.Array]:
    """One lazy (height, width, 3) uint8 array per pyramid level, in ``TILE``² chunks of one read each.

    The graph holds only the slide's path (any scheduler, even a distributed client, can compute it)."""
    source = SlideSource(str(slide.path.resolve()), slide.backend, slide.mpp, jpeg_scaling=slide.jpeg_scaling)
    levels = []
    for level, (width, height) in enumerate(slide.level_dimensions):
        chunks = (*da.core.normalize_chunks((TILE, TILE), (height, width)), (3,))
        meta = np.empty((0, 0, 0), np.uint8)
        levels.append(
            da.map_blocks(_read_chunk, chunks=chunks, dtype=np.uint8, meta=meta, source=source, level=level)
        )
    return levels


def slide_layer(slide: Slide) -> LayerData:
    """A lazy multiscale RGB image layer of a slide (which need not stay open)."""
    mpp = slide.mpp
    meta = {
        "name": slide.path.stem,
        "rgb": True,
        "multiscale": True,
        "contrast_limits": (0, 255),
        "scale": (mpp, mpp),
        "translate": (mpp / 2, mpp / 2),
        "units": UNITS,
        "axis_labels": AXES,
        "metadata": {SLIDE_KEY: str(slide.path)},
    }
    return slide_levels(slide), meta, "image"


def _cell_geometry(heatmap: Heatmap) -> dict:
    grid = heatmap.grid
    return {
        "scale": (grid.cell_um, grid.cell_um),
        "translate": (grid.origin_um, grid.origin_um),
        "units": UNITS,
        "axis_labels": AXES,
    }


def tumour_name(heatmap: Heatmap) -> str:
    return heatmap.class_names[tumour_class_index(heatmap.class_names)]


def heatmap_layers(heatmap: Heatmap, threshold: float, name: str) -> list[LayerData]:
    """Tissue labels (hidden), the tumour probability (a view into ``heatmap.probabilities``) and the regions
    at ``threshold``. The probability and regions layers keep ``heatmap`` in their metadata."""
    tissue = (
        heatmap.labels,
        {**_cell_geometry(heatmap), "name": f"{name} tissue", "visible": False, "opacity": 0.4},
        "labels",
    )
    probability = (
        heatmap.probabilities[tumour_class_index(heatmap.class_names)],
        {
            **_cell_geometry(heatmap),
            "name": f"{name} {tumour_name(heatmap)} probability",
            "colormap": "viridis",
            "contrast_limits": (0.0, 1.0),
            "opacity": HEATMAP_OPACITY,
            "metadata": {HEATMAP_KEY: heatmap, THRESHOLD_KEY: threshold},
        },
        "image",
    )
    return [tissue, probability, regions_layer(heatmap, find_regions(heatmap, threshold), f"{name} regions")]


def region_shapes(heatmap: Heatmap, regions: list[Region]) -> tuple[list[np.ndarray], dict[str, list]]:
    """Outline rings of the regions as (y, x) µm polygons, and one feature row per ring (the region's
    measurements; the label only on its first ring, so each region is named once)."""
    mpp0 = heatmap.grid.mpp0
    rings, features = [], {"region": [], "area_mm2": [], "diameter_mm": [], "category": [], "label": []}
    for number, region in enumerate(regions, start=1):
        region_rings = [ring for polygon in region.polygons for ring in polygon]
        for index, ring in enumerate(region_rings):
            rings.append(ring[:-1, ::-1] * mpp0)  # closed (x, y) level-0 px → open (y, x) µm
            features["region"].append(number)
            features["area_mm2"].append(region.area_mm2)
            features["diameter_mm"].append(region.diameter_mm)
            features["category"].append(reported_category(heatmap.metadata, region.diameter_mm))
            label = f"{number}: {region.diameter_mm:.2f} mm, {region.area_mm2:.3f} mm²"
            features["label"].append(label if index == 0 else "")
    return rings, features


def _edge_width(heatmap: Heatmap) -> float:
    return heatmap.grid.cell_um / 4


def regions_layer(heatmap: Heatmap, regions: list[Region], name: str) -> LayerData:
    """The regions' outlines as a shapes layer, their sizes in its features and text."""
    rings, features = region_shapes(heatmap, regions)
    meta = {
        "name": name,
        "shape_type": "polygon",
        "edge_color": "red",
        "face_color": "transparent",
        "edge_width": _edge_width(heatmap),
        "features": features,
        "text": {"string": "{label}", "color": "black", "size": 10, "anchor": "upper_left"},
        "units": UNITS,
        "axis_labels": AXES,
        "metadata": {HEATMAP_KEY: heatmap},
    }
    return rings, meta, "shapes"


def update_regions(layer: Shapes, heatmap: Heatmap, regions: list[Region]) -> None:
    """Replace a regions layer's outlines and features."""
    rings, features = region_shapes(heatmap, regions)
    layer.data = []
    if rings:
        layer.add_polygons(rings, edge_width=_edge_width(heatmap), edge_color="red", face_color="transparent")
    layer.features = features


def heatmap_name(path: str | Path) -> str:
    return Path(path).name.removesuffix(".zarr")


def current_heatmap_layer(viewer: Viewer) -> Image | None:
    """The heatmap acted on: the selected heatmap probability layer, else the top one."""
    from napari.layers import Image

    images = [layer for layer in viewer.layers if HEATMAP_KEY in layer.metadata and isinstance(layer, Image)]
    active = viewer.layers.selection.active
    return active if active in images else (images[-1] if images else None)


def cell_at(layer: Image, position_world: tuple[float, ...]) -> tuple[int, int] | None:
    """(row, col) of the heatmap cell of a probability layer under a world position (µm); None outside."""
    row, col = (int(np.floor(v + 0.5)) for v in layer.world_to_data(position_world)[-2:])
    rows, cols = layer.metadata[HEATMAP_KEY].grid.shape
    return (row, col) if 0 <= row < rows and 0 <= col < cols else None

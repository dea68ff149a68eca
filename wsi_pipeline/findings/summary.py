"""Slide-level answers from a heatmap and its tumour regions: the ``<stem>.summary.json`` record.

A demonstration model (its card's ``demonstration: true``: the bundled ``synthetic-pcam-cnn`` and
``centre-colour-probe``) answers only on synthetic slides (``Slide.synthetic``): on any other slide its sizes
get no category (``NOT_ASSESSED``), and the reports, ``wsi-score`` and the napari widget say why
(``demonstration_notice``). Version 2 of the summary: ``models`` and ``model_intended_use``."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from wsi_pipeline.core.classes import tumour_class_index
from wsi_pipeline.core.version import __version__
from wsi_pipeline.findings.regions import (
    ITC_MAX_MM,
    MICRO_MAX_MM,
    Region,
    size_category,
    tumour_scores,
)
from wsi_pipeline.store.heatmap import Heatmap
from wsi_pipeline.store.metadata import HeatmapRecord

SCHEMA = "wsi_pipeline.summary"
SCHEMA_VERSION = 2
NOT_ASSESSED = "not assessed (demonstration model)"  # the category of a demonstration model's regions
DEMONSTRATION_TITLE = "demonstration model — not for diagnosis"
REAL_MODEL = "tiatoolbox:resnet18-pcam"  # a published PCam classifier, named where a demonstration model ran
CATEGORY_NOTE = (
    f"research estimate from the heatmap, not a diagnosis: nodal size rules applied to the longest diameter "
    f"of the largest predicted region (isolated tumour cells <= {ITC_MAX_MM} mm, micrometastasis <= "
    f"{MICRO_MAX_MM} mm, macrometastasis > {MICRO_MAX_MM} mm); the cell-count criterion is not assessed"
)


def category_assessed(record: HeatmapRecord) -> bool:
    """False when a demonstration model (alone or in an ensemble) scored a slide not known to be synthetic."""
    return not record.demonstration or record.slide.synthetic is True


def demonstration_notice(record: HeatmapRecord) -> str | None:
    """What to tell whoever reads a heatmap's answers when ``category_assessed`` is False; else None."""
    if category_assessed(record):
        return None
    return (
        f"{DEMONSTRATION_TITLE}: {record.model_name} is for demonstration and pipeline checks on synthetic "
        f"slides, and this slide is not one, so its regions get no size category; for real tissue use a "
        f"real model, e.g. --model {REAL_MODEL}"
    )


def reported_category(record: HeatmapRecord, diameter_mm: float | None) -> str:
    """The size category reported for a region's longest diameter (None: no region), or ``NOT_ASSESSED``."""
    return size_category(diameter_mm) if category_assessed(record) else NOT_ASSESSED


def category_words(category: str) -> str:
    """A reported category as shown to a reader: a size category is marked as a research estimate."""
    return category if category == NOT_ASSESSED else f"{category} (research estimate, not a diagnosis)"


def top_k_mean(scores: np.ndarray, k: int) -> tuple[float | None, int]:
    """Mean of the ``k`` highest finite scores (of all of them when fewer) and how many that was."""
    finite = scores[np.isfinite(scores)]
    top = np.sort(finite)[::-1][:k]
    return (float(top.mean()) if len(top) else None), len(top)


def answer_parts(summary: dict) -> list[str]:
    """A summary's answers in words: slide score, regions and tumour area, category of the largest region."""
    maximum, largest = summary["max_probability"], summary["largest_diameter_mm"]
    return [
        f"max tumour probability {'n/a' if maximum is None else f'{maximum:.3f}'}",
        f"{summary['region_count']} region(s) >= {summary['threshold']} "
        f"({summary['tumour_area_mm2']:.3f} mm²)",
        f"largest {'none' if largest is None else f'{largest:.2f} mm'}: "
        + category_words(summary["category"]),
    ]


def region_record(number: int, region: Region, category: str) -> dict:
    """A region's measurements (units in the key names), numbered from 1, with its reported category."""
    return {
        "id": number,
        "category": category,
        "cells": region.cells,
        "area_mm2": round(region.area_mm2, 8),
        "diameter_mm": round(region.diameter_mm, 4),
        "centroid_level0": [round(v, 2) for v in region.centroid_level0],
        "bbox_level0": [round(v, 2) for v in region.bbox_level0],
        "peak_probability": round(region.peak_probability, 6),
        "mean_probability": round(region.mean_probability, 6),
    }


def slide_summary(
    heatmap: Heatmap, regions: list[Region], threshold: float, top_k: int, heatmap_path: str | Path
) -> dict:
    """The summary record of one slide (``regions`` as ``find_regions(heatmap, threshold)`` gives them)."""
    grid, meta = heatmap.grid, heatmap.metadata
    scores = tumour_scores(heatmap)
    cell_area_mm2 = (grid.cell_um / 1000) ** 2
    scored = int(np.isfinite(scores).sum())
    top_mean, top_cells = top_k_mean(scores, top_k)
    largest = regions[0].diameter_mm if regions else None
    slide = meta.slide
    uses = [(model.name, model.intended_use or "not stated") for model in meta.models]
    intended_use = uses[0][1] if len(uses) == 1 else " | ".join(f"{name}: {use}" for name, use in uses)
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(),
        "package_version": __version__,
        "heatmap": {"path": str(heatmap_path), "finished": meta.finished},
        "slide": {
            "path": slide.path,
            "sha256": slide.sha256,
            "width0": slide.width0,
            "height0": slide.height0,
            "mpp": slide.mpp,
        },
        "models": [
            {
                "name": model.name,
                "weights_sha256": model.weights_sha256,
                "source": f"{model.source.spec}@{model.source.revision}" if model.source else None,
            }
            for model in meta.models
        ],
        "model_intended_use": intended_use,
        "demonstration_model": meta.demonstration,
        "tumour_class": heatmap.class_names[tumour_class_index(heatmap.class_names)],
        "threshold": threshold,
        "threshold_rule": "a scored cell is tumour when its tumour probability >= threshold",
        "top_k": top_k,
        "top_k_cells": top_cells,
        "cell_size_um": round(grid.cell_um, 4),
        "cell_area_mm2": round(cell_area_mm2, 8),
        "resolution_note": (
            f"sizes are counted in whole heatmap cells of {grid.cell_um:.1f} µm (stride × target µm/px): "
            "areas are multiples of the cell area and diameters run between cell corners"
        ),
        "scored_cells": scored,
        "unreadable_cells": meta.unreadable_cells or 0,  # tissue, but no pyramid level could be decoded there
        "other_level_cells": meta.other_level_cells or 0,  # scored from another pyramid level than their own
        "tumour_cells": sum(region.cells for region in regions),
        "max_probability": round(float(np.nanmax(scores)), 6) if scored else None,
        "top_k_mean": round(top_mean, 6) if top_mean is not None else None,
        "tissue_area_mm2": round(scored * cell_area_mm2, 8),
        "tissue_area_basis": "scored cells × cell area",
        "tumour_area_mm2": round(sum(region.area_mm2 for region in regions), 8),
        "region_count": len(regions),
        "largest_diameter_mm": round(largest, 4) if largest is not None else None,
        "category": reported_category(meta, largest),
        "category_note": demonstration_notice(meta) or CATEGORY_NOTE,
        "regions": [
            region_record(number, region, reported_category(meta, region.diameter_mm))
            for number, region in enumerate(regions, start=1)
        ],
    }

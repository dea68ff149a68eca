"""Heatmaps against annotated slides, as a set (``wsi-eval --heatmaps``): each heatmap matched with its
slide's truth file by stem, evaluated (:func:`wsi_pipeline.evaluation.truth.evaluate_heatmap`), summarised.

Truth files are matched by slide stem: ``<stem>.xml`` (ASAP / Camelyon16), ``<stem>.geojson`` or
``<stem>.truth.geojson`` (QuPath; wsi-synth), ``<stem>_mask.png|tif`` or ``<stem>.truth_mask.png`` (masks)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from wsi_pipeline.core.errors import InputError
from wsi_pipeline.evaluation import annotations
from wsi_pipeline.evaluation.annotations import TumourRegions, find_truth, read_truth
from wsi_pipeline.evaluation.detections import slide_detections
from wsi_pipeline.evaluation.froc import DETECTION_FLOOR, Rules, read_mask_lesions
from wsi_pipeline.evaluation.truth import evaluate_heatmap, summarise
from wsi_pipeline.store.heatmap import is_heatmap, read_heatmap


def heatmap_stores(paths: Sequence[Path]) -> list[Path]:
    """Heatmap stores named or held (one level down) by ``paths``."""
    stores = []
    for path in paths:
        if is_heatmap(path):
            stores.append(path)
        elif path.is_dir():
            held = sorted(child for child in path.iterdir() if is_heatmap(child))
            if not held:
                raise InputError(path, "holds no wsi_pipeline heatmap")
            stores += held
        else:
            problem = "no such file or folder" if not path.exists() else "not a wsi_pipeline heatmap"
            raise InputError(path, problem)
    return stores


def match_truth(
    stores: Sequence[Path], truth: Sequence[Path], kind: str
) -> dict[str, tuple[Path, Path | None]]:
    """{slide stem: (heatmap, truth file or None)}; every truth file named explicitly must match a heatmap."""
    files = []
    for path in truth:
        if not path.exists():
            raise InputError(path, "no such file or folder")
        files += sorted(child for child in path.iterdir() if child.is_file()) if path.is_dir() else [path]
    pairs: dict[str, tuple[Path, Path | None]] = {}
    for store in stores:
        stem = store.name.removesuffix(".zarr")
        if stem in pairs:
            raise InputError(store, f"a second heatmap for slide {stem!r} (also {pairs[stem][0]})")
        pairs[stem] = (store, find_truth(stem, files, kind))
    matched = {file for _, file in pairs.values()}
    for path in truth:
        if path.is_file() and path not in matched:
            raise InputError(path, "matches no heatmap (expected <slide stem>.xml, .geojson, _mask.png, ...)")
    return pairs


def evaluate_slides(
    heatmaps: Sequence[str | Path],
    truth: Sequence[str | Path],
    *,
    truth_format: str = "auto",
    truth_classes: Sequence[str] | None = None,
    mask_downsample: float | None = None,
    missing_truth: str = "error",
    threshold: float = 0.5,
    detection_floor: float = DETECTION_FLOOR,
    froc_rules: Rules = "challenge",
    detections: str | Path | None = None,
    export_detections: str | Path | None = None,
) -> dict:
    """Each heatmap (stores, or folders holding them) against its truth file (files, or folders of them), and
    the summary over the set: ``{"kind": "slides", "data", "settings", "slides": [...], "summary"}``.

    ``truth_format``: auto (from the file name) or a format of :mod:`wsi_pipeline.evaluation.annotations`;
    ``truth_classes``: GeoJSON classifications kept (default: all); ``mask_downsample``: level-0 px per mask
    px (default: from the slide's size); ``missing_truth``: a heatmap without a truth file is an ``"error"``
    or a ``"negative"`` slide (no tumour). ``froc_rules``: the Camelyon16 challenge's FROC rules or the
    corrected ones (:mod:`wsi_pipeline.evaluation.froc`); ``detections``: a folder of the challenge's CSV
    files (``<stem>.csv``) to evaluate instead of the heatmaps' detections; ``export_detections``: a folder
    to write the detections evaluated to, in that format."""
    heatmaps, truth = [Path(path) for path in heatmaps], [Path(path) for path in truth]
    detections = None if detections is None else Path(detections)
    export_detections = None if export_detections is None else Path(export_detections)
    pairs = match_truth(heatmap_stores(heatmaps), truth, truth_format)
    missing = [stem for stem, (_, file) in pairs.items() if file is None]
    if missing and missing_truth == "error":
        raise InputError(
            ", ".join(map(str, truth)),
            f"no truth file for {', '.join(missing)} (--missing-truth negative: slides without tumour)",
        )
    slides, evaluations = [], []
    for stem, (store, file) in pairs.items():
        heatmap = read_heatmap(store)
        if not heatmap.complete:
            raise InputError(store, "heatmap is incomplete (its scoring did not finish)")
        grid = heatmap.grid
        regions, kind, lesions = TumourRegions(), None, None
        if file is not None:
            kind = annotations.truth_format(file) if truth_format == "auto" else truth_format
            size0 = (grid.width0, grid.height0)
            regions = read_truth(file, kind, truth_classes, mask_downsample, size0)
            if froc_rules == "challenge" and kind == "mask":
                lesions = read_mask_lesions(file, size0, mask_downsample)
        evaluation = evaluate_heatmap(
            heatmap,
            regions.tumour,
            threshold,
            exclusions=regions.exclusions,
            rules=froc_rules,
            detections=slide_detections(
                heatmap, stem, detection_floor, read_from=detections, export_to=export_detections
            ),
            lesions=lesions,
        )
        evaluations.append(evaluation)
        cells = evaluation["cell_truth"]
        slides.append(
            {
                "slide": stem,
                "heatmap": str(store),
                "truth": None if file is None else str(file),
                "truth_format": kind,
                "tumour_polygons": len(regions.tumour),
                "exclusion_polygons": len(regions.exclusions),
                "cells": len(cells),
                "tumour_cells": int(cells.sum()),
                **{
                    key: value
                    for key, value in evaluation.items()
                    if key not in ("cell_truth", "cell_scores")
                },
            }
        )
    settings = {
        "threshold": threshold,
        "detection_floor": detection_floor,
        "missing_truth": missing_truth,
        "froc_rules": froc_rules,
        "detections": "heatmaps" if detections is None else str(detections),
    }
    data = {"heatmaps": [str(path) for path in heatmaps], "truth": [str(path) for path in truth]}
    return {
        "kind": "slides",
        "data": data,
        "settings": settings,
        "slides": slides,
        "summary": summarise(evaluations, rules=froc_rules),
    }

"""A slide's reports beside its heatmap ``OUT/<stem>.zarr``:

- ``<stem>.summary.json``: slide-level answers and the tumour regions (``summary``);
- ``<stem>.geojson``: the regions (optionally every scored tile) for QuPath (``qupath.py``);
- ``<stem>.overlay.png``: thumbnail, heatmap, colour bar and region outlines (``overlay.py``);
- ``<stem>.review.png``: the top and borderline tiles, with their Grad-CAM saliency if asked (``review.py``);
- ``<stem>.tiles.csv`` (optional): one row per grid cell (``tables``).

Each file is replaced atomically, and the summary is written last: a summary naming the heatmap's run, the
threshold and k asked for means the set is complete."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from wsi_pipeline.core.errors import InputError
from wsi_pipeline.core.files import write_atomically
from wsi_pipeline.findings.dicom import dicom_paths, write_dicom
from wsi_pipeline.findings.geojson import qupath_geojson
from wsi_pipeline.findings.options import DEFAULT_REPORTS, ReportOptions
from wsi_pipeline.findings.overlay import write_overlay
from wsi_pipeline.findings.regions import find_regions
from wsi_pipeline.findings.review import write_review
from wsi_pipeline.findings.summary import SCHEMA_VERSION, slide_summary
from wsi_pipeline.findings.tables import write_tile_table
from wsi_pipeline.store.heatmap import read_heatmap, read_record

SUFFIXES = {
    "summary": ".summary.json",
    "geojson": ".geojson",
    "overlay": ".overlay.png",
    "review": ".review.png",
    "tiles": ".tiles.csv",
}


def report_paths(heatmap_path: str | Path) -> dict[str, Path]:
    """The report files that belong to a heatmap ``<stem>.zarr``, by kind."""
    heatmap_path = Path(heatmap_path)
    return {kind: heatmap_path.with_name(heatmap_path.stem + suffix) for kind, suffix in SUFFIXES.items()}


def write_reports(heatmap_path: str | Path, options: ReportOptions = DEFAULT_REPORTS) -> dict:
    """Write a complete heatmap's reports beside it; return the summary."""
    options.validate()
    heatmap = read_heatmap(heatmap_path)
    if not heatmap.complete:
        raise InputError(heatmap_path, "heatmap is not complete (its scoring did not finish); score again")
    paths = report_paths(heatmap_path)
    regions = find_regions(heatmap, options.threshold)
    summary = slide_summary(heatmap, regions, options.threshold, options.top_k, heatmap_path)
    summary["geojson_tiles"] = options.geojson_tiles
    summary["review_tiles"], summary["explain"] = options.review_tiles, options.explain
    geojson = qupath_geojson(heatmap, regions, tiles=options.geojson_tiles)
    write_atomically(paths["geojson"], json.dumps(geojson, allow_nan=False))
    with ThreadPoolExecutor(2, thread_name_prefix="wsi-pictures") as pictures:  # both read the slide, encode
        drawn = [
            pictures.submit(
                write_atomically,
                paths["overlay"],
                partial(write_overlay, heatmap=heatmap, regions=regions, summary=summary),
            )
        ]
        if options.review_tiles:
            review = partial(
                write_review,
                heatmap=heatmap,
                regions=regions,
                summary=summary,
                tiles=options.review_tiles,
                explain=options.explain,
            )
            drawn.append(pictures.submit(write_atomically, paths["review"], review))
        for picture in drawn:
            picture.result()
    if options.tile_table:
        write_tile_table(paths["tiles"], heatmap)
    if options.dicom:
        write_dicom(heatmap_path, heatmap, regions)
    text = json.dumps(summary, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    write_atomically(paths["summary"], text)
    return summary


def current_summary(heatmap_path: str | Path, options: ReportOptions | None = None) -> dict | None:
    """The summary beside a heatmap if it was made from this run of the heatmap; with ``options``, only if it
    was also made with them and every file they ask for is there. ``None`` otherwise."""
    paths = report_paths(heatmap_path)
    try:
        summary = json.loads(paths["summary"].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    finished = read_record(heatmap_path).finished
    if summary.get("schema_version") != SCHEMA_VERSION or summary["heatmap"]["finished"] != finished:
        return None
    if options is None:
        return summary
    wanted = ["geojson", "overlay"] + (["tiles"] if options.tile_table else [])
    wanted += ["review"] if options.review_tiles else []
    asked = ("threshold", "top_k", "geojson_tiles", "review_tiles", "explain")
    same = all(summary.get(name) == getattr(options, name) for name in asked)
    dicom = dicom_paths(heatmap_path).values() if options.dicom else ()
    files = [paths[kind] for kind in wanted] + list(dicom)
    return summary if same and all(path.is_file() for path in files) else None


def ensure_reports(heatmap_path: str | Path, options: ReportOptions = DEFAULT_REPORTS) -> dict:
    """The heatmap's summary, writing its reports first unless they are there and current."""
    return current_summary(heatmap_path, options) or write_reports(heatmap_path, options)

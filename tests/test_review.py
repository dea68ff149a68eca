"""The review sheet ``<stem>.review.png``: the top and borderline tiles as scoring read them, their captions,
and Grad-CAM beside them (or a clear "not available")."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone

import numpy as np
import pytest
from PIL import Image

from wsi_pipeline import PatchGrid, ReportOptions, Slide, find_regions, read_heatmap, write_reports
from wsi_pipeline.core.files import file_sha256
from wsi_pipeline.evaluation.truth import cell_tumour_fraction
from wsi_pipeline.findings.reports import current_summary, report_paths
from wsi_pipeline.findings.review import (
    CAPTION,
    HEADER,
    LABEL,
    MARGIN,
    PAIR_GAP,
    PANEL_SIDE,
    _panel,
    explain_tiles,
    region_numbers,
    review_cells,
    review_sheet,
    saliency_overlay,
    write_review,
)
from wsi_pipeline.findings.summary import slide_summary
from wsi_pipeline.model.bundled import bundled_models_dir
from wsi_pipeline.model.folder import read_card
from wsi_pipeline.store.heatmap import HeatmapWriter
from wsi_pipeline.store.metadata import ModelRecord
from wsi_pipeline.synthetic.scene import make_scene
from wsi_pipeline.synthetic.sets import read_truth_polygons, write_synthetic_slide
from wsi_pipeline.tiling.grid import Block, tissue_fraction
from wsi_pipeline.tiling.patches import read_cell_patches
from wsi_pipeline.tiling.tissue import detect_tissue

from .conftest import heatmap_record

GRID = PatchGrid(width0=3000, height0=2400, mpp0=0.5, target_mpp=0.972, patch_size=96, stride=96)


def bundled_record(name: str) -> ModelRecord:
    """The metadata record of a bundled model, as a scoring run writes it."""
    folder = bundled_models_dir() / name
    card = read_card(folder)
    return ModelRecord(name, str(folder), file_sha256(folder / card.weights), card.architecture, "torch")


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> dict:
    """A synthetic node (one ~300 µm metastasis) with a heatmap written by the real writer, scored by the
    bundled CNN by name: 0.95 on cells at least half tumour, 0.45 and 0.58 on two cells far from it, 0.05 on
    the other tissue."""
    folder = tmp_path_factory.mktemp("review")
    slide_path = folder / "node.svs"
    write_synthetic_slide(slide_path, make_scene(GRID.width0, GRID.height0, GRID.mpp0, 1, 1, (250, 600)))
    with Slide(slide_path) as slide:
        tissue = tissue_fraction(GRID, detect_tissue(slide.thumbnail(8.0), 8.0)) >= 0.5
    tumour = (cell_tumour_fraction(GRID, read_truth_polygons(slide_path)) >= 0.5) & tissue
    scores = np.where(tumour, 0.95, 0.05)
    rows, cols = np.nonzero(tissue & ~tumour)
    far = np.argsort(-np.abs(cols - np.nonzero(tumour)[1].mean()))[:2]  # two tissue cells far from the tumour
    scores[rows[far[0]], cols[far[0]]], scores[rows[far[1]], cols[far[1]]] = 0.45, 0.58
    probabilities = np.stack([1 - scores, scores]).astype(np.float32)
    probabilities[:, ~tissue] = np.nan
    path = folder / "out" / "node.zarr"
    record = replace(heatmap_record(GRID, slide_path), models=(bundled_record("synthetic-pcam-cnn"),))
    writer = HeatmapWriter(path, GRID, ["normal", "tumour"], max(GRID.shape), record)
    writer.write_tissue(tissue)
    writer.write_block(Block(0, 0, *GRID.shape), probabilities)
    writer.finalise(patches_scored=int(tissue.sum()), finished=datetime.now(timezone.utc).isoformat())
    return {"heatmap": path, "tumour": tumour, "borderline": [(rows[i], cols[i]) for i in far]}


def sheet_parts(path, heatmap, explain: bool = False, tiles: int = 16):
    """The review sheet of ``heatmap`` (the reports' regions and summary) as written (RGB), and its texts."""
    regions = find_regions(heatmap)
    summary = slide_summary(heatmap, regions, 0.5, 10, path)
    write_review(path, heatmap, regions, summary, tiles, explain)
    texts = review_sheet(heatmap, regions, summary, tiles, explain).texts
    return np.asarray(Image.open(path).convert("RGB")), texts


def test_review_cells_top_then_nearest_the_threshold():
    scores = np.array([[0.9, np.nan, 0.2], [0.51, 0.7, 0.49], [0.45, np.nan, 0.99]])
    top_rows, top_cols, near_rows, near_cols = review_cells(scores, 2, 3, 0.5)
    assert list(zip(top_rows, top_cols, strict=True)) == [(2, 2), (0, 0)]
    # 0.51 and 0.49 tie (row-major first), then 0.45
    assert list(zip(near_rows, near_cols, strict=True)) == [(1, 0), (1, 2), (2, 0)]
    assert [len(a) for a in review_cells(scores, 10, 3, 0.5)] == [7, 7, 0, 0]  # all scored cells on top
    assert [len(a) for a in review_cells(np.full((2, 2), np.nan), 16, 8, 0.5)] == [0, 0, 0, 0]


def test_sheet_shows_the_top_and_borderline_tiles_as_scoring_read_them(node, tmp_path):
    heatmap = read_heatmap(node["heatmap"])
    n_tumour = int(node["tumour"].sum())  # a row of 8: the metastasis's cells on top, then the borderline row
    png, texts = sheet_parts(tmp_path / "node.review.png", heatmap, tiles=n_tumour)
    with Slide(heatmap.metadata.slide.path) as slide:
        (row, col), (near_row, near_col) = np.argwhere(node["tumour"])[0], node["borderline"][0]
        first, borderline = read_cell_patches(
            slide, GRID, np.array([row, near_row]), np.array([col, near_col])
        )
    y = HEADER + LABEL  # the first top tile: highest score, first in row-major order among the 0.95s
    np.testing.assert_array_equal(
        png[y : y + PANEL_SIDE, MARGIN : MARGIN + PANEL_SIDE], np.asarray(_panel(first))
    )
    y += -(-n_tumour // 8) * (PANEL_SIDE + CAPTION) + LABEL  # the rows of top tiles, then the borderline row
    np.testing.assert_array_equal(
        png[y : y + PANEL_SIDE, MARGIN : MARGIN + PANEL_SIDE], np.asarray(_panel(borderline))
    )
    assert texts[1] == f"The {n_tumour} highest tumour probabilities"
    assert texts[2].startswith("p 0.9500 · region 1\n")
    x0, y0, x1, y1 = GRID.cell_boxes_level0(np.array([row]), np.array([col]))[0]
    assert texts[2].endswith(f"x {x0:.0f}–{x1:.0f}, y {y0:.0f}–{y1:.0f}")
    assert "Borderline: the probabilities nearest the threshold 0.5" in texts
    captions = [text for text in texts if text.startswith("p ")]
    assert len(captions) == n_tumour + 8
    assert captions[n_tumour].startswith("p 0.4500 · no region")
    assert captions[n_tumour + 1].startswith("p 0.5800 · region 2")
    assert "node.svs · model synthetic-pcam-cnn" in texts[0] and "2 region(s) >= 0.5" in texts[0]


def test_region_numbers_follow_the_summary(node):
    heatmap = read_heatmap(node["heatmap"])
    regions = find_regions(heatmap)
    numbers = region_numbers(GRID.shape, regions)
    assert [int((numbers == n).sum()) for n in (1, 2)] == [region.cells for region in regions]
    assert (numbers > 0).sum() == node["tumour"].sum() + 1  # the metastasis and the lone 0.58 cell


def test_sheet_draws_grad_cam_beside_each_tile(node, tmp_path):
    heatmap = read_heatmap(node["heatmap"])
    png, texts = sheet_parts(tmp_path / "node.review.png", heatmap, explain=True, tiles=4)
    assert "saliency: Grad-CAM of tumour on the last convolutional stage" in texts[0]
    top_rows, top_cols, near_rows, near_cols = review_cells(heatmap.probabilities[1], 4, 4, 0.5)
    with Slide(heatmap.metadata.slide.path) as slide:
        tiles = read_cell_patches(slide, GRID, np.r_[top_rows, near_rows], np.r_[top_cols, near_cols])
    maps = explain_tiles(heatmap.metadata, tiles)  # the same batch as the sheet's
    y, x = HEADER + LABEL, MARGIN + PANEL_SIDE + PAIR_GAP
    shown = png[y : y + PANEL_SIDE, x : x + PANEL_SIDE].astype(int)
    np.testing.assert_allclose(shown, np.asarray(_panel(saliency_overlay(tiles[0], maps[0]))), atol=1)
    assert png.shape[1] == 2 * MARGIN + 4 * (2 * PANEL_SIDE + PAIR_GAP) + 3 * 12  # four pairs a row


def test_a_model_grad_cam_cannot_explain_is_said_so(node, tmp_path):
    heatmap = read_heatmap(node["heatmap"])
    probe = replace(heatmap.metadata, models=(bundled_record("centre-colour-probe"),))
    _, texts = sheet_parts(tmp_path / "probe.review.png", replace(heatmap, metadata=probe), explain=True)
    assert texts[0].endswith("saliency not available: the model has no convolutional stage for Grad-CAM")
    assert texts.count("saliency\nnot available") == 16 + 4
    gone = replace(
        heatmap.metadata, models=(replace(bundled_record("synthetic-pcam-cnn"), folder="/nowhere"),)
    )
    _, texts = sheet_parts(tmp_path / "gone.review.png", replace(heatmap, metadata=gone), explain=True)
    assert "saliency not available: the model cannot be loaded" in texts[0]


def test_a_slide_without_regions_shows_its_top_tiles_all_the_same(node, tmp_path):
    heatmap = read_heatmap(node["heatmap"])
    low = replace(heatmap, probabilities=np.where(np.isnan(heatmap.probabilities), np.nan, 0.3))
    _, texts = sheet_parts(tmp_path / "low.review.png", low)
    assert texts[1] == "The 16 highest tumour probabilities (no region ≥ 0.5: shown all the same)"
    assert sum(text.startswith("p 0.3000 · no region") for text in texts) == 16 + 8


def test_a_slide_that_cannot_be_read_gets_white_tiles_and_a_note(node, tmp_path):
    heatmap = read_heatmap(node["heatmap"])
    moved = replace(heatmap.metadata, slide=replace(heatmap.metadata.slide, path="/nowhere/node.svs"))
    png, texts = sheet_parts(tmp_path / "moved.review.png", replace(heatmap, metadata=moved))
    assert "tiles not read (/nowhere/node.svs: no such file)" in texts[0]
    y = HEADER + LABEL
    assert (png[y : y + PANEL_SIDE, MARGIN : MARGIN + PANEL_SIDE] == 255).all()


def test_reports_write_the_sheet_unless_asked_not_to(node):
    paths = report_paths(node["heatmap"])
    write_reports(node["heatmap"])
    assert paths["review"].is_file()
    summary = current_summary(node["heatmap"], ReportOptions())
    assert summary is not None and (summary["review_tiles"], summary["explain"]) == (16, False)
    assert current_summary(node["heatmap"], ReportOptions(explain=True)) is None  # asked for another sheet
    assert current_summary(node["heatmap"], ReportOptions(review_tiles=8)) is None
    paths["review"].unlink()
    assert current_summary(node["heatmap"], ReportOptions()) is None  # a report missing
    write_reports(node["heatmap"], ReportOptions(review_tiles=0))
    assert not paths["review"].exists()
    assert current_summary(node["heatmap"], ReportOptions(review_tiles=0)) is not None
    with pytest.raises(ValueError, match="review tiles"):
        ReportOptions(review_tiles=-1).validate()

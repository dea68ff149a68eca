"""Scoring batches: the batch table ``OUT/slides.csv`` over re-runs, report options, wsi-score end to end."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from wsi_pipeline import ReportOptions, ScoreOptions, read_heatmap
from wsi_pipeline.cli.score import main
from wsi_pipeline.core.files import write_atomically
from wsi_pipeline.findings.reports import report_paths
from wsi_pipeline.scoring.api import score_slides
from wsi_pipeline.scoring.ledger import BATCH_COLUMNS, BATCH_TABLE, read_batch_table

from .conftest import make_slide
from .test_reports import DARK_CELLS, GRID, SIDE, check_geojson


@pytest.fixture(scope="module")
def rect_slide(tmp_path_factory) -> Path:
    """A probe slide with a dark rectangle on exactly the 4 × 3 cell squares of cols 5-8, rows 4-6."""
    path = tmp_path_factory.mktemp("slides") / "rect.svs"
    make_slide(path, GRID.width0, GRID.height0, GRID.mpp0, [DARK_CELLS])
    return path


@pytest.fixture
def rect_slides(tmp_path, rect_slide) -> dict[str, Path]:
    """Two copies of the rect slide, a.svs and b.svs."""
    return {name: Path(shutil.copy(rect_slide, tmp_path / f"{name}.svs")) for name in ("a", "b")}


def _table(out: Path) -> list[dict]:
    with (out / BATCH_TABLE).open(newline="") as file:
        reader = csv.DictReader(file)
        assert tuple(reader.fieldnames) == BATCH_COLUMNS
        return list(reader)


def test_batch_table_on_reruns(tmp_path, probe_model, client, rect_slides, monkeypatch):
    out = tmp_path / "out"
    first = score_slides(list(rect_slides.values()), probe_model, out, client=client, show_progress=False)
    assert [r.status for r in first] == ["ok", "ok"]
    rows = _table(out)
    assert [Path(r["slide"]) for r in rows] == [p.resolve() for p in rect_slides.values()]
    a_row = rows[0]
    assert (
        a_row["status"] == "ok"
        and a_row["category"] == "micrometastasis"
        and a_row["model_name"] == "test-probe"
    )
    assert float(a_row["tumour_area_mm2"]) == pytest.approx(12 * (GRID.cell_um / 1000) ** 2, rel=1e-6)
    assert float(a_row["largest_diameter_mm"]) == pytest.approx(5 * GRID.cell_um / 1000, abs=1e-4)
    assert (
        float(a_row["max_probability"]) > 0.95 and a_row["top_k"] == "10" and a_row["patches_scored"] != "0"
    )
    assert len(a_row["weights_sha256"]) == 64 and a_row["heatmap"] == str(out / "a.zarr")

    # again: b (complete: skipped) by a relative path, its overlay gone, and a slide that does not exist
    overlay = report_paths(out / "b.zarr")["overlay"]
    overlay.unlink()
    monkeypatch.chdir(tmp_path)
    second = score_slides(["b.svs", "missing.svs"], probe_model, out, client=client, show_progress=False)
    assert [r.status for r in second] == ["skipped", "failed"]
    assert overlay.is_file()  # the missing report is made again
    rows = {Path(r["slide"]).name: r for r in _table(out)}
    assert list(rows) == ["a.svs", "b.svs", "missing.svs"]  # no duplicates, nothing lost, order kept
    assert rows["a.svs"] == a_row
    assert rows["b.svs"]["status"] == "skipped" and rows["b.svs"]["category"] == "micrometastasis"
    assert "complete heatmap exists" in rows["b.svs"]["reason"]
    assert rows["missing.svs"]["status"] == "failed" and "no such file" in rows["missing.svs"]["reason"]
    assert rows["missing.svs"]["heatmap"] == "" and rows["missing.svs"]["finished"] != ""

    # b scored again replaces its row
    options = ScoreOptions(overwrite=True)
    score_slides([rect_slides["b"]], probe_model, out, options=options, client=client, show_progress=False)
    rows = {Path(r["slide"]).name: r for r in _table(out)}
    assert len(rows) == 3 and rows["b.svs"]["status"] == "ok" and rows["a.svs"] == a_row
    assert rows["b.svs"]["finished"] == read_heatmap(out / "b.zarr").metadata.finished


def test_reports_follow_the_options_asked_for(tmp_path, probe_model, client, rect_slides):
    out = tmp_path / "out"
    slide = [rect_slides["a"]]
    score_slides(slide, probe_model, out, client=client, show_progress=False, reports=None)
    assert not any(p.exists() for p in report_paths(out / "a.zarr").values())
    assert _table(out)[0]["status"] == "ok" and _table(out)[0]["category"] == ""
    # a complete heatmap's reports are made for the threshold and k asked for, and remade when they change
    (result,) = score_slides(slide, probe_model, out, client=client, show_progress=False)
    assert result.status == "skipped" and result.summary["threshold"] == 0.5
    strict = ReportOptions(threshold=0.99, top_k=3)
    (result,) = score_slides(slide, probe_model, out, client=client, show_progress=False, reports=strict)
    summary = json.loads(report_paths(out / "a.zarr")["summary"].read_text())
    assert summary == result.summary and (summary["threshold"], summary["top_k"]) == (0.99, 3)
    assert summary["region_count"] == 0 and summary["category"] == "none" and summary["top_k_mean"] > 0.95
    assert _table(out)[0]["category"] == "none"
    with pytest.raises(ValueError, match="threshold"):
        score_slides(slide, probe_model, out, client=client, reports=ReportOptions(threshold=2))


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "slides.csv"
    path.write_text("old\n")

    def crash(partial: Path) -> None:
        partial.write_text("half a ta")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, crash)
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["slides.csv"]
    assert read_batch_table(tmp_path / "none.csv") == {}


def test_wsi_score_writes_reports_end_to_end(tmp_path, capsys, probe_model, rect_slides):
    out = tmp_path / "out"
    args = [
        rect_slides["a"],
        "-o",
        out,
        "--model",
        probe_model,
        "--tile-table",
        "--geojson-tiles",
        "--top-k",
        "4",
    ]
    code = main([*map(str, args), "--scheduler", "threads", "--workers", "2", "-q"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "micrometastasis (research estimate, not a diagnosis)" in captured.out
    assert f"batch table: {out / BATCH_TABLE}" in captured.out
    paths = report_paths(out / "a.zarr")
    assert all(p.is_file() for p in paths.values())
    summary = json.loads(paths["summary"].read_text())
    (region,) = summary["regions"]
    assert region["cells"] == 12 and region["bbox_level0"] == pytest.approx(DARK_CELLS, abs=0.01)
    assert region["centroid_level0"] == pytest.approx([7 * SIDE, 5.5 * SIDE], abs=0.01)
    assert summary["top_k"] == 4 and summary["top_k_mean"] > 0.95
    doc = check_geojson(paths["geojson"].read_text())
    kinds = [f["properties"]["objectType"] for f in doc["features"]]
    assert kinds.count("annotation") == 1 and kinds.count("detection") == summary["scored_cells"]
    assert Image.open(paths["overlay"]).format == "PNG"
    (row,) = _table(out)
    assert row["status"] == "ok" and row["category"] == "micrometastasis"
    # --no-reports writes none of them for another slide, but still its row
    args = [rect_slides["b"], "-o", out, "--model", probe_model, "--no-reports", "--scheduler", "threads"]
    code = main([*map(str, args), "-q"])
    assert code == 0 and not report_paths(out / "b.zarr")["summary"].exists()
    assert [r["status"] for r in _table(out)] == ["ok", "ok"]

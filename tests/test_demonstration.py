"""A demonstration model says so: on a slide without the synthetic mark its regions get no size category,
and the summary, ``slides.csv``, the GeoJSON, the overlay's title and ``wsi-score`` say why; synthetic slides
keep the full answer."""

from __future__ import annotations

import contextlib
import io
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from wsi_pipeline.cli.score import main
from wsi_pipeline.findings.overlay import overlay_title
from wsi_pipeline.findings.regions import CATEGORIES
from wsi_pipeline.findings.reports import report_paths
from wsi_pipeline.findings.summary import (
    CATEGORY_NOTE,
    DEMONSTRATION_TITLE,
    NOT_ASSESSED,
    REAL_MODEL,
    category_assessed,
    demonstration_notice,
)
from wsi_pipeline.model.bundled import DEFAULT_MODEL, bundled_models_dir
from wsi_pipeline.model.folder import read_card
from wsi_pipeline.scoring.ledger import BATCH_TABLE, read_batch_table
from wsi_pipeline.store.heatmap import read_record
from wsi_pipeline.tiling.grid import PatchGrid

from .conftest import CMU_SLIDE, REPO, heatmap_record

SYNTHETIC_SLIDE = REPO / "sample_slides" / "synthetic-node_19_000.svs"
GRID = PatchGrid(width0=2000, height0=1000, mpp0=0.5, target_mpp=0.972, patch_size=96, stride=96)


@pytest.mark.parametrize("name", [DEFAULT_MODEL, "centre-colour-probe"])
def test_the_bundled_models_are_demonstration_models(name):
    assert read_card(bundled_models_dir() / name).demonstration is True


def test_only_a_demonstration_model_on_a_slide_not_known_to_be_synthetic_is_not_assessed():
    record = heatmap_record(GRID)
    demonstration = replace(record.models[0], name="demo", demonstration=True)
    for synthetic, models, assessed in [
        (None, record.models, True),  # not a demonstration model
        (False, record.models, True),
        (None, (demonstration,), False),  # a heatmap from before slides were marked
        (False, (demonstration,), False),
        (True, (demonstration,), True),  # a synthetic slide: the full answer
        (False, (*record.models, demonstration), False),  # one member of an ensemble is enough
    ]:
        case = replace(record, models=models, slide=replace(record.slide, synthetic=synthetic))
        assert category_assessed(case) is assessed
        assert (demonstration_notice(case) is None) is assessed
    notice = demonstration_notice(replace(record, models=(*record.models, demonstration)))
    assert notice.startswith(DEMONSTRATION_TITLE) and "hand-made + demo" in notice and REAL_MODEL in notice


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> dict:
    """``wsi-score`` with the default model on the real CMU sample and on the synthetic sample: its exit
    status, what it printed, the summaries and the rows of ``slides.csv`` by slide stem."""
    out = tmp_path_factory.mktemp("out")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([str(CMU_SLIDE), str(SYNTHETIC_SLIDE), "-o", str(out), "--scheduler", "threads", "-q"])
    stems = (CMU_SLIDE.stem, SYNTHETIC_SLIDE.stem)
    return {
        "code": code,
        "stdout": stdout.getvalue(),
        "stderr": stderr.getvalue(),
        "summaries": {
            stem: json.loads(report_paths(out / f"{stem}.zarr")["summary"].read_text()) for stem in stems
        },
        "geojson": {
            stem: json.loads(report_paths(out / f"{stem}.zarr")["geojson"].read_text()) for stem in stems
        },
        "records": {stem: read_record(out / f"{stem}.zarr") for stem in stems},
        "rows": {Path(key).stem: row for key, row in read_batch_table(out / BATCH_TABLE).items()},
    }


def test_wsi_score_warns_once_naming_a_real_model(scored):
    assert scored["code"] == 0, scored["stderr"]
    (warning,) = [line for line in scored["stderr"].splitlines() if "warning" in line]
    assert warning.startswith(f"wsi-score: warning: demonstration model {DEFAULT_MODEL} on 1 slide(s)")
    assert f"--model {REAL_MODEL}" in warning and "not for diagnosis" in warning
    assert re.search(rf"largest \S+ mm: {re.escape(NOT_ASSESSED)}$", scored["stdout"], re.MULTILINE)


def test_real_tissue_gets_no_size_category(scored):
    card = read_card(bundled_models_dir() / DEFAULT_MODEL)
    record = scored["records"][CMU_SLIDE.stem]
    assert record.slide.synthetic is False and record.models[0].demonstration is True
    assert record.models[0].intended_use == card.intended_use
    summary = scored["summaries"][CMU_SLIDE.stem]
    assert summary["category"] == NOT_ASSESSED and summary["demonstration_model"] is True
    assert summary["model_intended_use"] == card.intended_use
    assert summary["category_note"] == demonstration_notice(record)
    assert all(region["category"] == NOT_ASSESSED for region in summary["regions"])
    names = [feature["properties"]["name"] for feature in scored["geojson"][CMU_SLIDE.stem]["features"]]
    assert all(name.endswith(NOT_ASSESSED) for name in names)
    assert scored["rows"][CMU_SLIDE.stem]["category"] == NOT_ASSESSED
    title = overlay_title(summary)
    assert f"model {DEFAULT_MODEL} ({DEMONSTRATION_TITLE})" in title and NOT_ASSESSED in title
    assert "research estimate" not in title


def test_synthetic_slides_keep_the_full_answer(scored):
    record = scored["records"][SYNTHETIC_SLIDE.stem]
    assert record.slide.synthetic is True and record.models[0].demonstration is True
    summary = scored["summaries"][SYNTHETIC_SLIDE.stem]
    assert summary["category"] == "micrometastasis" and summary["category_note"] == CATEGORY_NOTE
    assert [region["category"] for region in summary["regions"]] == ["micrometastasis"]
    assert summary["demonstration_model"] is True  # said, but the answer is given
    assert scored["rows"][SYNTHETIC_SLIDE.stem]["category"] == "micrometastasis"
    title = overlay_title(summary)
    assert (
        DEMONSTRATION_TITLE not in title and "micrometastasis (research estimate, not a diagnosis)" in title
    )
    assert summary["category"] in CATEGORIES

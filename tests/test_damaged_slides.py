"""Slides with corrupt JPEG tiles: a block whose region cannot be decoded is read cell by cell, cells still
unreadable from another pyramid level, and only cells no level gives are left unscored, marked and counted."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from wsi_pipeline import ScoreOptions, read_heatmap, score_slides
from wsi_pipeline.cli.score import main
from wsi_pipeline.findings.reports import report_paths
from wsi_pipeline.scoring.ledger import BATCH_TABLE, read_batch_table
from wsi_pipeline.slide.reader import Slide, UnreadablePixelsError
from wsi_pipeline.store.heatmap import OTHER_LEVEL, TISSUE, UNREADABLE

from .conftest import corrupt_tiles, count_patches, make_slide

# 0.25 µm/px: PCam's 0.972 µm/px is read from the 4× level (tiles of 1024 level-0 px); level 0 is finer.
SIZE, MPP, BLOCK_CELLS = (6000, 5000), 0.25, 4
LEVEL1_BAD = [(2, 2), (2, 3)]  # level-1 tiles: their cells are read from level 0...
LEVEL0_BAD = [(r, c) for r in range(8, 12) for c in range(12, 16)]  # ...except under (2, 3), bad there too


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> dict[str, Path]:
    """An undamaged slide and a copy with corrupt tiles (and, beneath one of them, corrupt level-0 tiles)."""
    folder = tmp_path_factory.mktemp("slides")
    make_slide(folder / "good.svs", *SIZE, MPP, [(2000.0, 1900.0, 3300.0, 2700.0)])
    damaged = Path(shutil.copy(folder / "good.svs", folder / "damaged.svs"))
    corrupt_tiles(damaged, 1, LEVEL1_BAD)
    corrupt_tiles(damaged, 0, LEVEL0_BAD)
    return {"good": folder / "good.svs", "damaged": damaged}


@pytest.fixture(scope="module", params=["tiffslide", "openslide"])
def backend(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def reference(tmp_path_factory, slides, probe_model, client, backend):
    out = tmp_path_factory.mktemp("reference")
    options = ScoreOptions(block_cells=BLOCK_CELLS, backend=backend)
    (result,) = score_slides([slides["good"]], probe_model, out, options=options, client=client, reports=None)
    assert result.status == "ok"
    return read_heatmap(result.heatmap)


def test_a_read_that_cannot_be_decoded_raises_and_the_slide_reads_on(slides, backend):
    """tiffslide raises imagecodecs' error, openslide an OpenSlideError after which its handle is unusable:
    both become ``UnreadablePixelsError``, and the slide (reopened, for openslide) reads the rest."""
    with Slide(slides["damaged"], backend) as slide, Slide(slides["good"], backend) as good:
        with pytest.raises(UnreadablePixelsError, match="cannot read pixels"):
            slide.read_level(1, 500, 500, 64, 64)
        np.testing.assert_array_equal(slide.read_level(1, 0, 0, 300, 300), good.read_level(1, 0, 0, 300, 300))
        # level 1's finer levels (level 0 at 1/2 with tiffslide, then level 0); level 2 is 4× coarser: never
        finer = [(0, 2), (0, 1)] if backend == "tiffslide" else [(0, 1)]
        assert [slide.read_levels[level] for level in slide.other_levels(0.972 / MPP)] == finer
        assert slide.read_elsewhere(0, 0, 16, 16, 16.0) is not None  # level 2 wanted: from level 1


def test_only_cells_no_level_can_decode_are_lost_and_every_output_counts_them(
    tmp_path, slides, probe_model, backend, reference, capsys
):
    out = tmp_path / "out"
    args = [slides["damaged"], "-o", out, "--model", probe_model, "--block-cells", BLOCK_CELLS]
    args += ["--backend", backend, "--scheduler", "threads", "-q"]
    assert main(list(map(str, args))) == 0
    printed = capsys.readouterr().out
    heatmap = read_heatmap(out / "damaged.zarr")
    labels, meta = heatmap.labels, heatmap.metadata
    unreadable, other = labels == UNREADABLE, labels == OTHER_LEVEL
    assert heatmap.complete and unreadable.sum() > 0 and other.sum() > 0
    np.testing.assert_array_equal(heatmap.tissue, reference.tissue)  # the tissue image is not damaged
    # every cell read at its level is exactly what the undamaged slide gives
    read = labels == TISSUE
    np.testing.assert_array_equal(heatmap.probabilities[:, read], reference.probabilities[:, read])
    assert np.isnan(heatmap.probabilities[:, unreadable]).all()
    np.testing.assert_allclose(heatmap.probabilities[:, other], reference.probabilities[:, other], atol=0.02)
    # counted in the metadata, the summary, the batch table and the printed line
    assert (meta.unreadable_cells, meta.other_level_cells) == (unreadable.sum(), other.sum())
    assert meta.patches_scored == reference.tissue.sum() - unreadable.sum()
    summary = json.loads(report_paths(out / "damaged.zarr")["summary"].read_text())
    assert (summary["unreadable_cells"], summary["other_level_cells"]) == (unreadable.sum(), other.sum())
    assert summary["scored_cells"] == meta.patches_scored
    (row,) = read_batch_table(out / BATCH_TABLE).values()
    counted = f"{unreadable.sum()} cells unreadable at every level"
    assert row["status"] == "partial" and counted in row["reason"]
    assert f"{other.sum()} cells read from another pyramid level" in row["reason"]
    assert f"partial {slides['damaged']} -> {out / 'damaged.zarr'} (" in printed and counted in printed
    colours = {c["label-value"] for c in _label_attrs(out / "damaged.zarr")["colors"]}
    assert colours == {TISSUE, UNREADABLE, OTHER_LEVEL}


def _label_attrs(store: Path) -> dict:
    attributes = json.loads((store / "labels" / "tissue" / "zarr.json").read_text())["attributes"]
    return attributes["ome"]["image-label"]


def test_unreadable_cells_are_tried_again_only_when_asked(
    tmp_path, slides, probe_model, client, reference, backend, monkeypatch
):
    """A read failing once (a network file system's hiccup): the re-run keeps the partial heatmap, and
    ``retry_unreadable`` scores the blocks holding unreadable cells again, giving the undamaged heatmap."""
    slide = Path(shutil.copy(slides["good"], tmp_path / "flaky.svs"))
    read_level = Slide.read_level

    def failing_on_level_0_and_1(self, level, x, y, width, height):  # however decoded
        if self.read_levels[level][0] < 2 and x < 2000 / self.read_downsamples[level] < x + width:
            raise UnreadablePixelsError(self.path, "cannot read pixels (simulated)")
        return read_level(self, level, x, y, width, height)

    options = ScoreOptions(block_cells=BLOCK_CELLS, backend=backend)
    score = [slide], probe_model, tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr(Slide, "read_level", failing_on_level_0_and_1)
        (first,) = score_slides(*score, options=options, client=client, show_progress=False)
    lost = first.message.split(" cells unreadable")[0].split("; ")[-1]
    assert first.status == "partial" and int(lost) > 0
    scored = count_patches(monkeypatch)
    (again,) = score_slides(*score, options=options, client=client, show_progress=False)
    assert again.status == "partial" and "complete heatmap exists" in again.message and scored == []
    retry = ScoreOptions(block_cells=BLOCK_CELLS, backend=backend, retry_unreadable=True)
    (retried,) = score_slides(*score, options=retry, client=client, show_progress=False)
    assert retried.status == "ok" and "blocks with unreadable cells read again" in retried.message
    assert 0 < sum(scored) < reference.tissue.sum()  # only the blocks that held unreadable cells
    heatmap = read_heatmap(tmp_path / "out" / "flaky.zarr")
    assert heatmap.complete and heatmap.metadata.unreadable_cells == 0
    np.testing.assert_array_equal(heatmap.probabilities, reference.probabilities)
    np.testing.assert_array_equal(heatmap.labels, reference.labels)


def test_a_tissue_image_tile_that_cannot_be_decoded_is_read_from_another_level(slides, caplog):
    damaged = slides["damaged"].with_name("thumb.svs")
    shutil.copy(slides["good"], damaged)
    corrupt_tiles(damaged, 2, [(0, 0)])  # the 16× level, the tissue image's
    with Slide(slides["good"]) as good, Slide(damaged) as slide, caplog.at_level(logging.WARNING):
        expected, thumbnail = good.thumbnail(8.0), slide.thumbnail(8.0)
    assert np.abs(thumbnail.astype(int) - expected).mean() < 1.0
    assert "1 pieces of 256 px read from another level, 0 left white" in caplog.text

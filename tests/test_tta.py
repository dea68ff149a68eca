"""Test-time augmentation in scoring runs: the heatmap holds the mean over each patch's 8 flips/rotations."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from wsi_pipeline import read_heatmap
from wsi_pipeline.cli.score import main
from wsi_pipeline.model.predict import Model
from wsi_pipeline.slide.reader import Slide
from wsi_pipeline.store.heatmap import read_record
from wsi_pipeline.store.metadata import parameter_differences
from wsi_pipeline.tiling.grid import split_blocks
from wsi_pipeline.tiling.patches import read_block_patches

from .conftest import make_slide
from .test_onnx_engine import tiny_model

V1_HEATMAP = Path(__file__).parent / "fixtures" / "heatmap_v1" / "complete" / "node.zarr"


def test_tta_heatmap_is_the_mean_over_the_eight_views_and_never_mixes_with_plain_scores(tmp_path, capsys):
    folder = tiny_model(tmp_path / "tiny")
    slide_path = tmp_path / "s.svs"
    make_slide(slide_path, 1600, 1200, 0.5, [(600.0, 500.0, 1000.0, 800.0)])
    common = [str(slide_path), "--model", str(folder), "--scheduler", "threads", "--engine", "torch", "-q"]
    assert main([*common, "-o", str(tmp_path / "tta"), "--tta", "--no-reports"]) == 0
    assert main([*common, "-o", str(tmp_path / "plain"), "--no-reports"]) == 0
    tta, plain = (read_heatmap(tmp_path / name / "s.zarr") for name in ("tta", "plain"))
    assert tta.metadata.tta is True and plain.metadata.tta is False
    np.testing.assert_array_equal(tta.tissue, plain.tissue)

    model = Model(folder, torch.device("cpu"), "torch")
    with Slide(slide_path) as slide:
        for block in split_blocks(tta.grid.shape, 32):
            cells = tta.tissue[block.cells]
            if cells.any():
                patches = read_block_patches(slide, tta.grid, block, cells)
                views = [np.ascontiguousarray(np.rot90(patches, k, axes=(1, 2))) for k in range(4)]
                views += [np.ascontiguousarray(view[:, :, ::-1]) for view in views]
                expected = np.mean([model.predict(view) for view in views], axis=0)
                scores = tta.probabilities[(slice(None), *block.cells)][:, cells].T
                np.testing.assert_allclose(scores, expected, atol=1e-5)
    scored = tta.tissue
    assert np.abs(tta.probabilities[:, scored] - plain.probabilities[:, scored]).max() > 1e-4  # ≫ float noise

    assert main([*common, "-o", str(tmp_path / "plain")]) == 0  # same options: kept
    assert main([*common, "-o", str(tmp_path / "plain"), "--tta"]) == 1
    assert "test-time augmentation False in the heatmap, True now" in capsys.readouterr().err


def test_heatmaps_from_before_engine_and_tta_were_recorded_count_as_torch_without_tta():
    old = read_record(V1_HEATMAP)  # written before the metadata was versioned, migrated when read
    assert (old.models[0].engine, old.tta) == ("torch", False)
    assert parameter_differences(old, old) == []
    changed = replace(old, models=(replace(old.models[0], engine="onnxruntime"),), tta=True)
    assert parameter_differences(old, changed) == [
        "CPU engine 'torch' in the heatmap, 'onnxruntime' now",
        "test-time augmentation False in the heatmap, True now",
    ]

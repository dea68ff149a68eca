"""The bundled default model, end to end against ground truth on held-out synthetic slides."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wsi_pipeline import ScoreOptions, read_heatmap, score_slides
from wsi_pipeline.evaluation.truth import evaluate_heatmap, summarise
from wsi_pipeline.model.bundled import DEFAULT_MODEL, bundled_models_dir
from wsi_pipeline.model.folder import read_card
from wsi_pipeline.synthetic.scene import make_scene
from wsi_pipeline.synthetic.sets import read_truth_polygons, write_synthetic_slide

from .conftest import REPO


def test_card_is_honest_and_reproducible():
    folder = bundled_models_dir() / DEFAULT_MODEL
    card = read_card(folder)
    assert card.class_names == ["normal", "tumour"] and card.output == "sigmoid"
    assert "synthetic" in card.description.lower() and "not for diagnosis" in card.description.lower()
    assert card.training["command"].startswith("wsi-train ")
    recipe = (folder / "recipe.sh").read_text()
    assert "wsi-synth slides" in recipe and "wsi-train" in recipe
    assert card.metrics["validation"]["auc"] > 0.95
    test = json.loads((folder / "test_metrics.json").read_text())
    assert test["metrics"]["auc"] == pytest.approx(card.metrics["test"]["auc"])
    assert card.metrics["test"]["command"].startswith("wsi-eval ")


def test_finds_metastases_on_held_out_slides(tmp_path, client):
    # seeds 500+ are never used for training data (recipe.sh uses 2, 3, 12, 13)
    paths = []
    for index, n_metastases in enumerate([2, 0]):
        path = tmp_path / f"heldout_{index}.svs"
        write_synthetic_slide(path, make_scene(4000, 3000, 0.5, 500 + index, n_metastases, (250, 600)))
        paths.append(path)
    results = score_slides(paths, DEFAULT_MODEL, tmp_path / "out", options=ScoreOptions(), client=client)
    evaluations = [evaluate_heatmap(read_heatmap(r.heatmap), read_truth_polygons(r.slide)) for r in results]
    positive, negative = evaluations
    assert [m["detected"] for m in positive["metastases"]] == [True, True]
    assert positive["slide_score"] > negative["slide_score"]
    summary = summarise(evaluations, min_diameter_um=200)
    assert summary["cell_auc"] > 0.9
    assert summary["large_detected_fraction"] == 1.0
    # few false alarms on the tumour-free slide
    assert np.mean(negative["cell_scores"] >= 0.5) < 0.05


def test_readme_third_command_uses_the_bundled_sample():
    readme = (REPO / "README.md").read_text()
    assert "wsi-score sample_slides/synthetic-node_19_000.svs" in readme

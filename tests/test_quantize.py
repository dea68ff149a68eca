"""int8 (model.quantize): agreement with float32 on real tissue, falling back to float32, and the cache."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from wsi_pipeline import read_heatmap
from wsi_pipeline.cli.score import main
from wsi_pipeline.model import onnx as onnx_engine
from wsi_pipeline.model import quantize
from wsi_pipeline.model.architectures import build_module
from wsi_pipeline.model.bundled import DEFAULT_MODEL, resolve_model_folder
from wsi_pipeline.model.card import ModelCard
from wsi_pipeline.model.folder import read_card
from wsi_pipeline.model.predict import Model
from wsi_pipeline.model.weights import save_model
from wsi_pipeline.scoring.calibration import calibration_patches
from wsi_pipeline.scoring.options import ScoreOptions
from wsi_pipeline.store.heatmap import read_record

from .conftest import CMU_SLIDE, REPO

CPU = torch.device("cpu")
SYNTHETIC_NODE = REPO / "sample_slides" / "synthetic-node_19_000.svs"
FIXTURES = REPO / "tests" / "fixtures"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A fresh cache folder per test."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(onnx_engine.CACHE_ENV, str(folder))
    return folder


@pytest.fixture(scope="module")
def node_patches() -> np.ndarray:
    """Tissue patches of the synthetic sample node at the default model's scale, in random order."""
    card = read_card(resolve_model_folder(DEFAULT_MODEL))
    return calibration_patches(SYNTHETIC_NODE, card, ScoreOptions(stride=48), n=400)


@pytest.fixture(scope="module")
def timm_model(tmp_path_factory):
    """timm's test_resnet taking 96 px at 1 µm/px, and patches of real H&E (CMU-1). Its weights are random
    (fixed seed) and its batch-norm statistics those of the patches, so activations have a trained network's
    scale and its probabilities spread (about 0.5–0.75) rather than sit at one value."""
    torch.manual_seed(0)
    card = ModelCard(name="timm-test-resnet", architecture="test_resnet", class_names=["normal", "tumour"])
    card.output, card.mpp, card.mean, card.std = "softmax", 1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    patches = calibration_patches(CMU_SLIDE, card, ScoreOptions(stride=32), n=400)
    module = build_module(card)
    for layer in module.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.reset_running_stats()
            layer.momentum = None  # a cumulative average
    with torch.no_grad():
        module.train()(torch.from_numpy(patches[:200]).permute(0, 3, 1, 2).float() / 255)
    return save_model(tmp_path_factory.mktemp("models") / "timm", module.eval(), card), patches


def agreement(folder, calibration: np.ndarray, scored: np.ndarray) -> quantize.Agreement:
    """int8 (calibrated on ``calibration``) against float32 on ``scored``."""
    int8 = Model(folder, CPU, "torch", "int8", calibration)
    assert (int8.precision, int8.engine) == ("int8", "onnxruntime")
    return quantize.Agreement.of(Model(folder, CPU).predict(scored), int8.predict(scored))


def test_int8_agrees_with_float32_on_tissue(node_patches, timm_model):
    """On tissue patches the calibration never saw, int8 stays within the tolerance of float32."""
    assert agreement(DEFAULT_MODEL, node_patches[:200], node_patches[200:]).acceptable
    folder, cmu = timm_model
    assert agreement(folder, cmu[:200], cmu[200:]).acceptable


def test_disagreeing_int8_falls_back_to_float32_with_one_warning(node_patches, cache, monkeypatch):
    """Calibrated on background (white) but checked on tissue (the held-out third), int8 is refused, with one
    warning, on this load and on the next (from the cache, without calibrating again)."""
    white = np.full((200, 96, 96, 3), 236, np.uint8)
    calibration = np.concatenate([white, node_patches[:100]])
    for load in range(2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = Model(DEFAULT_MODEL, CPU, "torch", "int8", calibration)
        assert (model.precision, model.engine, model.calibration_sha256) == ("float32", "torch", None)
        (warning,) = [str(w.message) for w in caught if "int8" in str(w.message)]
        assert "int8 not used, scoring in float32" in warning and "differs from float32" in warning
        if load == 0:
            monkeypatch.setattr(quantize, "quantize", pytest.fail)  # a second calibration would fail


def test_int8_cache_is_hit_on_the_second_load(node_patches, cache, monkeypatch):
    calibration = node_patches[:150]
    first = Model(DEFAULT_MODEL, CPU, "auto", "int8", calibration)
    assert len(list((cache / "int8").glob("*.onnx"))) == 1
    monkeypatch.setattr(quantize, "quantize", pytest.fail)  # a second calibration would fail
    again = Model(DEFAULT_MODEL, CPU, "auto", "int8", calibration)
    sha256 = quantize.calibration_sha256(calibration)
    by_sha256 = Model(DEFAULT_MODEL, CPU, "torch", "int8", sha256)  # as workers load it
    assert first.calibration_sha256 == again.calibration_sha256 == by_sha256.calibration_sha256 == sha256
    scores = [model.predict(node_patches[150:200]) for model in (first, again, by_sha256)]
    np.testing.assert_array_equal(scores[0], scores[1])
    np.testing.assert_array_equal(scores[0], scores[2])


def test_int8_named_by_an_uncached_sha256_is_an_error():
    with pytest.raises(RuntimeError, match="no int8 model calibrated on 000000000000"):
        Model(DEFAULT_MODEL, CPU, "torch", "int8", "0" * 64)


def test_int8_needs_the_cpu_and_calibration():
    with pytest.raises(ValueError, match="CPU"):
        Model(DEFAULT_MODEL, torch.device("meta"), "torch", "int8", "0" * 64)
    with pytest.raises(ValueError, match="calibration"):
        Model(DEFAULT_MODEL, CPU, "torch", "int8")


def test_wsi_score_records_int8_and_refuses_to_resume_in_float32_or_another_int8(tmp_path, capsys):
    """``--precision int8`` scores in int8 (calibrated on the slide's own tissue), records it with the
    calibration, and a float32 run over the heatmap, or an int8 run calibrated on other patches, is refused,
    naming the difference."""
    common = [str(SYNTHETIC_NODE), "-o", str(tmp_path), "--scheduler", "threads", "--no-reports", "-q"]
    assert main([*common, "--precision", "int8"]) == 0
    heatmap = read_heatmap(tmp_path / f"{SYNTHETIC_NODE.stem}.zarr")
    (model,) = heatmap.metadata.models
    assert (model.precision, model.engine, heatmap.metadata.engines) == (
        "int8",
        "onnxruntime",
        ("onnxruntime",),
    )
    card = read_card(resolve_model_folder(DEFAULT_MODEL))
    calibration = calibration_patches(SYNTHETIC_NODE, card, ScoreOptions())
    assert model.calibration_sha256 == quantize.calibration_sha256(calibration)
    assert main(common) == 1
    assert "precision 'int8' in the heatmap, 'float32' now" in capsys.readouterr().err
    assert main([*common, "--precision", "int8", "--calibration", str(CMU_SLIDE)]) == 1
    assert (
        f"int8 calibration (sha256) {model.calibration_sha256[:12]}… in the heatmap"
        in capsys.readouterr().err
    )


def test_an_int8_heatmap_is_calibrated_again_as_it_was_made_whatever_its_jpeg_scaling(tmp_path, capsys):
    """A re-run without ``--jpeg-scaling`` reads a heatmap as it was made, its int8 calibration too: the
    calibration's sha256 matches and the heatmap is kept (read with scaling it would differ, and be
    refused)."""
    common = [str(SYNTHETIC_NODE), "-o", str(tmp_path), "--scheduler", "threads", "--no-reports", "-q"]
    common += ["--precision", "int8"]
    assert main([*common, "--jpeg-scaling", "off"]) == 0
    (made,) = read_heatmap(tmp_path / f"{SYNTHETIC_NODE.stem}.zarr").metadata.models
    card = read_card(resolve_model_folder(DEFAULT_MODEL))
    scaled = calibration_patches(SYNTHETIC_NODE, card, ScoreOptions(jpeg_scaling="auto"))
    assert made.calibration_sha256 != quantize.calibration_sha256(scaled)  # scaling reads other patches
    capsys.readouterr()
    assert main(common) == 0
    assert "complete heatmap exists" in capsys.readouterr().out


@pytest.mark.parametrize("fixture", ["heatmap_v1/complete", "heatmap_v2/complete"])
def test_heatmaps_made_before_precision_was_recorded_read_as_float32(fixture):
    (model,) = read_record(FIXTURES / fixture / "node.zarr").models
    assert (model.precision, model.calibration_sha256) == ("float32", None)

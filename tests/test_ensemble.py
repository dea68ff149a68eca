"""Ensembles: every patch scored by each member and the heatmap holding the mean; members that differ in patch
size, µm/px or class names refused before anything runs; every member recorded and part of the resume
identity."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from wsi_pipeline import ModelCard, ScoreOptions, build_module, read_heatmap, save_model, score_slides
from wsi_pipeline.cli.score import main
from wsi_pipeline.core.errors import InputError
from wsi_pipeline.model.bundled import DEFAULT_MODEL
from wsi_pipeline.scoring import planning, worker
from wsi_pipeline.scoring.ledger import BATCH_TABLE, read_batch_table
from wsi_pipeline.store.metadata import parameter_differences

from .conftest import make_slide

OPTIONS = ScoreOptions(block_cells=4, engine="torch")


def probe(folder: Path, weight: float, bias: float = 0.0, **card: object) -> Path:
    """A centre-colour probe (as ``conftest.probe_model``) with its own weights and card."""
    card = ModelCard(name=folder.name, architecture="centre_colour", class_names=["light", "dark"], **card)
    module = build_module(card)
    with torch.no_grad():
        module.linear.weight.fill_(weight)
        module.linear.bias.fill_(bias)
    return save_model(folder, module, card)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {
        "a": probe(folder / "a", -1.0),
        "b": probe(folder / "b", -0.5, 0.3),
        "c": probe(folder / "c", -2.0),
        "small": probe(folder / "small", -1.0, patch_size=64),
        "coarse": probe(folder / "coarse", -1.0, mpp=1.0),
    }


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("slides") / "s.svs"
    make_slide(path, 2400, 2000, 0.5, [(900.0, 900.0, 1500.0, 1400.0)])
    return path


def scored(slide: Path, model: object, out: Path, client) -> object:
    (result,) = score_slides([slide], model, out, options=OPTIONS, client=client, show_progress=False)
    return result


@pytest.mark.parametrize(
    ("other", "difference"),
    [
        ("small", "patch size: a 96, small 64"),
        ("coarse", "µm/px: a 0.972, coarse 1.0"),
        ("default", f"class names: a ['light', 'dark'], {DEFAULT_MODEL} ['normal', 'tumour']"),
    ],
)
def test_members_that_differ_are_refused_before_anything_runs(
    tmp_path, capsys, models, slide, other, difference
):
    second = DEFAULT_MODEL if other == "default" else str(models[other])
    with pytest.raises(InputError, match=re.escape(f"ensemble members differ in {difference}")):
        score_slides([slide], [models["a"], second], tmp_path / "api", options=OPTIONS, scheduler="threads")
    code = main([str(slide), "--model", str(models["a"]), "--model", second, "-o", str(tmp_path / "cli")])
    assert code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("wsi-score: error: ") and f"ensemble members differ in {difference}" in line
    assert not (tmp_path / "api").exists() and not (tmp_path / "cli").exists()  # nothing ran


def test_an_ensemble_heatmap_is_the_mean_of_its_members(tmp_path, models, slide, client, monkeypatch):
    alone = {
        name: read_heatmap(scored(slide, models[name], tmp_path / name, client).heatmap) for name in "ab"
    }
    chosen = []
    choose_engine = planning.choose_engine

    def spy(*args, **kwargs):
        chosen.append(args)
        return choose_engine(*args, **kwargs)

    monkeypatch.setattr(planning, "choose_engine", spy)
    result = scored(slide, [models["a"], models["b"]], tmp_path / "ab", client)
    assert [Path(folder) for folder, _ in chosen] == [models["a"], models["b"]]  # one engine per member
    ensemble = read_heatmap(result.heatmap)
    mean = (alone["a"].probabilities + alone["b"].probabilities) / 2
    np.testing.assert_allclose(ensemble.probabilities, mean, rtol=1e-6, equal_nan=True)
    assert not np.allclose(alone["a"].probabilities, alone["b"].probabilities, equal_nan=True)
    record = ensemble.metadata
    assert [model.name for model in record.models] == ["a", "b"] and record.model_name == "a + b"
    assert [model.weights_sha256 for model in record.models] == [
        alone[name].metadata.models[0].weights_sha256 for name in "ab"
    ]
    assert [model.engine for model in record.models] == ["torch", "torch"] and record.engines == ("torch",)
    # each member was loaded once by the (in-process) workers, keyed by its weights (and engine: other tests'
    # probes with the same weights may run on ONNX Runtime in this process)
    loaded = [(weights, engine) for weights, _, engine, *_ in worker._models]
    assert all(loaded.count((model.weights_sha256, "torch")) == 1 for model in record.models)
    (row,) = read_batch_table(tmp_path / "ab" / BATCH_TABLE).values()
    assert row["model_name"] == "a + b"
    assert row["weights_sha256"] == " + ".join(model.weights_sha256 for model in record.models)
    assert [model["name"] for model in result.summary["models"]] == ["a", "b"]
    # the same model twice is the model alone, to the bit
    twice = read_heatmap(scored(slide, [models["a"], models["a"]], tmp_path / "aa", client).heatmap)
    np.testing.assert_array_equal(twice.probabilities, alone["a"].probabilities)


def test_every_member_is_part_of_the_resume_identity(tmp_path, models, slide, client):
    out = tmp_path / "out"
    first = scored(slide, [models["a"], models["b"]], out, client)
    assert first.status == "ok"
    record = read_heatmap(first.heatmap).metadata
    alone = {
        name: read_heatmap(scored(slide, models[name], tmp_path / name, client).heatmap) for name in "abc"
    }
    sha = {name: heatmap.metadata.models[0].weights_sha256[:12] for name, heatmap in alone.items()}
    for others, shown in [(["a"], f"{sha['a']}…"), (["a", "c"], f"{sha['a']}… + {sha['c']}…")]:
        refused = scored(slide, [models[name] for name in others], out, client)
        assert refused.status == "failed"
        assert (
            f"model weights (sha256) {sha['a']}… + {sha['b']}… in the heatmap, {shown} now" in refused.message
        )
    assert scored(slide, [models["a"], models["b"]], out, client).status == "skipped"
    assert parameter_differences(record, record) == []
    engines = [model.engine for model in record.models]
    assert parameter_differences(record, alone["a"].metadata)[:2] == [
        f"model weights (sha256) {sha['a']}… + {sha['b']}… in the heatmap, {sha['a']}… now",
        f"CPU engine {' + '.join(map(repr, engines))} in the heatmap, 'torch' now",
    ]

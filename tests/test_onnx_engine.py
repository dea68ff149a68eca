"""The ONNX Runtime engine: export, cache, check against torch, engine choice, and falling back to torch."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from wsi_pipeline import read_heatmap
from wsi_pipeline.cli.score import main
from wsi_pipeline.model import onnx as onnx_engine
from wsi_pipeline.model import predict, weights
from wsi_pipeline.model.architectures import build_module
from wsi_pipeline.model.bundled import DEFAULT_MODEL
from wsi_pipeline.model.card import ModelCard
from wsi_pipeline.model.folder import read_card
from wsi_pipeline.model.predict import Model
from wsi_pipeline.model.weights import save_model

from .conftest import make_slide

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A fresh cache folder per test."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(onnx_engine.CACHE_ENV, str(folder))
    return folder


def tiny_model(folder, class_names=("normal", "tumour"), output="sigmoid", input_size=None):
    torch.manual_seed(0)
    card = ModelCard(
        name="tiny",
        architecture="compact_cnn",
        class_names=list(class_names),
        output=output,
        patch_size=32,
        architecture_args={"depth": 2, "width": 4},
        input_size=input_size,
    )
    module = build_module(card)
    with torch.no_grad():  # BN statistics away from the identity, so a wrong export shows
        for layer in module.modules():
            if isinstance(layer, torch.nn.BatchNorm2d):
                layer.running_mean.uniform_(-0.5, 0.5)
                layer.running_var.uniform_(0.5, 2.0)
    return save_model(folder, module, card)


def patches(n, side, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("class_names", "output", "input_size"),
    [
        (("normal", "tumour"), "sigmoid", None),
        (("a", "b", "c"), "softmax", None),
        (("n", "t"), "sigmoid", 48),
    ],
)
def test_onnxruntime_gives_torchs_probabilities(tmp_path, cache, class_names, output, input_size):
    folder = tiny_model(tmp_path / "tiny", class_names, output, input_size)
    torch_model, onnx_model = Model(folder, CPU, "torch"), Model(folder, CPU, "onnxruntime")
    assert (torch_model.engine, onnx_model.engine) == ("torch", "onnxruntime")
    batch = patches(37, 32)
    expected = torch_model.predict(batch, batch_size=16)
    result = onnx_model.predict(batch, batch_size=16)  # batches of 16, 16 and 5: any batch size
    assert result.shape == (37, len(class_names)) and result.dtype == np.float32
    np.testing.assert_allclose(result, expected, atol=1e-5)
    # the 8 views of TTA, and patches given as a tensor (as CUDA workers give them, in pinned memory)
    expected = torch_model.predict(torch.from_numpy(batch), batch_size=16, tta=True)
    assert np.abs(expected - torch_model.predict(batch)).max() > 1e-4  # the views differ
    for given in (batch, torch.from_numpy(batch)):
        np.testing.assert_allclose(onnx_model.predict(given, batch_size=16, tta=True), expected, atol=1e-5)
    assert len(list((cache / "onnx").glob("*.onnx"))) == 1


def test_the_bundled_default_model_runs_on_onnxruntime():
    torch_model, onnx_model = Model(DEFAULT_MODEL, CPU, "torch"), Model(DEFAULT_MODEL, CPU, "onnxruntime")
    assert onnx_model.engine == "onnxruntime"
    batch = patches(64, 96)
    np.testing.assert_allclose(onnx_model.predict(batch), torch_model.predict(batch), atol=1e-5)


def test_a_cached_export_is_reused_and_keyed_by_the_weights(tmp_path, cache, monkeypatch):
    first = tiny_model(tmp_path / "tiny")
    reference = Model(first, CPU, "torch").predict(patches(4, 32))
    Model(first, CPU, "onnxruntime")
    assert len(list((cache / "onnx").glob("*.onnx"))) == 1
    assert len(list((cache / "onnx").glob("*.checked.json"))) == 1
    assert not list((cache / "onnx").glob(".*partial"))  # written atomically: no leftovers

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    def no_torch_module(*args, **kwargs):
        raise AssertionError("loaded the torch module")

    monkeypatch.setattr(onnx_engine, "export_onnx", no_export)
    monkeypatch.setattr(weights, "load_module", no_torch_module)  # the export was checked when made
    again = Model(first, CPU, "onnxruntime")
    assert again.engine == "onnxruntime"
    np.testing.assert_allclose(again.predict(patches(4, 32)), reference, atol=1e-3)
    monkeypatch.undo()
    monkeypatch.setenv(onnx_engine.CACHE_ENV, str(cache))
    torch.manual_seed(5)
    card = read_card(first)
    other = save_model(tmp_path / "other", build_module(card), card)  # same card, other weights
    Model(other, CPU, "onnxruntime")
    assert len(list((cache / "onnx").glob("*.onnx"))) == 2


def test_an_unwritable_cache_warns_and_still_runs_onnxruntime(tmp_path, monkeypatch):
    folder = tiny_model(tmp_path / "tiny")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(onnx_engine.CACHE_ENV, str(blocker))
    for engine, runs in (("auto", ("torch", "onnxruntime")), ("onnxruntime", ("onnxruntime",))):
        with pytest.warns(UserWarning, match="cannot cache"):
            assert Model(folder, CPU, engine).engine in runs


def test_auto_races_the_engines_once_and_follows_the_cached_choice(tmp_path, cache):
    folder = tiny_model(tmp_path / "tiny")
    first = Model(folder, CPU, "auto")
    (choice,) = (cache / "engine").glob("*.json")
    seconds = json.loads(choice.read_text())
    assert seconds["torch"] > 0 and seconds["onnxruntime"] > 0
    assert first.engine == ("onnxruntime" if seconds["onnxruntime"] < seconds["torch"] else "torch")
    (exported,) = (cache / "onnx").glob("*.onnx")
    exported.unlink()
    choice.write_text(json.dumps({"torch": 1.0, "onnxruntime": 2.0}))
    assert Model(folder, CPU, "auto").engine == "torch"
    assert not exported.exists()  # torch is known to be faster: nothing exported
    choice.write_text(json.dumps({"torch": 2.0, "onnxruntime": 1.0}))
    assert Model(folder, CPU, "auto").engine == "onnxruntime"


def test_torch_runs_on_cuda_and_unknown_engines_are_refused(tmp_path):
    folder = tiny_model(tmp_path / "tiny")
    with pytest.raises(ValueError, match="runs on the CPU"):
        Model(folder, torch.device("cuda"), "onnxruntime")
    with pytest.raises(ValueError, match="engine must be one of"):
        Model(folder, CPU, "tensorrt")


def test_without_onnxruntime_the_model_warns_and_runs_torch(tmp_path, monkeypatch):
    folder = tiny_model(tmp_path / "tiny")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime → ImportError
    for engine in ("auto", "onnxruntime"):
        with pytest.warns(UserWarning, match="ONNX Runtime not used.*ModuleNotFoundError"):
            assert Model(folder, CPU, engine).engine == "torch"


def test_an_export_that_disagrees_with_torch_is_refused_and_dropped(tmp_path, cache, monkeypatch):
    folder = tiny_model(tmp_path / "tiny")
    wrong = onnx_engine.export_onnx

    def export_of_another_module(module, input_shape):
        torch.manual_seed(9)
        return wrong(build_module(read_card(folder)).eval(), input_shape)

    monkeypatch.setattr(onnx_engine, "export_onnx", export_of_another_module)
    with pytest.warns(UserWarning, match="differs from torch"):
        model = Model(folder, CPU, "onnxruntime")
    assert model.engine == "torch"
    assert not list((cache / "onnx").glob("*"))  # the next load exports and checks afresh
    np.testing.assert_allclose(
        model.predict(patches(4, 32)), Model(folder, CPU, "torch").predict(patches(4, 32))
    )


def test_choose_engine_races_with_one_thread_whatever_the_callers_count(tmp_path, cache):
    folder = tiny_model(tmp_path / "tiny")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        chosen = predict.choose_engine(folder, "auto")
        assert torch.get_num_threads() == 2  # the caller's count is given back
    finally:
        torch.set_num_threads(threads)
    (choice,) = (cache / "engine").glob("*.json")
    assert choice.name.endswith("-1t.json")  # measured as a single-threaded Dask worker runs
    assert chosen == predict.faster_engine(choice)
    choice.write_text(json.dumps({"torch": 2.0, "onnxruntime": 1.0}))
    assert predict.choose_engine(folder, "auto") == "onnxruntime"
    assert predict.choose_engine(folder, "torch") == "torch"
    with pytest.raises(ValueError, match="engine must be one of"):
        predict.choose_engine(folder, "tensorrt")


def test_wsi_score_runs_the_chosen_engine_on_every_block_and_resumes_only_with_it(tmp_path, capsys):
    folder = tiny_model(tmp_path / "tiny")
    slide = tmp_path / "s.svs"
    make_slide(slide, 2400, 2000, 0.5, [(900.0, 900.0, 1500.0, 1400.0)])
    common = [str(slide), "--model", str(folder), "--scheduler", "threads", "--block-cells", "8", "-q"]
    heatmaps = {}
    for engine in ("torch", "onnxruntime"):
        assert main([*common, "-o", str(tmp_path / engine), "--engine", engine, "--no-reports"]) == 0
        heatmaps[engine] = read_heatmap(tmp_path / engine / "s.zarr")
        assert heatmaps[engine].metadata.models[0].engine == engine
        assert heatmaps[engine].metadata.engines == (engine,)
    scored = heatmaps["torch"].tissue
    assert scored.sum() > 100
    onnx, reference = (heatmaps[engine].probabilities[:, scored] for engine in ("onnxruntime", "torch"))
    np.testing.assert_allclose(onnx, reference, atol=1e-3)
    # a heatmap is kept or resumed only by the engine that made it
    assert main([*common, "-o", str(tmp_path / "onnxruntime"), "--engine", "torch"]) == 1
    assert "CPU engine 'onnxruntime' in the heatmap, 'torch' now" in capsys.readouterr().err

"""Model folders: save and load safely, predict probabilities, clear errors for broken folders."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from wsi_pipeline import InputError, Model, ModelCard, build_module, read_card, resolve_device, save_model
from wsi_pipeline.model.bundled import resolve_model_folder
from wsi_pipeline.model.device import cuda_devices, cuda_driver_present, device_name


@pytest.mark.parametrize(
    ("architecture", "classes", "output"),
    [("resnet10t", ["normal", "tumour"], "sigmoid"), ("resnet10t", ["a", "b", "c"], "softmax")],
)
def test_timm_model_round_trip(tmp_path, architecture, classes, output):
    card = ModelCard(name="t", architecture=architecture, class_names=classes, output=output)
    module = build_module(card).eval()
    folder = save_model(tmp_path / "m", module, card)
    model = Model(folder, torch.device("cpu"))
    patches = np.random.default_rng(0).integers(0, 256, (5, 96, 96, 3), dtype=np.uint8)
    probs = model.predict(patches, batch_size=2)
    assert probs.shape == (5, len(classes))
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    x = torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255 - torch.tensor(card.mean).view(1, 3, 1, 1)
    x = x / torch.tensor(card.std).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = module(x)
    expected = torch.sigmoid(logits[:, 0]) if output == "sigmoid" else torch.softmax(logits, 1)[:, -1]
    np.testing.assert_allclose(probs[:, -1], expected.numpy(), rtol=1e-4, atol=1e-5)
    assert len(model.weights_sha256) == 64


def test_weights_that_do_not_fit_the_card(tmp_path, probe_model):
    card = json.loads((probe_model / "model.json").read_text())
    card["architecture"] = "resnet10t"
    folder = tmp_path / "mismatch"
    folder.mkdir()
    (folder / "model.json").write_text(json.dumps(card))
    (folder / "weights.safetensors").write_bytes((probe_model / "weights.safetensors").read_bytes())
    with pytest.raises(InputError, match="weights do not fit the card"):
        Model(folder, torch.device("cpu"))


def test_invalid_card_values(tmp_path, probe_model):
    card = json.loads((probe_model / "model.json").read_text())
    card["class_names"] = ["only-one"]
    (tmp_path / "model.json").write_text(json.dumps(card))
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match="invalid model card"):
        read_card(tmp_path)


def test_bundled_probe_is_found_by_name_and_says_what_it_is():
    folder = resolve_model_folder("centre-colour-probe")
    card = read_card(folder)
    assert "NOT a tumour classifier" in card.description and card.training["data"] == "none"


def test_device_choice_on_a_machine_without_cuda():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda:0")
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        resolve_device("tpu")


def test_device_names_agree_with_torch_and_need_it_only_with_a_cuda_driver():
    assert device_name("auto") == str(resolve_device("auto"))
    assert device_name("cpu") == "cpu"
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        device_name("tpu")
    if not cuda_driver_present():  # this machine: the answer comes without torch
        assert not torch.cuda.is_available()
        code = "import sys; from wsi_pipeline.model.device import device_name; "
        code += "print(device_name('auto'), 'torch' in sys.modules)"
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert run.stdout.split() == ["cpu", "False"]
    assert cuda_devices() == [f"cuda:{index}" for index in range(torch.cuda.device_count())]

"""Models people already have, loaded as they are: PyTorch state dicts, WSInfer model-zoo folders and
TorchScript; pickles of arbitrary objects refused without being run."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from wsi_pipeline import InputError, Model, ModelCard, build_module, save_model, score_slides
from wsi_pipeline.store.heatmap import read_heatmap

from .conftest import make_slide

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.* is deprecated:FutureWarning")
CPU = torch.device("cpu")
MEAN, STD = (0.7238, 0.5716, 0.6779), (0.112, 0.1459, 0.1089)  # a WSInfer zoo model's normalisation


class Tiny(torch.nn.Module):
    """A small classifier standing in for a custom architecture only its TorchScript archive describes."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(-2, -1)))


def _touch(path: str) -> None:
    Path(path).touch()


class SideEffect:
    """Unpickling this object creates a file: the harm a malicious checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (_touch, (self.marker,))


def random_patches(n: int, size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def direct_probabilities(module, patches, mean, std, input_size, output) -> np.ndarray:
    """Probabilities computed straight from the module: normalise, resize, run, softmax / sigmoid."""
    x = torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    if input_size is not None:
        x = torch.nn.functional.interpolate(x, size=(input_size, input_size), mode="bilinear", antialias=True)
    with torch.no_grad():
        logits = module.eval()(x)
    if output == "sigmoid":
        positive = torch.sigmoid(logits[:, 0])
        return torch.stack([1 - positive, positive], dim=1).numpy()
    return torch.softmax(logits, dim=1).numpy()


def write_card(folder: Path, card: ModelCard) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.json").write_text(json.dumps(asdict(card)))


def wsinfer_config(architecture: str, class_names: list[str]) -> dict:
    """A WSInfer model-zoo config.json (spec 1.0): 350 px patches at 0.25 µm/px, resized to 224."""
    return {
        "spec_version": "1.0",
        "architecture": architecture,
        "num_classes": len(class_names),
        "class_names": class_names,
        "patch_size_pixels": 350,
        "spacing_um_px": 0.25,
        "transform": [
            {"name": "Resize", "arguments": {"size": 224}},
            {"name": "ToTensor"},
            {"name": "Normalize", "arguments": {"mean": list(MEAN), "std": list(STD)}},
        ],
    }


def write_config(folder: Path, config: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))


@pytest.mark.parametrize(
    ("architecture", "weights", "wrap"),
    [
        ("torchvision:resnet18", "model.pth", lambda state: state),
        # a training checkpoint: the state dict of a DataParallel module inside {"state_dict": ...}
        (
            "resnet10t",
            "last.ckpt",
            lambda state: {"state_dict": {f"module.{k}": v for k, v in state.items()}},
        ),
    ],
)
def test_pytorch_state_dicts_load_weights_only(tmp_path, architecture, weights, wrap):
    card = ModelCard("m", architecture, ["a", "b", "c"], output="softmax", patch_size=64, weights=weights)
    module = build_module(card)
    write_card(tmp_path, card)
    torch.save(wrap(module.state_dict()), tmp_path / weights)
    patches = random_patches(4, 64)
    probs = Model(tmp_path, CPU).predict(patches)
    expected = direct_probabilities(module, patches, card.mean, card.std, None, "softmax")
    np.testing.assert_allclose(probs, expected, atol=1e-5)


def test_wsinfer_folder_with_torchscript_warns_and_resizes(tmp_path):
    module = Tiny(num_classes=1).eval()
    write_config(tmp_path, wsinfer_config("custom-net", ["tumor"]))
    torch.jit.save(torch.jit.script(module), tmp_path / "torchscript_model.pt")
    with pytest.warns(UserWarning, match="TorchScript, which runs code"):
        model = Model(tmp_path, CPU)
    card = model.card
    assert (card.patch_size, card.mpp, card.input_size, card.weights_format) == (
        350,
        0.25,
        224,
        "torchscript",
    )
    assert card.class_names == ["not tumor", "tumor"] and card.output == "sigmoid"
    assert "WSInfer" in card.description and card.training["wsinfer_config"]["architecture"] == "custom-net"
    patches = random_patches(3, 350)
    expected = direct_probabilities(module, patches, MEAN, STD, 224, "sigmoid")
    np.testing.assert_allclose(model.predict(patches, batch_size=2), expected, atol=1e-5)


def test_wsinfer_folder_prefers_safetensors_to_torchscript(tmp_path, recwarn):
    module = build_module(ModelCard("m", "resnet10t", ["other", "tumor"], output="softmax"))
    write_config(tmp_path, wsinfer_config("resnet10t", ["other", "tumor"]))
    save_file(module.state_dict(), tmp_path / "model.safetensors")
    (tmp_path / "torchscript_model.pt").write_bytes(b"never read")
    model = Model(tmp_path, CPU)
    assert (model.card.weights, model.card.output, model.card.input_size) == (
        "model.safetensors",
        "softmax",
        224,
    )
    assert not [warning for warning in recwarn if "TorchScript" in str(warning.message)]
    patches = random_patches(2, 350)
    expected = direct_probabilities(module, patches, MEAN, STD, 224, "softmax")
    np.testing.assert_allclose(model.predict(patches), expected, atol=1e-5)


def test_a_pickle_of_other_objects_is_refused_unrun(tmp_path):
    marker = tmp_path / "unpickled"
    write_card(tmp_path, ModelCard("m", "centre_colour", ["light", "dark"], weights="model.pt"))
    torch.save({"state_dict": SideEffect(marker)}, tmp_path / "model.pt")
    with pytest.raises(InputError, match="refused: a weights-only load failed") as error:
        Model(tmp_path, CPU)
    assert error.value.path == str(tmp_path / "model.pt")
    assert not marker.exists()
    function, arguments = SideEffect(marker).__reduce__()  # what unpickling the file would call
    function(*arguments)
    assert marker.exists()  # the payload is live: only the refusal kept it from running


@pytest.mark.parametrize(
    ("layout", "file", "problem"),
    [
        ("unknown_architecture", "model.json", "unknown architecture 'torchvision:no_such_net'"),
        ("transformers_config", "config.json", "not WSInfer's config: no num_classes"),
        ("weights_do_not_fit", "model.pt", "weights do not fit the card"),
        ("missing_weights", "model.pt", "weights file named by the model card is missing"),
        ("wsinfer_without_weights", "config.json", "no weights: model.safetensors or pytorch_model.bin"),
        ("torchscript_not_declared", "model.pt", "with TorchScript archives"),
        ("not_torchscript", "model.pt", "not a TorchScript archive"),
    ],
)
def test_clear_errors_name_the_file(tmp_path, layout, file, problem):
    card = ModelCard("m", "centre_colour", ["light", "dark"], weights="model.pt")
    if layout == "unknown_architecture":
        card.architecture = "torchvision:no_such_net"
    elif layout == "weights_do_not_fit":
        torch.save(build_module(ModelCard("m", "compact_cnn", ["a", "b"])).state_dict(), tmp_path / file)
    elif layout == "torchscript_not_declared":
        torch.jit.save(torch.jit.script(Tiny(1)), tmp_path / file)
    elif layout == "not_torchscript":
        card.weights_format = "torchscript"
        torch.save(build_module(card).state_dict(), tmp_path / file)
    if layout == "transformers_config":
        write_config(tmp_path, {"architectures": ["ViTForImageClassification"], "num_labels": 2})
    elif layout == "wsinfer_without_weights":
        write_config(tmp_path, wsinfer_config("resnet10t", ["other", "tumor"]))
    else:
        write_card(tmp_path, card)
    with pytest.raises(InputError, match=problem) as error:
        Model(tmp_path, CPU)
    assert error.value.path == str(tmp_path / file)


def test_resized_model_scores_a_slide_on_its_own_grid(tmp_path, client):
    """224 px at 0.5 µm/px, taken by the model at 112 px: a 0.25 µm/px slide of 3200 × 2400 px is 1600 × 1200
    model pixels, so 5 × 7 cells of 112 µm."""
    card = ModelCard("probe-224", "centre_colour", ["light", "dark"], patch_size=224, mpp=0.5, input_size=112)
    module = build_module(card)
    with torch.no_grad():
        module.linear.weight.fill_(-1.0)
        module.linear.bias.zero_()
    folder = save_model(tmp_path / "model", module, card)
    slide = tmp_path / "slide.svs"
    make_slide(slide, 3200, 2400, 0.25, [(1300.0, 850.0, 1850.0, 1400.0)])  # covers cell (2, 3): x 1344-1792
    (result,) = score_slides([slide], folder, tmp_path / "out", client=client, show_progress=False)
    assert result.status == "ok", result.message
    heatmap = read_heatmap(result.heatmap)
    grid = heatmap.grid
    assert (grid.patch_size, grid.stride, grid.target_mpp, grid.cell_um) == (224, 224, 0.5, 112.0)
    assert grid.shape == (5, 7) and heatmap.probabilities.shape == (2, 5, 7)
    assert heatmap.probabilities[1, 2, 3] > 0.9 and heatmap.probabilities[1, 1, 1] < 0.5  # dark, pink tissue

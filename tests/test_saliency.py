"""Grad-CAM saliency (``Model.explain``): where it looks on synthetic slides with known metastases, which
models it explains, and the clear refusal for those it cannot."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsi_pipeline import ModelCard, Slide, build_module, save_model
from wsi_pipeline.core.errors import SaliencyUnavailableError
from wsi_pipeline.model.predict import Model
from wsi_pipeline.model.saliency import last_conv_stage, tumour_log_odds
from wsi_pipeline.synthetic.scene import make_scene
from wsi_pipeline.synthetic.sets import write_synthetic_slide

pytest.importorskip("captum", reason="captum is not installed (pip install -e '.[dev]')")

TARGET_MPP, PATCH, STEP = 0.972, 96, 24  # the bundled model's patches, sampled every 24 target px


@pytest.fixture(scope="module")
def model() -> Model:
    return Model("synthetic-pcam-cnn", torch.device("cpu"))


@pytest.fixture(scope="module")
def partial_tiles(tmp_path_factory, model) -> dict:
    """Patches of a synthetic slide (one metastasis of 250-600 µm) that the metastasis covers in part (20-80%
    of their pixels) and the bundled model calls tumour, with the truth of each pixel (the scene's own)."""
    scene = make_scene(4000, 3000, 0.5, 500, 1, (250, 600))  # seed 500: held out from the training data
    path = tmp_path_factory.mktemp("saliency") / "node.svs"
    write_synthetic_slide(path, scene)
    ds = TARGET_MPP / scene.mpp
    patches, truth = [], []
    with Slide(path) as slide:
        for y in range(0, int(scene.height0 / ds) - PATCH, STEP):
            for x in range(0, int(scene.width0 / ds) - PATCH, STEP):
                centres = (np.arange(PATCH) + 0.5) * ds
                tumour = scene.tumour(x * ds + centres[None, :], y * ds + centres[:, None])
                if 0.2 <= tumour.mean() <= 0.8:
                    patches.append(slide.read_at_mpp(x, y, PATCH, PATCH, TARGET_MPP))
                    truth.append(tumour)
    patches, truth = np.stack(patches), np.stack(truth)
    called = model.predict(patches)[:, 1] >= 0.5
    return {"patches": patches[called], "truth": truth[called]}


def test_saliency_lies_mostly_on_the_tumour_part_of_a_tile(model, partial_tiles):
    maps = model.explain(partial_tiles["patches"])
    truth = partial_tiles["truth"]
    share = (maps * truth).sum(axis=(1, 2)) / maps.sum(axis=(1, 2))  # of each tile's saliency mass
    area = truth.mean(axis=(1, 2))  # of each tile's pixels
    print(
        f"{len(share)} tiles: saliency on tumour {share.mean():.3f} (median {np.median(share):.3f}, "
        f"lowest {share.min():.3f}) where tumour covers {area.mean():.3f} of the pixels; "
        f"share > area on {(share > area).mean():.0%}"
    )
    assert len(share) >= 30
    assert share.mean() >= 0.6 and np.median(share) >= 0.6  # measured: 0.646 and 0.654 (area 0.484)
    assert (share > area).mean() >= 0.9  # on (almost) every tile, more than the tumour's share of pixels


def test_explain_gives_unit_maps_at_patch_resolution(model, partial_tiles):
    patches = partial_tiles["patches"][:3]
    maps = model.explain(patches, batch_size=2)
    assert maps.shape == (3, PATCH, PATCH) and maps.dtype == np.float32
    assert maps.min() >= 0 and np.allclose(maps.max(axis=(1, 2)), 1.0)
    np.testing.assert_allclose(model.explain(patches[:1]), maps[:1], atol=1e-5)  # batch-independent
    assert model.explain(patches[:0]).shape == (0, PATCH, PATCH)
    assert (
        type(model._grad_cam.layer).__name__ == "Sequential"
    )  # CompactCNN.features: its last block's output


def test_maps_are_at_patch_resolution_when_the_model_resizes(tmp_path):
    card = ModelCard(
        name="resizing", architecture="compact_cnn", class_names=["normal", "tumour"], input_size=64
    )
    folder = save_model(tmp_path / "m", build_module(card), card)
    patches = np.random.default_rng(0).integers(0, 256, (2, PATCH, PATCH, 3), np.uint8)
    assert Model(folder, torch.device("cpu")).explain(patches).shape == (2, PATCH, PATCH)


@pytest.mark.parametrize(
    ("architecture", "arguments", "stage"),
    [
        ("compact_cnn", {}, "features"),
        ("resnet18", {}, "layer4"),
        ("efficientnet_b0", {}, "bn2"),
        ("torchvision:densenet121", {}, "features"),
        ("tiatoolbox_cnn", {"backbone": "resnet18"}, "feat_extract"),
    ],
)
def test_the_last_convolutional_stage_of_common_cnns(architecture, arguments, stage):
    card = ModelCard("x", architecture, ["normal", "tumour"], architecture_args=arguments)
    module = build_module(card).eval()
    assert last_conv_stage(module, PATCH) is module.get_submodule(stage)


def test_models_without_a_convolutional_stage_are_refused_in_one_line(tmp_path):
    probe = Model("centre-colour-probe", torch.device("cpu"))
    with pytest.raises(SaliencyUnavailableError, match="no convolutional stage") as refused:
        probe.explain(np.zeros((1, PATCH, PATCH, 3), np.uint8))
    assert "\n" not in str(refused.value)
    vit = build_module(ModelCard(name="v", architecture="vit_tiny_patch16_224", class_names=["a", "b"]))
    with pytest.raises(SaliencyUnavailableError, match="not a CNN"):
        last_conv_stage(vit.eval(), 224)
    compact = build_module(ModelCard(name="c", architecture="compact_cnn", class_names=["a", "b"])).eval()
    scripted = torch.jit.trace(compact, torch.zeros(1, 3, PATCH, PATCH))
    with pytest.raises(SaliencyUnavailableError, match="TorchScript"):
        last_conv_stage(scripted, PATCH)


def test_tumour_log_odds_whichever_class_is_tumour():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    softmax = ModelCard(name="s", architecture="x", class_names=["a", "tumour", "b"], output="softmax")
    p = torch.softmax(logits, 1)[0, 1]
    assert tumour_log_odds(logits, softmax).item() == pytest.approx(torch.log(p / (1 - p)).item())
    sigmoid_last = ModelCard(name="s", architecture="x", class_names=["normal", "tumour"])
    sigmoid_first = ModelCard(name="s", architecture="x", class_names=["tumor", "normal"])
    assert tumour_log_odds(logits[:, :1], sigmoid_last).item() == 2.0
    assert tumour_log_odds(logits[:, :1], sigmoid_first).item() == -2.0

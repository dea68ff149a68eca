"""wsi-eval: its numbers equal metrics computed directly; test-time augmentation averages 8 symmetries."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from wsi_pipeline.datasets import open_patch_dataset, write_class_folders, write_pcam_split
from wsi_pipeline.evaluate import evaluate_patches, patch_metrics, predict_tta
from wsi_pipeline.evaluate_cli import main
from wsi_pipeline.model import Model, ModelCard, build_module, read_card, save_model

from .test_train import DARK, LIGHT, MID, colour_patches

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    """An untrained (seeded) compact CNN: arbitrary but fixed, and not symmetric under flips/rotations."""
    card = ModelCard(
        name="tiny",
        architecture="compact_cnn",
        class_names=["normal", "tumour"],
        architecture_args={"width": 4},
    )
    torch.manual_seed(0)
    module = build_module(card)
    with torch.no_grad():
        module.head[1].weight *= 1000  # spread the probabilities away from 0.5
    folder = save_model(tmp_path_factory.mktemp("models") / "tiny", module, card)
    # Shift the logits so that 60% of the test patches are called tumour (sensitivity ≠ specificity).
    tumour = Model(folder, torch.device("cpu")).predict(evaluation_patches())[:, 1]
    with torch.no_grad():
        module.head[1].bias -= float(np.quantile(np.log(tumour / (1 - tumour)), 0.4))
    return save_model(folder, module, card)


def evaluation_patches() -> np.ndarray:
    return colour_patches(40, [LIGHT, DARK, MID], seed=3)[0]


@pytest.fixture(scope="module")
def pcam(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pcam")
    write_pcam_split(folder, "test", [(evaluation_patches(), np.arange(40) % 2)])
    write_pcam_split(folder, "valid", [(colour_patches(8, [LIGHT], seed=4)[0], np.zeros(8, np.int64))])
    return folder


def run(capsys, *args: object) -> tuple[int, str, str]:
    code = main([*map(str, args), "-q", "--batch-size", "16"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def all_patches(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    with open_patch_dataset(folder, split=split) as data:
        return data.read_batch(np.arange(len(data)))


def test_wsi_eval_reports_the_metrics_computed_directly(tmp_path, capsys, model_folder, pcam):
    code, out, err = run(capsys, "--model", model_folder, pcam, "--json", tmp_path / "r.json")
    assert code == 0, err
    results = json.loads((tmp_path / "r.json").read_text())
    metrics = results["metrics"]

    patches, labels = all_patches(pcam, "test")
    probs = Model(model_folder, torch.device("cpu")).predict(patches)
    predicted = (probs[:, 1] >= 0.5).astype(int)
    assert 5 < predicted.sum() < 35  # both classes predicted: the rates below are not trivial
    positives, negatives = labels == 1, labels == 0
    # AUC by its definition: the fraction of (positive, negative) pairs ranked right, ties one half
    diff = probs[positives, 1][:, None] - probs[negatives, 1][None, :]
    assert metrics["auc"] == pytest.approx(((diff > 0) + 0.5 * (diff == 0)).mean())
    assert metrics["accuracy"] == pytest.approx((predicted == labels).mean())
    assert metrics["sensitivity"] == pytest.approx(predicted[positives].mean())
    assert metrics["specificity"] == pytest.approx(1 - predicted[negatives].mean())
    assert metrics["balanced_accuracy"] == pytest.approx(
        (metrics["sensitivity"] + metrics["specificity"]) / 2
    )
    confusion = [[int(((labels == t) & (predicted == p)).sum()) for p in (0, 1)] for t in (0, 1)]
    assert metrics["confusion_matrix"] == confusion and metrics["n"] == 40 and metrics["tta"] is False
    assert results["data"]["format"] == "pcam" and results["model"]["name"] == "tiny"

    table = dict(line.rsplit("  ", 1) for line in out.splitlines()[:8])
    assert table["ROC AUC".ljust(26)].strip() == f"{metrics['auc']:.4f}"
    assert table["sensitivity (tumour ≥ 0.5)"].strip() == f"{metrics['sensitivity']:.4f}"
    assert out.splitlines()[-1].split() == ["tumour", *map(str, confusion[1])]


def test_tta_is_the_mean_over_the_eight_flips_and_rotations(tmp_path, capsys, model_folder, pcam):
    model = Model(model_folder, torch.device("cpu"))
    patches, labels = all_patches(pcam, "test")
    views = [np.rot90(patches, k, axes=(1, 2)) for k in range(4)]
    views += [view[:, :, ::-1] for view in views]  # and each mirrored
    each = np.stack([model.predict(np.ascontiguousarray(view)) for view in views])
    assert np.abs(each - each[0]).max() > 1e-3  # the model is not invariant: averaging matters
    np.testing.assert_allclose(predict_tta(model.predict, patches), each.mean(0), rtol=0, atol=1e-6)

    with open_patch_dataset(pcam, split="test") as data:
        metrics = evaluate_patches(model, data, batch_size=16, tta=True)
    expected = patch_metrics(labels, each.mean(0), model.card.class_names)
    assert metrics.pop("tta") is True
    assert metrics.keys() == expected.keys()
    for key, value in expected.items():
        assert metrics[key] == (pytest.approx(value) if isinstance(value, float) else value), key
    code, out, _ = run(capsys, "--model", model_folder, pcam, "--tta")
    assert code == 0 and "40 (8-fold TTA)" in out and f"{expected['auc']:.4f}" in out


def test_one_class_leaves_auc_and_sensitivity_undefined(tmp_path, capsys, model_folder, pcam):
    code, out, _ = run(
        capsys, "--model", model_folder, pcam, "--split", "valid", "--json", tmp_path / "r.json"
    )
    assert code == 0
    metrics = json.loads((tmp_path / "r.json").read_text())["metrics"]
    assert metrics["auc"] is None and metrics["sensitivity"] is None and metrics["specificity"] is not None
    assert any(line.startswith("ROC AUC") and line.endswith(" undefined") for line in out.splitlines())


def test_errors_are_one_line_naming_the_file(tmp_path, capsys, model_folder, pcam):
    code, _, err = run(capsys, "--model", tmp_path / "nope", pcam)
    assert code == 2 and err.startswith(f"wsi-eval: error: {tmp_path / 'nope'}: ") and err.count("\n") == 1
    code, _, err = run(capsys, "--model", model_folder, tmp_path / "missing")
    assert code == 2 and err == f"wsi-eval: error: {tmp_path / 'missing'}: no such file or folder\n"
    patches, labels = colour_patches(6, [DARK, LIGHT, MID], seed=5)
    write_class_folders(tmp_path / "three", patches, labels, ["a", "b", "c"])
    code, _, err = run(capsys, "--model", model_folder, tmp_path / "three")
    assert code == 2 and "differ" in err and err.count("\n") == 1


def test_record_stores_the_metrics_in_the_card(tmp_path, capsys, model_folder, pcam):
    folder = tmp_path / "copy"
    shutil.copytree(model_folder, folder)
    weights = (folder / "weights.safetensors").read_bytes()
    code, _, err = run(capsys, "--model", folder, pcam, "--record", "test", "--json", tmp_path / "r.json")
    assert code == 0, err
    card = read_card(folder)
    results = json.loads((tmp_path / "r.json").read_text())
    assert card.metrics["test"]["auc"] == results["metrics"]["auc"]
    assert (
        card.metrics["test"]["data"]["format"] == "pcam"
        and "--record test" in card.metrics["test"]["command"]
    )
    assert (folder / "weights.safetensors").read_bytes() == weights and not list(folder.glob("*.partial"))

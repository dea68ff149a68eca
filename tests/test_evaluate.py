"""wsi-eval: its numbers equal metrics computed directly; test-time augmentation averages 8 symmetries;
heatmaps against annotations give the slide AUC, Dice and FROC worked out by hand."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsi_pipeline import Block, PatchGrid, ScoreOptions, score_slide
from wsi_pipeline.cli.evaluate import main
from wsi_pipeline.datasets.patches import open_patch_dataset, write_class_folders, write_pcam_split
from wsi_pipeline.evaluation.patches import evaluate_patches, patch_metrics
from wsi_pipeline.model.architectures import build_module
from wsi_pipeline.model.card import ModelCard
from wsi_pipeline.model.folder import read_card
from wsi_pipeline.model.predict import Model
from wsi_pipeline.model.weights import save_model
from wsi_pipeline.store.heatmap import HeatmapWriter

from .conftest import heatmap_record, make_slide
from .test_annotations import qupath_feature, square
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
    np.testing.assert_allclose(model.predict(patches, tta=True), each.mean(0), rtol=0, atol=1e-6)

    with open_patch_dataset(pcam, split="test") as data:
        metrics = evaluate_patches(model, data, batch_size=16, tta=True)
    expected = patch_metrics(labels, each.mean(0), model.card.class_names)
    assert metrics.pop("tta") is True
    assert metrics.keys() == expected.keys()
    for key, value in expected.items():
        assert metrics[key] == (pytest.approx(value) if isinstance(value, float) else value), key
    code, out, _ = run(capsys, "--model", model_folder, pcam, "--tta")
    assert code == 0 and "40 (8-fold TTA)" in out and f"{expected['auc']:.4f}" in out


def test_the_most_confident_errors_are_listed_and_drawn(tmp_path, capsys, model_folder, pcam):
    code, out, err = run(capsys, "--model", model_folder, pcam, "--json", tmp_path / "r.json")
    assert code == 0, err
    results = json.loads((tmp_path / "r.json").read_text())
    patches, labels = all_patches(pcam, "test")
    tumour = Model(model_folder, torch.device("cpu")).predict(patches)[:, 1]
    false_positives = [i for i in np.argsort(-tumour, kind="stable") if labels[i] == 0 and tumour[i] >= 0.5]
    false_negatives = [i for i in np.argsort(tumour, kind="stable") if labels[i] == 1 and tumour[i] < 0.5]
    assert len(false_positives) > 8 and len(false_negatives) > 0  # the untrained model errs both ways
    errors = results["errors"]
    assert [e["index"] for e in errors["false_positives"]] == false_positives[:8]
    assert [e["index"] for e in errors["false_negatives"]] == false_negatives[:8]
    assert errors["false_positives"][0]["probability"] == pytest.approx(tumour[false_positives[0]], abs=1e-6)
    assert {e["label"] for e in errors["false_positives"]} == {"normal"}
    png = tmp_path / "errors.png"  # beside the JSON
    assert results["errors_png"] == str(png)
    assert any(
        line.startswith("most confident errors") and line.endswith(str(png)) for line in out.splitlines()
    )
    with Image.open(png) as image:
        assert image.width > 8 * 100 and image.height > 300

    code, _, _ = run(capsys, "--model", model_folder, pcam, "--errors-png", tmp_path / "e.png")
    assert code == 0 and (tmp_path / "e.png").is_file()
    with pytest.raises(SystemExit):
        main(["--heatmaps", str(tmp_path), "--truth", str(tmp_path), "--errors-png", str(tmp_path / "x.png")])
    assert "--errors-png is for patches" in capsys.readouterr().err


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


# Slides mode: 10 × 10 cells of 96 µm (1 µm/px, one target pixel per level-0 pixel).
GRID = PatchGrid(width0=960, height0=960, mpp0=1.0, target_mpp=1.0, patch_size=96, stride=96)
ASAP = """<?xml version="1.0"?>
<ASAP_Annotations><Annotations>
  <Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="_0" Color="#F4FA58"><Coordinates>
    <Coordinate Order="0" X="192" Y="192" /><Coordinate Order="1" X="480" Y="192" />
    <Coordinate Order="2" X="480" Y="480" /><Coordinate Order="3" X="192" Y="480" />
  </Coordinates></Annotation>
  <Annotation Name="Annotation 1" Type="Polygon" PartOfGroup="_2" Color="#64FE2E"><Coordinates>
    <Coordinate Order="0" X="384" Y="384" /><Coordinate Order="1" X="480" Y="384" />
    <Coordinate Order="2" X="480" Y="480" /><Coordinate Order="3" X="384" Y="480" />
  </Coordinates></Annotation>
</Annotations></ASAP_Annotations>
"""


def write_heatmap(folder: Path, stem: str, tumour: np.ndarray) -> Path:
    writer = HeatmapWriter(
        folder / f"{stem}.zarr", GRID, ["normal", "tumour"], 16, heatmap_record(GRID, stem)
    )
    writer.write_tissue(np.ones(GRID.shape, bool))
    writer.write_block(Block(0, 0, *GRID.shape), np.stack([1 - tumour, tumour]).astype(np.float32))
    writer.finalise()
    return writer.path


@pytest.fixture
def annotated(tmp_path) -> tuple[Path, Path]:
    """Four heatmaps and the truth of three, one per format; the fourth slide has no tumour."""
    heatmaps, truth = tmp_path / "heatmaps", tmp_path / "truth"
    truth.mkdir()
    # pos_a (ASAP): tumour on cells rows/cols 2-4 but cell (4, 4), an _2 exclusion; all 9 cells score 0.9
    (truth / "pos_a.xml").write_text(ASAP)
    tumour = np.full(GRID.shape, 0.05)
    tumour[2:5, 2:5] = 0.9
    write_heatmap(heatmaps, "pos_a", tumour)
    # pos_b (GeoJSON): tumour on cells 5-7 scoring 0.6, and a false 0.8 at cell (0, 9)
    collection = {
        "type": "FeatureCollection",
        "features": [
            qupath_feature({"type": "Polygon", "coordinates": [square(480, 480, 768, 768)]}, "Tumor")
        ],
    }
    (truth / "pos_b.truth.geojson").write_text(json.dumps(collection))
    tumour = np.full(GRID.shape, 0.05)
    tumour[5:8, 5:8], tumour[0, 9] = 0.6, 0.8
    write_heatmap(heatmaps, "pos_b", tumour)
    # pos_c (mask, 8 level-0 px per pixel): tumour on cells rows 1-3, cols 6-8, all missed
    mask = np.zeros((120, 120), np.uint8)
    mask[12:48, 72:108] = 255
    Image.fromarray(mask).save(truth / "pos_c_mask.png")
    write_heatmap(heatmaps, "pos_c", np.full(GRID.shape, 0.05))
    # neg: no truth file; a false 0.3 at cell (9, 0)
    tumour = np.full(GRID.shape, 0.05)
    tumour[9, 0] = 0.3
    write_heatmap(heatmaps, "neg", tumour)
    return heatmaps, truth


def test_slides_mode_reports_the_numbers_worked_out_by_hand(tmp_path, capsys, annotated):
    heatmaps, truth = annotated
    code, out, err = run(capsys, "--heatmaps", heatmaps, "--truth", truth)
    assert code == 2 and "no truth file for neg" in err and err.count("\n") == 1

    args = ["--heatmaps", heatmaps, "--truth", truth, "--missing-truth", "negative"]
    args += ["--froc-rules", "corrected"]  # by the challenge's (µm at 0.243 µm/px) these lesions would be ITC
    code, out, err = run(capsys, *args, "--json", tmp_path / "r.json", "--froc-png", tmp_path / "froc.png")
    assert code == 0, err
    results = json.loads((tmp_path / "r.json").read_text())
    slides = {slide["slide"]: slide for slide in results["slides"]}
    assert [slides[s]["truth_format"] for s in ("pos_a", "pos_b", "pos_c", "neg")] == [
        "asap",
        "geojson",
        "mask",
        None,
    ]
    assert slides["pos_a"]["exclusion_polygons"] == 1
    # Dice at 0.5: pos_a calls 9 cells, 8 of them tumour; pos_b 10 cells, its 9 tumour cells among them;
    # pos_c none of its 9; neg nothing and has nothing (undefined)
    assert [slides[s]["dice"] for s in ("pos_a", "pos_b", "pos_c", "neg")] == pytest.approx(
        [2 * 8 / 17, 2 * 9 / 19, 0.0, None]
    )
    summary = results["summary"]
    assert summary["dice"] == pytest.approx(2 * 17 / (19 + 26))
    # slide scores: pos_a 0.9, pos_b 0.8, pos_c 0.05 against neg's 0.3 → 2 of 3 pairs in order
    assert summary["slide_auc"] == pytest.approx(2 / 3)
    # FROC over 4 slides and 3 lesions: hits 0.9 (pos_a), 0.6 (pos_b); false positives 0.8 (pos_b), 0.3 (neg).
    # Curve (FP/slide, sensitivity): 0.9 → (0, 1/3); 0.8 → (0.25, 1/3); 0.6 → (0.25, 2/3); 0.3 → (0.5, 2/3):
    # 2/3 at every rate from 1/4 on.
    froc = summary["froc"]
    assert froc["score"] == pytest.approx(2 / 3)
    assert froc["curve"]["fp_per_slide"] == pytest.approx([0, 0, 0.25, 0.25, 0.5])
    assert froc["curve"]["threshold"][1:] == pytest.approx([0.9, 0.8, 0.6, 0.3])
    with Image.open(tmp_path / "froc.png") as image:
        assert image.format == "PNG" and image.width > 300

    lines = out.splitlines()
    row = next(line for line in lines if line.startswith("pos_b")).split()
    assert row[1:7] == ["pos_b.truth.geojson", "yes", "1/1", "0", "1", "0.8000"]
    assert next(line for line in lines if line.startswith("neg")).split()[1:4] == ["none", "(negative)", "no"]
    assert next(line for line in lines if line.startswith("FROC score")).split()[-1] == f"{2 / 3:.4f}"


def test_slides_mode_errors(tmp_path, capsys, annotated):
    heatmaps, truth = annotated
    stray = tmp_path / "other.xml"
    stray.write_text(ASAP)
    code, _, err = run(capsys, "--heatmaps", heatmaps, "--truth", truth / "pos_a.xml", stray)
    assert code == 2 and err.startswith(f"wsi-eval: error: {stray}: matches no heatmap")
    (truth / "pos_a.xml").write_text("<ASAP_Annotations>")
    code, _, err = run(capsys, "--heatmaps", heatmaps, "--truth", truth, "--missing-truth", "negative")
    assert code == 2 and err.startswith(f"wsi-eval: error: {truth / 'pos_a.xml'}: not XML")
    code, _, err = run(capsys, "--heatmaps", tmp_path, "--truth", truth)
    assert code == 2 and err == f"wsi-eval: error: {tmp_path}: holds no wsi_pipeline heatmap\n"
    for args in (
        ["--heatmaps", heatmaps],
        ["--heatmaps", heatmaps, "--truth", truth, "--model", "x"],
        [tmp_path],
    ):
        with pytest.raises(SystemExit):
            run(capsys, *args)


def test_slides_mode_on_a_slide_scored_by_the_probe(tmp_path, capsys, probe_model, client):
    """A dark square scored by the centre-colour probe, its outline as the truth: found, no false positive."""
    dark = (300.0, 290.0, 650.0, 640.0)  # level-0 px at 0.972 µm/px: one target pixel each
    make_slide(tmp_path / "s.svs", 1152, 960, 0.972, [dark])
    result = score_slide(
        tmp_path / "s.svs",
        probe_model,
        tmp_path / "out",
        client=client,
        options=ScoreOptions(),
        show_progress=False,
    )
    polygon = {"type": "Polygon", "coordinates": [square(*dark)]}
    (tmp_path / "s.geojson").write_text(json.dumps(qupath_feature(polygon, "Tumor")))
    args = ["--heatmaps", result.heatmap, "--truth", tmp_path / "s.geojson", "--detection-floor", "0.5"]
    args += ["--froc-rules", "corrected"]  # by the challenge's this 0.34 mm square would be ITC
    code, _, err = run(capsys, *args, "--json", tmp_path / "r.json")
    assert code == 0, err
    slide = json.loads((tmp_path / "r.json").read_text())["slides"][0]
    assert slide["lesion_detection"]["lesions"] == 1 and slide["lesion_detection"]["fps"] == []
    assert slide["lesion_detection"]["hits"][0] > 0.9 and slide["slide_score"] > 0.9
    assert slide["dice"] > 0.5 and slide["cell_auc"] > 0.9

"""wsi-train end to end on tiny data: outputs, learning, exact resume, early stopping, softmax, errors."""

from __future__ import annotations

import json
import shlex
import socket
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from wsi_pipeline.cli.train import main
from wsi_pipeline.datasets.patches import open_patch_dataset, write_class_folders, write_pcam_split
from wsi_pipeline.evaluation.metrics import roc_auc
from wsi_pipeline.model.card import ModelCard
from wsi_pipeline.model.predict import Model
from wsi_pipeline.training import train as train_module
from wsi_pipeline.training.train import CHECKPOINT_NAME, initial_module

DARK, LIGHT, MID = (90, 40, 120), (230, 180, 210), (170, 110, 160)  # purple, pale pink, in between
TINY = [
    "--architecture",
    "compact_cnn",
    "--arch-arg",
    "depth=1",
    "--arch-arg",
    "width=4",
    "--batch-size",
    "16",
]


def colour_patches(n: int, colours: list[tuple[int, int, int]], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n noisy 96×96 patches, each of one of ``colours`` (its label = the colour's index)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(colours)
    rng.shuffle(labels)
    means = np.array(colours, np.float64)[labels][:, None, None, :]
    noise = rng.normal(0, 25, (n, 96, 96, 3))
    return np.clip(means + noise, 0, 255).astype(np.uint8), labels


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pcam(tmp_path_factory) -> Path:
    """A PCam folder: 48 training and 32 validation patches, dark (tumour) or light (normal)."""
    folder = tmp_path_factory.mktemp("pcam")
    write_pcam_split(folder, "train", [colour_patches(48, [LIGHT, DARK], seed=1)])
    write_pcam_split(folder, "valid", [colour_patches(32, [LIGHT, DARK], seed=2)])
    return folder


def run(capsys, *args: object) -> tuple[int, str, str]:
    code = main([*map(str, args), "-q"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def card_of(folder: Path) -> dict:
    return json.loads((folder / "model.json").read_text())


def test_one_epoch_writes_a_model_folder_that_loads_and_predicts(tmp_path, capsys, pcam):
    args = [str(pcam), "--out", str(tmp_path / "m"), *TINY, "--epochs", "1", "--seed", "3", "-q"]
    args += ["--note", "Trained on colour blobs."]
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == f"ok {tmp_path / 'm'}"
    folder = tmp_path / "m"
    for name in ("model.json", "weights.safetensors", "learning_curves.png", "roc.png", CHECKPOINT_NAME):
        assert (folder / name).stat().st_size > 0, name
    card = card_of(folder)
    training = card["training"]
    assert training["command"] == shlex.join(["wsi-train", *args])
    assert card["class_names"] == ["normal", "tumour"] and card["output"] == "sigmoid"
    assert card["description"].startswith("Trained on colour blobs. compact_cnn trained with wsi-train on 48")
    assert card["architecture"] == "compact_cnn" and card["architecture_args"] == {"depth": 1, "width": 4}
    assert (card["patch_size"], card["mpp"]) == (96, 0.972)
    assert training["data"]["train"]["n"] == 48 and training["data"]["val"]["n"] == 32
    assert training["data"]["val"]["paths"][0].endswith("camelyonpatch_level_2_split_valid_x.h5")
    assert training["recipe"]["seed"] == 3 and training["recipe"]["augment"]["hed_scale"] > 0
    assert training["pretrained"] is False and "compact_cnn" in training["pretrained_note"]
    assert (training["epochs_run"], training["best_epoch"], training["finished"]) == (1, 1, True)
    assert set(card["metrics"]["validation"]) >= {"auc", "accuracy", "balanced_accuracy", "sensitivity", "n"}

    # The saved model, through Model.predict's own preprocessing, scores the validation data as training did.
    model = Model(folder, torch.device("cpu"))
    with open_patch_dataset(pcam, split="valid") as val:
        patches, labels = val.read_batch(np.arange(len(val)))
    probs = model.predict(patches)
    assert probs.shape == (32, 2) and np.allclose(probs.sum(1), 1)
    assert roc_auc(labels, probs) == pytest.approx(card["metrics"]["validation"]["auc"])
    accuracy = float(((probs[:, 1] >= 0.5) == labels).mean())
    assert accuracy == pytest.approx(card["metrics"]["validation"]["accuracy"])


def test_learns_dark_versus_light(tmp_path, capsys, pcam):
    code, _, err = run(
        capsys, pcam, "--out", tmp_path / "m", *TINY, "--batch-size", "8", "--epochs", "3", "--lr", "0.02"
    )
    assert code == 0, err
    history = card_of(tmp_path / "m")["training"]["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[0]["val"]["accuracy"] < 0.9  # not there after one epoch: the threshold is learnt
    assert history[-1]["val"]["auc"] > 0.9 and history[-1]["val"]["accuracy"] > 0.9


def test_resume_continues_exactly_where_it_stopped(tmp_path, capsys, pcam):
    common = [pcam, *TINY, "--epochs", "2", "--lr", "0.02"]
    assert run(capsys, *common, "--out", tmp_path / "whole")[0] == 0
    assert run(capsys, *common, "--out", tmp_path / "split", "--stop-after", "1")[0] == 0
    halfway = card_of(tmp_path / "split")["training"]
    assert (halfway["epochs_run"], halfway["finished"]) == (1, False)
    steps = torch.load(tmp_path / "split" / CHECKPOINT_NAME, weights_only=True)["scheduler"]["last_epoch"]
    assert steps == 3  # 48 patches / 16 per batch: three optimiser steps in epoch 1

    assert run(capsys, *common, "--out", tmp_path / "split", "--resume")[0] == 0
    whole, split = card_of(tmp_path / "whole")["training"], card_of(tmp_path / "split")["training"]
    assert split["epochs_run"] == 2 and split["finished"] and len(split["resumed_with"]) == 1
    assert torch.load(tmp_path / "split" / CHECKPOINT_NAME, weights_only=True)["scheduler"]["last_epoch"] == 6
    for key in ("train_loss", "val_loss", "val", "lr_end"):
        assert [e[key] for e in split["history"]] == [e[key] for e in whole["history"]], key
    weights = [load_file(tmp_path / name / "weights.safetensors") for name in ("whole", "split")]
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name


def test_resume_refuses_other_settings_and_fresh_runs_refuse_a_used_folder(tmp_path, capsys, pcam):
    out = tmp_path / "m"
    assert run(capsys, pcam, "--out", out, *TINY, "--epochs", "2", "--stop-after", "1")[0] == 0
    code, _, err = run(capsys, pcam, "--out", out, *TINY, "--epochs", "3", "--resume")
    assert code == 2
    problem = "was written with other settings (epochs); resume with the same"
    assert err == f"wsi-train: error: {out / CHECKPOINT_NAME}: {problem}\n"
    code, _, err = run(capsys, pcam, "--out", out, *TINY, "--epochs", "2")
    assert (
        code == 2
        and err.startswith(f"wsi-train: error: {out}: output folder exists")
        and err.count("\n") == 1
    )


def test_gradient_accumulation_steps_once_per_group_of_batches(tmp_path, capsys, pcam):
    out = tmp_path / "m"
    assert (
        run(capsys, pcam, "--out", out, *TINY, "--accumulate", "2", "--epochs", "2", "--stop-after", "1")[0]
        == 0
    )
    scheduler = torch.load(out / CHECKPOINT_NAME, weights_only=True)["scheduler"]
    # 3 batches of 16 → groups of 2 and 1 → two optimiser steps per epoch, four in the schedule
    assert (scheduler["last_epoch"], scheduler["total_steps"]) == (2, 4)


def test_early_stopping_after_patience_epochs_without_improvement(tmp_path, capsys, pcam):
    # Validation labels unrelated to the colour: nothing learnt from the training data helps, so the
    # validation AUC (or, at equal AUC, the loss) soon stops improving.
    patches, labels = colour_patches(32, [LIGHT, DARK], seed=2)
    write_pcam_split(tmp_path / "noise", "valid", [(patches, np.random.default_rng(0).permutation(labels))])
    args = ["--val", tmp_path / "noise", "--out", tmp_path / "m", *TINY, "--epochs", "8", "--patience", "2"]
    code, _, err = run(capsys, pcam, *args, "--lr", "0.02")
    assert code == 0, err
    training = card_of(tmp_path / "m")["training"]
    scores = [(entry["val"]["auc"], -entry["val_loss"]) for entry in training["history"]]
    best = training["best_epoch"]
    assert training["stopped_early"] and training["epochs_run"] < 8
    assert training["epochs_run"] == best + 2  # two epochs (the patience) without a better score, then stop
    assert scores[best - 1] == max(scores)
    assert card_of(tmp_path / "m")["metrics"]["validation"]["auc"] == scores[best - 1][0]


def test_three_classes_train_a_softmax(tmp_path, capsys):
    colours, names = [DARK, LIGHT, MID], ["dark", "light", "mid"]
    write_class_folders(tmp_path / "train", *colour_patches(36, colours, seed=4), names)
    write_class_folders(tmp_path / "val", *colour_patches(18, colours, seed=5), names)
    out = tmp_path / "m"
    code, _, err = run(
        capsys, tmp_path / "train", "--val", tmp_path / "val", "--out", out, *TINY, "--epochs", "1"
    )
    assert code == 0, err
    card = card_of(out)
    assert card["output"] == "softmax" and card["class_names"] == names
    validation = card["metrics"]["validation"]
    assert "sensitivity" not in validation and len(validation["confusion_matrix"]) == 3
    probs = Model(out, torch.device("cpu")).predict(colour_patches(6, colours, seed=6)[0])
    assert probs.shape == (6, 3) and np.allclose(probs.sum(1), 1)


def test_bad_settings_and_checkpoints_are_one_line_errors(tmp_path, capsys, pcam):
    code, _, err = run(capsys, pcam, "--out", tmp_path / "a", "--architecture", "no_such_net")
    assert (code, err) == (
        2,
        "wsi-train: error: architecture 'no_such_net' is neither compact_cnn nor a timm model name\n",
    )
    code, _, err = run(capsys, pcam, "--out", tmp_path / "b", *TINY, "--arch-arg", "colour=1")
    assert code == 2 and err.startswith("wsi-train: error: architecture arguments") and err.count("\n") == 1
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / CHECKPOINT_NAME).write_bytes(b"not a checkpoint")
    code, _, err = run(capsys, pcam, "--out", tmp_path / "c", *TINY, "--resume")
    assert code == 2 and err.startswith(
        f"wsi-train: error: {tmp_path / 'c' / CHECKPOINT_NAME}: cannot be read"
    )
    torch.save(["a", "list"], tmp_path / "c" / CHECKPOINT_NAME)
    code, _, err = run(capsys, pcam, "--out", tmp_path / "c", *TINY, "--resume")
    assert code == 2 and err.endswith(": is not a wsi-train checkpoint (format 1)\n")


def test_bad_input_is_one_line_naming_the_file(tmp_path, capsys):
    code, _, err = run(capsys, tmp_path / "missing", "--out", tmp_path / "m", *TINY)
    assert code == 2 and err == f"wsi-train: error: {tmp_path / 'missing'}: no such file or folder\n"
    write_class_folders(tmp_path / "classes", *colour_patches(4, [DARK, LIGHT], seed=7), ["a", "b"])
    code, _, err = run(capsys, tmp_path / "classes", "--out", tmp_path / "m", *TINY)
    assert code == 2 and err.startswith(f"wsi-train: error: {tmp_path / 'classes'}: ") and "--val" in err
    assert not (tmp_path / "m").exists()


def test_pretrained_weights_out_of_reach_give_random_weights_and_the_reason(monkeypatch):
    card = ModelCard(name="m", architecture="mobilenetv3_small_050", class_names=["a", "b"])
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *args, **kwargs: None)

    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("no network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    module, pretrained, note = initial_module(card, pretrained=True)
    assert not pretrained and note.endswith("huggingface.co unreachable (no network); random initialisation")
    assert module.get_classifier().out_features == 1

    missing = {"file": "/nonexistent/model.safetensors"}
    monkeypatch.setattr(train_module, "hub_weights_source", lambda architecture: (missing, "weights W"))
    _, pretrained, note = initial_module(card, pretrained=True)
    assert not pretrained and note.startswith("weights W failed to load (FileNotFoundError")
